#!/usr/bin/env python3
"""Device twins (issue 12): lightweight stand-ins for controllers that speak the device's topics
(docs/telemetry.md, docs/schedule.md) and check schedules with the device's own code.

    python tools/fleet/twin.py --port 1883 --secrets fleet/secrets.json [--ids a,b,c] [--telemetry-s 10]
        [--bad-key ids] [--host 127.0.0.1]

Each twin connects with its device's credentials (username = client id = device id) and a
retained will "offline" on bess/<id>/status, says "online", and subscribes to its schedule topic.
A schedule is checked as the firmware checks it: lib/schedule_load.load_stream with the HMAC
(lib/schedule_mac, the device's key) and the version as the replay guard; the retained status on
bess/<id>/schedule/status says active (id, version, superseded) or rejected (reason). The same
payload again (the broker's retained copy at a reconnect) changes nothing. With --telemetry-s,
each twin publishes a telemetry record (schema v2's main fields) that often, stamped with the real
clock or, with --clock T0,AT,SPEED, with `make fleet`'s accelerated day (tools/fleet/demo_clock.py).

All twins of a process share one thread and one epoll set over their sockets (paho's external
loop: loop_read / loop_write / loop_misc). Not paho's loop() per client: that serves a socket
with select(), which only takes descriptors below 1024 (a client holds three): the 341st twin of
a process could not connect (measured). tools/fleet/fleet_bench.py starts a process per 1 000.
"""
import argparse
import json
import random
import signal
import sys
import time

import fleetpath  # noqa: E402,F401 (tools/ and lib/ on sys.path)

import paho.mqtt.client as mqtt  # noqa: E402

import schedule  # noqa: E402
import schedule_host  # noqa: E402
import schedule_mac  # noqa: E402
from demo_clock import DemoClock  # noqa: E402
import loopback  # noqa: E402


MAX_PER_PROCESS = 2000           # descriptors: 3 a client (the process raises its limit)


