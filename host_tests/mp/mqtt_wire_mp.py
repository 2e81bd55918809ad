# The bytes the MQTT link puts on the wire, next to the bytes umqtt.simple 1.3.4 (the reference
# implementation, build/vendor: tools/fetch_vendor.py) writes for the same inputs. Run on the
# MicroPython unix port by host_tests/test_mqtt_wire.py, which judges the results.
#
# Both sides write into a stand-in socket (Wire) that records every byte; no network. The link is
# driven through its own code paths: MqttLink.poll() for CONNECT (then CONNACK fed in), SUBSCRIBE
# and the "online" PUBLISH, PUBACK (an inbound QoS 1 PUBLISH fed in) and PINGREQ; close() for the
# "offline" PUBLISH and DISCONNECT; mqtt_sock.Sock.publish() for PUBLISH at the remaining-length
# boundaries. Its `socket` and `select` modules are replaced by stand-ins (as in poll_bound.py).
#
# Prints one JSON line: {"cases": [...]}; each case: group, name, spec (the inputs, for the
# test's own encoder from the MQTT 3.1.1 text), ours / ref (captured bytes: hex when short, always
# length, sha256 and the first bytes), ours_err / ref_err (an exception instead), extra fields.
import sys
import json
import time
import hashlib
import binascii
import mqtt_link
import mqtt_sock
from umqtt import simple

SHORT = 70000          # captures up to this length go out in full (hex)
BROKER = 'broker.invalid'
CONNACK = b'\x20\x02\x00\x00'


