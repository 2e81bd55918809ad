# The control cycle (resident): poll meter -> poll battery -> core step -> write setpoint ->
# telemetry capture. Built at boot by firmware/startup.py, which is unloaded before run().
#
# The same code runs on an ESP32 / RP2040 and on the MicroPython unix port (firmware/unix/machine.py
# stands in for `machine`). Pacing: a machine.Timer callback only sets a flag (no allocation, so it
# is legal as a hard IRQ on RP2040 and as a soft one on ESP32); the main loop sees the flag, runs
# the cycle, and feeds the watchdog only when a cycle completed. Until the first valid readings the
# core is in fail-safe and the battery is commanded 0 W.
#
# Allocation: a whole cycle (polls, decode, step, setpoint write, telemetry capture) allocates
# nothing on 32-bit MicroPython once both devices are identified; with check_alloc set the loop
# runs it under micropython.heap_lock() and counts any allocation as a failed cycle
# (host_tests/test_heapfit.py runs the firmware so). The MQTT side (after_cycle) runs unlocked.
#
# Data age is judged from the data: it is the time since this device last answered every block
# that was due with a valid frame, not the time since we asked.
import time
from array import array

import machine

from rtu import OK, EXC
from ondemand import load, unload, heap_text
try:
    from micropython import const
except ImportError:         # CPython (host tests)
    def const(x):
        return x

_ST_FAILSAFE = const(6)     # = bess_core.ST_FAILSAFE, a private const there (no global to read)

AGE_NEVER_MS = 600001           # > the largest stale_ms: "never read" is always stale
HEARTBEAT_MS = 5000             # rewrite an unchanged setpoint this often (revert timers, resets)

# Profile point -> Controller.inp field. A group's fields are written only when every point of
# the group decoded; its flag (if any) says whether they did. Optional points (BMS limits) read
# -1 = "not reported" when missing.
GROUPS = {
    'meter': ((('total_w',), ('gcp_w',), 'meter_valid'),
              (('l1_w', 'l2_w', 'l3_w'), ('gcp_l1_w', 'gcp_l2_w', 'gcp_l3_w'), 'phases_valid')),
    'battery': ((('soc_bp', 'power_w'), ('soc_bp', 'bat_w'), 'bat_valid'),
                (('max_chg_w',), ('bms_max_chg_w',), None),
                (('max_dis_w',), ('bms_max_dis_w',), None)),
}


class Group:
    def __init__(self, prof, names, fields, flag):
        self.points = tuple(prof.points.get(n) for n in names)
        self.fields = fields
        self.flag = flag
        self.vals = array('l', [0] * len(names))     # scratch: decoded before any is written

    def apply(self, inp):
        v = self.vals
        k = 0
        for p in self.points:
            x = None if p is None else p.value()
            if x is None:
                if self.flag is not None:
                    setattr(inp, self.flag, 0)
                else:                   # optional: "not reported"
                    for f in self.fields:
                        setattr(inp, f, -1)
                return
            v[k] = x
            k += 1
        k = 0
        for f in self.fields:
            setattr(inp, f, v[k])
            k += 1
        if self.flag is not None:
            setattr(inp, self.flag, 1)


