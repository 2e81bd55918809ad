#!/usr/bin/env python3
"""Telemetry ingest (issue 12, item 4): the fleet's telemetry, online status and schedule status
from MQTT into the store (tools/fleet/store.py).

    python tools/fleet/ingest.py --port 1883 --secrets fleet/secrets.json --db sqlite:///out/fleet.db \\
        [--group ingest] [--batch 500] [--flush-s 0.2]

Scaling out: every instance subscribes through an MQTT 5 shared subscription
($share/<group>/bess/+/telemetry, ...): the broker hands each message to one instance of the
group, so N instances split the load (mosquitto here; EMQX, VerneMQ or HiveMQ clusters beyond one
broker: docs/fleet.md). A thread writes batches (one transaction each) so the MQTT thread only
queues. Online / offline (retained, the last will) and the schedule status go to one instance
(plain subscriptions, in order; --no-status on the others). A message the store refuses (a
device's malformed record) is dropped and counted; the rest of its batch is stored.
"""
import argparse
import json
import queue
import signal
import sys
import threading
import time

import fleetpath  # noqa: E402,F401 (tools/ and lib/ on sys.path)

import paho.mqtt.client as mqtt  # noqa: E402

import store as store_mod  # noqa: E402

KINDS = {'telemetry': 'telemetry', 'status': 'status', 'schedule/status': 'schedule'}


class Ingest:
    def __init__(self, st, host, port, user, password, group='ingest', prefix='bess', batch=500, flush_s=0.2,
                 client_id=None, status_owner=True):
        self.st = st
        self.prefix = prefix
        self.group = group
        self.batch = batch
        self.flush_s = flush_s
        self.status_owner = status_owner
        self.q = queue.Queue()
        self.received = 0
        self.dropped = 0
        self.stop_ev = threading.Event()
        self.w = threading.Thread(target=self._writer, daemon=True)
        self.w.start()
        c = self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or '', protocol=mqtt.MQTTv5)
        c.username_pw_set(user, password)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        self.connected = threading.Event()
        c.connect(host, port, keepalive=30)
        c.loop_start()
        if not self.connected.wait(10):
            raise OSError('ingest: cannot connect to %s:%d' % (host, port))

    def _on_connect(self, c, u, flags, rc, props=None):
        if rc.is_failure:
            return
        subs = [('$share/%s/%s/+/telemetry' % (self.group, self.prefix), 0)]
        if self.status_owner:
            # online / offline (retained, the will) and the schedule status: one instance, in
            # order (a shared subscription would let two instances commit them in either order)
            subs += [('%s/+/status' % self.prefix, 1), ('%s/+/schedule/status' % self.prefix, 1)]
        c.subscribe(subs)
        self.connected.set()

    def _on_message(self, c, u, m):
        parts = m.topic.split('/', 2)
        if len(parts) < 3 or parts[2] not in KINDS:
            return
        self.received += 1
        self.q.put((KINDS[parts[2]], parts[1], bytes(m.payload), time.time()))

    def _writer(self):
        buf = []
        nxt = time.monotonic() + self.flush_s
        while not (self.stop_ev.is_set() and self.q.empty() and not buf):
            try:
                buf.append(self.q.get(timeout=max(0.0, min(self.flush_s, nxt - time.monotonic()))))
                while len(buf) < self.batch:
                    buf.append(self.q.get_nowait())
            except queue.Empty:
                pass
            if buf and (len(buf) >= self.batch or time.monotonic() >= nxt or self.stop_ev.is_set()):
                try:
                    self.st.add(buf)
                except Exception as e:
                    buf = self._one_by_one(buf, e)
                    if buf:                 # the database is down: keep them, try again
                        time.sleep(1)
                        continue
                buf = []
            if time.monotonic() >= nxt:
                nxt = time.monotonic() + self.flush_s

    def _one_by_one(self, buf, e):
        """A batch failed: each message alone. One that fails while others go in is dropped and
        counted (one device's payload must not stop the fleet's ingest); if none goes in, the
        database is down: all are kept."""
        if type(e).__name__ in store_mod.DOWN or not self.st.ping():
            print('ingest: store failed (%r): %d messages kept' % (e, len(buf)), file=sys.stderr)
            return buf                      # the database's trouble: everything is kept
        kept, ok = [], 0
        for m in buf:
            try:
                self.st.add([m])
                ok += 1
            except Exception:
                kept.append(m)
        if kept and (ok or self.st.ping()):
            self.dropped += len(kept)
            print('ingest: %d message(s) the store refused dropped (%r), %d stored'
                  % (len(kept), e, ok), file=sys.stderr)
            return []
        if kept:
            print('ingest: store failed (%r): %d messages kept' % (e, len(kept)), file=sys.stderr)
        return kept

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()
        self.stop_ev.set()
        self.w.join(30)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--port', type=int, default=1883)
    ap.add_argument('--secrets', required=True, help='secrets.json (the service users)')
    ap.add_argument('--user', help='the service username of this instance (each instance its own; default: '
                    'the second one, fleet-2: the push uses the first)')
    ap.add_argument('--db', default='sqlite:///out/fleet.db')
    ap.add_argument('--group', default='ingest')
    ap.add_argument('--batch', type=int, default=500)
    ap.add_argument('--flush-s', type=float, default=0.2)
    ap.add_argument('--no-status', action='store_true', help='another instance owns the status topics')
    a = ap.parse_args(argv)
    with open(a.secrets) as f:
        svcs = json.load(f)['services']
    svc = [x for x in svcs if x['user'] == a.user][0] if a.user else svcs[min(1, len(svcs) - 1)]
    st = store_mod.open_store(a.db)
    ing = Ingest(st, a.host, a.port, svc['user'], svc['password'], a.group, batch=a.batch, flush_s=a.flush_s,
                 status_owner=not a.no_status)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *x: done.set())
    print('ingest: up (%s, group %s)' % (a.db, a.group), flush=True)
    try:
        while not done.wait(10):
            print('ingest: %d received, %d stored, %d not JSON, %d refused by the store'
                  % (ing.received, st.stored, st.bad, ing.dropped), flush=True)
    except KeyboardInterrupt:
        pass
    ing.close()
    print('ingest: %d received, %d stored' % (ing.received, st.stored), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
