# Whole-cycle CPU cost on MicroPython (run by tools/bench_core.py on the 32-bit fixed-heap build):
# the firmware's own Runtime + Reporter + MqttLink, with the RS-485 line replaced by register
# images the host took from the site simulator (so bus wire time is excluded: it is computed
# separately per profile pair). Prints "name value" lines.
#   bench_cycle_mp.py IMAGES.json ROOT
import sys
import time
import json
import gc
import micropython
from array import array

import startup
import telemetry
import mqtt_link
from reporting import Reporter
from rtu import OK
from bus import Bus

img = json.load(open(sys.argv[1]))
root = sys.argv[2]
regs = {}                               # (unit << 20 | fc << 16 | addr) -> array('H')
for u in ('1', '2'):
    for key in img[u]:
        fc, addr = key.split(':')
        regs[(int(u) << 20) | (int(fc) << 16) | int(addr)] = array('H', img[u][key])


class ImageMaster:
    """Answers every request from the register images at once (no wire)."""
    timeout_ms = 200

    def transact(self, unit, fc, addr, arg, values=None, into=None):
        if into is not None:
            src = regs.get((unit << 20) | (fc << 16) | addr)
            if src is None:
                return 2 + 0                # NO_RESPONSE-like: not in the image
            for k in range(arg):
                into[k] = src[k]
        return OK


site = {'period_ms': 1000, 'meter': {'profile': img['meter_profile'], 'unit_id': 1},
        'battery': {'profile': img['battery_profile'], 'unit_id': 2},
        'control': {'import_limit_w': 60000, 'phase_limit_w': 25000, 'max_charge_w': 30000,
                    'max_discharge_w': 30000}}
mp = startup.load_profile(root, site['meter']['profile'])
bp = startup.load_profile(root, site['battery']['profile'])
bus = Bus(ImageMaster(), retries=1)
import cycle  # noqa: E402
import bess_core  # noqa: E402
meter = cycle.Poller(bus, mp, 1)
battery = cycle.Poller(bus, bp, 2)
meter.dev.min_interval_ms = battery.dev.min_interval_ms = 0     # device gaps are line time, counted apart
rt = cycle.Runtime(bus, meter, battery, bess_core.Controller(site['control']), 1000)
link = mqtt_link.MqttLink({'client_id': 'bench', 'server': '127.0.0.1', 'port': 9,
                           'backoff_min_ms': 3600000, 'ring_records': 64, 'telemetry_ms': 1000})
stats = telemetry.Stats()
rep = Reporter(rt, link, stats)
rep.start()
link.next_try = time.ticks_add(time.ticks_ms(), 3600000)    # stays down: poll() has nothing to do
for _ in range(3):                      # identify, first reads
    rt.cycle()
N = 200
t0 = time.ticks_us()
for _ in range(N):
    rt.cycle()
t_cycle = time.ticks_diff(time.ticks_us(), t0) // N
micropython.heap_lock()
try:
    for _ in range(N):
        rt.cycle()
    locked = 'ok'
except MemoryError:
    locked = 'allocates'
finally:
    micropython.heap_unlock()
now = time.ticks_ms()
t0 = time.ticks_us()
for _ in range(N):
    rep.after_cycle(now)
t_poll = time.ticks_diff(time.ticks_us(), t0) // N
micropython.heap_lock()
try:
    for _ in range(N):
        link.poll(now)
    poll_locked = 'ok'
except MemoryError:
    poll_locked = 'allocates'
finally:
    micropython.heap_unlock()
# one telemetry record encoded as it is published: record_dict + json + bytes
ring = link.ring
gc.collect()
a0 = gc.mem_alloc()
t0 = time.ticks_us()
p = json.dumps(ring.record_dict(0, link.epoch_s)).encode()
t_enc = time.ticks_diff(time.ticks_us(), t0)
a1 = gc.mem_alloc()
print('cycle_us', t_cycle)
print('cycle_heap_locked', 1 if locked == 'ok' else 0)
print('after_cycle_idle_us', t_poll)
print('poll_idle_heap_locked', 1 if poll_locked == 'ok' else 0)
print('publish_encode_us', t_enc)
print('publish_alloc_bytes', a1 - a0)
print('publish_payload_bytes', len(p))