class Poller:
    """One Modbus device described by a profile: reads the blocks that are due, tracks the age of
    the data, confirms the device's identity before it is trusted or written to."""

    def __init__(self, bus, prof, unit):
        self.bus = bus
        self.prof = prof
        self.unit = unit
        self.blocks = prof.blocks
        self.dev = bus.add_device(unit, prof.name, prof.min_gap_ms)
        self.groups = tuple(Group(prof, g[0], g[1], g[2]) for g in GROUPS[prof.kind])
        self.t_ok = None                # ticks_ms of the last complete read
        self.fresh = prof.freshness     # profile_model.Freshness, or None (profile rule 'none')
        self.t_judged = 0
        self.frozen = 0                 # 1: the device answers, but its data is frozen
        # identify: registers that must read exactly so before we trust (or write to) the device:
        # 1 confirmed, 0 not yet (asked again next cycle), -1 refused for good
        self.ident = 0 if prof.identify else 1
        self.id_wait = 0                # identify backoff (firmware/identify.py): cycles to skip
        self.id_backoff = 1
        self.id_tries = 0
        n = 1
        for e in prof.identify:
            if len(e['values']) > n:
                n = len(e['values'])
        self._id_buf = array('H', bytes(2 * n))
        self.bytes_per_poll = 0         # every block, as on the first cycle
        for b in self.blocks:           # request 8 bytes, response 5 + 2 x count
            self.bytes_per_poll += 8 + 5 + 2 * b.count

    def poll(self):
        """Read every block that is due. 1 when all of them answered."""
        if self.ident != 1 and (self.ident < 0 or _identify(self) != 1):
            self.prof.invalidate()
            return 0
        ok = 1
        now = time.ticks_ms()
        for b in self.blocks:
            b.fresh = 0                 # not read by this poll (judge() runs only if all answered)
            if b.ok and b.every_ms and time.ticks_diff(now, b.due) < 0:
                continue                # slow block (cadence), still valid: not due yet
            st = self.bus.read(self.unit, b.fc, b.start, b.count, b.buf)
            if st == OK:
                b.ok = 1
                b.fresh = 1
                if b.every_ms:
                    b.due = time.ticks_add(now, b.every_ms)
                continue
            ok = 0
            b.ok = 0
            if st < EXC:                # silent or garbled device (retries spent): don't spend the
                self.prof.invalidate()  # cycle on its other blocks (sitecfg.worst_cycle_ms)
                break
        if ok:
            f = self.fresh
            if f is not None:
                t = time.ticks_ms()
                fresh = f.judge(time.ticks_diff(t, self.t_judged))
                self.t_judged = t
                self.frozen = f.frozen
                if not fresh:           # answers, but the data does not move: not trusted, and
                    self.prof.invalidate()  # every block is read again until it does
                    return 0
            self.t_ok = time.ticks_ms()
        return ok

    def apply(self, inp):
        for g in self.groups:
            g.apply(inp)

    def age_ms(self, now):
        if self.t_ok is None:
            return AGE_NEVER_MS
        a = time.ticks_diff(now, self.t_ok)
        if a < 0:
            return 0
        return a if a < AGE_NEVER_MS else AGE_NEVER_MS

    def failed_calls(self):
        return self.dev.failed_calls()


def _identify(p):
    """Confirm or refuse the device (firmware/identify.py, loaded until it has decided)."""
    r = load('identify').check(p)
    if r != 0:
        unload(('identify',))
    return r


def send_writes(bus, unit, writes, every=0):
    """Send a profile's planned setpoint writes in order; OK, or the first failing status. A
    failed write stops the rest, unless `every` (0 W): a garbled answer does not mean the device
    missed the request, and every write of a 0 W plan moves the battery toward 0 W, so all are
    sent (with StorCtl_Mod refused, the zero rates alone still stop a SunSpec battery)."""
    first = OK
    for w in writes:
        if w.fc == 6:
            st = bus.write_register(unit, w.addr, w.buf[0])
        else:
            st = bus.write_registers(unit, w.addr, w.buf)
        if st != OK:
            if not every:
                return st
            if first == OK:
                first = st
    return first


