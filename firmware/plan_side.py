# The schedule's runtime side (resident): wall clock, schedule reception, status and DLM topics.
#
# Built at boot by firmware/startup.py when the site config has a "schedule" section; its
# after_cycle() runs between control cycles, before the MQTT side's (never inside step()):
#   - the wall clock (firmware/wallclock.py) polls its NTP server; a new base rebases the plan;
#   - a schedule arriving on <prefix>/<id>/schedule is streamed to <path>.new as the link reads
#     it (rx(); never held whole in the heap), then checked by firmware/sched_rx.py (loaded on
#     demand: MAC, validation, compilation, atomic rename to <path>) and put in force;
#   - <prefix>/<id>/schedule/status (retained) says what is in force and why, on every change;
#   - <prefix>/<id>/dlm (retained): what a load manager may give EVs now, on a change beyond
#     dlm_deadband_w and at least every dlm_every_s.
# What runs once per schedule (checking one, putting it in force, building this side at start)
# is in firmware/sched_rx.py, loaded on demand. Per cycle the Runtime calls plan.tick(clock.valid, clock.elapsed_s()) before step() (cycle.py).
import gc
import json
import time

from ondemand import load, unload
from plan import SOURCE_NAMES, REASON_NAMES, SRC_FALLBACK, R_EXPIRED

RX_IDLE = 0
RX_WRITING = 1          # bytes go to <path>.new
RX_DISCARD = 2          # too long (or the file could not be opened): read and dropped
RX_DONE = 3             # complete, to be checked by after_cycle()
# Free heap a check needs (a full schedule: the loader ~5.9 K, its data ~2 K, the store's arrays
# 3.9 K the first time, after that reused; plus room for fragmentation). With less, the schedule is
# refused before anything is loaded: a check that runs out of memory half-way fragments the heap
# the command path needs (docs/resources.md). Once the store exists, STORE_B less is needed.
CHECK_FREE_B = 16000
STORE_B = 3904          # schedule_load.store() for 96 intervals, measured on 32-bit


