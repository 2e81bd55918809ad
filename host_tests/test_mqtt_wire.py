"""The MQTT link's bytes on the wire, cross-checked against umqtt.simple 1.3.4 as the reference
implementation and against this file's own encoder written from the MQTT 3.1.1 text.

firmware/mqtt_link.py + mqtt_sock.py encode the device's packets themselves (CONNECT, SUBSCRIBE,
PUBLISH QoS 0, PUBACK, PINGREQ, DISCONNECT). umqtt.simple is no longer on the device, but it is
still fetched into build/vendor (tools/fetch_vendor.py) for this test. host_tests/mp/mqtt_wire_mp.py
runs on the MicroPython unix port (64-bit) and on the 32-bit fixed-heap build: both sides write
into a stand-in socket, the link driven through MqttLink.poll() / close() (CONNACK, SUBACK and
inbound commands fed in) and mqtt_sock.Sock.publish(); umqtt.simple's MQTTClient through
connect() / subscribe() / publish() / check_msg() / ping() / disconnect().

Same inputs, same bytes -- except where the link legitimately differs (each asserted below):
- the will: the link always sends one, retained "offline" on <prefix>/<id>/status at QoS 0; umqtt
  is given the same with set_last_will(). The link never subscribes at QoS 0 (commands are QoS 1)
  and sends only one SUBSCRIBE per connection, packet id 1 -- umqtt's first packet id on a fresh
  client, so the ids agree (umqtt would count on across reconnects of one client object; the
  link's SUBSCRIBE is the only packet it numbers, and SUBACK frees the id before the next
  connection). PUBACKs echo the inbound packet id on both sides.
- user without password: MQTT 3.1.1 allows it (user flag only); the link sends that, umqtt fails
  (len(None)). A password without a user is left out by both.
- str user / password: the link counts UTF-8 bytes; umqtt counts len() of what it is given (for a
  non-ASCII str: characters, a wrong length), so it gets the UTF-8 bytes.
- PUBLISH with a remaining length >= 2 097 152 (4 length bytes): umqtt refuses (assert); the link
  encodes it (checked against the spec encoder).
- SUBSCRIBE with a remaining length >= 128 (a prefix + client id longer than ~113 characters):
  umqtt writes the length as one byte (struct "!B": 0x80..0xFF, which a broker reads as a
  continuation, and truncated from 256 on), a malformed packet; the link writes the variable-length
  encoding (checked against the spec encoder). The link never had this with umqtt in practice:
  client ids are at most 64 characters, but `prefix` is not length-checked.
"""
import hashlib
import json
import os
import subprocess
import time

import pytest

import mp32fixed
from mqtt_fixtures import MICROPYPATH, ROOT, micropython_exe

SCRIPT = os.path.join(ROOT, 'host_tests', 'mp', 'mqtt_wire_mp.py')
RUNTIMES = ('unix', 'mp32fixed')
_runs = {}


def run(runtime):
    """Run the MicroPython side once per runtime; {(group, name): case}."""
    if runtime not in _runs:
        exe = micropython_exe() if runtime == 'unix' else mp32fixed.build()
        t0 = time.monotonic()
        # the 2 MB PUBLISH cases: the payload and both captures at once
        r = subprocess.run([exe, '-X', 'heapsize=32M', SCRIPT], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, MICROPYPATH=MICROPYPATH))
        assert r.returncode == 0, r.stderr[-3000:]
        cases = json.loads(r.stdout.strip().splitlines()[-1])['cases']
        _runs[runtime] = {(c['group'], c['name']): c for c in cases}
        _runs[runtime][None] = time.monotonic() - t0
    return _runs[runtime]


# --- an encoder from the MQTT 3.1.1 text (sections 2.2.3, 1.5.3, 3.1, 3.3, 3.8) ------------------

