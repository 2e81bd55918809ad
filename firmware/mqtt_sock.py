# MQTT transport (resident: firmware/mqtt_link.py uses it on every poll). One connection's socket
# with a fixed write buffer (writes bounded by the poll's deadline), the encoding of the few packets
# the device sends (MQTT 3.1.1) and the framing of what it receives (non-blocking, into a fixed
# buffer, a partial packet kept for the next poll). Why: mqtt_link.py.

import time
import errno
import select


def der(data):
    """A PEM certificate as DER (the unix port's mbedTLS rejects PEM): the first one only."""
    if data[:10] != b'-----BEGIN':
        return data
    import binascii
    lines = data.split(b'\n')
    b64 = b''
    for ln in lines[1:]:
        if ln.startswith(b'-----END'):
            break
        b64 += ln.strip()
    return binascii.a2b_base64(b64)


class MQTTException(Exception):
    """A protocol-level refusal or violation (e.g. CONNACK return code 5: not authorised)."""


class Sock:
    """One connection: packets out (encoded into the write buffer), packets in (packet()). A read
    never waits; a write waits only while the send buffer is full, and never past `until` (the
    poll's deadline, ticks_ms, set by the link)."""

    def __init__(self, raw, rbuf, rmv, wbuf):
        self.raw = raw          # the TCP socket (polled; an SSL socket cannot be)
        self.s = raw            # what is read and written (raw or the SSL socket)
        raw.setblocking(False)  # for good: every wait is an explicit poll with a bound
        self.p = select.poll()
        self.p.register(raw, select.POLLOUT)
        self.rbuf = rbuf        # the link's inbound buffer (fixed size, shared by its connections)
        self.rmv = rmv          # a memoryview of it, made once
        self.rlen = 0           # bytes of the current inbound packet held in rbuf
        self.hl = 0             # its fixed header's length once complete (0: not yet)
        self.skip = 0           # bytes still to discard of a packet longer than rbuf
        self.sink = None        # f(memoryview, n, last): takes those bytes instead (a schedule)
        self.tskip = 0          # bytes still to discard of a PUBLISH's topic longer than rbuf
        self.tlong = 0          # and that topic's length (0: the topic is held)
        self.plen = 0           # the packet packet() returned: body bytes held (from rbuf[poff])
        self.poff = 0
        self.prem = 0           # and its whole body's length (> plen: it did not fit)
        self.wbuf = wbuf        # the link's write buffer (fixed size, shared by its connections)
        self.wlen = 0
        self.h = bytearray(5)   # a fixed header / a string length being encoded
        self.until = 0

    # --- packets out (MQTT 3.1.1), into the write buffer ---
    def fixed(self, t, n):
        """A fixed header: packet type byte t, remaining length n (1..4 bytes, 7 bits each)."""
        h = self.h
        h[0] = t
        i = 1
        while n > 0x7F:
            h[i] = (n & 0x7F) | 0x80
            n >>= 7
            i += 1
        h[i] = n
        self.write(h, i + 1)

    def lstr(self, s):
        """A string (bytes) with its 2-byte length."""
        h = self.h
        h[0] = len(s) >> 8
        h[1] = len(s) & 0xFF
        self.write(h, 2)
        self.write(s)

    def publish(self, topic, msg, retain=False):
        """PUBLISH at QoS 0."""
        self.fixed(0x31 if retain else 0x30, 2 + len(topic) + len(msg))
        self.lstr(topic)
        self.write(msg)

    def write(self, data, n=None):
        # Collected in the fixed buffer and sent by flush() (by the link after each batch, and
        # whenever the buffer is full): a packet is written in 3-4 pieces, and small separate
        # segments meet Nagle and delayed ACKs (a 40 ms stall before CONNACK / SUBACK on Linux).
        # The buffer never grows: a growing one needed ever larger contiguous blocks, which a
        # fragmented 32-bit heap refused after a reconnect (docs/resources.md).
        mv = memoryview(data)
        total = len(mv) if n is None else n
        buf = self.wbuf
        size = len(buf)
        off = 0
        while off < total:
            if self.wlen == size:
                self.flush()
            k = size - self.wlen
            if k > total - off:
                k = total - off
            buf[self.wlen:self.wlen + k] = mv[off:off + k]
            self.wlen += k
            off += k
        return total

    # --- the link's side ---
    def flush(self):
        """Send what is buffered. Waits (in poll, not spinning) only while the send buffer is
        full; ETIMEDOUT once `until` has passed with bytes still unsent."""
        if not self.wlen:
            return
        mv = memoryview(self.wbuf)
        off = 0
        total = self.wlen
        try:
            while off < total:
                try:
                    w = self.s.write(mv[off:total])
                except OSError as e:
                    if e.args[0] not in (errno.EAGAIN, errno.ETIMEDOUT):
                        raise
                    w = None
                if w:
                    off += w
                    continue
                left = time.ticks_diff(self.until, time.ticks_ms())
                if left <= 0:
                    raise OSError(errno.ETIMEDOUT)
                self.p.ipoll(left)          # until writable or an error shows; allocation-free
        finally:
            self.wlen = 0

    def _fill(self, a, b):
        """Read what is there into rbuf[a:b], never waiting: the count, 0 if nothing now."""
        try:
            r = self.s.readinto(self.rmv[a:b])
        except OSError as e:
            if e.args[0] in (errno.EAGAIN, errno.ETIMEDOUT):
                return 0
            raise
        if r is None:
            return 0
        if r == 0:
            raise OSError(errno.ECONNRESET)     # closed by the peer
        return r

    def packet(self):
        """Read, without waiting, towards the next inbound packet. True when one is ready: type
        byte rbuf[0], plen body bytes from rbuf[poff], prem the body's announced length (prem >
        plen: longer than the buffer; its rest is discarded as it arrives). A PUBLISH whose topic
        and packet id do not fit in rbuf is held as its topic length and packet id only (plen 2
        or 4): its topic is discarded as it arrives. It stays in rbuf until the next call. False
        when the socket has nothing more now: a partial packet is kept for the next call, so a
        peer that trickles bytes makes nobody wait."""
        b = self.rbuf
        cap = len(b)
        while True:
            if self.skip:
                r = self._fill(0, self.skip if self.skip < cap else cap)
                if not r:
                    return False
                self.skip -= r
                f = self.sink
                if f is not None:
                    if not self.skip:
                        self.sink = None
                    f(self.rmv, r, not self.skip)
                continue
            n = self.rlen
            if self.tskip:
                # a topic longer than rbuf: discarded behind its length, which stays in rbuf
                r = self._fill(n, n + self.tskip if self.tskip < cap - n else cap)
                if not r:
                    return False
                self.tskip -= r
                continue
            if not self.hl and n >= 2 and not b[n - 1] & 0x80:
                # fixed header complete: the type byte and 1..4 bytes of length, 7 bits each
                rem = 0
                sh = 0
                for i in range(1, n):
                    rem |= (b[i] & 0x7F) << sh
                    sh += 7
                self.hl = n
                self.prem = rem
            if self.hl:
                hl = self.hl
                need = hl + self.prem
                if need > cap:
                    need = cap
                    if b[0] & 0xF0 == 0x30:
                        # a PUBLISH longer than rbuf: do its topic and packet id fit? If not,
                        # only the topic's length and the packet id are kept (the PUBACK needs it)
                        idl = 2 if b[0] & 6 else 0
                        if self.tlong:
                            need = hl + 2 + idl
                        elif n < hl + 2:
                            need = hl + 2
                        else:
                            tl = b[hl] << 8 | b[hl + 1]
                            if hl + 2 + tl + idl > cap:
                                if 2 + tl + idl > self.prem:
                                    raise ValueError('bad PUBLISH')
                                self.tlong = tl
                                self.tskip = tl
                                continue
                if n >= need:
                    self.poff = hl
                    self.plen = n - hl
                    self.skip = self.prem - self.plen - self.tlong
                    self.tlong = 0
                    self.hl = 0
                    self.rlen = 0
                    return True
            elif n == 5:
                raise ValueError('bad packet length')
            else:
                need = 2 if n < 2 else n + 1
            r = self._fill(n, need)
            if not r:
                return False
            self.rlen = n + r

    def tls_step(self):
        """One non-blocking go at the TLS handshake, driven by writing the queued CONNECT:
        False while the handshake is in progress, True once it is done and CONNECT is sent."""
        try:
            w = self.s.write(memoryview(self.wbuf)[:self.wlen])
        except OSError as e:
            if e.args[0] not in (errno.EAGAIN, errno.ETIMEDOUT):
                raise
            w = None
        if not w:
            return False
        rest = self.wlen - w
        self.wbuf[0:rest] = self.wbuf[w:self.wlen]
        self.wlen = rest
        self.flush()
        return True

    def close(self):
        try:
            self.flush()            # e.g. DISCONNECT written by the link's close()
        except Exception:
            pass
        try:
            self.s.close()
        except Exception:
            pass
        if self.s is not self.raw:
            try:
                self.raw.close()
            except Exception:
                pass
