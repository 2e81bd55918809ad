# MQTT link over umqtt.simple: telemetry with store-and-forward, commands, status, HA discovery.
#
# The main loop calls poll(now_ms) once per cycle. It does a bounded amount of work per call and
# never waits for the broker: connect, CONNACK and SUBACK are polled across cycles; reads wait
# only for the rest of a packet whose first byte has arrived, writes only while the send buffer
# is full -- each bounded by sock_timeout_ms (then the link is declared dead and reconnects).
#
# umqtt.simple (PyPI 1.3.4 or the current micropython-lib version; the link uses only the API
# both share) encodes and decodes MQTT packets. Its known gaps are handled here:
#   - no keepalive pings (micropython-lib #909): the link sends PINGREQ every keepalive/2 and
#     after each batch of telemetry;
#   - PINGRESP swallowed by wait_msg() (#332): the link watches packet types on its own socket
#     wrapper, so it sees every PINGRESP and declares the link dead when one is overdue;
#   - wait_msg() sets the socket blocking after the first byte, dropping any timeout: the
#     wrapper turns "blocking" into "blocking with sock_timeout_ms" and reads whole lengths;
#   - IndexError from _recv_len() on a closed socket: caught like any socket error;
#   - connect() opens its own blocking socket and waits for CONNACK, subscribe() waits for
#     SUBACK: the link opens the TCP connection itself, non-blocking, polled across cycles,
#     hands it to connect() (via a stand-in for umqtt.simple's `socket` module) to encode
#     CONNECT, cuts the waits short (Deferred) and reads CONNACK / skips SUBACK in later
#     polls; the whole connect is bounded by connect_timeout_ms. TLS is wrapped by the link,
#     not by umqtt: the handshake runs non-blocking across polls (do_handshake=False, driven by
#     writing the queued CONNECT); a poll that receives a server flight does its crypto at once
#     (mbedTLS cannot be interrupted there: the one step that takes CPU time, docs/telemetry.md).
# QoS 0 throughout (umqtt's QoS 1 publish waits for PUBACK inside publish()). Delivery of
# telemetry is confirmed instead by a PINGRESP that follows it on the same connection (see
# lib/telemetry.py): at-least-once, in order, with seq numbers for de-duplication.
#
# Configuration: a dict in the style of Peter Hinch's mqtt_as (copy `config`, fill it in).
# Topics, payloads and the telemetry schema: docs/telemetry.md.

import time
import json
import errno
import select
import socket
try:
    import random
    _rand = random.getrandbits
except (ImportError, AttributeError):
    import os

    def _rand(bits):
        return int.from_bytes(os.urandom(4), 'little') & ((1 << bits) - 1)

import umqtt.simple as _simple
from umqtt.simple import MQTTClient
import telemetry
from mqtt_sock import Sock, SocketModule, Deferred, der
from ondemand import unload

config = {
    'client_id': None,          # device id: also the topic level <id>
    'server': None,             # broker address (an IP avoids a blocking DNS lookup)
    'port': 0,                  # 0: 1883, or 8883 with TLS
    'user': None,
    'password': None,
    'ssl': False,               # False | True (ssl.wrap_socket(sock, **ssl_params)) | an SSLContext
    'ssl_params': {},           # cadata (DER or PEM bytes) or cafile (path), cert_reqs (default:
                                # CERT_REQUIRED with a CA, else CERT_NONE), server_hostname
                                # (default: server), key / cert (DER): docs/telemetry.md, TLS
    'keepalive': 60,            # s, announced to the broker; PINGREQ every keepalive/2
    'prefix': 'bess',
    'sock_timeout_ms': 1000,    # bound on any one blocking socket operation
    'connect_timeout_ms': 5000,  # TCP connect (non-blocking, polled)
    'ping_timeout_ms': 0,       # PINGRESP overdue -> link dead; 0: keepalive/2
    'backoff_min_ms': 1000,     # reconnect delay: doubles per failure up to max, with jitter
    'backoff_max_ms': 60000,
    'telemetry_ms': 10000,      # telemetry record period
    'ring_records': 360,        # store-and-forward capacity at most (docs/telemetry.md); fewer when
                                # the heap left after boot cannot hold it with ring_reserve_bytes
    'ring_reserve_bytes': 24000,  # heap kept free beside the ring (publishes, commands, GC slack)
    'max_pub_per_poll': 4,      # telemetry records published per poll() at most
    'max_rx_per_poll': 4,       # inbound packets handled per poll() at most
    'max_rx_bytes': 2048,       # longer inbound topic/payload: connection dropped unread (memory)
    'ha_discovery': True,
    'ha_prefix': 'homeassistant',
    'device_name': None,        # shown in Home Assistant; default "BESS <id>"
    'on_command': None,         # f(name, topic, payload, retained) -> ack dict or None
}

