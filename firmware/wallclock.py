# The wall clock (resident): our own SNTP client (RFC 4330) on one UDP socket, polled by the loop
# between control cycles, never inside the timer callback. A schedule needs the time of day; the
# control path needs it as small ints.
#
# Why our own client: `ntptime` is not on the unix port, and it blocks for its socket timeout.
# poll() sends a request when one is due and reads the answer without waiting, except for at most
# wait_ms right after sending: the loop polls once per cycle, and an answer read a period late
# would count the period into the round trip (the time's error is at most half the round trip).
#
# Why a base and ticks: epoch seconds are above 2**30, a heap int on 32-bit MicroPython. A sync
# stores the epoch second of one instant (base_epoch_s, the only big int, once per sync) and that
# instant's ticks_ms (base_ticks_ms); per cycle the time is elapsed_s(), small-int seconds since the
# base, allocation-free. ticks_ms wraps at 2**30 on the boards and ticks_diff is valid to +-2**29 ms
# (6.2 days), so a base is never trusted longer than max_age_s <= MAX_AGE_S (5 days): past that the
# clock is invalid until a sync succeeds (and the plan falls back to the schedule's default block).
#
# Each successful sync sets a new base and bumps epoch_changed; poll() returns 1 then, and the
# runtime calls plan.rebase(clock.base_epoch_s) before the next cycle.
#
# Split for the heap (docs/resources.md): resident is only what runs every cycle or every poll -
# the state, elapsed_s(), now_s(), check_created() and a poll() that expires an old base and
# otherwise returns at once, allocation-free, until a request is due. The exchange with the server
# (socket, request, answer, verdict, failures, close: firmware/ntp_exchange.py, which also says
# which replies count as what) is imported by poll() only while a request is due or out, and takes
# itself out of sys.modules when the attempt ends: its ~2 KB are in the heap for a poll or a few
# per period_s, not for good. What outlives an attempt is on the Clock: the socket (kept between
# syncs: no new name resolution each time) and the exchange's working state (q, r, t_sent: the
# request out and its answer; streak: failures in a row), created by the exchange at its first
# request. No room to load it (MemoryError) is a failed attempt, last_error 'MemoryError' (a
# built-in name: no new string in the heap), retried after retry_s.
import time
from ondemand import load

MAX_AGE_S = 5 * 86400           # a base is used at most this long: inside ticks_diff's 2**29 ms


class Clock:
    def __init__(self, host, port=123, period_s=3600, retry_s=60, max_age_s=2 * 86400,
                 min_epoch_s=None, timeout_ms=2000, wait_ms=20, step_ms=1000):
        # min_epoch_s: the earliest time an answer may give; None: ntp_exchange.MIN_EPOCH_S (the
        # build's date; a heap int on 32-bit, kept out of the resident module)
        if not 0 < retry_s <= period_s < max_age_s <= MAX_AGE_S:
            raise ValueError('need 0 < retry_s <= period_s < max_age_s <= 5 days')
        # wait_ms, timeout_ms are no site settings: the message is the argument's name (a name
        # interned anyway: no string in the heap for it)
        if not 0 <= wait_ms <= 50:
            raise ValueError('wait_ms')
        if not wait_ms < timeout_ms <= 10000:
            raise ValueError('timeout_ms')
        self.host = host
        self.port = port
        self.period_s = period_s
        self.retry_s = retry_s
        self.max_age_s = max_age_s
        self.min_epoch_s = min_epoch_s
        self.timeout_ms = timeout_ms
        self.wait_ms = wait_ms
        self.step_ms = step_ms          # a sync that moves the running clock more than this: a step
        self.sock = None
        self.due = None                 # ticks_ms of the next request; None: at the first poll
        self.pending = 0                # 1: a request is out (ntp_exchange stays loaded meanwhile)
        # state (status, telemetry, the plan)
        self.valid = 0
        self.base_epoch_s = 0
        self.base_ticks_ms = 0
        self.synced = 0
        self.fails = 0
        self.rejected = 0
        self.steps = 0
        self.last_step_ms = 0           # the last sync's correction of the running clock
        self.rtt_ms = -1                # the last sync's round trip less the server's hold time
        self.last_error = ''
        self.epoch_changed = 0

    # --- per cycle: allocation-free ---
    def elapsed_s(self):
        """Seconds since base_epoch_s (a small int): the time the plan evaluates."""
        return time.ticks_diff(time.ticks_ms(), self.base_ticks_ms) // 1000

    # --- off the control path ---
    def now_s(self):
        """Epoch seconds (allocates on 32-bit: status messages only)."""
        return self.base_epoch_s + self.elapsed_s()

    def check_created(self, created_s, skew_s=600):
        """0 when the clock is invalid or reads earlier than created_s - skew_s (behind whoever
        wrote the schedule: not to be trusted with it), else 1."""
        if not self.valid or self.now_s() < created_s - skew_s:
            return 0
        return 1

    def poll(self, now):
        """Between cycles (now: ticks_ms). Sends a request when due, reads the answer without
        waiting (at most wait_ms after a send), expires an old sync. 1 when a new base was set
        (call plan.rebase(base_epoch_s)), else 0. Allocation-free while nothing is due."""
        x = 0
        if self.valid and time.ticks_diff(now, self.base_ticks_ms) > self.max_age_s * 1000:
            self.valid = 0              # first: an expired base is not stepped from
            self.last_error = 'expired'
            x = 1
        r = self._exchange(now)
        if x and not self.valid and self.last_error == 'timeout':
            # a request that timed out in the same poll (the same silence) does not hide why the
            # clock is invalid: last_error said 'timeout' (a test that failed once under load
            # found it); another reason (kod, recv, MemoryError) is news and stays
            self.last_error = 'expired'
        return r

    def _exchange(self, now):
        if not self.pending:
            if self.due is not None and time.ticks_diff(now, self.due) < 0:
                return 0
            self.due = time.ticks_add(now, self.retry_s * 1000)  # the next try, whatever happens now
        try:
            ntp_exchange = load('ntp_exchange')     # leaves sys.modules itself when the attempt ends
        except MemoryError:             # no room for its code now: a failed attempt, retried at due
            self.fails += 1
            self.last_error = 'MemoryError'
            return 0
        return ntp_exchange.poll(self, now)
