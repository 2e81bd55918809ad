# The schedule in force, evaluated once per cycle (resident; docs/schedule.md, "Evaluation").
#
# A compiled schedule (lib/schedule.py) holds its interval times as seconds from its `created`.
# The wall clock (firmware/wallclock.py) keeps a base (epoch seconds at its last sync) and counts
# small-int seconds from it. rebase() turns the two bases into one small offset, off the control
# path (epoch seconds are heap ints on 32-bit boards); tick() then needs only small ints and
# allocates nothing (host_tests/test_plan.py proves it under heap_lock on 32-bit MicroPython).
#
# tick() writes the interval's fields into the Controller's plan_* attributes when the interval
# in force changes, and plan_left_s every cycle. Source of what is in force (`src`):
#   0 config   no schedule: the commissioned config alone
#   1 schedule an interval of the schedule
#   2 default  the schedule's default block (between or outside its intervals)
#   3 fallback the default block because the schedule cannot be followed: expired, no valid
#              clock, or the clock before the schedule's `created` (reason says which)

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

from bess_core import NOT_SET

SRC_CONFIG = const(0)
SRC_SCHEDULE = const(1)
SRC_DEFAULT = const(2)
SRC_FALLBACK = const(3)
SOURCE_NAMES = ('config', 'schedule', 'default', 'fallback')

R_NONE = const(0)
R_EXPIRED = const(1)        # past valid_until
R_NO_CLOCK = const(2)       # no valid wall clock
R_EARLY = const(3)          # the clock reads earlier than created - SKEW_S: one of the two is wrong
REASON_NAMES = ('', 'expired', 'no_clock', 'clock_before_created')

SKEW_S = const(600)         # how far the clock may trail the schedule's author
_OFF_MAX = const(0x1FFFFFFF)    # offsets beyond this are clamped (the schedule is long expired or
                                # not yet begun, either way the same decision), keeping t small


class Plan:
    def __init__(self, ctl):
        self.ctl = ctl
        self.s = None           # the compiled schedule in force, or None
        self.off_s = 0          # clock base - schedule created, s (small int)
        self.based = 0          # 1 once rebase() ran for this schedule
        self.rand_s = 0         # randomized start shift of this device, s
        self.k = -1             # interval in force (s.n = the default block), -1 none
        self.pos = 0            # first interval whose end is still ahead
        self.src = SRC_CONFIG
        self.reason = R_NONE
        self.next_s = -1        # seconds until what is in force changes, -1 never / unknown

    def load(self, s, rand_s=0, base_epoch_s=None):
        """Make compiled schedule s (None: none) the one in force from the next tick. rand_s: the
        device's randomized start shift (0..s.randomize_s), drawn by the caller."""
        self.s = s
        self.rand_s = rand_s
        self.based = 0
        self.k = -2                 # forces the fields to be written on the next tick
        self.pos = 0
        self.ctl.plan_version = 0 if s is None else s.version
        if s is None:
            self.ctl.clear_plan()
            self.k = -1
            self.src = SRC_CONFIG
            self.reason = R_NONE
            self.next_s = -1
        elif base_epoch_s is not None:
            self.rebase(base_epoch_s)

    def rebase(self, base_epoch_s):
        """The clock's base changed (a sync): recompute the one offset. Allocates; not per cycle."""
        s = self.s
        if s is None or base_epoch_s is None:
            return
        d = base_epoch_s - s.base_s - self.rand_s
        if d > _OFF_MAX:
            d = _OFF_MAX
        elif d < -_OFF_MAX:
            d = -_OFF_MAX
        self.off_s = d
        self.based = 1

    def tick(self, clock_valid, elapsed_s):
        """Per cycle, before Controller.step(). elapsed_s: small-int seconds since the clock's base."""
        s = self.s
        if s is None:
            return
        n = s.n
        t = self.off_s + elapsed_s
        reason = R_NONE
        if not clock_valid or not self.based:
            reason = R_NO_CLOCK
        elif t < -SKEW_S:
            reason = R_EARLY
        elif t >= s.valid_s:
            reason = R_EXPIRED
        if reason:
            k = n
            src = SRC_FALLBACK
            nxt = -1
        else:
            # pos: the first interval not yet over; advances one step at a time, restarts from 0
            # only when the clock stepped back past the previous interval's end
            k = self.pos
            end = s.end
            if k > 0 and t < end[k - 1]:
                k = 0
            while k < n and t >= end[k]:
                k += 1
            self.pos = k
            start = s.start
            if k < n and t >= start[k]:
                src = SRC_SCHEDULE
                nxt = end[k] - t
            else:
                # between intervals (k: the next one) or after the last: the default block
                nxt = (start[k] if k < n else s.valid_s) - t
                k = n
                src = SRC_DEFAULT
        self.src = src
        self.reason = reason
        self.next_s = nxt
        c = self.ctl
        c.plan_left_s = nxt if nxt > 0 else 0
        c.plan_src = src
        c.plan_k = k if k < n else -1
        if k != self.k:
            self.k = k
            self._apply(s, k)

    def _apply(self, s, k):
        c = self.ctl
        v = s.get('objective', k)
        c.plan_obj = -1 if v == NOT_SET else v
        c.plan_reserve_bp = s.get('reserve_soc_bp', k)
        c.plan_soc_min_bp = s.get('soc_min_bp', k)
        c.plan_soc_max_bp = s.get('soc_max_bp', k)
        c.plan_import_w = s.get('import_limit_w', k)
        c.plan_target_bp = s.get('target_soc_bp', k)
        c.plan_power_w = s.get('power_w', k)
        v = s.get('firm', k)
        c.plan_firm = 1 if v == 1 else 0
        v = s.get('export', k)
        c.plan_export = -1 if v == NOT_SET else v
        c.plan_protect_import_w = s.get('protect_import_w', k)
        c.plan_protect_phase_w = s.get('protect_phase_w', k)
