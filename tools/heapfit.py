#!/usr/bin/env python3
"""The firmware as deployed, on 32-bit MicroPython with a fixed heap: does it fit?

Boots the `make build` output for a board (.mpy; or a frozen image with --frozen) on the 32-bit
unix port (tools/mp32fixed.py builds it) under `-X heapsize=N`, with MQTT to a real mosquitto on
127.0.0.1 and the site simulator (SDM630 + SunSpec battery) on a pty, and runs a script of
events through it: a broker outage and reconnect, a burst of commands, a bus fault. A run passes
when the firmware printed no MemoryError, never entered the safe state, never disabled MQTT,
completed every cycle and delivered telemetry from before, during and after the outage.

The board's own code runs unchanged; two things stand in for the board: `machine` (the unix
shim, firmware/unix/machine.py, compiled into lib/ like the rest: its heap is counted, see
docs/resources.md) and the board file (boards/unix.json: the UART is the simulator's pty).

    python tools/heapfit.py --heap 96000                  # one run, figures as JSON on stdout
    python tools/heapfit.py --search 40000 200000         # smallest heap that passes (bisection)
    python tools/heapfit.py --frozen --search ...         # the frozen build (code in the image)
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
import paths  # noqa: E402,F401 (lib/ on sys.path)

import paho.mqtt.client as mqtt  # noqa: E402

import mp32fixed  # noqa: E402
from broker import Broker, wait_for  # noqa: E402
from modbus_sim import SiteSimulator  # noqa: E402
from ntp_server import NtpServer  # noqa: E402
from command_mac import sign  # noqa: E402
from schedule_host import sign_schedule  # noqa: E402

# a VPP site: a capacity commitment (the reserve from it: bess_config.reserve_bp, run at boot and
# by every setting a command changes)
CONTROL = {'import_limit_w': 60000, 'phase_limit_w': 25000, 'max_charge_w': 30000,
           'max_discharge_w': 30000, 'stale_ms': 2000, 'usable_wh': 100000, 'committed_w': 20000}
FAIL_MARKS = ('MemoryError', 'SAFE STATE', 'MQTT DISABLED', 'FIRMWARE INCOMPLETE', 'OUT OF MEMORY',
              'cycle failed', 'on_cycle failed', 'Traceback', 'schedule rejected', 'SCHEDULE DISABLED',
              'could not be read back')
GOOD_IDS = ['b%d' % k for k in range(20) if k % 4] + ['o1', 'o2']    # the burst's valid commands
KEY = bytes(range(32))          # --signed: the site's HMAC key (commands and schedules)


def prepare_root(board='esp32', frozen=False, dest=None):
    """A device filesystem as `make build BOARD=board` makes it, plus the unix stand-ins."""
    def build(name):
        cmd = [sys.executable, os.path.join(HERE, 'build.py'), name, '--quiet']
        if frozen:
            cmd.append('--frozen')
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError('build %s failed: %s' % (name, r.stdout + r.stderr))
    build(board)
    build('unix')                   # for lib/machine.mpy and boards/unix.json
    if frozen:
        mp32fixed.build(frozen=True)    # the code is in the image: freeze this tree's (make is incremental)
    dest = dest or tempfile.mkdtemp(prefix='heapfit-')
    src = os.path.join(ROOT, 'build', 'device', board + ('-frozen' if frozen else ''))
    shutil.copytree(src, dest, dirs_exist_ok=True)
    unix = os.path.join(ROOT, 'build', 'device', 'unix' + ('-frozen' if frozen else ''))
    os.makedirs(os.path.join(dest, 'lib'), exist_ok=True)
    if not frozen:
        shutil.copy(os.path.join(unix, 'lib', 'machine.mpy'), os.path.join(dest, 'lib', 'machine.mpy'))
    shutil.copy(os.path.join(unix, 'boards', 'unix.json'), os.path.join(dest, 'boards', 'unix.json'))
    return dest


class Run:
    """One fixed-heap run. Figures in self.result after run()."""

    def __init__(self, heap, root, cycles=1000, period_ms=100, telemetry_ms=1000, frozen=False,
                 echo=None, schedule=True, tolerate=(), schedules=1, oom_acks_ok=0, signed=False):
        self.heap = heap
        self.root = root
        self.cycles = cycles
        self.period_ms = period_ms
        self.telemetry_ms = telemetry_ms
        self.frozen = frozen
        self.echo = echo
        self.schedule = schedule        # push a full 96-interval schedule and keep it in force
        self.schedules = schedules      # how many, one after the other (a new version each)
        self.oom_acks_ok = oom_acks_ok  # commands refused for memory that do not fail the run
        self.key = KEY if signed else None  # a signed site: commands and schedules carry a mac
        self.ctr = 0                    # the last command counter sent (signed)
        self.marks = tuple(m for m in FAIL_MARKS if m not in tolerate)    # what ends the run as failed
        self.tolerate = tolerate        # marks reported in 'seen', not as problems
        self.ntp = None
        self.lines = []
        self.msgs = []
        self.lock = threading.Lock()

    def _site(self, port, pty):
        return {'board': 'unix', 'period_ms': self.period_ms, 'log_cycles': 0, 'check_alloc': 1,
                'bus': {'baud': 9600, 'timeout_ms': 200, 'retries': 1, 'device': pty},
                'meter': {'profile': 'eastron_sdm630', 'unit_id': 1},
                'battery': {'profile': 'sunspec_battery_802_124', 'unit_id': 2},
                'control': dict(CONTROL),
                'mqtt': {'server': '127.0.0.1', 'port': port, 'client_id': 'fit1',
                         'telemetry_ms': self.telemetry_ms, 'keepalive': 10,
                         'backoff_min_ms': 300, 'backoff_max_ms': 1000,
                         **({'hmac_key': self.key.hex()} if self.key else {})}}

    def _signed(self, topic, payload):
        """payload as the site wants it: with a counter and a mac on a signed site."""
        if self.key is None:
            return payload
        if topic.endswith('/schedule'):
            return sign_schedule(self.key, topic, payload)
        self.ctr += 1
        body = json.loads(payload)
        body['ctr'] = self.ctr
        return sign(self.key, topic, json.dumps(body))

    def _schedule_section(self):
        return {'ntp_host': '127.0.0.1', 'ntp_port': self.ntp.port, 'ntp_period_s': 30, 'ntp_retry_s': 2}

    def schedule_status(self):
        with self.lock:
            return [json.loads(p) for t, p, _ in self.msgs if t == 'bess/fit1/schedule/status']

    def _on_msg(self, c, u, m):
        with self.lock:
            self.msgs.append((m.topic, bytes(m.payload), time.monotonic()))

    def telemetry(self):
        with self.lock:
            return [json.loads(p) for t, p, _ in self.msgs if t == 'bess/fit1/telemetry']

    def acks(self):
        with self.lock:
            return [json.loads(p) for t, p, _ in self.msgs if t == 'bess/fit1/cmd/ack']

    def failed(self):
        """A fail mark is on the console: the run is decided (stop waiting)."""
        with self.lock:
            return any(m in ln for ln in self.lines[-20:] for m in self.marks)

    def _read(self, proc):
        for line in proc.stdout:
            line = line.rstrip('\n')
            with self.lock:
                self.lines.append(line)
            if self.echo:
                self.echo(line)

    def run(self):
        work = tempfile.mkdtemp(prefix='heapfit-run-')
        br = Broker(work).start()
        sim = SiteSimulator(meter='eastron_sdm630', battery='sunspec_battery_802_124',
                            battery_kw={'capacity_wh': 100000, 'soc_bp': 6000,
                                        'max_chg_w': 30000, 'max_dis_w': 30000}).start()
        site = self._site(br.port, sim.paths[0])
        if self.schedule:
            self.ntp = NtpServer().start()
            site['schedule'] = self._schedule_section()
        with open(os.path.join(self.root, 'site.json'), 'w') as f:
            json.dump(site, f)
        for stale in ('settings.json', 'settings.json.tmp', 'schedule.json', 'schedule.json.new'):
            if os.path.exists(os.path.join(self.root, stale)):
                os.remove(os.path.join(self.root, stale))
        col = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        col.on_message = self._on_msg
        col.on_connect = lambda c, u, f, rc, p=None: c.subscribe('bess/#', qos=1)
        col.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        col.connect('127.0.0.1', br.port)
        col.loop_start()
        exe = mp32fixed.exe(frozen=self.frozen)
        env = dict(os.environ, MICROPYPATH='lib:.frozen')
        t0 = time.monotonic()
        # -m main, not the script path: sys.path[0] stays '' as on a board, so every module's
        # __file__ (a qstr, interned for good) is 'cycle.mpy', not '/tmp/heapfit-.../cycle.mpy'
        proc = subprocess.Popen([exe, '-X', 'heapsize=%d' % self.heap, '-m', 'main', 'site.json', '.',
                                 str(self.cycles)], cwd=self.root, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)
        rd = threading.Thread(target=self._read, args=(proc,), daemon=True)
        rd.start()
        events = []
        try:
            # the script: every step waits for the firmware, never a fixed sleep alone
            up = wait_for(lambda: len(self.telemetry()) >= 3 or proc.poll() is not None or self.failed(), 30)
            events.append(('boot', time.monotonic() - t0, bool(up)))
            if proc.poll() is None and not self.failed():
                n0 = len(self.telemetry())
                br.stop()                                   # broker outage
                time.sleep(4)
                br = Broker(work, port=br.port).start()
                ok = wait_for(lambda: len(self.telemetry()) >= n0 + 6 or proc.poll() is not None or self.failed(), 30)
                events.append(('broker outage 4 s', time.monotonic() - t0, bool(ok)))
            if self.schedule and proc.poll() is None and not self.failed():
                # a full schedule (96 intervals, every field used) through the retained topic: it
                # is streamed to flash, checked, compiled and kept in force for the rest of the run
                for j in range(self.schedules):
                    d = full_schedule(int(time.time()), version=7 + j)
                    col.publish('bess/fit1/schedule', self._signed('bess/fit1/schedule', json.dumps(
                        d, separators=(',', ':'))), qos=1, retain=True)
                    ok = wait_for(lambda: [s for s in self.schedule_status() if s.get('status') == 'active'
                                           and s.get('version') == d['version']] or proc.poll() is not None
                                  or self.failed(), 30)
                    events.append(('schedule 96 intervals' + (' #%d' % (j + 1) if j else ''),
                                   time.monotonic() - t0, bool(ok)))
                    if not ok:
                        break
            if proc.poll() is None and not self.failed():   # command burst: valid and invalid
                n_ack = len(self.acks())
                for k in range(20):
                    body = ({'value': 50000 + 100 * k, 'id': 'b%d' % k} if k % 4 else
                            {'value': 'not-a-number', 'id': 'b%d' % k})
                    col.publish('bess/fit1/cmd/import_limit', self._signed('bess/fit1/cmd/import_limit',
                                                                           json.dumps(body)), qos=1)
                for v, i in (('ss', 'o1'), ('gce', 'o2')):
                    col.publish('bess/fit1/cmd/objective', self._signed('bess/fit1/cmd/objective', json.dumps(
                        {'value': v, 'id': i})), qos=1)
                ok = wait_for(lambda: len(self.acks()) >= n_ack + 22 or proc.poll() is not None or self.failed(), 30)
                events.append(('command burst 22', time.monotonic() - t0, bool(ok)))
            if proc.poll() is None and not self.failed():   # bus faults
                sim.set_fault('bad_crc', unit=2, duration_s=1.5)
                time.sleep(2)
                sim.set_fault('silent', unit=1, duration_s=3)
                time.sleep(4)
                sim.set_fault('garbage', duration_s=1)
                events.append(('bus faults', time.monotonic() - t0, True))
            end = time.monotonic() + max(60, self.cycles * self.period_ms / 1000 * 4)
            while proc.poll() is None and not self.failed() and time.monotonic() < end:
                time.sleep(0.2)
            if self.failed():
                time.sleep(1)               # the rest of the message
        finally:
            if proc.poll() is None:
                proc.kill()
            rd.join(5)
            time.sleep(0.5)                 # the last telemetry in flight
            col.loop_stop()
            col.disconnect()
            br.stop()
            sim.stop()
            if self.ntp is not None:
                self.ntp.stop()
        return self._judge(proc.returncode, events, time.monotonic() - t0)

    def _judge(self, rc, events, wall_s):
        text = '\n'.join(self.lines)
        tele = self.telemetry()
        seqs = sorted(set(r['seq'] for r in tele))
        done = [ln for ln in self.lines if ln.startswith('done:')]
        problems = [m for m in self.marks if m in text]
        if rc != 0:
            problems.append('exit code %r' % rc)
        if not done:
            problems.append('did not complete %d cycles' % self.cycles)
        want = self.cycles * self.period_ms // self.telemetry_ms
        gaps = [b for a, b in zip(seqs, seqs[1:]) if b != a + 1]
        if len(seqs) < want * 0.6:
            problems.append('telemetry: %d records, expected about %d' % (len(seqs), want))
        if gaps:
            problems.append('telemetry: seq gaps before %s' % gaps[:5])
        for name, t, ok in events:
            if not ok:
                problems.append('event %r did not complete' % name)
        # a command the firmware could not handle for memory is acked as an internal error: the
        # link survived, but the command did not fit
        oom_acks = [a for a in self.acks() if 'MemoryError' in str(a.get('reason', ''))]
        if len(oom_acks) > self.oom_acks_ok:
            problems.append('%d command(s) acked with a MemoryError: %s' % (len(oom_acks), oom_acks[0].get('reason')))
        # the burst's valid commands (15 import limits, 2 objectives) must be accepted, signed or not:
        # a mac the device refuses would otherwise pass unnoticed
        # (a command refused for memory is judged above, by oom_acks_ok)
        burst = [a for a in self.acks() if str(a.get('id', '')).startswith(('b', 'o'))
                 and 'MemoryError' not in str(a.get('reason', ''))]
        wrong = [a for a in burst if bool(a.get('ok')) != (a.get('id') in GOOD_IDS)]
        if wrong:
            problems.append('%d command(s) of the burst acked wrongly: %s' % (len(wrong), wrong[0]))
        heap = [r.get('heap_free') for r in tele if isinstance(r.get('heap_free'), int)]
        cyc = [r.get('cycle_max_us') for r in tele if isinstance(r.get('cycle_max_us'), int)]
        return {'heap': self.heap, 'frozen': self.frozen, 'signed': self.key is not None, 'pass': not problems, 'problems': problems,
                'seen': [m for m in self.tolerate if m in text],
                'records': len(seqs), 'acks': len(self.acks()), 'oom_acks': len(oom_acks), 'events': events,
                'heap_free_min': min(heap) if heap else None, 'heap_free_last': heap[-1] if heap else None,
                'cycle_max_us': max(cyc) if cyc else None, 'wall_s': round(wall_s, 1),
                'done': done[-1] if done else None,
                'tail': self.lines[-12:] if problems else []}


def full_schedule(now_s, n=96, step_s=900, version=7):
    """A schedule at the format's limit: n intervals of step_s from now, every field used."""
    iv = []
    for k in range(n):
        e = {'start': now_s + k * step_s, 'duration_s': step_s, 'objective': ('gce', 'ss', 'zfi')[k % 3],
             'reserve_soc_bp': 3000 + k, 'soc_min_bp': 1000 + k, 'soc_max_bp': 9000 + k,
             'import_limit_w': 50000 - k, 'export': k % 2 == 0}
        if k % 3 == 0:
            e['target_soc_bp'] = 6000
        else:
            e['power_w'] = 1000 * k - 40000
            e['firm'] = k % 3 == 1
        iv.append(e)
    return {'v': 1, 'id': 'fit1/full', 'version': version, 'created': now_s - 60,
            'valid_until': now_s + n * step_s + 3600, 'randomize_s': 0,
            'default': {'objective': 'ss', 'reserve_soc_bp': 2500}, 'intervals': iv}


