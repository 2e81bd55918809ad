# HMAC-SHA256 of the commands (RFC 2104, over hashlib.sha256: MicroPython has no hmac module);
# pure, no I/O. What signs (the host: tools, tests) and reads the key (boot). The device checks a
# signed command with lib/schedule_mac.py's MacStream (commands.Auth.verify), which hashes in place;
# verify() here is the reference for it (host_tests/test_schedule_stream.py).
#
# Scheme (docs/telemetry.md, "Security"): the mac is HMAC-SHA256 with the per-device key over
# "<topic>\n<payload without the mac member>", sent as the payload's last member
# ,"mac":"<64 hex>"}. lib/schedule_mac.py checks signed schedules with the same scheme as they
# stream in; host_tests/test_schedule_stream.py checks both agree.

import hashlib
try:
    import binascii
except ImportError:     # very old MicroPython
    import ubinascii as binascii

_MAC_HEAD = b',"mac":"'
_MAC_LEN = 64
_MAC_TAIL_LEN = len(_MAC_HEAD) + _MAC_LEN + 2     # ,"mac":"<64 hex>"}


def hmac_sha256(key, msg):
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes([b ^ 0x36 for b in key]))
    inner.update(msg)
    outer = hashlib.sha256(bytes([b ^ 0x5C for b in key]))
    outer.update(inner.digest())
    return outer.digest()


def equal_ct(a, b):
    """Constant-time comparison of two byte strings (time independent of where they differ)."""
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0


def sign(key, topic, body):
    """Client side: body is the JSON object (bytes, compact, no mac member, with "ctr"). Returns
    the payload to publish: body with ,"mac":"<hex>" appended as its last member."""
    if isinstance(topic, str):
        topic = topic.encode()
    if isinstance(body, str):
        body = body.encode()
    mac = binascii.hexlify(hmac_sha256(key, topic + b'\n' + body))
    return body[:-1] + _MAC_HEAD + mac + b'"}'


def parse_key(hexkey):
    """Per-device key from its hex form (config / provisioning). 16..64 bytes."""
    try:
        k = binascii.unhexlify(hexkey)
    except Exception:
        raise ValueError('hmac key: must be hex')
    if not 16 <= len(k) <= 64:
        raise ValueError('hmac key: must be 16..64 bytes')
    return k


def verify(key, topic, payload):
    """Return (body bytes to parse, True), or raise commands.Rejected: what commands.Auth.verify
    does with schedule_mac.MacStream, written out whole (the reference the tests compare it with)."""
    from commands import Rejected       # loaded: commands is what calls this
    n = len(payload)
    if n < _MAC_TAIL_LEN + 2 or payload[n - _MAC_TAIL_LEN:n - _MAC_TAIL_LEN + len(_MAC_HEAD)] != _MAC_HEAD \
            or payload[n - 2:] != b'"}':
        raise Rejected('unauthorized: mac required as the last member ,"mac":"<64 hex>"}')
    body = payload[:n - _MAC_TAIL_LEN] + b'}'
    try:
        mac = binascii.unhexlify(payload[n - 2 - _MAC_LEN:n - 2])
    except Exception:
        raise Rejected('unauthorized: mac is not hex')
    if isinstance(topic, str):
        topic = topic.encode()
    if not equal_ct(hmac_sha256(key, topic + b'\n' + body), mac):
        raise Rejected('unauthorized: bad mac')
    return body, True
