# HMAC-SHA256 of the commands (RFC 2104, over hashlib.sha256: MicroPython has no hmac module);
# pure, no I/O. What signs (the host: tools, tests) and reads the key (boot). The device checks a
# signed command or schedule with lib/schedule_mac.py's MacStream, which hashes in place
# (commands.Auth.verify, firmware/sched_rx.py).
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


def hmac_sha256(key, msg):
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes([b ^ 0x36 for b in key]))
    inner.update(msg)
    outer = hashlib.sha256(bytes([b ^ 0x5C for b in key]))
    outer.update(inner.digest())
    return outer.digest()


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
    except MemoryError:                 # not the key's fault: boot says OUT OF MEMORY
        raise
    except Exception:
        raise ValueError('hmac key: must be hex')
    if not 16 <= len(k) <= 64:
        raise ValueError('hmac key: must be 16..64 bytes')
    return k

