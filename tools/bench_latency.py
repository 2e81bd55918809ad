"""Meter step -> new setpoint on the wire, worst timing, measured: the firmware on the unix port
against the simulator at the template defaults (period 1000 ms, bus timeout 200 ms, 1 retry).

The site sits idle under its import limit; right after the simulator answered a meter read (the
worst moment: the step waits almost a whole period to be seen), the load steps over the limit;
the clock stops when the battery's setpoint register changes. The pty carries bytes at once, so
this is the firmware's own delay; the line time of one cycle at 9 600 baud (docs/resources.md)
comes on top on a real RS-485 line.

    python tools/bench_latency.py [--tries 5] [--meter eastron_sdm630] [--battery sunspec_battery_802_124]
"""
import argparse
import statistics
import sys
import time

import paths  # noqa: F401 (lib/ on sys.path)
from fil import Rig
from modbus_sim import Scenario

CONTROL = {'import_limit_w': 60000, 'phase_limit_w': 0, 'max_charge_w': 30000, 'max_discharge_w': 30000,
           'ev_headroom_w': 59000}


def one(meter, battery):
    r = Rig(CONTROL, scenario=Scenario([(0, 50000, 0, 0, 0, 0)]), meter=meter, battery=battery,
            battery_kw={'capacity_wh': 100000, 'soc_bp': 6000, 'max_chg_w': 30000, 'max_dis_w': 30000},
            period_ms=1000, bus={'timeout_ms': 200, 'retries': 1})
    with r:
        r.wait_cycles(4, timeout=30)
        if r.sim.bat.setpoint_w != 0:
            raise RuntimeError('the battery should idle before the step: %d W' % r.sim.bat.setpoint_w)
        n = r.sim.meter.requests
        while r.sim.meter.requests == n:
            time.sleep(0.0005)
        with r.sim.lock:
            sc = r.sim.scenario
            sc.rows = [(0, 80000, 0, 0, 0, 0)]
            sc.t = [0]
            r.sim.step_physics(0)
        t0 = time.monotonic()
        while r.sim.bat.setpoint_w == 0 and time.monotonic() - t0 < 5:
            time.sleep(0.0005)
        return time.monotonic() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tries', type=int, default=5)
    ap.add_argument('--meter', default='eastron_sdm630')
    ap.add_argument('--battery', default='sunspec_battery_802_124')
    a = ap.parse_args(argv)
    ms = [one(a.meter, a.battery) * 1000 for _ in range(a.tries)]
    print('meter step -> setpoint written (%s + %s, period 1000 ms, no line time): min %.0f ms, median %.0f ms, '
          'max %.0f ms over %d tries' % (a.meter, a.battery, min(ms), statistics.median(ms), max(ms), len(ms)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