class Twin:
    def __init__(self, dev_id, password, key_hex, host, port, prefix='bess', commissioned=None, mute=False):
        self.id = dev_id
        self.mute = mute                # receives schedules, never answers (a stuck device)
        self.key = bytes.fromhex(key_hex) if key_hex else None
        self.base = '%s/%s/' % (prefix, dev_id)
        self.t_sched = self.base + 'schedule'
        self.commissioned = commissioned
        self.last_version = 0
        self.current = None             # (id, version) in force
        self.payload = None             # its bytes
        self.received = self.rejected = 0
        self.seq = 0
        self.soc_bp = random.randint(3000, 8000)
        c = self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=dev_id)
        c.username_pw_set(dev_id, password)
        c.will_set(self.base + 'status', b'offline', qos=0, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        self.host, self.port = host, port
        self.next_try = 0.0             # monotonic s of the next connection attempt
        self.backoff = 1.0

    def _on_connect(self, c, u, flags, rc, props=None):
        if rc == 0:
            c.publish(self.base + 'status', b'online', qos=0, retain=True)
            c.subscribe(self.t_sched, qos=1)

    def _status(self, status, reason=None):
        d = {'status': status, 'received': self.received, 'rejected_count': self.rejected}
        if self.current:
            d['id'], d['version'] = self.current
        if reason:
            d['reason'] = reason
        return json.dumps(d).encode()

    def _on_message(self, c, u, m):
        p = bytes(m.payload)
        if self.mute or not p or p == self.payload:
            return                      # cleared, or the retained copy of the one in force
        self.received += 1
        mac = None
        if self.key is not None:
            mac = schedule_mac.MacStream(self.key, self.t_sched.encode(), len(p))
        try:
            s = schedule_host.loads(p, self.commissioned, self.last_version, mac=mac)
        except schedule.ScheduleError as e:
            self.rejected += 1
            lines = str(e).split('\n  ')
            reason = lines[1] if len(lines) > 1 else lines[0]
            d = json.loads(self._status('rejected', reason))
            try:                        # which one, best effort (as the firmware's sched_rx._ident)
                v = json.loads(p)
                d['last_rejected'] = {'reason': reason, 'id': v.get('id'), 'version': v.get('version')}
            except (ValueError, AttributeError):
                d['last_rejected'] = {'reason': reason, 'id': None, 'version': 0}
            c.publish(self.base + 'schedule/status', json.dumps(d).encode(), qos=1, retain=True)
            return
        old = self.current
        self.current = (s.id, s.version)
        self.last_version = s.version
        self.payload = p
        d = json.loads(self._status('active'))
        if old:
            d['superseded'] = {'id': old[0], 'version': old[1]}
        c.publish(self.base + 'schedule/status', json.dumps(d).encode(), qos=1, retain=True)

    def telemetry(self, now_s):
        self.seq += 1
        rec = {'v': 2, 'seq': self.seq, 'ts': int(now_s), 'gcp_w': random.randint(2000, 15000),
               'bat_w': random.randint(-3000, 3000), 'soc_bp': self.soc_bp, 'state': 1,
               'sch': {'id': self.current[0], 'version': self.current[1]} if self.current else None}
        self.c.publish(self.base + 'telemetry', json.dumps(rec, separators=(',', ':')), qos=0)


    def connect(self, now):
        """(Re)connect when due, with a backoff up to 30 s; the socket or None."""
        if now < self.next_try:
            return None
        try:
            if self.next_try == 0.0:
                self.c.connect(self.host, self.port, keepalive=60)
            else:
                self.c.reconnect()
            self.backoff = 1.0
            self.next_try = now + 1.0
            return self.c.socket()
        except OSError:
            self.backoff = min(30.0, self.backoff * 2)
            self.next_try = now + self.backoff * (0.5 + random.random() / 2)
            return None


def serve(twins, telemetry_s=0, stop=lambda: False, clock=time.time):
    """Serve every twin in one thread until stop(): one epoll set over all their sockets and
    paho's external-loop calls (loop_read / loop_write / loop_misc), so a process holds
    thousands of devices and sleeps while nothing happens (no thread, no select() per client)."""
    import selectors
    sel = selectors.DefaultSelector()
    socks = {}                          # twin -> the socket registered for it
    nxt_tel = time.monotonic() + (telemetry_s or 0)
    nxt_misc = 0.0
    while not stop():
        now = time.monotonic()
        if now >= nxt_misc:             # keepalive, reconnects: once a second
            nxt_misc = now + 1.0
            for t in twins:
                sk = socks.get(t)
                if sk is not None and t.c.socket() is not sk:      # dropped: paho closed it
                    try:
                        sel.unregister(sk)
                    except (KeyError, ValueError):
                        pass
                    socks.pop(t)
                    sk = None
                if sk is None:
                    sk = t.connect(now)
                    if sk is not None:
                        socks[t] = sk
                        sel.register(sk, selectors.EVENT_READ, t)
                else:
                    t.c.loop_misc()
        for key, _ in sel.select(timeout=0.05):
            key.data.c.loop_read()
        if telemetry_s and now >= nxt_tel:
            nxt_tel += telemetry_s
            wall = clock()
            for t in twins:
                if t.c.is_connected():
                    t.telemetry(wall)
        for t in socks:
            if t.c.want_write():
                t.c.loop_write()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--port', type=int, required=True)
    ap.add_argument('--secrets', required=True, help='secrets.json from tools/fleet/provision.py')
    ap.add_argument('--ids', help='comma-separated device ids (default: every device in the secrets)')
    ap.add_argument('--bad-key', default='', help='comma-separated ids that hold a wrong HMAC key')
    ap.add_argument('--mute', default='', help='comma-separated ids that never answer a schedule')
    ap.add_argument('--telemetry-s', type=float, default=0)
    ap.add_argument('--clock', help='T0,AT,SPEED: telemetry stamped with this accelerated clock (demo_clock.py)')
    a = ap.parse_args(argv)
    try:
        clock = DemoClock.parse(a.clock) if a.clock else time.time
    except ValueError as e:
        ap.error(str(e))
    with open(a.secrets) as f:
        devs = json.load(f)['devices']
    ids = a.ids.split(',') if a.ids else sorted(devs)
    if len(ids) > MAX_PER_PROCESS:
        print('twin: %d devices in one process; at most %d: start more processes' % (len(ids), MAX_PER_PROCESS),
              file=sys.stderr)
        return 2
    loopback.raise_nofile(4 * len(ids) + 256)     # a paho client holds 3 descriptors (its socket, a wake-up pair)
    bad = set(x for x in a.bad_key.split(',') if x)
    mute = set(x for x in a.mute.split(',') if x)
    twins = [Twin(i, devs[i]['password'], ('00' * 32) if i in bad else devs[i]['hmac_key'], a.host, a.port,
                  mute=i in mute) for i in ids]
    done = []
    signal.signal(signal.SIGTERM, lambda *x: done.append(1))
    print('twin: %d devices' % len(twins), flush=True)
    try:
        serve(twins, a.telemetry_s, lambda: bool(done), clock)
    except KeyboardInterrupt:
        pass
    for t in twins:
        t.c.disconnect()            # clean: the will is not sent
    return 0


if __name__ == '__main__':
    sys.exit(main())