class Runtime:
    """meter, battery: Pollers; ctl: bess_core.Controller; period_ms; log_cycles: print a line per
    cycle (allocates: commissioning only); check_alloc: run each cycle under heap_lock."""

    def __init__(self, bus, meter, battery, ctl, period_ms=1000, log_cycles=0, check_alloc=0):
        self.bus = bus
        self.meter = meter
        self.battery = battery
        self.ctl = ctl
        self.period_ms = period_ms
        self.log_cycles = log_cycles
        self.check_alloc = check_alloc
        self.due = 0
        self.t_last = None
        self.sp_sent = None
        self.t_sent = 0
        self.write_errors = 0
        self.sp_unsent = 0              # 1: the last setpoint write failed (telemetry flag sp_unsent)
        self.cycles = 0
        self.max_cycle_us = 0
        self.last_cycle_us = 0          # the whole cycle, after_cycle (MQTT) included
        self.overruns = 0
        self.cycle_errors = 0           # cycles that raised (a bug, or an allocation under check_alloc)
        self.hook_errors = 0            # after_cycle (MQTT side) raised
        self.capture = None             # f(now_ms): telemetry capture, inside the cycle (no allocation)
        self.plan = None                # lib/plan.Plan (a "schedule" section): ticked before step()
        self.clock = None               # firmware/wallclock.Clock, or None: never a valid clock
        self.stale_run = 0              # an extra cycle ran for stale data since the last tick
        self.tick_ref = self.tick       # bound method created once, not in the IRQ
        self.wire_bytes = meter.bytes_per_poll + battery.bytes_per_poll

    def tick(self, _timer):
        self.due = 1                    # IRQ-safe: one attribute store of a small int

    def read_inputs(self):
        # each age is taken right after its device's poll: a cycle that spends its time waiting
        # for a silent meter judges the data as old as it is when step() sees it, so the cycle
        # that finds the meter stale is the one that commands 0 W (docs/reliability.md)
        i = self.ctl.inp
        m = self.meter
        if m.poll():
            m.apply(i)
        elif m.frozen:                  # answers, data frozen: not valid from this cycle on
            i.meter_valid = 0
        i.meter_age_ms = m.age_ms(time.ticks_ms())
        b = self.battery
        if b.poll():
            b.apply(i)
        elif b.frozen:
            i.bat_valid = 0
        i.bat_age_ms = b.age_ms(time.ticks_ms())

    def write_setpoint(self, sp, now):
        """Send the setpoint when it changed or the heartbeat is due. Returns 1 when sent."""
        if sp == self.sp_sent and time.ticks_diff(now, self.t_sent) < HEARTBEAT_MS:
            return 0
        b = self.battery
        if b.ident != 1:                # unconfirmed or refused device: never written to
            return 0
        writes = b.prof.control.plan(sp) if b.prof.control is not None else None
        if writes is None:              # cannot encode (e.g. WChaMax unknown yet): nothing sent,
            self.write_errors += 1      # and it shows (telemetry err.battery, flag sp_unsent)
            self.sp_unsent = 1
            self.sp_sent = None
            return 0
        if send_writes(self.bus, b.unit, writes, sp == 0) != OK:
            self.write_errors += 1
            self.sp_unsent = 1          # the battery's own revert timer is what is left
            self.sp_sent = None         # retry next cycle
            return 0
        self.sp_unsent = 0
        self.sp_sent = sp
        self.t_sent = now
        return 1

    def cycle(self):
        now = time.ticks_ms()
        i = self.ctl.inp
        i.dt_ms = self.period_ms if self.t_last is None else time.ticks_diff(now, self.t_last)
        self.t_last = now
        self.read_inputs()
        p = self.plan
        if p is not None:               # the schedule's interval in force (allocation-free)
            c = self.clock
            if c is None:
                p.tick(0, 0)
            else:
                p.tick(c.valid, c.elapsed_s())
        self.ctl.step()
        o = self.ctl.out
        o.flags |= self.meter.frozen * 512 | self.battery.frozen * 1024    # bess_core.FLAG_NAMES
        self.write_setpoint(o.setpoint_w, time.ticks_ms())
        o.flags |= self.sp_unsent * 2048    # this cycle's write failed (telemetry sp_unsent)
        self.cycles += 1
        if self.capture is not None:
            self.capture(now)

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

    def went_stale(self):
        """1 when a device's data has just become older than stale_ms while the last step still
        trusted it: the loop then runs a cycle at once, so 0 W goes out stale_ms + one poll after
        the last good read, not up to a period later (docs/reliability.md). Allocation-free."""
        if self.ctl.out.state == _ST_FAILSAFE:
            return 0
        now = time.ticks_ms()
        lim = self.ctl.stale_ms
        t = self.meter.t_ok
        if t is not None and time.ticks_diff(now, t) > lim:
            return 1
        t = self.battery.t_ok
        if t is not None and time.ticks_diff(now, t) > lim:
            return 1
        return 0

    def _locked_cycle(self):
        import micropython
        micropython.heap_lock()
        try:
            self.cycle()
        finally:
            micropython.heap_unlock()

    def run(self, wdt=None, cycles=0, hard=False, timer_id=-1, after_cycle=None):
        """Paced loop. cycles=0: forever. after_cycle(now_ms): after each cycle (the MQTT side)."""
        tim = machine.Timer(timer_id)
        tim.init(mode=machine.Timer.PERIODIC, period=self.period_ms, callback=self.tick_ref, hard=hard)
        self.due = 1                    # first cycle at once: 0 W goes out immediately
        try:
            while cycles == 0 or self.cycles < cycles:
                if self.due:
                    self.stale_run = 0
                elif self.stale_run or not self.went_stale():
                    machine.idle()          # at most one extra (stale) cycle per period
                    continue
                else:
                    self.stale_run = 1
                self.due = 0
                t0 = time.ticks_us()
                try:
                    if self.check_alloc and self.meter.ident == 1 and self.battery.ident == 1:
                        self._locked_cycle()
                    else:
                        self.cycle()
                    done = 1
                except Exception as e:      # a bug must not leave the last setpoint standing
                    done = 0
                    self.fail_safe(e)
                if done and wdt is not None:
                    wdt.feed()              # a fault that persists ends in a watchdog reset
                if after_cycle is not None:
                    try:
                        after_cycle(self.t_last)
                    except Exception as e:  # telemetry/commands must never stop control
                        self.hook_errors += 1
                        if self.hook_errors == 1 or self.hook_errors % 100 == 0:
                            print('after_cycle failed (%d times): %r' % (self.hook_errors, e))
                us = time.ticks_diff(time.ticks_us(), t0)
                self.last_cycle_us = us
                if us > self.max_cycle_us:
                    self.max_cycle_us = us
                if us > self.period_ms * 1000:
                    self.overruns += 1
                if self.log_cycles and done:
                    import cycle_log        # commissioning only (it allocates): loaded on first use
                    cycle_log.line(self, us)
        finally:
            tim.deinit()


