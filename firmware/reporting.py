# The runtime's MQTT side (resident): telemetry capture inside the cycle, link work after it.
#
#   rep = Reporter(rt, link, stats)               # built by firmware/startup.py (mqtt_side)
#   rep.start()                                   # ring from the heap left; rt.capture = rep.capture
#   rt.run(..., after_cycle=rep.after_cycle)      # after it: retained state, link.poll()
#
# capture() copies counters and one telemetry record into the link's preallocated ring when one
# is due, and notes a change of state or objective; it allocates nothing (proven under heap_lock
# on 32-bit, host_tests/test_heapfit.py). Records carry uptime (small ints); the link adds the
# wall clock when it encodes them. after_cycle() builds what allocates (the retained state
# message) and gives the link one bounded poll(): it never waits for the broker, and commands it
# receives are applied between cycles, never inside step().
import gc
import time

import telemetry
from ondemand import load, unload


class Reporter:
    def __init__(self, rt, link, stats):
        self.rt = rt
        self.link = link
        self.stats = stats
        self.ring = None
        self.up_s = 0                   # uptime, kept from tick differences (no epoch ints)
        self.up_ms = 0
        self.t_prev = time.ticks_ms()
        self._st = -1
        self._obj = -1
        self.state_changed = 0
        t = int(time.time())            # once: the wall clock at uptime 0 (a heap int on 32-bit)
        link.epoch_s = t if t > 946684800 else 0    # before 2000-01-01: no clock (telemetry ts 0-based)
        self.heap_free = 0
        self._ep = 0                    # the wall clock's epoch_changed that link.epoch_s follows

    def start(self):
        """Allocate the ring (from the heap boot left) and hook capture() into the cycle."""
        self.ring = self.link.alloc_ring()
        self.rt.capture = self.capture
        print('telemetry: ring of %d records (%d bytes), heap free %d' % (
            self.ring.cap, self.ring.cap * telemetry.RECORD_BYTES, gc.mem_free()))

    def capture(self, now):
        d = time.ticks_diff(now, self.t_prev)
        self.t_prev = now
        if d > 0:
            ms = self.up_ms + d
            while ms >= 1000:
                ms -= 1000
                self.up_s += 1
            self.up_ms = ms
        rt = self.rt
        ctl = rt.ctl
        o = ctl.out
        if o.state != self._st or ctl.objective != self._obj:
            self._st = o.state
            self._obj = ctl.objective
            self.state_changed = 1
        st = self.stats
        st.meter_err = rt.meter.failed_calls()
        st.bat_err = rt.battery.failed_calls() + rt.write_errors     # + setpoints not sent
        if rt.last_cycle_us > st.cycle_max_us:      # the previous whole cycle (MQTT included)
            st.cycle_max_us = rt.last_cycle_us
        if self.link.tele_due(now):
            st.heap_free = self.heap_free
            st.mqtt_lost = self.link.lost
            self.ring.capture(ctl, self.up_s, self.up_ms, st)

    def after_cycle(self, now):
        link = self.link
        c = self.rt.clock
        if c is not None and c.valid and c.epoch_changed != self._ep:
            # a wall-clock sync (NTP): records hold uptime, so the wall clock at uptime 0 follows it
            # (a board's time.time() is no wall clock before then: ts would count from 2000 or 0)
            self._ep = c.epoch_changed
            ms = time.ticks_diff(self.t_prev, c.base_ticks_ms) - self.up_ms
            link.epoch_s = c.base_epoch_s + ms // 1000 - self.up_s
            link.epoch_rem_ms = ms % 1000
        if self.state_changed:
            self.state_changed = 0
            d = telemetry.state_dict(self.rt.ctl, (link.epoch_s + self.up_s) * 1000 + self.up_ms + link.epoch_rem_ms)
            if link.notice:
                d['notice'] = link.notice
            link.set_state(d)
        link.poll(now)
        h = link.on_command
        if getattr(h, 't_last', None) is not None:
            h.idle(now)
        self.heap_free = gc.mem_free()


class CommandHandler:
    """The command path's resident state. Its code (cmd_handler, commands, persist, bess_config;
    schedule_mac on a signed one: ~10-11 KB of a 32-bit heap)
    is imported when a command arrives and dropped once no command came for IDLE_MS (idle(), from
    after_cycle; on a signed site schedule_mac checks the mac first: alone for the first command
    of a burst, then beside the loaded path; MODULES also lists settings, which the path does not
    import, in case boot left it). key: HMAC key bytes or None; last_ctr: the last accepted
    counter (replay guard); base: the commissioned config (validated)."""

    MODULES = ('cmd_handler', 'commands', 'schedule_mac', 'settings', 'persist', 'bess_config')
    IDLE_MS = 10000

    def __init__(self, ctl, path, key=None, last_ctr=0, stats=None, on_change=None, base=None):
        self.ctl = ctl
        self.path = path
        self.key = key
        self.last_ctr = last_ctr
        self.stats = stats              # telemetry.Stats: cmd_rejected is counted there
        self.on_change = on_change      # f(config dict) after an accepted settings change
        self.base = base
        self.accepted = 0
        self.rejected = 0
        self.t_last = None              # the code is loaded: -1 (a command just came) or the
                                        # ticks_ms of the first idle() after the last command

    def __call__(self, name, topic, payload, retained):
        mac = None
        if self.key is not None and not retained and isinstance(payload, bytes) and isinstance(topic, bytes):
            # a signed site: the mac is checked first, with only schedule_mac loaded; when the
            # command path is not loaded yet (the first command of a burst), schedule_mac leaves
            # before it loads, so the two are not in the heap together. Within a burst it stays
            # beside the path until idle() drops both (as commands.Auth.verify would load it).
            # Out of memory here, the path checks the mac itself, after its cheap refusals.
            # (commands.Auth.verify does the same when not given this verdict: the host's path.
            # Not one shared function in schedule_mac: 48 B more there made a signed site's first
            # schedule check run out of memory at 106 000 in 2 runs of 2; docs/resources.md)
            keep = self.t_last is not None
            try:
                m = load('schedule_mac').MacStream(self.key, topic, len(payload))
                m.update(memoryview(payload))       # its slices are views, not copies
                mac = (payload, m.body if m.ok() else m.why)    # the body's length, or why not
            except MemoryError:
                pass
            finally:
                if not keep:
                    unload(('schedule_mac',))
            m = None
        h = load('cmd_handler')         # collects first when it is not loaded (ondemand.load)
        self.t_last = -1
        return h.handle(self, name, topic, payload, retained, mac)

    def idle(self, now):
        t = self.t_last
        if t == -1:
            self.t_last = now
        elif t is not None and time.ticks_diff(now, t) > self.IDLE_MS:
            self.t_last = None
            unload(self.MODULES)