def pattern(n, alphabet=b'abcdefghijklmnopqrstuvwxyz0123456789'):
    """n bytes of a fixed pattern (the test builds the same on CPython)."""
    k = len(alphabet)
    return alphabet * (n // k) + alphabet[:n % k]


def binpat(n):
    b = bytes(range(256))
    return b * (n // 256) + b[:n % 256]


def hx(b):
    return None if b is None else binascii.hexlify(b).decode()


class Wire:
    """A socket that records what is written and hands out what was fed: the link reads with
    readinto (None: nothing now, as a non-blocking socket), umqtt.simple with read(n)."""

    def __init__(self):
        self.out = []           # bytes objects (a growing bytearray would be copied per write)
        self.inq = b''
        self.closed = False

    def setblocking(self, flag):
        pass

    def connect(self, addr):
        pass

    def write(self, buf, n=None):
        mv = memoryview(buf)
        if n is not None:
            mv = mv[:n]
        self.out.append(bytes(mv))
        return len(mv)

    def feed(self, data):
        self.inq += data

    def readinto(self, mv):
        n = min(len(mv), len(self.inq))
        if not n:
            return None
        mv[:n] = self.inq[:n]
        self.inq = self.inq[n:]
        return n

    def read(self, n):
        if len(self.inq) < n:
            raise OSError('Wire: read(%d) with %d bytes fed' % (n, len(self.inq)))
        r = self.inq[:n]
        self.inq = self.inq[n:]
        return r

    def close(self):
        self.closed = True

    def take(self):
        b = b''.join(self.out)
        self.out = []
        return b


class SocketModule:
    """Stands in for the `socket` module of mqtt_link and umqtt.simple: socket() is the Wire."""

    def __init__(self, wire):
        self.wire = wire

    def socket(self, *a):
        return self.wire

    def getaddrinfo(self, host, port, *a):
        return [(2, 1, 0, '', ('0.0.0.0', port))]


class Poller:
    def register(self, obj, mask=0):
        self.obj = obj

    def poll(self, timeout=-1):
        return [(self.obj, 4)]          # writable (TCP connect done)

    def ipoll(self, timeout=-1):
        return iter(self.poll())


class SelectModule:
    POLLIN = 1
    POLLOUT = 4
    POLLERR = 8
    POLLHUP = 16

    def poll(self):
        return Poller()


mqtt_link.select = SelectModule()
mqtt_sock.select = SelectModule()

cases = []


def capture(b):
    if b is None:
        return None
    return {'len': len(b), 'sha': hx(hashlib.sha256(b).digest()), 'head': hx(b[:48]),
            'hex': hx(b) if len(b) <= SHORT else None}


def first_diff(a, b):
    if a is None or b is None:
        return None
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return None if len(a) == len(b) else n


def add(group, name, spec, ours, ref, ours_err=None, ref_err=None, **extra):
    c = {'group': group, 'name': name, 'spec': spec, 'ours': capture(ours), 'ref': capture(ref),
         'ours_err': ours_err, 'ref_err': ref_err, 'diff_at': first_diff(ours, ref)}
    c.update(extra)
    cases.append(c)


def err(e):
    return '%s: %s' % (type(e).__name__, e)


# --- the two sides ------------------------------------------------------------------------------

def link_cfg(cid, prefix='bess', user=None, password=None, keepalive=60, clean=False):
    got = []
    cfg = {'client_id': cid, 'server': BROKER, 'prefix': prefix, 'user': user, 'password': password,
           'keepalive': keepalive, 'clean_session': clean, 'ha_discovery': False, 'ring_records': 16,
           'ring_reserve_bytes': 0, 'on_command': lambda name, topic, payload, ret: got.append(
               [name, hx(topic), hx(payload), ret]) and None}
    return cfg, got


def link_up(cfg):
    """A link through its connect: returns (link, wire, CONNECT bytes, bytes after CONNACK)."""
    w = Wire()
    mqtt_link.socket = SocketModule(w)
    link = mqtt_link.MqttLink(cfg)
    now = time.ticks_ms()
    link.poll(now)                      # DOWN -> TCP connect started
    assert link.state == mqtt_link.CONNECTING, link.state
    link.poll(now)                      # writable -> CONNECT
    assert link.state == mqtt_link.HANDSHAKE, (link.state, link.last_error)
    conn = w.take()
    w.feed(CONNACK)
    link.poll(now)                      # CONNACK -> SUBSCRIBE, PUBLISH status "online"
    assert link.state == mqtt_link.UP, (link.state, link.last_error)
    return link, w, conn, w.take()


def ref_client(cid, user=None, password=None, keepalive=60, will=None):
    w = Wire()
    simple.socket = SocketModule(w)
    c = simple.MQTTClient(cid, BROKER, user=user, password=password, keepalive=keepalive)
    if will:
        c.set_last_will(*will)
    return c, w


def ref_connect(c, w, clean):
    w.feed(CONNACK)
    c.connect(clean_session=clean)
    return w.take()


def status_topic(prefix, cid):
    return ('%s/%s/status' % (prefix, cid)).encode()


def cmd_filter(prefix, cid):
    return ('%s/%s/cmd/+' % (prefix, cid)).encode()


def enc(x):
    return x.encode() if isinstance(x, str) else x


# --- CONNECT ------------------------------------------------------------------------------------

def connect_case(name, cid='d1', prefix='bess', user=None, password=None, keepalive=60, clean=False,
                 ref_user=None, ref_password=None):
    """Our CONNECT (the will is always the retained "offline" on <prefix>/<id>/status, QoS 0)
    against umqtt.simple's with that will set. ref_user / ref_password: what umqtt gets when it
    needs other types (it counts len() of a str in characters, not UTF-8 bytes)."""
    cfg, _ = link_cfg(cid, prefix, user, password, keepalive, clean)
    ours = ours_err = ref = ref_err = None
    try:
        ours = link_up(cfg)[2]
    except Exception as e:
        ours_err = err(e)
    will = (status_topic(prefix, cid), b'offline', True, 0)
    try:
        c, w = ref_client(cid.encode(), ref_user if ref_user is not None else user,
                          ref_password if ref_password is not None else password, keepalive, will)
        ref = ref_connect(c, w, clean)
    except Exception as e:
        ref_err = err(e)
    u = enc(user)
    p = enc(password) if user is not None else None
    spec = {'kind': 'connect', 'cid': hx(cid.encode()), 'will_topic': hx(will[0]), 'will_msg': hx(b'offline'),
            'will_retain': True, 'user': hx(u), 'password': hx(p), 'keepalive': keepalive, 'clean': clean}
    add('connect', name, spec, ours, ref, ours_err, ref_err)


for ka in (0, 1, 60, 255, 256, 65535):
    connect_case('keepalive %d' % ka, keepalive=ka)
for clean in (True, False):
    connect_case('clean_session %s' % clean, clean=clean)
connect_case('user + password', user='site-gw', password='s3cret')
connect_case('user + password, clean', user=b'site-gw', password=b's3cret', clean=True)
connect_case('password without user (both leave it out)', password='s3cret')
connect_case('user + empty password', user='u', password='')
connect_case('non-ASCII user / password (UTF-8)', user='B\u00e4r', password='p\u00e4ss\u20ac',
             ref_user='B\u00e4r'.encode(), ref_password='p\u00e4ss\u20ac'.encode())
connect_case('user without password', user='u', password=None)      # umqtt cannot (len(None))
connect_case('client id 64 chars', cid='c' * 64)
connect_case('client id 1 char, prefix 100 chars', cid='x', prefix='p' * 100)
# remaining length: 10 (variable header) + 2+cid + 2+will topic + 2+7 + 2+user + 2+password
_fixed = 10 + 2 + 2 + 2 + len(status_topic('bess', 'd1')) + 2 + 7 + 2 + 1
for rl in (127, 128, 16383, 16384):
    connect_case('remaining length %d' % rl, user=b'u', password=pattern(rl - _fixed))


# --- PUBLISH (QoS 0), as mqtt_sock.Sock.publish() encodes it --------------------------------------

def sock_on(w):
    s = mqtt_sock.Sock(w, bytearray(64), None, bytearray(512))
    s.until = time.ticks_add(time.ticks_ms(), 1000)
    return s


def publish_case(name, topic, msg, retain):
    ours = ours_err = ref = ref_err = None
    w = Wire()
    try:
        s = sock_on(w)
        s.publish(topic, msg, retain)
        s.flush()
        ours = w.take()
    except Exception as e:
        ours_err = err(e)
    try:
        c, w = ref_client(b'd1')
        c.sock = w
        c.publish(topic, msg, retain)
        ref = w.take()
    except Exception as e:
        ref_err = err(e)
    spec = {'kind': 'publish', 'topic_len': len(topic), 'msg_len': len(msg), 'retain': retain}
    add('publish', name, spec, ours, ref, ours_err, ref_err)


T = b'bess/d1/telemetry'
for rl in (len(T) + 2, 127, 128, 16383, 16384, 2097151, 2097152):
    for retain in (False, True):
        publish_case('remaining length %d%s' % (rl, ', retain' if retain else ''),
                     pattern(len(T)), binpat(rl - 2 - len(T)), retain)
for tl in (1, 255, 256, 300):       # the topic's 2-byte length: high byte 0 / 1
    publish_case('topic %d bytes, 10-byte payload' % tl, pattern(tl), binpat(10), False)


# --- SUBSCRIBE (the link's only one: <prefix>/<id>/cmd/+ at QoS 1), then PUBLISH "online" -----------

def subscribe_case(name, cid='d1', prefix='bess'):
    cfg, _ = link_cfg(cid, prefix)
    ours = ours_err = ref = ref_err = None
    try:
        ours = link_up(cfg)[3]
    except Exception as e:
        ours_err = err(e)
    t = cmd_filter(prefix, cid)
    try:
        c, w = ref_client(cid.encode(), will=(status_topic(prefix, cid), b'offline', True, 0))
        ref_connect(c, w, False)
        c.set_callback(lambda topic, msg: None)
        w.feed(b'\x90\x03\x00\x01\x01')             # SUBACK, packet id 1, granted QoS 1
        c.subscribe(t, 1)
        c.publish(status_topic(prefix, cid), b'online', True)
        ref = w.take()
    except Exception as e:
        ref_err = err(e)
    spec = {'kind': 'subscribe+online', 'filter': hx(t), 'qos': 1, 'pid': 1,
            'status': hx(status_topic(prefix, cid))}
    add('subscribe', name, spec, ours, ref, ours_err, ref_err)


subscribe_case('default prefix')
subscribe_case('client id 64 chars', cid='c' * 64)
# SUBSCRIBE remaining length = 2 (packet id) + 2+len(filter) + 1 (QoS); filter = prefix + '/d1/cmd/+'
for rl in (127, 128, 255, 256, 16383, 16384):
    subscribe_case('remaining length %d' % rl, prefix='p' * (rl - 5 - len('/d1/cmd/+')))


# --- PUBACK (after an inbound QoS 1 command), PINGREQ, DISCONNECT: one session each side ----------

def inbound_publish(topic, payload, pid, qos, retain=False):
    body = bytes([len(topic) >> 8, len(topic) & 0xFF]) + topic
    if qos:
        body += bytes([pid >> 8, pid & 0xFF])
    body += payload
    n = len(body)
    h = bytearray([0x30 | qos << 1 | (1 if retain else 0)])
    while True:
        b = n & 0x7F
        n >>= 7
        h.append(b | (0x80 if n else 0))
        if not n:
            break
    return bytes(h) + body


def session(cid='d1', prefix='bess', user='site-gw', password='s3cret'):
    """One connection, both sides: connect, subscribe, online, commands in (PUBACKs out), a
    PINGREQ, then the orderly close (offline, DISCONNECT). Each step's bytes are one case."""
    cfg, got = link_cfg(cid, prefix, user, password, 30)
    link, lw, conn, up = link_up(cfg)
    ref_got = []
    c, rw = ref_client(cid.encode(), user.encode(), password.encode(), 30,
                       (status_topic(prefix, cid), b'offline', True, 0))
    rconn = ref_connect(c, rw, False)
    c.set_callback(lambda topic, msg: ref_got.append([hx(topic), hx(msg)]))
    rw.feed(b'\x90\x03\x00\x01\x01')
    c.subscribe(cmd_filter(prefix, cid), 1)
    c.publish(status_topic(prefix, cid), b'online', True)
    rup = rw.take()
    steps = [('CONNECT', conn, rconn), ('SUBSCRIBE + PUBLISH online', up, rup)]
    lw.feed(b'\x90\x03\x00\x01\x01')
    now = link.last_ping
    link.poll(now)                          # SUBACK: nothing goes out
    steps.append(('SUBACK in: nothing out', lw.take(), b''))
    t_cmd = ('%s/%s/cmd/' % (prefix, cid)).encode()
    for pid, qos, retain, plen in ((1, 1, False, 20), (0xFF, 1, False, 20), (0x100, 1, True, 20),
                                   (0x1234, 1, False, 200), (0xFFFF, 1, False, 20), (0, 0, False, 20)):
        pkt = inbound_publish(t_cmd + b'import_limit', pattern(plen), pid, qos, retain)
        got.clear()
        ref_got.clear()
        lw.feed(pkt)
        link.poll(now)                      # command handled, then PUBACK
        rw.feed(pkt)
        c.check_msg()                       # umqtt: callback, then PUBACK
        steps.append(('PUBLISH in (QoS %d, id 0x%04x, retain %d, %d-byte payload) -> PUBACK'
                      % (qos, pid, retain, plen), lw.take(), rw.take(),
                      {'ours_got': got[:], 'ref_got': ref_got[:]}))
    link.poll(time.ticks_add(now, link.ping_every_ms))     # keepalive due -> PINGREQ
    c.ping()
    steps.append(('PINGREQ', lw.take(), rw.take()))
    link.close()
    c.publish(status_topic(prefix, cid), b'offline', True)
    c.disconnect()
    steps.append(('close: PUBLISH offline + DISCONNECT', lw.take(), rw.take(),
                  {'ours_closed': lw.closed, 'ref_closed': rw.closed}))
    total_ours = b''
    total_ref = b''
    for st in steps:
        total_ours += st[1]
        total_ref += st[2]
        add('session', st[0], None, st[1], st[2], **(st[3] if len(st) > 3 else {}))
    add('session', 'whole session', None, total_ours, total_ref)


session()

print(json.dumps({'cases': cases}))
