"""Firmware in the loop: the real firmware on the MicroPython unix port against the Modbus site
simulator on a pty. Used by `make sim` and the firmware tests.

    with Rig(control={...}, scenario='tools/scenarios/ev_arrival.csv') as rig:
        rig.wait_cycles(10)
        rig.sim.set_fault('silent', unit=1, duration_s=5)
        rig.cycles[-1]['state']
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
import paths  # noqa: E402,F401 (lib/ on sys.path)

from modbus_sim import SiteSimulator, Scenario  # noqa: E402

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), 'micropython')
MICROPYPATH = paths.MICROPYPATH


def parse_cycle(line):
    """'cyc t=1 gcp=2 state=idle ...' -> {'t': 1, 'gcp': 2, 'state': 'idle', ...}"""
    d = {}
    for kv in line.split()[1:]:
        k, _, v = kv.partition('=')
        try:
            d[k] = int(v)
        except ValueError:
            d[k] = v
    return d


class Rig:
    def __init__(self, control, scenario=None, meter='eastron_sdm630', battery='sunspec_battery_802_124',
                 battery_kw=None, period_ms=1000, bus=None, cycles=0, echo=None, speed=1.0, revert_s=0,
                 mqtt=None, workdir=None, board='unix'):
        self.sim = SiteSimulator(meter=meter, battery=battery, scenario=scenario, speed=speed,
                                 battery_kw=battery_kw, revert_s=revert_s)
        self.dir = workdir or tempfile.mkdtemp(prefix='fil-')   # site.json, settings.json
        self.site = {'board': board, 'period_ms': period_ms, 'log_cycles': 1,
                     'bus': dict({'baud': 9600, 'timeout_ms': 150, 'retries': 1}, **(bus or {})),
                     'meter': {'profile': meter, 'unit_id': self.sim.meter.unit_id},
                     'battery': {'profile': battery, 'unit_id': self.sim.battery.unit_id},
                     'control': control}
        if mqtt:
            self.site['mqtt'] = mqtt
        self.n_cycles = cycles
        self.echo = echo                # callable(line) for each firmware line, or None
        self.cycles = []                # parsed 'cyc' lines, with the simulator's truth attached
        self.lines = []                 # every firmware line
        self.proc = None
        self._cv = threading.Condition()

    def start(self):
        self.sim.start()
        self.site['bus']['device'] = self.sim.paths[0]
        cfg = os.path.join(self.dir, 'site.json')
        with open(cfg, 'w') as f:
            json.dump(self.site, f)
        if not os.path.exists(MICROPYTHON):
            raise RuntimeError('MicroPython unix port missing: run `make deps`')
        return self._spawn()

    def _spawn(self):
        env = dict(os.environ, MICROPYPATH=MICROPYPATH)
        self.proc = subprocess.Popen([MICROPYTHON, os.path.join(ROOT, 'firmware', 'main.py'),
                                      os.path.join(self.dir, 'site.json'), ROOT, str(self.n_cycles)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def restart_firmware(self):
        """A reboot: the firmware process ends (SIGTERM, then SIGKILL) and starts again on the same
        site config and files, against the same running simulator."""
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        return self._spawn()

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip('\n')
            with self._cv:
                self.lines.append(line)
                if line.startswith('cyc '):
                    c = parse_cycle(line)
                    c['sim'] = self.sim.status()
                    self.cycles.append(c)
                self._cv.notify_all()
            if self.echo:
                self.echo(line)
        with self._cv:
            self._cv.notify_all()

    def wait_cycles(self, n, timeout=None):
        """Wait until n more cycles were logged. Returns the new cycles."""
        start = len(self.cycles)
        end = time.monotonic() + (timeout if timeout is not None else n * 3 + 10)
        with self._cv:
            while len(self.cycles) < start + n:
                left = end - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and len(self.cycles) < start + n:
                    raise TimeoutError('firmware logged %d of %d cycles; last lines:\n%s'
                                       % (len(self.cycles) - start, n, '\n'.join(self.lines[-15:])))
                self._cv.wait(min(left, 0.5))
            return self.cycles[start:start + n]

    def wait_exit(self, timeout=120):
        self.proc.wait(timeout)
        time.sleep(0.1)
        return self.proc.returncode

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.sim.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()
