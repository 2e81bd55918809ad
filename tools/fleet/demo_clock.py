"""Accelerated time for `make fleet` (tools/fleet/demo.py): the demo day's clock, shared by every
process of the demo (twins, the NTP server the firmware instances sync from, the console).

    clk = DemoClock(t0=<epoch s of 05:00 local>, speed=60)   # starts now
    clk()               # the demo's epoch seconds now (float)
    clk.real_at(t)      # the real epoch second at which the demo reaches t
    clk.anchor()        # the demo is at t0 now (before the clock is handed to another process)
    clk.arg()           # 't0,at,speed': DemoClock.parse(clk.arg()) in another process is the same clock

Demo time = t0 + (real time - at) * speed. Real epoch seconds (time.time) anchor it, so processes
started later agree to the millisecond. speed 1 with t0 = at is the real clock."""
import time


class DemoClock:
    def __init__(self, t0=None, speed=1.0, at=None):
        if not 0 < speed <= 3600:
            raise ValueError('speed must be in (0, 3600], got %r' % (speed,))
        self.at = time.time() if at is None else float(at)
        self.t0 = self.at if t0 is None else float(t0)
        self.speed = float(speed)

    def anchor(self, at=None):
        """Fleet time is t0 at real time `at` (default: now): set before the clock is shared with
        another process (arg()); objects holding this one follow."""
        self.at = time.time() if at is None else float(at)

    def __call__(self):
        return self.t0 + (time.time() - self.at) * self.speed

    def real_at(self, t):
        return self.at + (t - self.t0) / self.speed

    def arg(self):
        return '%r,%r,%r' % (self.t0, self.at, self.speed)

    @classmethod
    def parse(cls, s):
        try:
            t0, at, speed = (float(x) for x in s.split(','))
        except ValueError:
            raise ValueError('a demo clock is T0,AT,SPEED (three numbers), got %r' % (s,))
        return cls(t0, speed, at)