DOWN = 0
CONNECTING = 1     # TCP connect in progress (non-blocking)
HANDSHAKE = 2      # CONNECT sent, waiting for CONNACK (non-blocking)
UP = 3
TLS = 4            # TLS handshake in progress (non-blocking), CONNECT queued behind it
STATE_NAMES = ('down', 'connecting', 'handshake', 'up', 'tls')

# what a broken connection or a hostile peer can raise inside umqtt.simple or the wrapper
_ERRS = (OSError, IndexError, TypeError, AssertionError, ValueError, MemoryError, _simple.MQTTException)


class MqttLink:
    def __init__(self, cfg):
        c = dict(config)
        for k in cfg:
            if k not in config:
                raise ValueError('mqtt config: unknown key %r' % k)
            c[k] = cfg[k]
        if not c['client_id'] or not c['server']:
            raise ValueError('mqtt config: client_id and server are required')
        self.cfg = c
        self.id = c['client_id']
        base = '%s/%s/' % (c['prefix'], self.id)
        self.t_base = base
        self.t_status = (base + 'status').encode()
        self.t_state = (base + 'state').encode()
        self.t_config = (base + 'config').encode()
        self.t_tele = (base + 'telemetry').encode()
        self.t_cmd = (base + 'cmd/').encode()
        self.t_ack = (base + 'cmd/ack').encode()
        self.port = c['port'] or (8883 if c['ssl'] else 1883)
        self.ssl_params = self._ssl_params() if c['ssl'] else None
        self.ring = None            # alloc_ring(): once boot-only code has left the heap
        self.wbuf = bytearray(512)  # outgoing bytes of a connection (mqtt_sock.Sock), one block for good
        self.tele_ms = c['telemetry_ms']
        self.epoch_s = 0            # wall clock at uptime 0 (records hold uptime; see telemetry.py)
        self.disc_next = -1         # next HA discovery message to send; -1: none
        self.disc_done = False
        self.oom = 0                # publishes deferred or skipped for want of memory
        self.on_command = c['on_command']
        self.state = DOWN
        self.sock = None
        self.client = None
        self.addr = None
        self.poller = None
        self.delay_ms = 0           # current backoff (0 = first attempt now)
        self.next_try = None
        self.t_start = 0
        self.last_ping = 0
        self.ping_out = False
        self.ping_sent = 0
        self.pongs_seen = 0
        self.pending = None         # (topic, msg, retained) from the umqtt callback
        self.connack = b''
        self.out = []               # small queue of (topic, payload bytes, retain) to send
        self.state_msg = None       # latest retained state payload to (re)publish
        self.state_dirty = False
        self.config_msg = None
        self.config_dirty = False
        self.notice = None          # e.g. the boot message about a corrupt config file
        self._st = -1
        self._obj = -1
        self._next_tele = None
        # counters (for telemetry and tests)
        self.connects = 0
        self.fails = 0              # connection attempts that failed or connections lost
        self.lost = 0
        self.published = 0
        self.cmds = 0
        self.last_error = None
        ka = c['keepalive']
        self.ping_every_ms = ka * 500 if ka else 30000
        self.ping_timeout_ms = c['ping_timeout_ms'] or self.ping_every_ms

    # --- public API ---------------------------------------------------------------------------
    def alloc_ring(self):
        """The store-and-forward ring, sized from the heap left (call after boot's garbage is
        collected: the ring is the largest single block the firmware allocates)."""
        c = self.cfg
        self.ring = telemetry.Ring(c['ring_records'], c['ring_reserve_bytes'])
        return self.ring

    def connected(self):
        return self.state == UP

    def tele_due(self, now_ms):
        """Called once per cycle (allocation-free): 1 when a telemetry record is due now (every
        telemetry_ms; a late cycle does not cause a burst of catch-up records)."""
        nt = self._next_tele
        if nt is not None and time.ticks_diff(now_ms, nt) < 0:
            return 0
        nt = time.ticks_add(now_ms if nt is None else nt, self.tele_ms)
        if time.ticks_diff(nt, now_ms) <= 0:
            nt = time.ticks_add(now_ms, self.tele_ms)
        self._next_tele = nt
        return 1

    def set_state(self, payload):
        """Retained <prefix>/<id>/state: the caller passes a dict when state/objective changed."""
        self.state_msg = json.dumps(payload).encode()
        self.state_dirty = True

    def set_config(self, cfg):
        """Retained <prefix>/<id>/config: the config in force (after boot and accepted commands)."""
        self.config_msg = json.dumps(cfg).encode()
        self.config_dirty = True

    def poll(self, now_ms):
        """Bounded work: connect steps, inbound commands, pings, publish from the ring. All
        blocking socket work in one poll shares one budget of sock_timeout_ms (plus at most one
        socket timeout for a read already under way when it runs out)."""
        if self.ring is None:
            self.alloc_ring()
        if self.sock is not None:
            self.sock.until = time.ticks_add(time.ticks_ms(), self.cfg['sock_timeout_ms'])
        st = self.state
        if st == DOWN:
            if self.next_try is None or time.ticks_diff(now_ms, self.next_try) >= 0:
                self._start_connect(now_ms)
        elif st != UP:
            self._continue_connect(now_ms)
        else:
            try:
                self._service(now_ms)
            except _ERRS as e:
                self._lost(now_ms, e)

    def close(self):
        """Orderly shutdown: offline status, DISCONNECT (the will is then not sent)."""
        if self.state == UP:
            try:
                self.client.publish(self.t_status, b'offline', True)
                self.sock.flush()
                self.client.disconnect()
            except _ERRS:
                pass
        self._drop()

    # --- connection ---------------------------------------------------------------------------
    def _ssl_params(self):
        """ssl_params with the defaults filled in, the CA file read once (at start, not per
        connect) and PEM turned into DER."""
        c = self.cfg
        p = dict(c['ssl_params'])
        f = p.pop('cafile', None)
        if f:
            with open(f, 'rb') as fh:
                p['cadata'] = fh.read()
        if p.get('cadata'):
            p['cadata'] = der(p['cadata'])
        if c['ssl'] is True and 'cert_reqs' not in p:
            # MicroPython's default is CERT_NONE even with a CA given: verify when there is one
            p['cert_reqs'] = 2 if p.get('cadata') else 0       # ssl.CERT_REQUIRED / CERT_NONE
        if 'server_hostname' not in p:
            # SNI and the name checked against the certificate (CN / SAN, an IP works);
            # MicroPython refuses CERT_REQUIRED without one
            p['server_hostname'] = c['server']
        return p

    def _wrap(self, raw):
        """The TLS socket, handshake not started (it runs in later polls, non-blocking)."""
        ssl = self.cfg['ssl']
        p = self.ssl_params
        if ssl is True:
            try:
                import ssl as _ssl
            except ImportError:
                import ussl as _ssl
            return _ssl.wrap_socket(raw, do_handshake=False, **p)
        # an SSLContext, configured by the caller (CA, verify_mode)
        return ssl.wrap_socket(raw, server_hostname=p['server_hostname'], do_handshake_on_connect=False)

    def _drop(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.poller = None
        self.state = DOWN
        if self.ring is not None:
            self.ring.rewind()
        self.ping_out = False
        self.pending = None

    def _schedule(self, now_ms):
        d = self.delay_ms
        if d == 0:
            d = self.cfg['backoff_min_ms']
        else:
            d = min(d * 2, self.cfg['backoff_max_ms'])
        self.delay_ms = d
        # "equal jitter": wait d/2 .. d
        half = d // 2
        self.next_try = time.ticks_add(now_ms, half + (_rand(16) * (d - half)) // 65536)

    def _oom(self, what):
        self.oom += 1
        if self.oom == 1 or self.oom % 100 == 0:
            print('mqtt: out of memory (%d times): %s' % (self.oom, what))

    def _fail(self, now_ms, e):
        self.fails += 1
        self.last_error = repr(e)
        self._drop()
        self._schedule(now_ms)
        if self.fails == 1 or self.fails % 50 == 0 or isinstance(e, MemoryError):
            # on the console (make logs): telemetry cannot say why it does not arrive
            print('mqtt: %s (%d failures; next try in %d ms)' % (self.last_error, self.fails,
                                                                 time.ticks_diff(self.next_try, now_ms)))

    def _lost(self, now_ms, e):
        self.lost += 1
        self._fail(now_ms, e)

    def _start_connect(self, now_ms):
        try:
            if self.addr is None:
                # a hostname costs one blocking DNS lookup, cached afterwards
                self.addr = socket.getaddrinfo(self.cfg['server'], self.port)[0][-1]
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(self.addr)
            except OSError as e:
                if e.args[0] not in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
                    s.close()
                    raise
            self.sock = Sock(s, self.cfg['sock_timeout_ms'], self.cfg['max_rx_bytes'], self.wbuf)
            s.setblocking(False)
            self.poller = select.poll()
            self.poller.register(s, select.POLLOUT)
            self.state = CONNECTING
            self.t_start = now_ms
        except _ERRS as e:
            self._fail(now_ms, e)

    def _continue_connect(self, now_ms):
        try:
            if time.ticks_diff(now_ms, self.t_start) > self.cfg['connect_timeout_ms']:
                raise OSError(errno.ETIMEDOUT)
            if self.state == CONNECTING:
                ev = self.poller.poll(0)
                if not ev:
                    return
                if ev[0][1] & (select.POLLERR | select.POLLHUP):
                    raise OSError(errno.ECONNREFUSED)
                self._send_connect()
            if self.state == TLS:
                if not self.sock.tls_step():
                    return
                self.state = HANDSHAKE
            if self.state == HANDSHAKE:
                # CONNACK: 4 bytes, collected without waiting
                r = self.sock.read_nb(4 - len(self.connack))
                if r == b'':
                    raise OSError(errno.ECONNRESET)
                if r:
                    self.connack += r
                if len(self.connack) == 4:
                    self._connected(now_ms)
        except _ERRS as e:
            self._fail(now_ms, e)

    def _send_connect(self):
        """TCP is up: CONNECT, encoded by umqtt.simple's connect(); its wait for CONNACK is
        cut short (Deferred) and CONNACK is read by the following polls. With TLS, CONNECT
        stays queued and drives the non-blocking handshake (state TLS, Sock.tls_step())."""
        c = self.cfg
        sk = self.sock
        sk.raw.settimeout(sk.tmo_s)
        if c['ssl']:
            sk.s = self._wrap(sk.raw)
        cl = MQTTClient(self.id, c['server'], self.port, c['user'], c['password'], c['keepalive'])
        cl.set_callback(self._on_msg)
        cl.set_last_will(self.t_status, b'offline', True)
        saved = _simple.socket
        _simple.socket = SocketModule(sk, self.addr)
        sk.defer = True
        try:
            cl.connect(True)
            raise OSError(errno.EIO)        # not reached: connect() reads CONNACK
        except Deferred:
            pass
        finally:
            sk.defer = False
            _simple.socket = saved
        self.client = cl
        self.connack = b''
        if c['ssl']:
            self.state = TLS
        else:
            sk.flush()
            self.state = HANDSHAKE

    def _connected(self, now_ms):
        r = self.connack
        if r[0] != 0x20 or r[1] != 0x02:
            raise _simple.MQTTException('bad CONNACK')
        if r[3] != 0:
            raise _simple.MQTTException(r[3])     # 4 = bad user/password, 5 = not authorised
        c = self.cfg
        cl = self.client
        sk = self.sock
        sk.defer = True
        try:
            cl.subscribe(self.t_cmd + b'+')     # SUBACK is skipped later by _service()
        except Deferred:
            pass
        finally:
            sk.defer = False
        self.state = UP
        self.connects += 1
        self.next_try = None
        self.last_ping = now_ms
        self.pongs_seen = sk.pongs
        cl.publish(self.t_status, b'online', True)
        self.state_dirty = self.state_msg is not None
        self.config_dirty = self.config_msg is not None
        sk.flush()
        if c['ha_discovery'] and not self.disc_done:
            # HA discovery: one message per slot, after the first connect since boot only (the
            # configs are retained on the broker; a broker that lost them gets them at the next
            # boot). Loading the messages' code again at every reconnect fragments a small heap.
            self.disc_next = 0
            self.disc_done = True

    # --- connected: one bounded service step --------------------------------------------------
    def _service(self, now_ms):
        c = self.cfg
        cl = self.client
        sk = self.sock
        # 1. inbound: commands and PINGRESPs (check_msg reads at most one packet)
        if self.pending is not None:        # arrived during subscribe() in the handshake
            self._command(now_ms)
        for _ in range(c['max_rx_per_poll']):
            rx = sk.rx_pkts
            op = cl.check_msg()
            if sk.rx_pkts == rx:
                break                       # nothing was waiting
            if op is not None and op & 0xF0 != 0x30:
                # a packet umqtt leaves unread (SUBACK, PUBACK...): skip its body
                n = cl._recv_len()
                if n:
                    sk.read(n)
            if self.pending is not None:
                self._command(now_ms)
        if sk.pongs != self.pongs_seen:
            self.pongs_seen = sk.pongs
            if self.ping_out:
                self.ping_out = False
                self.ring.confirm_mark()
        # 2. liveness
        if self.ping_out and time.ticks_diff(now_ms, self.ping_sent) > self.ping_timeout_ms:
            raise OSError(errno.ETIMEDOUT)
        # 3. outbound: queued control messages, retained state/config, then telemetry
        n = c['max_pub_per_poll']
        while self.out and n > 0:
            t, p, r = self.out.pop(0)
            cl.publish(t, p, r)
            n -= 1
        if self.state_dirty and n > 0:
            cl.publish(self.t_state, self.state_msg, True)
            self.state_dirty = False
            n -= 1
        if self.config_dirty and n > 0:
            cl.publish(self.t_config, self.config_msg, True)
            self.config_dirty = False
            n -= 1
        ring = self.ring
        while self.disc_next >= 0 and n > 0:
            try:
                m = _discovery(self, self.disc_next)
            except MemoryError:         # no room now: skip discovery, keep the link
                m = None
                self._oom('HA discovery skipped')
            if m is None:
                self.disc_next = -1
                unload(('ha_discovery',))
                break
            cl.publish(m[0], m[1], True)
            self.disc_next += 1
            n -= 1
        while n > 0:
            k = ring.next_unsent()
            if k < 0:
                break
            try:                        # encode before anything goes on the wire
                payload = json.dumps(ring.record_dict(k, self.epoch_s)).encode()
            except MemoryError:         # the record stays unsent: tried again next poll
                self._oom('telemetry deferred')
                break
            cl.publish(self.t_tele, payload)
            ring.mark_sent()
            self.published += 1
            n -= 1
        # 4. PINGREQ: keepalive, and as the delivery confirmation of what was just sent
        if not self.ping_out and (ring.sent > 0 or time.ticks_diff(now_ms, self.last_ping) >= self.ping_every_ms):
            cl.ping()
            self.ping_out = True
            self.ping_sent = now_ms
            self.last_ping = now_ms
            ring.set_mark()
        sk.flush()
        self.delay_ms = 0               # backoff reset only by a poll that served cleanly

    def _on_msg(self, topic, msg, *rest):
        self.pending = (topic, msg, self.sock.pkt & 1)

    def _command(self, now_ms):
        topic, msg, retained = self.pending
        self.pending = None
        if not topic.startswith(self.t_cmd):
            return
        name = topic[len(self.t_cmd):].decode()
        if name == 'ack':       # our own acks come back on cmd/+
            return
        self.cmds += 1
        if self.on_command is None:
            a = {'cmd': name, 'ok': False, 'reason': 'commands disabled'}
        else:
            try:
                a = self.on_command(name, topic, msg, retained)
            except Exception as e:      # a bug in the handler must not take the link down
                a = {'cmd': name, 'ok': False, 'reason': 'internal error: %r' % e}
        if a is not None:
            if a.get('ok'):
                a['eff_seq'] = self.ring.seq    # first telemetry record that shows the change
            try:
                self.out.append((self.t_ack, json.dumps(a).encode(), False))
            except MemoryError:         # the command's effect shows in the retained config
                self._oom('ack dropped')


def _discovery(link, k):
    import ha_discovery              # load-on-demand: only while discovery messages are sent
    return ha_discovery.message(link, k)
