# The MQTT link's connect path (firmware/mqtt_link.py): TCP connect, TLS wrap, CONNECT, and on
# CONNACK the subscriptions and the online status. Loaded on demand while the link is not up and
# dropped once it is (MqttLink._connect): its code is not in the heap while the link runs
# (docs/resources.md). Every step is non-blocking and bounded as described in mqtt_link.py.
import time
import errno

import mqtt_link as ml              # its socket and select: the modules the link uses (tests stand in there)
from mqtt_sock import Sock, MQTTException
from mqtt_link import _ERRS, DOWN, CONNECTING, HANDSHAKE, UP, TLS


def step(lk, now_ms):
    """One connect step of link lk: start a connection (DOWN), or carry on with one."""
    if lk.state == DOWN:
        _start(lk, now_ms)
    else:
        _continue(lk, now_ms)


def _start(lk, now_ms):
    try:
        if lk.addr is None:
            # a hostname costs one blocking DNS lookup, cached afterwards
            lk.addr = ml.socket.getaddrinfo(lk.cfg['server'], lk.port)[0][-1]
        s = ml.socket.socket()
        s.setblocking(False)
        try:
            s.connect(lk.addr)
        except OSError as e:
            if e.args[0] not in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
                s.close()
                raise
        lk.sock = Sock(s, lk.rbuf, lk.rmv, lk.wbuf)
        lk.sock.until = lk.t_end
        lk.state = CONNECTING
        lk.t_start = now_ms
    except _ERRS as e:
        lk._fail(now_ms, e)


def _continue(lk, now_ms):
    try:
        if time.ticks_diff(now_ms, lk.t_start) > lk.cfg['connect_timeout_ms']:
            raise OSError(errno.ETIMEDOUT)
        if lk.state == CONNECTING:
            ev = lk.sock.p.poll(0)
            if not ev:
                return
            if ev[0][1] & (ml.select.POLLERR | ml.select.POLLHUP):
                raise OSError(errno.ECONNREFUSED)
            _send_connect(lk)
        if lk.state == TLS:
            if not lk.sock.tls_step():
                return
            lk.state = HANDSHAKE
        if lk.state == HANDSHAKE:
            lk._receive(now_ms)       # CONNACK -> connected(), then whatever follows it
            if lk.state == UP:
                lk.sock.flush()
    except _ERRS as e:
        if lk.state == UP:
            lk._lost(now_ms, e)
        else:
            lk._fail(now_ms, e)


def _send_connect(lk):
    """TCP is up: CONNECT goes into the write buffer (sent now; with TLS it stays queued and
    drives the non-blocking handshake: state TLS, Sock.tls_step()); CONNACK is read by the
    following polls."""
    c = lk.cfg
    sk = lk.sock
    if c['ssl']:
        sk.s = _wrap(lk, sk.raw)
    cid = lk.id.encode()
    user = c['user']
    pw = c['password'] if user is not None else None
    if isinstance(user, str):
        user = user.encode()
    if isinstance(pw, str):
        pw = pw.encode()
    # flags: will (retained "offline" on status, QoS 0), clean session, user, password
    f = 0x24 | (0x02 if c['clean_session'] else 0)
    n = 10 + 2 + len(cid) + 2 + len(lk.t_status) + 2 + 7
    if user is not None:
        f |= 0x80
        n += 2 + len(user)
    if pw is not None:
        f |= 0x40
        n += 2 + len(pw)
    ka = c['keepalive']
    sk.fixed(0x10, n)
    sk.write(b'\x00\x04MQTT\x04')
    h = sk.h
    h[0] = f
    h[1] = ka >> 8
    h[2] = ka & 0xFF
    sk.write(h, 3)
    sk.lstr(cid)
    sk.lstr(lk.t_status)
    sk.lstr(b'offline')
    if user is not None:
        sk.lstr(user)
    if pw is not None:
        sk.lstr(pw)
    if c['ssl']:
        lk.state = TLS
    else:
        sk.flush()
        lk.state = HANDSHAKE


def _wrap(lk, raw):
    """The TLS socket, handshake not started (it runs in later polls, non-blocking)."""
    ssl = lk.cfg['ssl']
    p = lk.ssl_params
    if ssl is True:
        try:
            import ssl as _ssl
        except ImportError:
            import ussl as _ssl
        return _ssl.wrap_socket(raw, do_handshake=False, **p)
    # an SSLContext, configured by the caller (CA, verify_mode)
    return ssl.wrap_socket(raw, server_hostname=p['server_hostname'], do_handshake_on_connect=False)


def connected(lk, now_ms):
    """CONNACK, in state HANDSHAKE (mqtt_link's _receive checks the state before loading this)."""
    sk = lk.sock
    r = sk.rbuf
    if sk.prem != 2 or sk.plen != 2:
        raise MQTTException('bad CONNACK')
    if r[3] != 0:
        raise MQTTException(r[3])     # 4 = bad user/password, 5 = not authorised
    c = lk.cfg
    # SUBSCRIBE cmd/+ at QoS 1: the broker keeps each command until the link acknowledges it
    # (PUBACK) and sends at most its in-flight window ahead; SUBACK is read by _receive()
    t = lk.t_cmd
    sk.fixed(0x82, 2 + 2 + len(t) + 1 + 1)
    sk.write(b'\x00\x01')                    # packet id 1
    sk.lstr(t + b'+')
    sk.write(b'\x01')                         # QoS 1
    if lk.on_schedule is not None:
        # the retained per-device schedule at QoS 0: the broker delivers the one it holds at
        # every subscribe, so a schedule cut off with the link comes again on the next connect
        t = lk.t_sched
        sk.fixed(0x82, 2 + 2 + len(t) + 1)
        sk.write(b'\x00\x02')
        sk.lstr(t)
        sk.write(b'\x00')
    lk.state = UP
    lk.connects += 1
    lk.next_try = None
    lk.last_ping = now_ms
    sk.publish(lk.t_status, b'online', True)
    lk.state_dirty = lk.state_msg is not None
    lk.config_dirty = lk.config_src is not None
    sk.flush()
    if c['ha_discovery'] and not lk.disc_done:
        # HA discovery: one message per slot, after the first connect since boot only (the
        # configs are retained on the broker; a broker that lost them gets them at the next
        # boot). Loading the messages' code again at every reconnect fragments a small heap.
        lk.disc_next = 0
        lk.disc_done = True
