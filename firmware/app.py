# Device runtime: one control cycle = poll meter -> poll battery -> core step -> write setpoint.
#
# The same code runs on an ESP32 / RP2040 and on the MicroPython unix port (firmware/unix/machine.py
# stands in for `machine`). Pacing: a machine.Timer callback only sets a flag (no allocation, so it
# is legal as a hard IRQ on RP2040 and as a soft one on ESP32); the main loop sees the flag, runs
# the cycle, and feeds the watchdog only when a cycle completed. Until the first valid readings the
# core is in fail-safe and the battery is commanded 0 W.
#
# Data age is judged from the data: it is the time since this device last answered every block
# with a valid frame, not the time since we asked.
import sys
import time
import json
from array import array

import machine

import bess_core as bc
from bess_config import ConfigError
import devprofile
import sitecfg
from rtu import RtuMaster, OK, NO_RESPONSE
from bus import Bus
from comms import Comms

AGE_NEVER_MS = 600001           # > the largest stale_ms: "never read" is always stale
HEARTBEAT_MS = 5000             # rewrite an unchanged setpoint this often (revert timers, resets)


class ConfigProblem(Exception):
    pass


class ConfigMissing(ConfigProblem):
    pass


class Poller:
    """One Modbus device described by a profile: reads every block, tracks the age of the data."""

    def __init__(self, bus, prof, unit):
        self.bus = bus
        self.prof = prof
        self.unit = unit
        self.blocks = prof.blocks
        self.dev = bus.add_device(unit, prof.name, prof.min_gap_ms)
        self.t_ok = None                # ticks_ms of the last complete read
        # identify: registers that must read exactly so before we trust (or write to) the device:
        # 1 confirmed, 0 not yet (no answer: asked again next cycle), -1 refused for good
        self.ident = 0 if prof.identify else 1
        n = 1
        for e in prof.identify:
            if len(e['values']) > n:
                n = len(e['values'])
        self._id_buf = array('H', bytes(2 * n))
        self.bytes_per_poll = 0
        for b in self.blocks:           # request 8 bytes, response 5 + 2 x count
            self.bytes_per_poll += 8 + 5 + 2 * b.count

    def identify(self):
        """Check the profile's identify registers. A mismatch or an exception response (e.g.
        illegal address: another register layout) refuses the device for good."""
        for e in self.prof.identify:
            vals = e['values']
            st = self.bus.read(self.unit, e['fc'], e['addr'], len(vals), self._id_buf)
            if st == NO_RESPONSE:
                return 0
            bad = st != OK
            for k in range(len(vals)):
                if bad or self._id_buf[k] != vals[k]:
                    self.ident = -1
                    print('REFUSED %s at unit %d: register %d %s, the profile expects %r: wrong profile or '
                          'layout; it is neither trusted nor written to' % (
                              self.prof.name, self.unit, e['addr'] + k,
                              'answered status %d' % st if bad else 'reads %d' % self._id_buf[k], vals))
                    return -1
        self.ident = 1
        print('%s at unit %d: layout confirmed (%d identify registers)' % (self.prof.name, self.unit,
                                                                         len(self.prof.identify)))
        return 1

    def poll(self):
        if self.ident != 1 and (self.ident < 0 or self.identify() != 1):
            self.prof.invalidate()
            return 0
        read = self.bus.read
        ok = 1
        for b in self.blocks:
            st = read(self.unit, b.fc, b.start, b.count, b.buf)
            if st == OK:
                b.ok = 1
                continue
            ok = 0
            b.ok = 0
            if st == NO_RESPONSE:       # silent device: don't spend the cycle timing out per block
                self.prof.invalidate()
                break
        if ok:
            self.t_ok = time.ticks_ms()
        return ok

    def age_ms(self, now):
        if self.t_ok is None:
            return AGE_NEVER_MS
        a = time.ticks_diff(now, self.t_ok)
        if a < 0:                       # read during this cycle, after `now` was taken
            return 0
        return a if a < AGE_NEVER_MS else AGE_NEVER_MS


def send_writes(bus, unit, writes):
    """Send a profile's planned setpoint writes in order; OK, or the first failing status."""
    for w in writes:
        if w.fc == 6:
            st = bus.write_register(unit, w.addr, w.buf[0])
        else:
            st = bus.write_registers(unit, w.addr, w.buf)
        if st != OK:
            return st
    return OK


def wire_time_ms(nbytes, baud, bits_per_char=10):
    return nbytes * bits_per_char * 1000 // baud


def load_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        if e.args and e.args[0] == 2:       # ENOENT: first boot, nothing deployed yet
            raise ConfigMissing('%s %s: missing' % (what, path))
        raise ConfigProblem('%s %s: cannot read (%s)' % (what, path, e))
    except ValueError as e:
        raise ConfigProblem('%s %s: not valid JSON (%s)' % (what, path, e))


