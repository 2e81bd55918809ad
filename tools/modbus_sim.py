#!/usr/bin/env python3
"""Modbus RTU site simulator: a meter and a battery, from the device profiles, on pseudo-terminals.

The physics is tools/site_model.py (Battery: SoC with efficiency, BMS limits, ramp, revert timer;
Site: base load + EV sessions + PV - battery, per phase), driven by a scenario CSV. Register
values are produced with the same profiles and lib/regdecode.py the firmware decodes with, so a
profile is tested by its own inverse. A setpoint written by the master over Modbus commands the
battery model (scheme per profile: SunSpec 124 rates + RvrtTms, or mode/command/power).

Transport: os.openpty(); this process owns the master end and runs a small RTU responder on it;
clients open the slave path (printed, or written to --pty-file). pymodbus' serial server is not
used because it opens a *path* through pyserial and the master end of a pty has none, and
because line faults (bad CRC, garbage, truncation, timing) are byte-level. Like real devices on
one RS-485 line, unknown unit ids get no answer; both devices can share one pty (default) or
get one each (--split).

Fault injection (per unit, or the whole line): silent, gone, bad_crc, exception, slow, garbage,
truncate; with a duration and/or a count. API: SiteSimulator.set_fault(); CLI: a JSON control
file watched by the running simulator (`modbus_sim.py fault CONTROL ...` edits it).

    .venv/bin/python tools/modbus_sim.py run --pty-file /tmp/sim.json --control /tmp/ctl.json
    .venv/bin/python tools/modbus_sim.py fault /tmp/ctl.json --unit 1 silent --duration 5
    .venv/bin/python tools/modbus_sim.py clear /tmp/ctl.json
"""

import argparse
import bisect
import csv
import errno
import json
import os
import random
import select
import signal
import sys
import threading
import time
import tty

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
import paths  # noqa: E402,F401 (lib/ on sys.path)
import devprofile  # noqa: E402
import regdecode as rd  # noqa: E402
import site_model  # noqa: E402

PROFILE_DIR = paths.PROFILES
SCENARIO_DIR = os.path.join(HERE, 'scenarios')
FAULT_KINDS = ('silent', 'gone', 'bad_crc', 'exception', 'slow', 'garbage', 'truncate')


# --- Modbus RTU framing -----------------------------------------------------------------------------

