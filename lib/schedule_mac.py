# HMAC of a signed schedule, checked as the payload streams in (lib/schedule_load.py's
# load_stream; loaded on demand, only for a signed topic).
#
# The scheme of lib/command_mac.py (sign): HMAC-SHA256 with the device key over
# "<topic>\n<payload without the mac member>", the mac being the payload's last member
# ,"mac":"<64 hex>"}. Its hmac_sha256 hashes a whole message; this one hashes chunks as they come,
# so the few lines are repeated here;
# host_tests/test_schedule_stream.py checks both agree.
import hashlib
try:
    import binascii
except ImportError:     # very old MicroPython
    import ubinascii as binascii
try:
    from micropython import const
except ImportError:     # CPython
    const = int

_MAC_HEAD = b',"mac":"'
_MAC_TAIL_LEN = const(74)       # ,"mac":"<64 hex>"}


class MacStream:
    """HMAC-SHA256 of a signed payload fed chunk by chunk: update(chunk) with every byte in
    order, then ok(). total_len (the payload's length, known before it arrives: the MQTT
    packet's remaining length or the file's size) says where the mac member starts: bytes before
    it are hashed as they come, the 74-byte tail is kept. why: the reason when ok() is False."""

    def __init__(self, key, topic, total_len):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        k = bytearray(64)
        k[:len(key)] = key
        for i in range(64):
            k[i] ^= 0x36                        # the inner pad
        self.inner = hashlib.sha256(k)
        for i in range(64):
            k[i] ^= 0x6A                        # 0x36 ^ 0x5C: the outer pad
        self.key = k
        self.inner.update(topic.encode() if isinstance(topic, str) else topic)
        self.inner.update(b'\n')
        self.total = total_len
        self.body = total_len - _MAC_TAIL_LEN   # bytes covered by the mac, less the closing }
        self.tail = bytearray(_MAC_TAIL_LEN)
        self.pos = 0
        self.why = None

    def update(self, chunk):
        p = self.pos
        n = len(chunk)
        body = self.body
        if p < body:
            self.inner.update(chunk if p + n <= body else chunk[:body - p])
        lo = max(p, body, 0)
        hi = min(p + n, self.total)
        if hi > lo:
            self.tail[lo - body:hi - body] = chunk[lo - p:hi - p]
        self.pos = p + n

    def ok(self):
        """True when the payload carried a valid mac. Call once, after the last update()."""
        t = self.tail
        self.why = 'unauthorized: mac required as the last member ,"mac":"<64 hex>"}'
        if self.pos != self.total or self.body < 2 or t[:8] != _MAC_HEAD or t[72:] != b'"}':
            return False
        try:
            mac = binascii.unhexlify(t[8:72])
        except MemoryError:                     # not the payload's fault
            raise
        except Exception:
            self.why = 'unauthorized: mac is not hex'
            return False
        self.why = 'unauthorized: bad mac'
        self.inner.update(b'}')
        o = hashlib.sha256(self.key)
        o.update(self.inner.digest())
        d = o.digest()
        r = 0
        for i in range(32):                     # constant time
            r |= d[i] ^ mac[i]
        if r:
            return False
        self.why = None
        return True