def check_site(site, path):
    """Structural check of the site config (lib/sitecfg.py: the same check `make deploy` runs)."""
    errs = sitecfg.check(site)
    if errs:
        raise ConfigProblem('site config %s invalid:\n  %s' % (path, '\n  '.join(errs)))


# Where profiles and board files live: at the root on a board (deploy flattens), in firmware/
# and at the top of a checkout on the unix port.
PROFILE_DIRS = ('profiles', 'firmware/profiles')


def load_profile(root, name):
    for d in PROFILE_DIRS:
        try:
            return devprofile.load('%s/%s/%s.json' % (root, d, name))
        except OSError:
            continue
        except devprofile.ProfileError as e:
            raise ConfigProblem('device profile %r: %s' % (name, e))
    raise ConfigProblem('device profile %r not found in %s' % (name, ' or '.join('%s/%s' % (root, d) for d in PROFILE_DIRS)))


class Runtime:
    def __init__(self, site, board, root):
        self.bus = open_bus(site, board)
        baud = site.get('bus', {}).get('baud', 9600)
        self.meter = Poller(self.bus, load_profile(root, site['meter']['profile']),
                            site['meter'].get('unit_id', 1))
        self.battery = Poller(self.bus, load_profile(root, site['battery']['profile']),
                              site['battery'].get('unit_id', 2))
        if self.meter.prof.kind != 'meter' or self.battery.prof.kind != 'battery':
            raise ConfigProblem('meter profile must be kind "meter" and battery profile kind "battery"')
        try:
            self.ctl = bc.Controller(site['control'])
        except ConfigError as e:
            raise ConfigProblem(str(e))
        self.period_ms = site.get('period_ms', 1000)
        self.log_cycles = site.get('log_cycles', 0)
        self.due = 0
        self.t_last = None
        self.sp_sent = None
        self.t_sent = 0
        self.write_errors = 0
        self.cycles = 0
        self.max_cycle_us = 0
        self.last_cycle_us = 0
        self.overruns = 0
        self.cycle_errors = 0           # cycles that raised (a bug): failed safe, see run()
        self.hook_errors = 0            # on_cycle (MQTT side) raised
        self.tick_ref = self.tick       # bound method created once, not in the IRQ
        m, b = self.meter, self.battery
        self.wire_bytes = m.bytes_per_poll + b.bytes_per_poll
        print('bus: %d baud; meter %s: %d requests, battery %s: %d requests; %d bytes polled per cycle '
              '= %d ms of line time' % (baud, m.prof.name, len(m.blocks), b.prof.name, len(b.blocks),
                                        self.wire_bytes, wire_time_ms(self.wire_bytes, baud)))

    def tick(self, _timer):
        self.due = 1                    # IRQ-safe: one attribute store of a small int

    def read_inputs(self, now):
        i = self.ctl.inp
        m = self.meter
        if m.poll():
            p = m.prof
            tot = p.value('total_w')
            l1 = p.value('l1_w')
            l2 = p.value('l2_w')
            l3 = p.value('l3_w')
            i.meter_valid = 0 if tot is None else 1
            if tot is not None:
                i.gcp_w = tot
            if l1 is None or l2 is None or l3 is None:
                i.phases_valid = 0
            else:
                i.phases_valid = 1
                i.gcp_l1_w = l1
                i.gcp_l2_w = l2
                i.gcp_l3_w = l3
        i.meter_age_ms = m.age_ms(now)
        b = self.battery
        if b.poll():
            p = b.prof
            soc = p.value('soc_bp')
            pw = p.value('power_w')
            i.bat_valid = 0 if (soc is None or pw is None) else 1
            if i.bat_valid:
                i.soc_bp = soc
                i.bat_w = pw
            c = p.value('max_chg_w')
            d = p.value('max_dis_w')
            i.bms_max_chg_w = -1 if c is None else c
            i.bms_max_dis_w = -1 if d is None else d
        i.bat_age_ms = b.age_ms(now)

    def write_setpoint(self, sp, now):
        """Send the setpoint when it changed or the heartbeat is due. Returns 1 when sent."""
        if sp == self.sp_sent and time.ticks_diff(now, self.t_sent) < HEARTBEAT_MS:
            return 0
        b = self.battery
        if b.ident != 1:                # unconfirmed or refused device: never written to
            return 0
        writes = b.prof.control.plan(sp) if b.prof.control is not None else None
        if writes is None:              # cannot encode (e.g. WChaMax unknown yet): nothing sent,
            self.write_errors += 1      # and it shows (telemetry err.battery)
            self.sp_sent = None
            return 0
        if send_writes(self.bus, b.unit, writes) != OK:
            self.write_errors += 1
            self.sp_sent = None         # retry next cycle
            return 0
        self.sp_sent = sp
        self.t_sent = now
        return 1

    def cycle(self):
        t0 = time.ticks_us()
        now = time.ticks_ms()
        i = self.ctl.inp
        i.dt_ms = self.period_ms if self.t_last is None else time.ticks_diff(now, self.t_last)
        self.t_last = now
        self.read_inputs(now)
        self.ctl.step()
        self.write_setpoint(self.ctl.out.setpoint_w, time.ticks_ms())
        self.cycles += 1
        us = time.ticks_diff(time.ticks_us(), t0)
        self.last_cycle_us = us
        if us > self.max_cycle_us:
            self.max_cycle_us = us
        if us > self.period_ms * 1000:
            self.overruns += 1
        if self.log_cycles:
            self.log_line(now, us)

    def log_line(self, now, us):
        i, o = self.ctl.inp, self.ctl.out
        print('cyc t=%d gcp=%d l1=%d l2=%d l3=%d bat=%d soc=%d sp=%d state=%s bind=%s flags=%d '
              'us=%d merr=%d berr=%d' % (
                  now, i.gcp_w, i.gcp_l1_w, i.gcp_l2_w, i.gcp_l3_w, i.bat_w, i.soc_bp, o.setpoint_w,
                  bc.STATE_NAMES[o.state], bc.BINDING_NAMES[o.binding], o.flags, us,
                  self.meter.dev.c[10], self.battery.dev.c[10]))

    def fail_safe(self, e):
        """A cycle raised: say so (rate-limited) and command 0 W if the bus allows."""
        self.cycle_errors += 1
        self.cycles += 1
        sent = 0
        try:
            self.sp_sent = None
            sent = self.write_setpoint(0, time.ticks_ms())
        except Exception:
            pass
        if self.cycle_errors == 1 or self.cycle_errors % 100 == 0:
            print('cycle failed (%d times): %r; 0 W %s' % (self.cycle_errors, e,
                                                          'sent' if sent else 'could not be sent'))

    def run(self, wdt=None, cycles=0, hard=False, timer_id=-1, on_cycle=None):
        """Paced loop. cycles=0: forever. on_cycle(): called after each cycle (MQTT link etc.)."""
        tim = machine.Timer(timer_id)
        tim.init(mode=machine.Timer.PERIODIC, period=self.period_ms, callback=self.tick_ref, hard=hard)
        self.due = 1                    # first cycle at once: 0 W goes out immediately
        try:
            while cycles == 0 or self.cycles < cycles:
                if self.due:
                    self.due = 0
                    try:
                        self.cycle()
                        done = 1
                    except Exception as e:      # a bug must not leave the last setpoint standing
                        done = 0
                        self.fail_safe(e)
                    if done and wdt is not None:
                        wdt.feed()              # a fault that persists ends in a watchdog reset
                    if on_cycle is not None:
                        try:
                            on_cycle()
                        except Exception as e:  # telemetry/commands must never stop control
                            self.hook_errors += 1
                            if self.hook_errors == 1 or self.hook_errors % 100 == 0:
                                print('on_cycle failed (%d times): %r' % (self.hook_errors, e))
                else:
                    machine.idle()
        finally:
            tim.deinit()


