#!/usr/bin/env python3
"""MQTT-side fault cases (issue 10 #5, #6 and broker outages) for tools/faults.py and the tests.

Every case_<name>(tries=N, ...) returns one row of the fault table:
{'fault', 'tries', 't0w_s', 'recovery_s', 'lost', 'dup', 'note'} (+ figures of its own).
t0w_s / recovery_s: a list of seconds per try (None in the list: not reached within the cap),
or None when the column does not apply.

    python tools/faults_mqtt.py --quick      # every case, one try, 10 s outages: rows as JSON
    python tools/faults_mqtt.py              # every case at its defaults (60 s outages)

Cases:
- trickling broker: the real firmware (tools/fil.Rig, template defaults: period 1000 ms,
  stale_ms 2000, bus timeout 200 ms, 1 retry) with its MQTT pointed at a fake broker that
  answers CONNECT and SUBSCRIBE, then sends a command one byte every 300 ms and stops reading.
  Worst cycle interval (start to start, from the firmware's `cyc` lines), and the time from a
  meter going silent (right after a good read: the worst timing) to 0 W on the wire.
- command flood: the link and command path (host_tests/mp/mqtt_device.py: the real link,
  Reporter, command handler and controller, a fake site; 100 ms period) on a real mosquitto:
  N commands with a wrong MAC, then one valid signed command. Outcome and telemetry continuity.
- broker stopped / broker frozen (SIGSTOP) for down_s: records lost and duplicated, and the
  time from the broker's return until every record captured meanwhile was delivered.
"""
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import paths  # noqa: E402,F401 (lib/ on sys.path)
sys.path.insert(1, os.path.join(ROOT, 'host_tests'))

import command_mac  # noqa: E402
from broker import Broker, wait_for  # noqa: E402
from mqtt_fixtures import Collector, Device  # noqa: E402

KEY = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff'
POLL_BUDGET_MS = 200        # the link's default poll_budget_ms (firmware/mqtt_link.py)
QUICK_DOWN_S = 10           # outage length for --quick


class TricklingBroker:
    """A fake broker on 127.0.0.1. Each connection: CONNACK, SUBACK (QoS 1), then a command
    PUBLISH for client_id one byte every `every_s` (it never completes in time); PINGREQ is never
    answered. reads=False: it also stops reading after the SUBSCRIBE, with a small receive buffer,
    so the device's writes block once the buffers are full."""

    def __init__(self, reads=True, every_s=0.3, client_id='d1'):
        self.reads = reads
        self.every_s = every_s
        self.client_id = client_id
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if not reads:
            self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        self.ls.bind(('127.0.0.1', 0))
        self.ls.listen(8)
        self.port = self.ls.getsockname()[1]
        self.stop = threading.Event()
        self.conns = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            self.conns += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            c.recv(4096)                                # CONNECT
            c.sendall(b'\x20\x02\x00\x00')              # CONNACK
            c.recv(4096)                                # SUBSCRIBE (+ status)
            c.sendall(b'\x90\x03\x00\x01\x01')          # SUBACK: QoS 1 granted
            if self.reads:                              # swallow whatever the device sends
                threading.Thread(target=self._drain, args=(c,), daemon=True).start()
            topic = ('bess/%s/cmd/objective' % self.client_id).encode()
            body = len(topic).to_bytes(2, 'big') + topic + b'{"value":"ss"}' + b' ' * 80
            for b in b'\x30' + bytes([len(body)]) + body:
                if self.stop.wait(self.every_s):
                    break
                c.sendall(bytes([b]))
        except OSError:
            pass
        finally:
            c.close()

    @staticmethod
    def _drain(c):
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass

    def close(self):
        self.stop.set()
        self.ls.close()


def _close_all(items):
    """Stop what a run started, newest first; one that fails to stop does not keep the rest."""
    for it in reversed(items):
        try:
            it.kill() if isinstance(it, Device) else it.close() if isinstance(it, Collector) else it.stop()
        except Exception:
            pass


def row(fault, tries, t0w_s=None, recovery_s=None, note='', lost=None, dup=None, **extra):
    """One row of the fault table (the format of tools/faults_modbus.py)."""
    r = {'fault': fault, 'tries': tries, 't0w_s': t0w_s, 'recovery_s': recovery_s,
         'lost': lost, 'dup': dup, 'note': note}
    r.update(extra)
    return r


def _seq_figures(seqs):
    """(lost, dup) of telemetry seqs as received: seqs missing between 0 and the last, repeats."""
    if not seqs:
        return None, None
    got = set(seqs)
    return len(set(range(0, max(got) + 1)) - got), len(seqs) - len(got)


