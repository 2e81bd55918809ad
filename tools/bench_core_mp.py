# Core step benchmark, run ON a MicroPython runtime (or CPython): prints "key value" lines.
# usage: bench_core_mp.py LIBDIR [STEPS] [BATCHES]
import sys
import gc
import time

LIB = sys.argv[1]
STEPS = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
BATCHES = int(sys.argv[3]) if len(sys.argv) > 3 else 15
sys.path.insert(0, LIB)
MP = sys.implementation.name == 'micropython'

if MP:
    gc.collect()
    heap0 = gc.mem_alloc()
import bess_core  # noqa: E402

ctl = bess_core.Controller({'import_limit_w': 150000, 'phase_limit_w': 55000, 'ev_headroom_w': 20000,
                            'max_charge_w': 100000, 'max_discharge_w': 100000, 'ramp_w_per_s': 20000,
                            'deadband_w': 300, 'objective': 'gce'})
if MP:
    gc.collect()
    print('heap_after_import_and_construct_bytes', gc.mem_alloc() - heap0)

inp = ctl.inp
step = ctl.step
inp.meter_valid = inp.bat_valid = inp.phases_valid = 1
inp.soc_bp = 5000
inp.dt_ms = 1000


def batch(n):
    # a site that moves every step: over and under the limit, per-phase excess, taper band
    k = 0
    while k < n:
        g = 100000 + (k % 97) * 1000
        inp.gcp_w = g
        inp.gcp_l1_w = g // 3 + (k % 13) * 1000
        inp.gcp_l2_w = g // 3
        inp.gcp_l3_w = g // 3
        inp.bat_w = ctl.out.setpoint_w
        inp.soc_bp = 1000 + (k % 1500)
        step()
        k += 1


if MP:
    ticks, diff = time.ticks_us, time.ticks_diff
else:
    ticks, diff = (lambda: time.perf_counter_ns() // 1000), (lambda a, b: a - b)
batch(STEPS)                    # warm up
per = []
for _ in range(BATCHES):
    t0 = ticks()
    batch(STEPS)
    per.append(diff(ticks(), t0) * 1000 // STEPS)      # ns per step incl. input writes
per.sort()
print('step_ns_median', per[len(per) // 2])
print('step_ns_min', per[0])

# allocation per step: the harness loop itself is allocation-free, so any growth is the step's
if MP:
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    batch(STEPS)
    a1 = gc.mem_alloc()
    gc.enable()
    print('alloc_bytes_per_step_x1000', (a1 - a0) * 1000 // STEPS)