def open_bus(site, board):
    """UART (+ DE pin) and Bus from the board file and the site's bus section."""
    bus_cfg = site.get('bus', {})
    baud = bus_cfg.get('baud', 9600)
    parity = {'N': None, 'E': 0, 'O': 1}[bus_cfg.get('parity', 'N')]
    u = board['uart']
    dev = bus_cfg.get('device') or u.get('device')
    if dev and hasattr(machine, 'UART_DEVICES'):
        machine.UART_DEVICES[u['id']] = dev
    kw = {}
    if u.get('tx') is not None:
        kw['tx'] = u['tx']
        kw['rx'] = u['rx']
    uart = machine.UART(u['id'], baudrate=baud, bits=8, parity=parity, stop=1, **kw)
    de_pin = board.get('rs485_de_pin')
    de = machine.Pin(de_pin, machine.Pin.OUT, value=0) if de_pin is not None else None
    master = RtuMaster(uart, de, baudrate=baud, parity=parity, timeout_ms=bus_cfg.get('timeout_ms', 200))
    return Bus(master, retries=bus_cfg.get('retries', 1))


class SafeBattery:
    """Safe state: only the battery, held at 0 W while the rest of the config is unusable."""

    def __init__(self, site, board, root):
        b = site['battery']
        prof = load_profile(root, b['profile'])
        if prof.kind != 'battery' or prof.control is None:
            raise ConfigProblem('battery profile %r cannot take a setpoint' % b['profile'])
        self.bus = open_bus(site, board)
        self.poller = Poller(self.bus, prof, b.get('unit_id', 2))
        self.name = '%s id %d' % (prof.name, self.poller.unit)
        self.sent = 0                   # 0 W writes acknowledged
        self.failed = 0

    def zero(self):
        """Read the battery (a SunSpec plan needs WChaMax first), write 0 W. 1 when acknowledged."""
        p = self.poller
        p.poll()
        writes = p.prof.control.plan(0) if p.ident == 1 else None   # never write an unconfirmed device
        if writes is not None and send_writes(self.bus, p.unit, writes) == OK:
            self.sent += 1
            return 1
        self.failed += 1
        return 0