def crc16(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(body):
    c = crc16(body)
    return bytes(body) + bytes((c & 0xFF, c >> 8))


def crc_ok(frame):
    return len(frame) >= 4 and crc16(frame[:-2]) == frame[-2] | (frame[-1] << 8)


def request_len(buf):
    """Length of the request frame at the start of buf, or None if not known yet / unknown fc."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6):
        return 8
    if fc in (15, 16):
        return 9 + buf[6] if len(buf) >= 7 else None
    return None


# --- profiles and scenarios -------------------------------------------------------------------------

def profile_path(name):
    if os.path.sep in name or name.endswith('.json'):
        return name
    return os.path.join(PROFILE_DIR, name + '.json')


def load_profile(name):
    return devprofile.load(profile_path(name))


def list_profiles():
    return sorted(f[:-5] for f in os.listdir(PROFILE_DIR) if f.endswith('.json'))


class Scenario:
    """Step-wise (sample-and-hold) site inputs from a CSV: time_s, base_w, pv_w, ev_l1_w, ev_l2_w, ev_l3_w."""

    COLS = ('time_s', 'base_w', 'pv_w', 'ev_l1_w', 'ev_l2_w', 'ev_l3_w')

    def __init__(self, rows, loop=False):
        if not rows:
            raise ValueError('scenario has no rows')
        rows = sorted(rows)
        self.t = [r[0] for r in rows]
        self.rows = rows
        self.loop = loop
        self.end_s = self.t[-1]

    @classmethod
    def constant(cls, base_w=6000, pv_w=0, ev=(0, 0, 0)):
        return cls([(0, base_w, pv_w) + tuple(ev)])

    @classmethod
    def from_csv(cls, path, loop=False):
        rows = []
        with open(path, newline='') as f:
            rd_ = csv.reader(line for line in f if line.strip() and not line.lstrip().startswith('#'))
            header = [h.strip() for h in next(rd_)]
            if tuple(header) != cls.COLS:
                raise ValueError('%s: header must be %s, got %s' % (path, ','.join(cls.COLS), ','.join(header)))
            for n, r in enumerate(rd_, 2):
                try:
                    rows.append(tuple(int(x) for x in r))
                except ValueError:
                    raise ValueError('%s: line %d: integers expected, got %r' % (path, n, r))
                if len(r) != 6:
                    raise ValueError('%s: line %d: 6 columns expected' % (path, n))
        return cls(rows, loop)

    def row(self, t_s):
        if self.loop and self.end_s > 0:
            t_s = t_s % (self.end_s + 1)
        i = bisect.bisect_right(self.t, t_s) - 1
        return self.rows[max(i, 0)]

    def base(self, t_s):
        return self.row(t_s)[1]

    def pv(self, t_s):
        return self.row(t_s)[2]

    def evs(self, t_s):
        r = self.row(t_s)
        return r[3], r[4], r[5]


# --- one device's register image ----------------------------------------------------------------------

class ModbusError(Exception):
    def __init__(self, code):
        Exception.__init__(self, code)
        self.code = code


class Device:
    """Register image of one profile at one unit id. Readable = read blocks + identify + control."""

    def __init__(self, prof, unit_id):
        self.prof = prof
        self.unit_id = unit_id
        self.regs = {3: {}, 4: {}}
        self.writable = set()
        self.frozen = False             # True: physics no longer overwrites the point values
        self.requests = 0
        for b in prof.blocks:
            for a in range(b.start, b.start + b.count):
                self.regs[b.fc][a] = 0
        for e in prof.identify:
            for k, v in enumerate(e['values']):
                self.regs[e['fc']][e['addr'] + k] = v
        # SunSpec scale-factor groups: one SF register shared by several points
        self.sf_groups = {}
        for p in prof.points.values():
            if p.sf_block is not None:
                self.sf_groups.setdefault((p.fc, p.sf_addr), []).append(p)
        for (fc, a) in self.sf_groups:
            self.regs[fc][a] = 0
        self.values = {}

    def _put(self, fc, addr, n, fill):
        buf = [0] * n
        fill(buf)
        for k in range(n):
            self.regs[fc][addr + k] = buf[k]

    def set_values(self, vals, sf=None):
        """Encode {point name: value in our unit} into the image (SF chosen per group, or given)."""
        self.values.update(vals)
        done = set()
        for name in vals:
            p = self.prof.points[name]
            if p.sf_block is None:
                self._put(p.fc, p.addr, rd.TYPE_WORDS[p.typ],
                          lambda b, p=p, v=vals[name]: devprofile.encode_point(p, v, b, 0))
                continue
            key = (p.fc, p.sf_addr)
            if key in done:
                continue
            done.add(key)
            group = [q for q in self.sf_groups[key] if q.name in self.values]
            s = sf.get(key[1]) if sf else None
            if s is None:
                s = self.choose_sf(group)
            self.regs[p.fc][p.sf_addr] = s & 0xFFFF
            for q in group:
                self._put(q.fc, q.addr, rd.TYPE_WORDS[q.typ],
                          lambda b, q=q, v=self.values[q.name]: devprofile.encode_point(q, v, b, 0, s))

    def choose_sf(self, group):
        """Finest SF (>= full resolution in our unit) at which every value of the group fits."""
        s = min(-q.exp10 for q in group)
        while s < rd.SF_MAX and not all(rd.fits(self.values[q.name], q.typ, q.exp10 + s, q.sign)
                                        for q in group):
            s += 1
        return s

    def read(self, fc, addr, count):
        if not 1 <= count <= 125:
            raise ModbusError(3)
        m = self.regs.get(fc)
        if m is None:
            raise ModbusError(1)
        try:
            return [m[a] for a in range(addr, addr + count)]
        except KeyError:
            raise ModbusError(2)

    def write(self, addr, values):
        for k in range(len(values)):
            if addr + k not in self.writable:
                raise ModbusError(2)
        for k, v in enumerate(values):
            self.regs[3][addr + k] = v
        self.on_write(addr, len(values))

    def on_write(self, addr, n):
        pass

    def reset_control(self):
        pass

    def heartbeat(self, t_ms):
        """A profile whose freshness rule is a heartbeat: its registers count scenario seconds
        (SunSpec 802 Hb: "incremented every second"); they stop with the image when frozen."""
        f = self.prof.freshness
        if f is None or f.power is not None:
            return
        for b, off, n in f.watch:
            self.regs[b.fc][b.start + off + n - 1] = (t_ms // 1000) & 0xFFFF


class MeterDevice(Device):
    def __init__(self, prof, unit_id):
        Device.__init__(self, prof, unit_id)
        self.imp_wms = 0                # W*ms accumulators for the energy counters
        self.exp_wms = 0

    def update(self, l1, l2, l3, tot, dt_ms):
        if tot > 0:
            self.imp_wms += tot * dt_ms
        else:
            self.exp_wms -= tot * dt_ms
        v = {'l1_w': l1, 'l2_w': l2, 'l3_w': l3, 'total_w': tot,
             'import_wh': self.imp_wms // 3600000, 'export_wh': self.exp_wms // 3600000}
        self.set_values({k: x for k, x in v.items() if k in self.prof.points})


class BatteryDevice(Device):
    def __init__(self, prof, unit_id, bat):
        Device.__init__(self, prof, unit_id)
        self.bat = bat
        self.last_setpoint = 0
        self.writes = 0
        c = prof.control
        self.ctl = c
        if c.scheme == 'sunspec_124':
            for a in (c.mod_addr, c.out_addr, c.in_addr, c.win_addr, c.rvrt_addr):
                if a >= 0:
                    self.writable.add(a)
                    self.regs[3].setdefault(a, 0)
            self.regs[3][c.rte_sf.addr] = (-2) & 0xFFFF        # rates in 0.01 %
            wm = c.wchamax
            s = 0
            while not rd.fits(bat.max_chg_w, wm.typ, wm.exp10 + s, 1):
                s += 1
            self.regs[3][wm.sf_addr] = s
            self._put(3, wm.addr, 1, lambda b: devprofile.encode_point(wm, bat.max_chg_w, b, 0, s))
            self.wchamax_w = rd.decode([self.regs[3][wm.addr]], 0, wm.typ, 0, wm.exp10 + s, 1,
                                       rd.LIMIT_W, 0)
        else:
            for w in c.writes:
                for k in range(w.n):
                    self.writable.add(w.addr + k)
                    self.regs[3].setdefault(w.addr + k, 0)

    def update(self):
        chg, dis = self.bat.bms_limits()
        v = {'soc_bp': self.bat.soc_bp, 'power_w': self.bat.actual_w,
             'max_chg_w': chg, 'max_dis_w': dis}
        self.set_values({k: x for k, x in v.items() if k in self.prof.points})

    def _i16(self, a):
        v = self.regs[3][a]
        return v - 65536 if v & 0x8000 else v

    def decode_setpoint(self):
        """The setpoint (W, + discharge) the control registers now ask for (inverse of plan())."""
        c = self.ctl
        r = self.regs[3]
        if c.scheme == 'sunspec_124':
            mod = r[c.mod_addr]
            sf = self._i16(c.rte_sf.addr)
            full = rd.scale_int(100, -sf)
            lo, hi = None, None
            if mod & 1:             # charge limit active: power >= -InWRte
                lo = -rd.div_round(self._i16(c.in_addr) * self.wchamax_w, full)
            if mod & 2:             # discharge limit active: power <= OutWRte
                hi = rd.div_round(self._i16(c.out_addr) * self.wchamax_w, full)
            sp = 0                  # the battery idles when the limits allow it
            if lo is not None and sp < lo:
                sp = lo
            if hi is not None and sp > hi:
                sp = hi
            return sp
        if c.mode_addr >= 0 and r[c.mode_addr] != c.mode_value:
            return 0                # not in forced mode: the device runs its own program (idle here)
        cmd = r[c.cmd_addr]

        def power(key):
            addr, typ, lsw, e = c.pw[key]
            n = rd.TYPE_WORDS[typ]
            return rd.decode([r[addr + k] for k in range(n)], 0, typ, lsw, e, 1, rd.LIMIT_W, 0) or 0
        if cmd == c.cmd_discharge:
            return power('discharge_power' if 'discharge_power' in c.pw else 'power')
        if cmd == c.cmd_charge:
            return -power('charge_power' if 'charge_power' in c.pw else 'power')
        return 0

    def on_write(self, addr, n):
        c = self.ctl
        self.writes += 1
        if c.scheme == 'sunspec_124' and c.rvrt_addr >= 0:
            self.bat.revert_ms = self.regs[3][c.rvrt_addr] * 1000
        sp = self.decode_setpoint()
        self.last_setpoint = sp
        self.bat.command(sp)        # every control write re-arms the revert timer

    def reset_control(self):
        """Device rebooted: control registers back to 0, battery idle."""
        for a in self.writable:
            self.regs[3][a] = 0
        self.bat.command(0)
        self.last_setpoint = 0


# --- faults -----------------------------------------------------------------------------------------------

# only='read' / 'write' restricts a fault to one direction, so that e.g. a battery whose reads fail
# while its writes still work (the case where 0 W must still reach it) can be reproduced.
ONLY_FCS = {'read': (1, 2, 3, 4), 'write': (5, 6, 15, 16)}


class Fault:
    def __init__(self, kind, unit=None, duration_s=None, count=None, code=4, delay_ms=500, only=None):
        if kind not in FAULT_KINDS:
            raise ValueError('fault kind %r not one of %s' % (kind, ', '.join(FAULT_KINDS)))
        if kind == 'exception' and not 1 <= code <= 255:
            raise ValueError('exception code must be 1..255')
        if only is not None and only not in ONLY_FCS:
            raise ValueError('fault only=%r not one of read, write (or None: every request)' % (only,))
        self.kind = kind
        self.unit = unit
        self.until = None if duration_s is None else time.monotonic() + duration_s
        self.count = count              # counts only the requests the fault applies to
        self.code = code
        self.delay_s = delay_ms / 1000.0
        self.only = only
        self.fcs = ONLY_FCS.get(only)   # None: every function code
        self.hits = 0

    def applies(self, unit, fc):
        return (self.unit is None or self.unit == unit) and (self.fcs is None or fc in self.fcs)

    def __repr__(self):
        return 'Fault(%s, unit=%s, count=%s%s)' % (self.kind, self.unit, self.count,
                                                 '' if self.only is None else ', only=' + self.only)


# --- one RS-485 line on a pty ------------------------------------------------------------------------

class RtuLine:
    """RTU responder on the master end of a pty. Devices keyed by unit id; unknown ids stay silent."""

    def __init__(self, devices, lock, gap_ms=20, faults=None, rng=None):
        self.devices = {d.unit_id: d for d in devices}
        if len(self.devices) != len(devices):
            raise ValueError('two devices with the same unit id on one line')
        self.lock = lock
        self.gap_s = gap_ms / 1000.0
        self.faults = faults            # shared list owned by the simulator
        self.rng = rng or random.Random(1)
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)          # no echo, no CR/LF translation: a binary line
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.wake_r, self.wake_w = os.pipe()
        self.running = False
        self.thread = None
        self.stats = {'frames': 0, 'crc_errors': 0, 'dropped_bytes': 0, 'responses': 0,
                      'faults': 0, 'foreign': 0}
        self.on_fault_end = None

    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self._run, name='rtu-' + self.path, daemon=True)
        self.thread.start()

    def stop(self):
        self.running = False
        try:
            os.write(self.wake_w, b'x')
        except OSError:
            pass
        if self.thread:
            self.thread.join(2)
        for fd in (self.master, self.slave, self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _run(self):
        buf = bytearray()
        last = 0.0
        while self.running:
            timeout = self.gap_s if buf else 0.2
            try:
                r, _, _ = select.select([self.master, self.wake_r], [], [], timeout)
            except (OSError, ValueError):
                return
            if self.wake_r in r:
                return
            now = time.monotonic()
            if self.master in r:
                try:
                    data = os.read(self.master, 4096)
                except OSError as e:
                    if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                        continue
                    if e.errno == errno.EIO:
                        time.sleep(0.01)
                        continue
                    return
                buf += data
                last = now
                while True:
                    n = request_len(buf)
                    if n is None or len(buf) < n:
                        break
                    if not crc_ok(bytes(buf[:n])):
                        break           # wait for the inter-frame gap, then drop everything
                    frame = bytes(buf[:n])
                    del buf[:n]
                    self._handle(frame)
            elif buf and now - last >= self.gap_s:
                frame = bytes(buf)
                buf.clear()
                if crc_ok(frame) and request_len(frame) is None:
                    self._handle(frame)     # well-formed request with an unsupported fc
                else:
                    self.stats['crc_errors'] += 1
                    self.stats['dropped_bytes'] += len(frame)

    def _fault_for(self, unit, fc):
        now = time.monotonic()
        with self.lock:
            for f in list(self.faults):
                if f.until is not None and now >= f.until:
                    self.faults.remove(f)
                    if self.on_fault_end:
                        self.on_fault_end(f)
            for f in self.faults:
                if f.applies(unit, fc):
                    f.hits += 1
                    if f.count is not None:
                        f.count -= 1
                        if f.count <= 0:
                            self.faults.remove(f)
                            if self.on_fault_end:
                                self.on_fault_end(f)
                    return f
        return None

    def _handle(self, frame):
        self.stats['frames'] += 1
        unit = frame[0]
        fc = frame[1]
        dev = self.devices.get(unit)
        if dev is None and unit != 0:
            self.stats['foreign'] += 1
            return                      # another device's address: a real device stays silent
        f = self._fault_for(unit, fc)
        if f is not None:
            self.stats['faults'] += 1
            if f.kind in ('silent', 'gone'):
                return
        targets = [dev] if unit else list(self.devices.values())
        resp = None
        for d in targets:
            resp = self._execute(d, frame)
        if unit == 0:
            return                      # broadcast: executed, never answered
        if f is not None:
            if f.kind == 'exception':
                resp = with_crc(bytes((unit, fc | 0x80, f.code)))
            elif f.kind == 'bad_crc':
                resp = resp[:-2] + bytes((resp[-2] ^ 0x5A, resp[-1] ^ 0xA5))
            elif f.kind == 'garbage':
                resp = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(3, 24)))
            elif f.kind == 'truncate':
                resp = resp[:max(1, len(resp) // 2)]
            elif f.kind == 'slow':
                # the answer goes out delay_ms late without holding the line: a late device does
                # not stop the other one from answering, its late frame just lands in whatever
                # exchange is on the line then (as on a real RS-485 bus)
                t = threading.Timer(f.delay_s, self._send, (resp,))
                t.daemon = True
                t.start()
                return
        self._send(resp)

    def _execute(self, dev, frame):
        unit, fc = frame[0], frame[1]
        try:
            with self.lock:
                dev.requests += 1
                if fc in (3, 4):
                    addr = (frame[2] << 8) | frame[3]
                    count = (frame[4] << 8) | frame[5]
                    vals = dev.read(fc, addr, count)
                    body = bytearray((unit, fc, 2 * count))
                    for v in vals:
                        body += bytes((v >> 8, v & 0xFF))
                    return with_crc(body)
                if fc == 6:
                    addr = (frame[2] << 8) | frame[3]
                    dev.write(addr, [(frame[4] << 8) | frame[5]])
                    return bytes(frame)
                if fc == 16:
                    addr = (frame[2] << 8) | frame[3]
                    count = (frame[4] << 8) | frame[5]
                    if not 1 <= count <= 123 or frame[6] != 2 * count:
                        raise ModbusError(3)
                    dev.write(addr, [(frame[7 + 2 * k] << 8) | frame[8 + 2 * k] for k in range(count)])
                    return with_crc(bytes(frame[:6]))
                raise ModbusError(1)
        except ModbusError as e:
            return with_crc(bytes((unit, fc | 0x80, e.code)))

    def _send(self, data):
        try:
            os.write(self.master, data)
            self.stats['responses'] += 1
        except OSError:
            pass                        # nobody reading and the pty buffer full: the bytes are lost


# --- the site ------------------------------------------------------------------------------------------

class SiteSimulator:
    """Meter + battery on one (default) or two RTU lines, driven by site_model and a scenario.

    sim = SiteSimulator(meter='eastron_sdm630', battery='sunspec_battery_802_124'); sim.start()
    sim.paths: pty slave path per line; sim.path_of(unit_id); sim.set_fault(...); sim.stop().
    """

    def __init__(self, meter='eastron_sdm630', battery='sunspec_battery_802_124', meter_id=None,
                 battery_id=None, split=False, scenario=None, speed=1.0, tick_ms=50,
                 battery_kw=None, gap_ms=20, seed=1, revert_s=0):
        self.lock = threading.RLock()
        self.faults = []
        self.scenario = scenario if isinstance(scenario, Scenario) else (
            Scenario.from_csv(scenario) if scenario else Scenario.constant())
        self.site = site_model.Site(self.scenario.base, self.scenario.pv, self.scenario.evs)
        kw = dict(capacity_wh=100000, soc_bp=5000, max_chg_w=50000, max_dis_w=50000,
                  ramp_w_per_s=50000, revert_ms=revert_s * 1000)
        kw.update(battery_kw or {})
        self.bat = site_model.Battery(**kw)
        self.meter = self.battery = None
        devs = []
        if meter:
            mp = load_profile(meter)
            if mp.kind != 'meter':
                raise ValueError('%s is not a meter profile' % meter)
            self.meter = MeterDevice(mp, meter_id or mp.unit_id)
            devs.append(self.meter)
        if battery:
            bp = load_profile(battery)
            if bp.kind != 'battery':
                raise ValueError('%s is not a battery profile' % battery)
            self.battery = BatteryDevice(bp, battery_id or bp.unit_id, self.bat)
            devs.append(self.battery)
        self.devices = devs
        rng = random.Random(seed)
        groups = [[d] for d in devs] if split else [devs]
        self.lines = [RtuLine(g, self.lock, gap_ms, self.faults, rng) for g in groups if g]
        for ln in self.lines:
            ln.on_fault_end = self._fault_ended
        self.paths = [ln.path for ln in self.lines]
        self.speed = speed
        self.tick_s = tick_ms / 1000.0
        self.t_ms = 0                   # scenario time
        self.running = False
        self.thread = None
        self.physics_paused = False
        self.step_physics(0)

    def path_of(self, unit_id):
        for ln in self.lines:
            if unit_id in ln.devices:
                return ln.path
        raise KeyError(unit_id)

    # physics
    def step_physics(self, dt_ms, real_ms=None):
        with self.lock:
            self.t_ms += dt_ms
            if dt_ms:
                self.bat.step(dt_ms, real_ms)
            t_s = self.t_ms // 1000
            l1, l2, l3, tot = self.site.phases(t_s, self.bat.actual_w)
            if self.meter and not self.meter.frozen:
                self.meter.update(l1, l2, l3, tot, dt_ms)
            if self.battery and not self.battery.frozen:
                self.battery.update()
                self.battery.heartbeat(self.t_ms)
            if self.meter and not self.meter.frozen:
                self.meter.heartbeat(self.t_ms)
            self.gcp = (l1, l2, l3, tot)

    def _run(self):
        prev = time.monotonic()
        carry = 0.0
        while self.running:
            time.sleep(self.tick_s)
            now = time.monotonic()
            carry += (now - prev) * 1000.0 * self.speed
            prev = now
            dt = int(carry)
            carry -= dt
            if dt > 0 and not self.physics_paused:
                self.step_physics(dt, int(dt / self.speed))     # the revert timer counts real time

    def start(self):
        for ln in self.lines:
            ln.start()
        self.running = True
        self.thread = threading.Thread(target=self._run, name='site-physics', daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.running = False
        if self.thread:
            self.thread.join(2)
        for ln in self.lines:
            ln.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()

    # faults
    def set_fault(self, kind, unit=None, duration_s=None, count=None, code=4, delay_ms=500, only=None):
        """Inject a fault for unit (None: every device on every line). Returns the Fault.

        silent: no answer. gone: no answer, and when the fault ends the device comes back
        rebooted (control registers 0, battery idle). bad_crc: answer with a corrupted CRC.
        exception: answer exception `code`. slow: answer after delay_ms. garbage: random bytes
        instead of the answer. truncate: first half of the answer. Ends after duration_s seconds
        and/or count requests (None: until cleared). only='read' (FC 1-4) or 'write' (FC 5, 6,
        15, 16): the fault hits only those requests (and counts only them); the others are
        answered normally. A slow answer does not hold the line: it is sent delay_ms late
        from a timer, into whatever exchange is on the line by then.
        """
        f = Fault(kind, unit, duration_s, count, code, delay_ms, only)
        with self.lock:
            self.faults.append(f)
        return f

    def clear_faults(self):
        with self.lock:
            for f in list(self.faults):
                self.faults.remove(f)
                self._fault_ended(f)

    def _fault_ended(self, f):
        if f.kind == 'gone':
            for d in self.devices:
                if f.unit is None or d.unit_id == f.unit:
                    d.reset_control()

    def apply_control(self, ctl):
        """Replace the fault table from a control-file dict {"faults": [{kind, unit, ...}]}."""
        self.clear_faults()
        for fd in ctl.get('faults', []):
            self.set_fault(fd['kind'], fd.get('unit'), fd.get('duration_s'), fd.get('count'),
                           fd.get('code', 4), fd.get('delay_ms', 500), fd.get('only'))
        if 'paused' in ctl:
            self.physics_paused = bool(ctl['paused'])

    def status(self):
        with self.lock:
            return {
                't_ms': self.t_ms,
                'lines': [{'path': ln.path, 'units': {str(u): d.prof.name for u, d in ln.devices.items()},
                           'stats': dict(ln.stats)} for ln in self.lines],
                'gcp_w': {'l1': self.gcp[0], 'l2': self.gcp[1], 'l3': self.gcp[2], 'total': self.gcp[3]},
                'battery': {'soc_bp': self.bat.soc_bp, 'actual_w': self.bat.actual_w,
                            'setpoint_w': self.bat.setpoint_w, 'revert_ms': self.bat.revert_ms,
                            'since_cmd_ms': self.bat.since_cmd_ms},
                'faults': [{'kind': f.kind, 'unit': f.unit, 'count': f.count} for f in self.faults],
            }


# --- CLI ---------------------------------------------------------------------------------------------

def _write_json(path, obj):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def cmd_run(a):
    sim = SiteSimulator(meter=a.meter or None, battery=a.battery or None, meter_id=a.meter_id,
                        battery_id=a.battery_id, split=a.split,
                        scenario=Scenario.from_csv(a.scenario, a.loop) if a.scenario else None,
                        speed=a.speed, battery_kw={'capacity_wh': a.capacity_wh, 'soc_bp': a.soc_bp,
                                                   'max_chg_w': a.max_w, 'max_dis_w': a.max_w},
                        revert_s=a.revert_s, seed=a.seed)
    sim.start()
    info = {'lines': [{'path': ln.path, 'units': {str(u): d.prof.name for u, d in ln.devices.items()}}
                      for ln in sim.lines], 'pid': os.getpid()}
    if a.pty_file:                      # written before the PTY lines: seeing one implies the file
        _write_json(a.pty_file, info)
    for ln in info['lines']:
        print('PTY %s %s' % (ln['path'], ' '.join('%s=%s' % kv for kv in ln['units'].items())), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *x: stop.set())
    signal.signal(signal.SIGINT, lambda *x: stop.set())
    mtime = None
    next_status = 0.0
    try:
        while not stop.wait(0.1):
            if a.control:
                try:
                    m = os.stat(a.control).st_mtime_ns
                except FileNotFoundError:
                    m = None
                if m is not None and m != mtime:
                    mtime = m
                    try:
                        sim.apply_control(_read_json(a.control))
                        print('control: %s' % sim.status()['faults'], flush=True)
                    except (ValueError, KeyError, TypeError) as e:
                        print('control file ignored: %s' % e, file=sys.stderr, flush=True)
            if a.status and time.monotonic() >= next_status:
                next_status = time.monotonic() + 0.5
                _write_json(a.status, sim.status())
    finally:
        sim.stop()
    return 0


def cmd_fault(a):
    ctl = _read_json(a.control)
    f = {'kind': a.kind}
    for k in ('unit', 'duration', 'count', 'code', 'delay_ms', 'only'):
        v = getattr(a, k)
        if v is not None:
            f['duration_s' if k == 'duration' else k] = v
    Fault(a.kind, code=a.code or 4, only=a.only)     # validate
    ctl.setdefault('faults', []).append(f)
    _write_json(a.control, ctl)
    return 0


def cmd_clear(a):
    ctl = _read_json(a.control)
    ctl['faults'] = []
    _write_json(a.control, ctl)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    r = sub.add_parser('run', help='serve a meter and a battery on pty(s)')
    r.add_argument('--meter', default='eastron_sdm630', help='meter profile name or path ("" = none)')
    r.add_argument('--meter-id', type=int)
    r.add_argument('--battery', default='sunspec_battery_802_124', help='battery profile ("" = none)')
    r.add_argument('--battery-id', type=int)
    r.add_argument('--split', action='store_true', help='one pty per device instead of a shared line')
    r.add_argument('--scenario', help='CSV: time_s,base_w,pv_w,ev_l1_w,ev_l2_w,ev_l3_w')
    r.add_argument('--loop', action='store_true', help='repeat the scenario')
    r.add_argument('--speed', type=float, default=1.0, help='scenario seconds per real second')
    r.add_argument('--capacity-wh', type=int, default=100000)
    r.add_argument('--soc-bp', type=int, default=5000)
    r.add_argument('--max-w', type=int, default=50000)
    r.add_argument('--revert-s', type=int, default=0,
                   help='battery revert timer for devices without one in their profile (0 = none)')
    r.add_argument('--seed', type=int, default=1)
    r.add_argument('--pty-file', help='write {"lines": [{"path", "units"}], "pid"} here')
    r.add_argument('--control', help='JSON control file to watch: {"faults": [...], "paused": bool}')
    r.add_argument('--status', help='write a JSON status snapshot here every 0.5 s')
    r.add_argument('--list', action='store_true', help=argparse.SUPPRESS)
    f = sub.add_parser('fault', help='add a fault to a control file')
    f.add_argument('control')
    f.add_argument('kind', choices=FAULT_KINDS)
    f.add_argument('--unit', type=int)
    f.add_argument('--duration', type=float)
    f.add_argument('--count', type=int)
    f.add_argument('--code', type=int)
    f.add_argument('--delay-ms', type=int)
    f.add_argument('--only', choices=sorted(ONLY_FCS), help='only reads (FC 1-4) or only writes (FC 5/6/15/16)')
    c = sub.add_parser('clear', help='remove all faults from a control file')
    c.add_argument('control')
    sub.add_parser('profiles', help='list the profile names')
    a = ap.parse_args(argv)
    if a.cmd == 'run':
        return cmd_run(a)
    if a.cmd == 'fault':
        return cmd_fault(a)
    if a.cmd == 'clear':
        return cmd_clear(a)
    print('\n'.join(list_profiles()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