def pattern(n, alphabet=b'abcdefghijklmnopqrstuvwxyz0123456789'):
    return (alphabet * (n // len(alphabet) + 1))[:n]         # as mqtt_wire_mp.pattern


def binpat(n):
    return (bytes(range(256)) * (n // 256 + 1))[:n]          # as mqtt_wire_mp.binpat


def remaining_length(n):
    out = bytearray()
    while True:
        n, b = divmod(n, 128)
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8_str(b):
    assert len(b) < 65536
    return len(b).to_bytes(2, 'big') + b


def packet(first, body):
    return bytes([first]) + remaining_length(len(body)) + body


def spec_connect(cid, will_topic, will_msg, will_retain, user, password, keepalive, clean):
    flags = (0x02 if clean else 0) | 0x04 | (0x20 if will_retain else 0)     # will QoS 0
    payload = utf8_str(cid) + utf8_str(will_topic) + utf8_str(will_msg)
    if user is not None:
        flags |= 0x80
        payload += utf8_str(user)
        if password is not None:
            flags |= 0x40
            payload += utf8_str(password)
    return packet(0x10, utf8_str(b'MQTT') + bytes([4, flags]) + keepalive.to_bytes(2, 'big') + payload)


def spec_publish(topic, msg, retain):
    return packet(0x30 | (1 if retain else 0), utf8_str(topic) + msg)


def spec_subscribe(pid, topic_filter, qos):
    return packet(0x82, pid.to_bytes(2, 'big') + utf8_str(topic_filter) + bytes([qos]))


def spec_bytes(spec):
    h = lambda x: None if x is None else bytes.fromhex(x)        # noqa: E731
    k = spec['kind']
    if k == 'connect':
        return spec_connect(h(spec['cid']), h(spec['will_topic']), h(spec['will_msg']), spec['will_retain'],
                            h(spec['user']), h(spec['password']), spec['keepalive'], spec['clean'])
    if k == 'publish':
        return spec_publish(pattern(spec['topic_len']), binpat(spec['msg_len']), spec['retain'])
    if k == 'subscribe+online':
        return (spec_subscribe(spec['pid'], h(spec['filter']), spec['qos'])
                + spec_publish(h(spec['status']), b'online', True))
    raise AssertionError(k)


# --- judging ------------------------------------------------------------------------------------

def show(c):
    """One line per side: what each wrote (or raised), where they part."""
    def side(k):
        if c[k + '_err']:
            return 'raised %s' % c[k + '_err']
        cap = c[k]
        return '%d bytes, starts %s' % (cap['len'], cap['head'])
    s = '%s / %s:\n  link:  %s\n  umqtt: %s' % (c['group'], c['name'], side('ours'), side('ref'))
    if c['diff_at'] is not None and c['ours']['hex'] and c['ref']['hex']:
        i = c['diff_at']
        a, b = bytes.fromhex(c['ours']['hex']), bytes.fromhex(c['ref']['hex'])
        s += '\n  first difference at byte %d: link %s, umqtt %s' % (i, a[max(0, i - 4):i + 8].hex(' '),
                                                                    b[max(0, i - 4):i + 8].hex(' '))
    return s


def same(c):
    return not c['ours_err'] and not c['ref_err'] and c['ours']['sha'] == c['ref']['sha']


def matches_spec(c):
    want = spec_bytes(c['spec'])
    return not c['ours_err'] and c['ours']['len'] == len(want) and c['ours']['sha'] == hashlib.sha256(want).hexdigest()


# the documented differences (module docstring): umqtt is no reference here, the spec encoder is
UMQTT_CANNOT = {
    ('connect', 'user without password'): 'TypeError',
    ('publish', 'remaining length 2097152'): 'AssertionError',
    ('publish', 'remaining length 2097152, retain'): 'AssertionError',
}
UMQTT_MALFORMED = {('subscribe', 'remaining length %d' % n): n for n in (128, 255, 256, 16383, 16384)}


def cases_of(runtime, group):
    return [c for k, c in run(runtime).items() if k is not None and k[0] == group]


@pytest.mark.parametrize('runtime', RUNTIMES)
@pytest.mark.parametrize('group', ['connect', 'publish', 'subscribe', 'session'])
def test_link_bytes_equal_umqtt_simple(runtime, group):
    cases = cases_of(runtime, group)
    assert cases
    bad = [show(c) for c in cases
           if (c['group'], c['name']) not in UMQTT_CANNOT and (c['group'], c['name']) not in UMQTT_MALFORMED
           and not same(c)]
    assert not bad, '\n'.join(bad)


@pytest.mark.parametrize('runtime', RUNTIMES)
def test_link_bytes_match_the_spec_encoder(runtime):
    """Every case with inputs (CONNECT, PUBLISH, SUBSCRIBE + online) against this file's encoder:
    also where umqtt is no reference."""
    cases = [c for k, c in run(runtime).items() if k is not None and c['spec']]
    assert len(cases) > 40
    bad = ['%s\n  spec:  %s' % (show(c), spec_bytes(c['spec'])[:48].hex()) for c in cases if not matches_spec(c)]
    assert not bad, '\n'.join(bad)


@pytest.mark.parametrize('runtime', RUNTIMES)
def test_where_umqtt_is_no_reference(runtime):
    """The legitimate differences stay what the docstring says (and the cases stay covered)."""
    r = run(runtime)
    for key, exc in UMQTT_CANNOT.items():
        c = r[key]
        assert c['ref_err'] and c['ref_err'].startswith(exc) and not c['ours_err'] and matches_spec(c), show(c)
    for key, n in UMQTT_MALFORMED.items():
        c = r[key]
        assert not c['ref_err'] and not c['ours_err'] and matches_spec(c), show(c)
        ref = bytes.fromhex(c['ref']['hex'])
        # umqtt: one length byte (n & 0xFF), then packet id 1; the spec: 2 or 3 length bytes
        assert ref[:4] == bytes([0x82, n & 0xFF, 0, 1]), show(c)
        assert bytes.fromhex(c['ours']['hex'])[:1 + len(remaining_length(n))] == b'\x82' + remaining_length(n)


@pytest.mark.parametrize('runtime', RUNTIMES)
def test_inbound_commands_parse_alike(runtime):
    """The inbound QoS 0 / 1 PUBLISHes of the session: the link hands its command handler the
    same topic and payload umqtt hands its callback (name = the topic's last level, the retain
    bit as sent), and both answer a QoS 1 one with the same PUBACK (checked above)."""
    steps = [c for c in cases_of(runtime, 'session') if 'ours_got' in c]
    assert len(steps) == 6
    for c in steps:
        assert len(c['ours_got']) == 1 and len(c['ref_got']) == 1, c['name']
        name, topic, payload, retained = c['ours_got'][0]
        assert [topic, payload] == c['ref_got'][0], c['name']
        assert bytes.fromhex(topic).rsplit(b'/', 1)[1] == name.encode()
        assert retained == (1 if 'retain 1' in c['name'] else 0)
        pid = int(c['name'].split('id 0x')[1][:4], 16)
        qos1 = 'QoS 1' in c['name']
        assert c['ours']['hex'] == (('4002%04x' % pid) if qos1 else ''), show(c)
    close = [c for c in cases_of(runtime, 'session') if c['name'].startswith('close')][0]
    assert close['ours_closed'] and close['ref_closed']
    assert close['ours']['hex'].endswith('e000')
    assert [c for c in cases_of(runtime, 'session') if c['name'] == 'PINGREQ'][0]['ours']['hex'] == 'c000'