SET_HINT = ('set the site config: board, bus {baud, parity}, meter {profile, unit_id}, battery {profile, '
            'unit_id}, control {import_limit_w, ...} (docs/deploy.md; `make deploy` writes it from '
            'tools/site.template.json)')


def safe_battery(site, board, root):
    """(SafeBattery or None, why not, board). Loads the board file if main() did not get to it."""
    if not isinstance(site, dict):
        return None, 'no site config', board
    if board is None and isinstance(site, dict) and sitecfg.name_ok(site.get('board')):
        try:
            board = load_json('%s/boards/%s.json' % (root, site['board']), 'board file')
        except ConfigProblem as e:
            return None, str(e), None
    if board is None:
        return None, 'no board file', None
    errs = sitecfg.battery_errors(site)
    if errs:
        return None, '; '.join(errs), board
    try:
        return SafeBattery(site, board, root), None, board
    except Exception as e:             # profile missing, UART cannot open, ...
        return None, str(e), board


def safe_idle(msg, board, period_ms=1000, site=None, root='', cycles=0):
    """No usable config: hold the battery at 0 W if it can be reached, keep telling why, keep the
    watchdog fed. cycles=0: forever (tests pass a number)."""
    bat, why, board = safe_battery(site, board, root)
    if bat is None:
        state = 'battery NOT commanded: cannot talk to any battery (%s)' % why
    wdt = machine.WDT(timeout=board.get('wdt_timeout_ms', 10000)) if board else None
    n = 0
    while cycles == 0 or n < cycles:
        if bat is not None:
            ok = bat.zero()
            state = ('battery held at 0 W (%s, %d writes)' % (bat.name, bat.sent) if ok else
                     'battery 0 W NOT confirmed: %s not answering (%d tries)' % (bat.name, bat.failed))
        if n % 10 == 0:
            print('SAFE STATE (%s): %s' % (state, msg))
        n += 1
        if wdt is not None:
            wdt.feed()
        time.sleep_ms(period_ms)


def problem_text(e):
    if isinstance(e, ConfigMissing):
        return '%s; %s' % (e, SET_HINT)
    if isinstance(e, ConfigProblem):
        return str(e)
    hint = ' (bus.device / the board file\'s uart pins?)' if isinstance(e, OSError) else ''
    return 'cannot start: %s: %s%s' % (type(e).__name__, e, hint)


def main(config_path='/site.json', root='', cycles=0):
    board = None
    site = None
    try:
        site = load_json(config_path, 'site config')
        check_site(site, config_path)
        board = load_json('%s/boards/%s.json' % (root, site.get('board', 'unknown')), 'board file')
        terrs = sitecfg.timing_errors(site, board)
        if terrs:
            raise ConfigProblem('site config %s: %s' % (config_path, terrs[0]))
        comms = Comms(site, config_path)    # saved settings (accepted commands) replace site['control']
        rt = Runtime(site, board, root)
        comms.attach(rt)
    except Exception as e:              # any failure to start: safe state, saying why
        safe_idle(problem_text(e), board, site=site, root=root)
        return
    wdt = machine.WDT(timeout=board.get('wdt_timeout_ms', 10000))
    timer = board.get('timer', {})
    rt.run(wdt, cycles, hard=timer.get('hard', False), timer_id=timer.get('id', -1),
           on_cycle=comms.cycle if comms.link is not None else None)
    print('done: %d cycles, max cycle %d us, %d overruns, meter failed calls %d, battery failed calls %d, '
          'setpoint write errors %d, cycle errors %d' % (rt.cycles, rt.max_cycle_us, rt.overruns,
                                                         rt.meter.dev.c[10], rt.battery.dev.c[10],
                                                         rt.write_errors, rt.cycle_errors))
    print('stats ' + json.dumps({'meter': rt.meter.dev.stats(), 'battery': rt.battery.dev.stats()}))


if __name__ == '__main__':
    main(*sys.argv[1:2])
