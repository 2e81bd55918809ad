# MQTT link: telemetry with store-and-forward, commands, status, HA discovery.
#
# The main loop calls poll(now_ms) once per cycle. One poll lasts at most poll_budget_ms (plus the
# CPU time of the one step under way when it runs out: one command handled, one record encoded),
# whatever the peer does: connect, CONNACK and SUBACK are polled across cycles; reads never wait
# (a packet that is still arriving stays in the inbound buffer for the next poll); a write waits
# only while the send buffer is full, and only until the deadline (then the link is declared
# dead and reconnects with backoff). Inbound work gets at most half of the budget, so commands
# cannot starve telemetry; docs/telemetry.md, "Link behaviour".
#
# MQTT 3.1.1 is done here and in mqtt_sock.py, no longer over umqtt.simple: the device sends only
# CONNECT, SUBSCRIBE, PUBLISH (QoS 0), PUBACK, PINGREQ and DISCONNECT (a few lines each), and
# umqtt's reading side could not be bounded -- wait_msg() blocks for a whole packet once its first
# byte arrived (a trickling peer held a poll for seconds), allocates whatever length the peer
# announces, swallows PINGRESP (micropython-lib #332); connect() and subscribe() wait for their
# answers; and its code took ~4 KB of a 32-bit heap. The link opens the TCP connection itself,
# non-blocking, polled across cycles, queues CONNECT and reads CONNACK / SUBACK in later polls;
# the whole connect is bounded by connect_timeout_ms. TLS is wrapped by the link: the handshake
# runs non-blocking across polls (do_handshake=False, driven by writing the queued CONNECT); a
# poll that receives a server flight does its crypto at once (mbedTLS cannot be interrupted
# there: the one step that takes CPU time, docs/telemetry.md). PINGREQ every keepalive/2 and
# after each batch of telemetry; a PINGRESP overdue -> link dead.
# Commands: subscribed at QoS 1 with a persistent session (clean_session False), so commands the
# device has not acknowledged (PUBACK, sent by the link after handling one) stay with the broker
# across a reconnect. Publishes are QoS 0: delivery of telemetry is confirmed by a PINGRESP that
# follows it on the same connection (see lib/telemetry.py): at-least-once, in order, with seq
# numbers for de-duplication.
#
# Configuration: a dict in the style of Peter Hinch's mqtt_as (copy `config`, fill it in).
# Topics, payloads and the telemetry schema: docs/telemetry.md.

import time
import json
import errno
import select                       # noqa: F401 (firmware/mqtt_connect.py uses these two through
import socket                       # noqa: F401  this module: one place for a test to stand in for them)
try:
    import random
    _rand = random.getrandbits
except (ImportError, AttributeError):
    import os

    def _rand(bits):
        return int.from_bytes(os.urandom(4), 'little') & ((1 << bits) - 1)

import telemetry
from mqtt_sock import MQTTException, der
from ondemand import load, unload

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
    'poll_budget_ms': 200,      # one poll() lasts at most this (+ one step's CPU time), whatever
                                # the broker does; inbound work gets at most half of it
    'sock_timeout_ms': 1000,    # bound on close()'s final writes (offline status, DISCONNECT)
    'connect_timeout_ms': 5000,  # TCP connect (non-blocking, polled)
    'ping_timeout_ms': 0,       # PINGRESP overdue -> link dead; 0: keepalive/2
    'backoff_min_ms': 1000,     # reconnect delay: doubles per failure up to max, with jitter
    'backoff_max_ms': 60000,
    'telemetry_ms': 10000,      # telemetry record period
    'ring_records': 360,        # store-and-forward capacity at most (docs/telemetry.md); fewer when
                                # the heap left after boot cannot hold it with ring_reserve_bytes
    'ring_reserve_bytes': 24000,  # heap kept free beside the ring (publishes, commands, GC slack)
    'max_pub_per_poll': 4,      # messages published per poll() at most (acks: half of them at most)
    'max_cmd_per_poll': 20,     # commands handled per poll() at most; the rest wait (socket, broker)
    'max_rx_bytes': 0,          # inbound buffer (allocated once); 0: fits the longest valid command.
                                # A longer packet is never held: a command is rejected as oversized
    'clean_session': False,     # False: commands not yet acknowledged (PUBACK) survive a reconnect
    'ha_discovery': True,
    'ha_prefix': 'homeassistant',
    'device_name': None,        # shown in Home Assistant; default "BESS <id>"
    'on_command': None,         # f(name, topic, payload, retained) -> ack dict or None
    'on_schedule': None,        # f(memoryview, n, total, last): a schedule's bytes as they arrive
}