class PlanSide:
    def __init__(self, rt, plan, clock, path, key=None, commissioned=None, max_bytes=24576,
                 dlm_every_s=60, dlm_deadband_w=1000):
        self.rt = rt
        self.plan = plan
        self.clock = clock
        self.path = path
        self.key = key
        self.commissioned = commissioned
        self.max_bytes = max_bytes
        self.dlm_every_ms = dlm_every_s * 1000
        self.dlm_deadband_w = dlm_deadband_w
        self.link = None                # the MqttLink, when MQTT is on
        self.store = None               # schedule_load.store(): the arrays every check compiles into (made by the first)
        self.last_version = 0           # the replay guard: highest version accepted (persisted)
        self.rx_state = RX_IDLE
        self.rx_f = None
        self.rx_total = 0
        self.rx_got = 0
        self.rx_why = None
        self.received = 0
        self.rejected = 0
        self.rej = None                 # the last rejection: {'reason', 'id', 'version'}
        self.rej_key = None             # what was in force then: 'rejected' is the status until it changes
        self.superseded = None          # (id, version) the last accepted schedule replaced
        self._sent = None               # what the last status message said (src, k, status, reason)
        self.dlm_w = None
        self.dlm_t = 0

    # --- reception: called by the link while it reads (inside its poll, not the cycle) ---
    def rx(self, mv, n, total, last):
        """A schedule's bytes: first call with total (its whole length), then the rest."""
        if total >= 0:
            self._rx_abort()
            self.received += 1
            self.rx_total = total
            self.rx_got = 0
            if total == 0:
                self.rx_state = RX_IDLE     # an empty retained message: the topic was cleared
                return
            if total > self.max_bytes:
                self.rx_state = RX_DISCARD
                self.rx_why = 'too large: %d bytes > max_bytes %d' % (total, self.max_bytes)
            else:
                try:
                    self.rx_f = open(self.path + '.new', 'wb')
                    self.rx_state = RX_WRITING
                except OSError as e:
                    self.rx_state = RX_DISCARD
                    self.rx_why = 'cannot store it: %s' % e
        if self.rx_state == RX_WRITING:
            try:
                self.rx_f.write(mv[:n])
            except OSError as e:
                self._rx_abort()
                self.rx_state = RX_DISCARD
                self.rx_why = 'cannot store it: %s' % e
        self.rx_got += n
        if last:
            if self.rx_f is not None:
                try:
                    self.rx_f.close()
                except OSError as e:
                    self.rx_state = RX_DISCARD
                    self.rx_why = 'cannot store it: %s' % e
                self.rx_f = None
            self.rx_state = RX_DONE if self.rx_state == RX_WRITING else -RX_DISCARD

    def _same(self):
        """<path>.new holds the same bytes as <path> (the broker's retained copy of the schedule
        in force, again at a reconnect): checked with two small buffers before any refusal."""
        if self.plan.s is None:
            return False
        sched_rx = load('sched_rx')
        try:
            return sched_rx._same(self.path + '.new', self.path)
        finally:
            unload(sched_rx.MODULES)

    def _rx_abort(self):
        if self.rx_f is not None:
            try:
                self.rx_f.close()
            except OSError:
                pass
            self.rx_f = None
        self.rx_state = RX_IDLE

    # --- between cycles -------------------------------------------------------------------
    def after_cycle(self, now):
        c = self.clock
        if c is not None and c.poll(now):
            self.plan.rebase(c.base_epoch_s)
        st = self.rx_state
        if st == RX_DONE:
            gc.collect()
            f = gc.mem_free()
            need = CHECK_FREE_B if self.store is None else CHECK_FREE_B - STORE_B
            if f < need and not self._same():
                st = -RX_DISCARD
                self.rx_why = ('not enough memory to check it: %d bytes free, %d needed (docs/resources.md)'
                               % (f, need))
        if st == RX_DONE or st == -RX_DISCARD:
            self.rx_state = RX_IDLE
            sched_rx = load('sched_rx')     # on demand: what is done once per schedule received
            try:
                if st == RX_DONE:
                    sched_rx.received(self)
                else:
                    sched_rx.discard(self.path)
                    sched_rx.rejected(self, self.rx_why, None, 0)
            finally:
                unload(sched_rx.MODULES)
            sched_rx = None             # not kept by this frame while _report() loads it afresh
        self._report(now)

    def _report(self, now):
        """Status on every change of what is in force; DLM on change and at least every N s."""
        lk = self.link
        p = self.plan
        if lk is None or p.k == -2:     # -2: put in force, not ticked yet: said after the next cycle
            return
        s = p.s
        if self.rej_key is not None and self.rej_key == (p.src, p.k) and p.src != SRC_FALLBACK:
            # the schedule in force (if any) is unchanged. (In fallback the status says so, with
            # its reason -- no clock, expired: what the device runs matters more than what it
            # refused, which last_rejected still tells.)
            status = 'rejected'
            reason = self.rej['reason']
        elif s is None:
            status = 'none'
            reason = ''
        elif p.src == SRC_FALLBACK:
            status = 'expired' if p.reason == R_EXPIRED else 'fallback'
            reason = REASON_NAMES[p.reason]
        else:
            status = 'active'
            reason = ''
        if status != 'rejected':
            self.rej_key = None
        # what the message says: a new schedule in force is news even in the same interval index
        key = (p.src, p.k, status, reason, s.version if s is not None else 0)
        if key != self._sent:
            self._sent = key
            sched_rx = load('sched_rx')     # the message is built on demand: it changes rarely
            try:
                lk.publish_retained(lk.t_sched_st, sched_rx.status_payload(self, status, reason))
            finally:
                unload(sched_rx.MODULES)
        o = self.rt.ctl.out
        w = o.ev_limit_w
        last = self.dlm_w
        if last is None or abs(w - last) >= self.dlm_deadband_w or time.ticks_diff(now, self.dlm_t) >= self.dlm_every_ms:
            self.dlm_w = w
            self.dlm_t = now
            i = self.rt.ctl.inp
            lk.publish_retained(lk.t_dlm, json.dumps({
                'ev_limit_w': w, 'import_limit_w': o.import_limit_w, 'bat_plan_w': o.setpoint_w,
                'avail_dis_w': o.avail_dis_w, 'reserve_bp': o.reserve_bp, 'soc_bp': i.soc_bp,
                'failsafe': o.state == 6, 'source': SOURCE_NAMES[p.src]}).encode())