# --- trickling broker (issue 10 #5) --------------------------------------------------------------

def trickle_try(workdir, cycles=20, reads=False):
    """One firmware run against a TricklingBroker: cycle intervals (ms) over `cycles` cycles, then
    a silent meter at the worst timing. Returns a dict of figures."""
    import faults_modbus as fm      # the firmware rig at the template defaults, its fault timing
    br = TricklingBroker(reads=reads, client_id='trk')
    try:
        r = fm.rig(workdir, mqtt={'client_id': 'trk', 'server': '127.0.0.1', 'port': br.port,
                                  'telemetry_ms': 1000, 'keepalive': 4, 'backoff_min_ms': 200,
                                  'backoff_max_ms': 1000, 'ha_discovery': False})
        with r:
            sp0 = fm.discharging(r)
            k = len(r.cycles)
            r.wait_cycles(cycles)
            ts = [c['t'] for c in r.cycles[k:k + cycles]]
            ints = [b - a for a, b in zip(ts, ts[1:])]
            conns = br.conns
            dev = r.sim.meter
            while True:                     # the meter just answered: the data is fresh
                t0, n = fm.after_good_read(r.sim, dev)
                r.sim.set_fault('silent', unit=fm.METER)
                with r.sim.lock:
                    slipped = dev.requests - getattr(dev, 'writes', 0) != n
                if not slipped:
                    break
                r.sim.clear_faults()        # a read slipped in before the fault was set: again
                fm.discharging(r)
            zero = fm.wait(lambda: r.sim.bat.setpoint_w == 0, fm.BOUND_S + 7 - (time.monotonic() - t0))
            t0w = time.monotonic() - t0 if zero else None
            r.sim.clear_faults()
            t1 = time.monotonic()
            back = fm.wait(lambda: r.sim.bat.setpoint_w >= sp0 * 9 // 10, fm.CAP_S, 0.01)
            rec = time.monotonic() - t1 if back else None
            trouble = fm.firmware_trouble(r)
            lines = list(r.lines)
    finally:
        br.close()
    return {'intervals_ms': ints, 't0w_s': t0w, 'recovery_s': rec, 'connections': conns,
            'trouble': trouble, 'mqtt_lines': [ln for ln in lines if ln.startswith('mqtt')]}


def case_trickling_broker(tries=3, cycles=20):
    """The firmware's cycle interval and its time to 0 W after a meter fault while its broker
    trickles a command 1 byte / 300 ms and stops reading (issue 10 #5: 15 of 59 intervals over
    1.1 s, max 1.517 s, before the poll budget)."""
    import faults_modbus as fm
    ints, t0w, rec, trouble, conns = [], [], [], [], 0
    for _ in range(tries):
        with tempfile.TemporaryDirectory(prefix='faults-') as wd:
            f = trickle_try(wd, cycles)
        ints += f['intervals_ms']
        t0w.append(f['t0w_s'])
        rec.append(f['recovery_s'])
        conns += f['connections']
        if f['trouble']:
            trouble.append(f['trouble'])
    period = fm.PERIOD_MS
    worst = max(ints) if ints else None
    over = sum(1 for x in ints if x > period * 1.1)
    got = [x for x in t0w if x is not None]
    met = (worst is not None and worst <= period + POLL_BUDGET_MS and len(got) == tries
           and max(got) < fm.BOUND_S)
    note = ('worst cycle interval %s ms at period %d (%d of %d over 1.1 s); %d connections; '
            '0 W < %g s: %s' % (worst, period, over, len(ints), conns, fm.BOUND_S,
                                'met' if got and len(got) == tries and max(got) < fm.BOUND_S else 'NOT MET'))
    if trouble:
        note += '; firmware: ' + ', '.join(sorted(set(trouble)))
    return row('trickling broker (1 byte / 300 ms, stops reading)', tries, t0w, rec, note,
                  worst_interval_ms=worst, intervals_over_1_1_period=over, intervals=len(ints),
                  met=met)


# --- command flood (issue 10 #6) -----------------------------------------------------------------

def flood(port, dev, n, qos, key=b'w' * 32):
    """n commands with a wrong MAC (well-formed, a counter, signed with the wrong key) from their
    own client, as fast as paho sends them; returns once the broker has taken them all."""
    import paho.mqtt.client as mqtt
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.max_queued_messages_set(0)
    c.connect('127.0.0.1', port)
    c.loop_start()
    try:
        topic = 'bess/%s/cmd/import_limit' % dev
        last = None
        for k in range(n):
            body = json.dumps({'value': 9000 + k, 'ctr': 1000 + k, 'id': 'f%d' % k}, separators=(',', ':'))
            last = c.publish(topic, command_mac.sign(key, topic, body.encode()), qos=qos)
        last.wait_for_publish(30)
        time.sleep(0.2)
    finally:
        c.loop_stop()
        c.disconnect()


def flood_run(workdir, n=2000, qos=0, dev_id='devF', timeout=45, procs=None,
              broker_extra=('max_queued_messages 5000',)):
    """The device (period 100 ms, a record per cycle, HMAC key set) on a real mosquitto; n
    wrong-MAC commands, then a valid signed one. Returns a dict of what happened (for the tests'
    asserts and the table). broker_extra: the default lets the broker queue the whole flood;
    with mosquitto's own limit (max_queued_messages 1000) it drops what a QoS 1 flood sends while
    its queue is full (measured: 900 of 2 000; the valid command, sent after the flood, ran)."""
    items = [] if procs is None else procs
    br = Broker(workdir, extra=broker_extra).start()
    items.append(br)
    try:
        col = Collector(br.port, ('bess/%s/#' % dev_id,))
        items.append(col)
        d = Device(workdir, dev_id, br.port, hmac_key=KEY, telemetry_ms=100, period_ms=100,
                   mqtt_extra={'ha_discovery': False, 'keepalive': 2})
        items.append(d.start())
        if not wait_for(lambda: len(col.telemetry(dev_id)) >= 10, 8):
            raise RuntimeError('no telemetry before the flood: %s' % d.last())
        t0 = time.monotonic()
        flood(br.port, dev_id, n, qos)
        topic = 'bess/%s/cmd/import_limit' % dev_id
        body = json.dumps({'value': 9000, 'ctr': 1, 'id': 'valid'}, separators=(',', ':')).encode()
        col.publish(topic, command_mac.sign(bytes.fromhex(KEY), topic, body))
        t_sent = time.monotonic()

        def acked():
            return [json.loads(m[1]) for m in col.get('bess/%s/cmd/ack' % dev_id) if b'"valid"' in m[1]]
        ok = wait_for(acked, timeout)
        t_ack = time.monotonic()
        applied = ok and wait_for(lambda: col.telemetry(dev_id)[-1]['import_limit_w'] == 9000, 3)
        # the device's own counters: its stats line may come a little after the ack (under load)
        wait_for(lambda: not ok or d.last().get('accepted', 0) >= 1, 5)
        time.sleep(0.2)
        s = d.last()
        recs = col.telemetry(dev_id)
        acks = [json.loads(m[1]) for m in col.get('bess/%s/cmd/ack' % dev_id)]
        during = [m for m in col.get('bess/%s/telemetry' % dev_id) if t0 <= m[3] <= t_ack]
        return {'n': n, 'qos': qos, 'valid_ack': acked()[0] if ok else None, 'applied': bool(applied),
                'valid_ack_s': t_ack - t_sent if ok else None, 'flood_s': t_ack - t0,
                'seqs': [r['seq'] for r in recs], 'last_record': recs[-1] if recs else None,
                'acks': acks, 'records_during': len(during), 'dev': s}
    finally:
        if procs is None:
            _close_all(items)


def case_command_flood(tries=1, n=2000, qos=0):
    """n wrong-MAC commands then a valid signed one (issue 10 #6: the link dropped, the valid
    command was never acked, acks starved telemetry ~30 s). recovery_s: the valid command's
    publish to its ack; lost / dup: telemetry records over the whole run."""
    rec, lost, dup, notes, met = [], 0, 0, [], True
    for _ in range(tries):
        with tempfile.TemporaryDirectory(prefix='faults-') as wd:
            f = flood_run(wd, n, qos)
        rec.append(f['valid_ack_s'])
        lo, du = _seq_figures(f['seqs'])
        lost += lo or 0
        dup += du or 0
        rejected = [a for a in f['acks'] if not a['ok']]
        skipped = sum(a.get('skipped', 0) for a in f['acks'])
        counted = (f['last_record'] or {}).get('err', {}).get('cmd_rejected')
        ok = bool(f['valid_ack'] and f['valid_ack']['ok'] and f['applied'])
        met = met and ok and counted == n and f['dev'].get('lost') == 0 and not lo
        notes.append('%d rejected (%s counted, %d acked, %d counted without an ack), 1 valid %s%s, '
                     'link drops %s, %d records during the flood' % (
                         n, counted, len(rejected), skipped, 'executed and acked' if ok else 'NOT EXECUTED',
                         ' after %.1f s' % f['valid_ack_s'] if f['valid_ack_s'] is not None else '',
                         f['dev'].get('lost'), f['records_during']))
    return row('command flood (%d wrong-MAC, QoS %d)' % (n, qos), tries, None, rec,
                  'flood: ' + '; '.join(notes) + ' (period 100 ms)', lost=lost, dup=dup, met=met)


# --- forged and replayed commands ---------------------------------------------------------------

def forged_run(workdir, dev_id='devX'):
    """The device with an HMAC key; one valid signed command, then forgeries of it: a wrong key, no
    MAC, the valid one replayed, its MAC on another body, malformed, an unknown member. Returns the
    acks and the import limit the telemetry shows afterwards. (A retained command is refused when
    it is delivered as retained, i.e. at a subscribe: test_mqtt.py covers it; a broker forwards a
    live retained publish with the flag cleared, as MQTT 3.1.1 says, so it is a live command.)"""
    items = []
    try:
        br = Broker(workdir).start()
        items.append(br)
        col = Collector(br.port, ('bess/%s/#' % dev_id,))
        items.append(col)
        d = Device(workdir, dev_id, br.port, hmac_key=KEY, telemetry_ms=100, period_ms=100,
                   mqtt_extra={'ha_discovery': False})
        items.append(d.start())
        if not wait_for(lambda: len(col.telemetry(dev_id)) >= 5, 8):
            raise RuntimeError('no telemetry: %s' % d.last())
        topic = 'bess/%s/cmd/import_limit' % dev_id
        key = bytes.fromhex(KEY)

        def body(v, ctr, i):
            return json.dumps({'value': v, 'ctr': ctr, 'id': i}, separators=(',', ':')).encode()
        good = command_mac.sign(key, topic, body(55000, 5, 'good'))
        col.publish(topic, good)
        wait_for(lambda: any(b'"good"' in m[1] for m in col.get('bess/%s/cmd/ack' % dev_id)), 5)
        other = command_mac.sign(key, topic, body(1000, 6, 'x'))
        forged = [
            ('wrong key', command_mac.sign(b'k' * 32, topic, body(1000, 7, 'f1')), False),
            ('no mac', body(1000, 8, 'f2'), False),
            ('replayed', good, False),
            ('mac of another body', body(1000, 9, 'f4')[:-1] + b',"mac":' + json.dumps(
                json.loads(other)['mac']).encode() + b'}', False),
            ('malformed', b'{"value": 1000, "ctr": 11, "id": "f6"', False),
            ('unknown member', command_mac.sign(key, topic, json.dumps(
                {'value': 1000, 'ctr': 12, 'id': 'f7', 'x': 1}).encode()), False),
        ]
        for _, payload, retain in forged:
            col.publish(topic, payload, retain=retain)
        time.sleep(2)
        acks = [json.loads(m[1]) for m in col.get('bess/%s/cmd/ack' % dev_id)]
        recs = col.telemetry(dev_id)
        return {'forged': [f[0] for f in forged], 'acks': acks,
                'limit_after': recs[-1]['import_limit_w'] if recs else None,
                'rejected': (recs[-1] if recs else {}).get('err', {}).get('cmd_rejected')}
    finally:
        _close_all(items)


def case_forged_commands(tries=1):
    """Issue 10, survived before: forged and replayed commands are all rejected, nothing changes."""
    notes, met = [], True
    for _ in range(tries):
        with tempfile.TemporaryDirectory(prefix='faults-') as wd:
            f = forged_run(wd)
        good = [a for a in f['acks'] if a.get('id') == 'good']
        bad_ok = [a for a in f['acks'] if a.get('id') != 'good' and a.get('ok')]
        ok = bool(good and good[0]['ok']) and not bad_ok and f['limit_after'] == 55000
        met = met and ok
        notes.append('%d forgeries (%s): %d accepted, import limit after them %s (the valid one set '
                     '55000), %s rejections counted' % (len(f['forged']), ', '.join(f['forged']),
                                                       len(bad_ok), f['limit_after'], f['rejected']))
    return row('forged / replayed commands', tries, None, None, '; '.join(notes), met=met)


# --- broker outages ------------------------------------------------------------------------------

def outage_run(workdir, mode, down_s, dev_id='devO', telemetry_ms=500):
    """The device (period 100 ms, a record every telemetry_ms) on a persistent mosquitto with a
    persistent collector; the broker is stopped (mode 'stop', restarted on its port) or frozen
    (mode 'freeze': SIGSTOP, then SIGCONT) for down_s. Returns a dict of figures."""
    items = []
    br = Broker(workdir, persistence=True).start()
    items.append(br)
    try:
        col = Collector(br.port, ('bess/%s/telemetry' % dev_id,), client_id='col-' + dev_id, persistent=True)
        items.append(col)
        d = Device(workdir, dev_id, br.port, telemetry_ms=telemetry_ms, period_ms=100,
                   run_ms=int(down_s * 1000) + 90000, mqtt_extra={'ha_discovery': False})
        items.append(d.start())
        if not wait_for(lambda: len(col.telemetry(dev_id)) >= 5, 8):
            raise RuntimeError('no telemetry before the outage: %s' % d.last())
        if mode == 'stop':
            br.stop()
        else:
            os.kill(br.proc.pid, signal.SIGSTOP)
        time.sleep(down_s)
        seq_down = d.last().get('seq')
        if mode == 'stop':
            br.start()
        else:
            os.kill(br.proc.pid, signal.SIGCONT)
        t_back = time.monotonic()
        # recovered: the link is up and the ring holds at most the last unconfirmed records
        up = wait_for(lambda: d.last().get('link') == 'up' and d.last().get('ring', 99) <= 2
                      and d.last().get('seq', 0) > seq_down, 60, 0.05)
        recovery = time.monotonic() - t_back if up else None
        time.sleep(1.5)
        last_seq = d.last().get('seq', 0)
        wait_for(lambda: col.telemetry(dev_id) and max(r['seq'] for r in col.telemetry(dev_id)) >= last_seq - 3, 5)
        d.kill(signal.SIGTERM)
        s = d.last()
        seqs = [r['seq'] for r in col.telemetry(dev_id)]
        lost, dup = _seq_figures(seqs)
        return {'mode': mode, 'down_s': down_s, 'recovery_s': recovery, 'lost': lost, 'dup': dup,
                'records': len(seqs), 'ring_dropped': s.get('dropped'), 'links_lost': s.get('lost'),
                'work_max_down_us': s.get('work_max_down_us'), 'late_max_down_ms': s.get('late_max_down_ms')}
    finally:
        for it in items:                    # a frozen broker must run again to stop
            if isinstance(it, Broker) and it.proc and it.proc.poll() is None:
                try:
                    os.kill(it.proc.pid, signal.SIGCONT)
                except OSError:
                    pass
        _close_all(items)


def _outage_case(mode, tries, down_s):
    rec, lost, dup, work, late, ok = [], 0, 0, 0, 0, True
    for _ in range(tries):
        with tempfile.TemporaryDirectory(prefix='faults-') as wd:
            f = outage_run(wd, mode, down_s)
        rec.append(f['recovery_s'])
        lost += f['lost'] or 0
        dup += f['dup'] or 0
        work = max(work, f['work_max_down_us'] or 0)
        late = max(late, f['late_max_down_ms'] or 0)
        ok = ok and f['recovery_s'] is not None and not f['lost']
    what = 'stopped' if mode == 'stop' else 'frozen (SIGSTOP)'
    note = ('broker %s %g s: %d records lost, %d duplicated; while down the 100 ms cycle did at most '
            '%.1f ms of work, at most %d ms late' % (what, down_s, lost, dup, work / 1000.0, late))
    return row('broker %s %g s' % (what, down_s), tries, None, rec, note, lost=lost, dup=dup, met=ok)


def case_broker_stopped(tries=1, down_s=60):
    """mosquitto stopped for down_s (persistence on), then restarted: store-and-forward."""
    return _outage_case('stop', tries, down_s)


def case_broker_frozen(tries=1, down_s=60):
    """mosquitto frozen (SIGSTOP) for down_s: its TCP connections stay open but nothing answers."""
    return _outage_case('freeze', tries, down_s)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--quick', action='store_true', help='one try each, %d s outages' % QUICK_DOWN_S)
    ap.add_argument('--tries', type=int, help='tries per case (default: 1 quick, 3 trickle / 1 others)')
    a = ap.parse_args(argv)
    down = QUICK_DOWN_S if a.quick else 60
    runs = [('trickling broker', lambda: case_trickling_broker(tries=a.tries or (1 if a.quick else 3))),
            ('command flood', lambda: case_command_flood(tries=a.tries or 1)),
            ('broker stopped', lambda: case_broker_stopped(tries=a.tries or 1, down_s=down)),
            ('broker frozen', lambda: case_broker_frozen(tries=a.tries or 1, down_s=down))]
    rows = []
    for name, fn in runs:
        print('faults_mqtt: %s ...' % name, file=sys.stderr, flush=True)
        t = time.monotonic()
        r = fn()
        r['wall_s'] = round(time.monotonic() - t, 1)
        print('faults_mqtt: %s: %s' % (name, r['note']), file=sys.stderr, flush=True)
        rows.append(r)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