def search(lo, hi, step, **kw):
    """Smallest heap in [lo, hi] (to `step` bytes) that passes; every run's verdict."""
    runs = []
    root = prepare_root(kw.pop('board', 'esp32'), kw.get('frozen', False))
    best = None
    while hi - lo > step:
        mid = (lo + hi) // 2 // 1000 * 1000
        r = Run(mid, root, **kw).run()
        runs.append(r)
        print('heap %6d: %s %s' % (mid, 'pass' if r['pass'] else 'FAIL', '; '.join(r['problems'])[:200]),
              file=sys.stderr, flush=True)
        if r['pass']:
            hi = mid
            best = r
        else:
            lo = mid
    return best, runs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--heap', type=int, help='one run with this heap (bytes)')
    ap.add_argument('--search', nargs=2, type=int, metavar=('LO', 'HI'), help='bisect the smallest heap')
    ap.add_argument('--step', type=int, default=2000)
    ap.add_argument('--board', default='esp32')
    ap.add_argument('--frozen', action='store_true')
    ap.add_argument('--cycles', type=int, default=1000)
    ap.add_argument('--period-ms', type=int, default=100)
    ap.add_argument('--echo', action='store_true', help='print the firmware output')
    ap.add_argument('--no-schedule', action='store_true',
                    help='without the schedule side (no clock, no 96-interval schedule pushed)')
    ap.add_argument('--schedules', type=int, default=1,
                    help='full schedules pushed one after the other (each a new version), default 1')
    ap.add_argument('--signed', action='store_true',
                    help='a site with an HMAC key: every command and schedule signed (command_mac, schedule_mac)')
    a = ap.parse_args(argv)
    kw = dict(cycles=a.cycles, period_ms=a.period_ms, frozen=a.frozen, schedule=not a.no_schedule,
              schedules=a.schedules, signed=a.signed,
              echo=(lambda s: print('  fw: ' + s, file=sys.stderr)) if a.echo else None)
    if a.search:
        best, runs = search(a.search[0], a.search[1], a.step, board=a.board, **kw)
        print(json.dumps({'smallest_passing': best['heap'] if best else None, 'best': best,
                          'runs': [(r['heap'], r['pass']) for r in runs]}, indent=1))
        return 0 if best else 1
    root = prepare_root(a.board, a.frozen)
    r = Run(a.heap or 96000, root, **kw).run()
    print(json.dumps(r, indent=1))
    return 0 if r['pass'] else 1


if __name__ == '__main__':
    sys.exit(main())