class Job:
    """What boot hands to the loop: the runtime, its MQTT side and the board's timer/watchdog."""

    def __init__(self, rt, rep, board, ps=None):
        self.rt = rt
        self.rep = rep
        self.ps = ps                    # startup.plan_cfg(): the schedule side to build, or None
        self.wdt_ms = board.get('wdt_timeout_ms', 10000)
        t = board.get('timer', {})
        self.hard = t.get('hard', False)
        self.timer_id = t.get('id', -1)

    def run(self, cycles=0):
        run_job(self, cycles)


def run_job(job, cycles=0):
    """The loop for a Job from firmware/startup.py (which main.py has unloaded by now)."""
    rt = job.rt
    rep = job.rep
    ps = None
    if job.ps is not None:              # before the ring: its code packs below the ring's chunks
        try:
            import sched_boot
            ps = sched_boot.build(job.ps, rt, rep)
            unload(sched_boot.MODULES)
        except MemoryError as e:        # build() left nothing of the side wired or loaded
            print('SCHEDULE DISABLED (OUT OF MEMORY building the schedule side: %r; %s): the controller '
                  'runs its commissioned config (docs/resources.md)' % (e, heap_text()))
        # a local lives as long as this frame, i.e. the whole run: still bound, it would keep the
        # module unloaded above, its code and globals, in the heap for good
        sched_boot = None
    job.ps = None
    if rep is not None:
        try:
            rep.start()
        except MemoryError as e:        # not even one chunk of ring: control goes on without MQTT
            print('MQTT DISABLED (OUT OF MEMORY for the telemetry ring: %r; %s): the controller runs '
                  'without telemetry and commands (docs/resources.md)' % (e, heap_text()))
            rep = None
    try:                                # every resident object is built: constructors leave the heap
        import boot_strip
        boot_strip.strip()
    except Exception:                   # MemoryError, or a port without class setattr: they stay
        pass                            # (an optimisation only: the loop must start)
    unload(('boot_strip',))
    boot_strip = None                   # (as sched_boot above)
    wdt = machine.WDT(timeout=job.wdt_ms)
    after = rep.after_cycle if rep is not None else None
    if ps is not None:
        after = _chain(ps.after_cycle, after)
    rt.run(wdt, cycles, hard=job.hard, timer_id=job.timer_id, after_cycle=after)
    try:                                # a fixed-length run (tests, tools) ends with a summary
        import cycle_log
        cycle_log.summary(rt)
    except MemoryError:
        print('done: %d cycles (no room for the summary: OUT OF MEMORY)' % rt.cycles)


def _chain(first, then):
    """after_cycle: the schedule side (clock, schedule, status, dlm) first, then MQTT."""
    if then is None:
        return first

    def both(now):
        try:
            first(now)
        finally:                        # a failing schedule side never stops telemetry
            then(now)
    return both