DOWN = 0
CONNECTING = 1     # TCP connect in progress (non-blocking)
HANDSHAKE = 2      # CONNECT sent, waiting for CONNACK (non-blocking)
UP = 3
TLS = 4            # TLS handshake in progress (non-blocking), CONNECT queued behind it
STATE_NAMES = ('down', 'connecting', 'handshake', 'up', 'tls')

ACK_REJECTED = 3   # acks of rejected commands waiting at most: beyond, counted, not acked
ACK_MAX = 4        # acks waiting at most: further commands wait unread (socket, broker) meanwhile.
# Few: a waiting ack is ~130 B of heap made while the command path's code is loaded, and acks
# leave at max_pub_per_poll // 2 a poll (2 at the default 4) however many wait: at the defaults
# more waiting ones only hold more heap during a burst (docs/resources.md), they do not ack it
# sooner. (A site with max_pub_per_poll above 8 now sends at most 4 acks a poll, not 8 or more.)

# what a broken connection or a hostile peer can raise in the link or mqtt_sock
_ERRS = (OSError, IndexError, TypeError, ValueError, MemoryError, MQTTException)


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
        self.t_sched = (base + 'schedule').encode()
        self.t_sched_st = (base + 'schedule/status').encode()
        self.t_dlm = (base + 'dlm').encode()
        self.on_schedule = c['on_schedule']
        self.extra = []             # retained (topic, payload) to publish: schedule status, dlm
        self.port = c['port'] or (8883 if c['ssl'] else 1883)
        self.ssl_params = self._ssl_params() if c['ssl'] else None
        self.ring = None            # alloc_ring(): once boot-only code has left the heap
        self.wbuf = bytearray(512)  # outgoing bytes of a connection (mqtt_sock.Sock), one block for good
        self.rbuf = None            # inbound packets: alloc_ring() (after boot, like the ring)
        self.rmv = None
        self.puback = bytearray(b'\x40\x02\0\0')
        self.tele_ms = c['telemetry_ms']
        self.epoch_s = 0            # wall clock at uptime 0 (records hold uptime; see telemetry.py)
        self.epoch_rem_ms = 0       # ... and its milliseconds (0..999), from a wall-clock sync
        self.sch_id = None          # the schedule in force (id, version): telemetry's sch.id
        self.sch_version = 0
        self.disc_next = -1         # next HA discovery message to send; -1: none
        self.disc_done = False
        self.oom = 0                # publishes deferred or skipped for want of memory
        self.on_command = c['on_command']
        self.state = DOWN
        self.sock = None
        self.addr = None
        self.delay_ms = 0           # current backoff (0 = first attempt now)
        self.next_try = None
        self.t_start = 0
        self.last_ping = 0
        self.ping_out = False
        self.ping_sent = 0
        self.rx_more = 0            # the last poll stopped reading with inbound data left
        self.t_end = 0              # this poll's deadline (ticks_ms)
        self.out = []               # acks to send: (payload bytes, accepted 1 / rejected 0)
        self.rej_out = 0            # of which rejected
        self.ack_skipped = 0        # rejected commands not acked since the last ack queued
        self.state_msg = None       # latest retained state payload to (re)publish
        self.state_dirty = False
        self.config_src = None      # the config dict in force (updated in place by commands)
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
        self.cmds = 0               # commands handled
        self.acks_skipped = 0       # rejected commands that got no ack of their own (flood)
        self.sub_refused = 0
        self.last_error = None
        ka = c['keepalive']
        self.ping_every_ms = ka * 500 if ka else 30000
        self.ping_timeout_ms = c['ping_timeout_ms'] or self.ping_every_ms

    # --- public API ---------------------------------------------------------------------------
    def alloc_ring(self):
        """The store-and-forward ring, sized from the heap left (call after boot's garbage is
        collected: the ring is the largest single block the firmware allocates)."""
        c = self.cfg
        if self.rbuf is None:
            # inbound packets (mqtt_sock.Sock.packet): one block for good, sized for the longest
            # valid command (payload MAX_PAYLOAD 512 + its topic + packet id + fixed header)
            n = c['max_rx_bytes'] or 512 + len(self.t_cmd) + 16 + 9
            self.rbuf = bytearray(n if n > 64 else 64)      # at least a header and a topic
            self.rmv = memoryview(self.rbuf)
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
        """Retained <prefix>/<id>/config: the config in force (after boot and accepted commands).
        Encoded when published, not here: a message kept from here would be made while the
        command path's code is loaded and stay among it once that is dropped (a hole the next
        command cannot use; docs/resources.md)."""
        self.config_src = cfg
        self.config_dirty = True

    def poll(self, now_ms):
        """Bounded work: connect steps, inbound commands, pings, publish from the ring. Lasts at
        most poll_budget_ms plus the CPU time of the step under way at the deadline (reads never
        wait; a write waits for a full send buffer only until the deadline)."""
        if self.ring is None:
            self.alloc_ring()
        self.t_end = time.ticks_add(time.ticks_ms(), self.cfg['poll_budget_ms'])
        if self.sock is not None:
            self.sock.until = self.t_end
        st = self.state
        if st == DOWN:
            if self.next_try is None or time.ticks_diff(now_ms, self.next_try) >= 0:
                self._connect(now_ms)
        elif st != UP:
            self._connect(now_ms)
        else:
            try:
                self._service(now_ms)
            except _ERRS as e:
                self._lost(now_ms, e)

    def close(self):
        """Orderly shutdown: offline status, DISCONNECT (the will is then not sent)."""
        if self.state == UP:
            self.sock.until = time.ticks_add(time.ticks_ms(), self.cfg['sock_timeout_ms'])
            try:
                self.sock.publish(self.t_status, b'offline', True)
                self.sock.write(b'\xe0\x00')          # DISCONNECT: the will is not sent
                self.sock.flush()
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

    def _connect(self, now_ms):
        """A connect step. Its code (firmware/mqtt_connect.py) is loaded while the link is not
        up and dropped once it is: it is not in the heap while the link runs."""
        try:
            mqtt_connect = load('mqtt_connect')
        except MemoryError as e:        # no room for it now: a later try
            self._fail(now_ms, e)
            return
        mqtt_connect.step(self, now_ms)
        if self.state == UP:
            unload(('mqtt_connect',))

    def _drop(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.state = DOWN
        if self.ring is not None:
            self.ring.rewind()
        self.ping_out = False
        self.rx_more = 0

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

    # --- connected: one bounded service step --------------------------------------------------
    def _service(self, now_ms):
        c = self.cfg
        sk = self.sock
        # 1. inbound: commands, PINGRESP, SUBACK (half of the budget at most)
        self._receive(now_ms)
        # 2. liveness: a PINGRESP overdue while nothing is left unread -> dead. With inbound
        # data left over (a backlog, read at the budget's pace) it may be behind that data.
        if self.ping_out and not self.rx_more and time.ticks_diff(now_ms, self.ping_sent) > self.ping_timeout_ms:
            raise OSError(errno.ETIMEDOUT)
        # 3. outbound: acks (half of max_pub_per_poll at most), retained state / config, HA
        # discovery, then telemetry; nothing new is started once the deadline has passed
        n = c['max_pub_per_poll']
        na = n // 2 or 1
        end = self.t_end
        while self.out and na > 0 and time.ticks_diff(end, time.ticks_ms()) > 0:
            p, ok = self.out.pop(0)
            if not ok:
                self.rej_out -= 1
            sk.publish(self.t_ack, p)
            n -= 1
            na -= 1
        if self.state_dirty and n > 0:
            sk.publish(self.t_state, self.state_msg, True)
            self.state_dirty = False
            n -= 1
        if self.config_dirty and n > 0:
            try:
                m = json.dumps(self.config_src).encode()
            except MemoryError:         # no room now: publish it at a later poll
                m = None
                self._oom('config not published yet')
            if m is not None:
                sk.publish(self.t_config, m, True)
                m = None
                self.config_dirty = False
            n -= 1
        while self.extra and n > 0:
            t, p = self.extra.pop(0)
            sk.publish(t, p, True)
            n -= 1
        ring = self.ring
        while self.disc_next >= 0 and n > 0 and time.ticks_diff(end, time.ticks_ms()) > 0:
            try:
                m = _discovery(self, self.disc_next)
            except MemoryError:         # no room now: skip discovery, keep the link
                m = None
                self._oom('HA discovery skipped')
            if m is None:
                self.disc_next = -1
                unload(('ha_discovery',))
                break
            sk.publish(m[0], m[1], True)
            self.disc_next += 1
            n -= 1
        while n > 0 and time.ticks_diff(end, time.ticks_ms()) > 0:
            k = ring.next_unsent()
            if k < 0:
                break
            try:                        # encode before anything goes on the wire
                payload = json.dumps(ring.record_dict(k, self.epoch_s, self.sch_id, self.sch_version, self.epoch_rem_ms)).encode()
            except MemoryError:         # the record stays unsent: tried again next poll
                self._oom('telemetry deferred')
                break
            sk.publish(self.t_tele, payload)
            ring.mark_sent()
            self.published += 1
            n -= 1
        # 4. PINGREQ: keepalive, and as the delivery confirmation of what was just sent
        if not self.ping_out and (ring.sent > 0 or time.ticks_diff(now_ms, self.last_ping) >= self.ping_every_ms):
            sk.write(b'\xc0\x00')              # PINGREQ
            self.ping_out = True
            self.ping_sent = now_ms
            self.last_ping = now_ms
            ring.set_mark()
        sk.flush()
        self.delay_ms = 0               # backoff reset only by a poll that served cleanly

    def _receive(self, now_ms):
        """Read and handle inbound packets until the socket has nothing more, half of the poll's
        budget is spent, max_cmd_per_poll commands were handled or ACK_MAX acks wait (then
        rx_more = 1: the rest waits in the socket or, beyond the broker's in-flight window, at
        the broker)."""
        sk = self.sock
        r = sk.rbuf
        stop = time.ticks_add(self.t_end, -(self.cfg['poll_budget_ms'] // 2))
        left = self.cfg['max_cmd_per_poll']
        self.rx_more = 1
        # ACK_MAX holds commands back only while up: acks leave only then, and while connecting
        # the CONNACK must be read whatever waits (a link lost with 4 acks waiting never came
        # back up)
        while (left > 0 and (len(self.out) < ACK_MAX or self.state != UP)
               and time.ticks_diff(stop, time.ticks_ms()) > 0):
            if not sk.packet():
                self.rx_more = 0
                return
            t = r[0] & 0xF0
            if self.state != UP and t != 0x20:
                raise MQTTException('no CONNACK')
            if t == 0x30:
                left -= self._inbound_publish()
            elif t == 0xD0:             # PINGRESP: what was sent before the PINGREQ is delivered
                if self.ping_out:
                    self.ping_out = False
                    self.ring.confirm_mark()
            elif t == 0x20:
                if self.state != HANDSHAKE:
                    raise MQTTException('bad CONNACK')
                load('mqtt_connect').connected(self, now_ms)
                return                  # the rest is read by the next poll: without the connect code
            elif t == 0x90:             # SUBACK: the granted QoS, or 0x80: refused (the ACL?)
                if sk.plen >= 3 and r[sk.poff + 2] == 0x80:
                    self.sub_refused += 1
                    if self.sub_refused == 1:
                        print('mqtt: the broker refused the subscription to %s+: no commands'
                              % self.t_cmd.decode())
            # anything else (PUBACK, UNSUBACK...) is not expected here and skipped

    def _inbound_publish(self):
        """The PUBLISH in the buffer: handled as a command, then acknowledged (QoS 1). Returns 1
        when it was a command (counted against max_cmd_per_poll), else 0."""
        sk = self.sock
        r = sk.rbuf
        mv = self.rmv
        o = sk.poff
        end = o + sk.plen
        qos = (r[0] >> 1) & 3
        tl = (r[o] << 8 | r[o + 1]) if end - o >= 2 else 0xFFFF
        p = o + 2 + tl + (2 if qos else 0)
        if qos == 2:                    # never granted: the subscription is QoS 1
            raise ValueError('QoS 2 PUBLISH')
        n = 0
        if p > end:
            if sk.prem == sk.plen:      # all of it held: the topic overruns the packet
                raise ValueError('bad PUBLISH')
            # a topic longer than the buffer (mqtt_sock): only its length and the packet id are
            # held. Delivered on cmd/+ (the only subscription): a command, rejected unread, and
            # acked -- dropping the link would bring it back (retained, QoS 1) at every connect
            p = o + 2 + (2 if qos else 0)
            n = 1
            self._command(b'?', tl, sk.prem - (p - o) - tl, r[0] & 1)
        elif self.on_schedule is not None and tl == len(self.t_sched) and mv[o + 2:o + 2 + tl] == self.t_sched:
            # a schedule: handed over as it arrives (first what the buffer holds, then the rest
            # through the socket's sink), never held whole (docs/schedule.md, "Transport")
            total = sk.prem - (p - o)
            last = sk.prem == sk.plen
            self.on_schedule(mv[p:end], end - p, total, last)
            if not last:
                sk.sink = self._sched_rest
        else:
            t_cmd = self.t_cmd
            k = len(t_cmd)
            if tl > k and mv[o + 2:o + 2 + k] == t_cmd:
                name = bytes(mv[o + 2 + k:o + 2 + tl])
                if name != b'ack':      # our own acks come back on cmd/+
                    n = 1
                    if sk.prem > sk.plen:   # longer than the buffer: never read; rejected as such
                        payload = sk.prem - (p - o)
                    else:
                        payload = bytes(mv[p:end])
                    self._command(name, bytes(mv[o + 2:o + 2 + tl]), payload, r[0] & 1)
        if qos:                         # after handling: unacknowledged, the broker sends it again
            a = self.puback
            a[2] = r[p - 2]
            a[3] = r[p - 1]
            sk.write(a)
        return n

    def _sched_rest(self, mv, n, last):
        self.on_schedule(mv, n, -1, last)

    def publish_retained(self, topic, payload):
        """Queue a retained message (schedule status, dlm); one per topic waits, the newest."""
        x = self.extra
        for k in range(len(x)):
            if x[k][0] == topic:
                x[k] = (topic, payload)
                return
        x.append((topic, payload))

    def _command(self, name, topic, payload, retained):
        """topic, payload: bytes, or the length (an int) of one too long to be read (a topic
        not read: name b'?', payload its length)."""
        self.cmds += 1
        try:
            name = name.decode()
        except ValueError:              # not UTF-8: an unknown command all the same
            name = repr(name)
        if self.on_command is None:
            a = {'cmd': name, 'ok': False, 'reason': 'commands disabled'}
        else:
            try:
                a = self.on_command(name, topic, payload, retained)
            except Exception as e:      # a bug in the handler must not take the link down
                a = {'cmd': name, 'ok': False, 'reason': 'internal error: %r' % e}
        if a is None:
            return
        ok = 1 if a.get('ok') else 0
        if ok:
            a['eff_seq'] = self.ring.seq    # first telemetry record that shows the change
        elif self.rej_out >= ACK_REJECTED:
            # a flood: rejected commands beyond these are counted (err.cmd_rejected, and
            # "skipped" in the next ack), not acked one by one: acks cannot crowd out telemetry
            self.ack_skipped += 1
            self.acks_skipped += 1
            return
        if self.ack_skipped:
            a['skipped'] = self.ack_skipped
            self.ack_skipped = 0
        try:
            self.out.append((json.dumps(a).encode(), ok))
        except MemoryError:             # the command's effect shows in the retained config
            self._oom('ack dropped')
            return
        if not ok:
            self.rej_out += 1


def _discovery(link, k):
    return load('ha_discovery').message(link, k)   # loaded only while discovery messages are sent
