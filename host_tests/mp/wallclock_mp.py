# firmware/wallclock.py on MicroPython (unix port, 64-bit or the 32-bit fixed-heap build) against
# tools/ntp_server.py, for host_tests/test_wallclock.py. One JSON argument:
#   {"clock": {Clock keyword arguments, host and port included},
#    "until": [attribute, value] (optional: stop once getattr(clock, attribute) == value),
#    "run_ms": the longest run, "alloc": 1 to prove the per-cycle calls allocation-free,
#    "created": [seconds relative to now_s()] (optional: check_created() of each)}
# Polls like the firmware's loop (every 10 ms here) and prints one JSON line: the import and
# instance heap cost, the clock's state after each change, the final state, and how often the
# on-demand exchange (firmware/ntp_exchange.py) was in sys.modules after a poll: with a request
# out, and with none (where it must have left again).
import gc
import json
import sys
import time

import micropython

gc.collect()
a0 = gc.mem_alloc()
import wallclock                        # noqa: E402 (measured: the module's heap cost)
gc.collect()
import_bytes = gc.mem_alloc() - a0

FIELDS = ('valid', 'synced', 'fails', 'rejected', 'steps', 'epoch_changed', 'last_error', 'rtt_ms',
          'last_step_ms')


def state(c):
    d = {}
    for f in FIELDS:
        d[f] = getattr(c, f)
    d['age_ms'] = time.ticks_diff(time.ticks_ms(), c.base_ticks_ms) if c.synced else -1
    if c.synced:
        d['now_s'] = c.now_s()
        d['host_s'] = time.time()       # the host's clock at the same moment (the server's reference)
    return d


def locked(f, n):
    """'free' when n calls of f allocate nothing, else 'allocates'."""
    micropython.heap_lock()
    try:
        for _ in range(n):
            f()
        return 'free'
    except MemoryError:
        return 'allocates'
    finally:
        micropython.heap_unlock()


args = json.loads(sys.argv[1])
gc.collect()
a0 = gc.mem_alloc()
c = wallclock.Clock(**args['clock'])
gc.collect()
instance_bytes = gc.mem_alloc() - a0
until = args.get('until')
events = []
seen = None
loaded = {'pending': 0, 'idle': 0, 'polls': 0}     # ntp_exchange in sys.modules after a poll
t_end = time.ticks_add(time.ticks_ms(), args.get('run_ms', 5000))
while time.ticks_diff(t_end, time.ticks_ms()) > 0:
    r = c.poll(time.ticks_ms())
    loaded['polls'] += 1
    if 'ntp_exchange' in sys.modules:
        loaded['pending' if c.pending else 'idle'] += 1
    key = (c.valid, c.synced, c.fails, c.rejected, c.last_error)
    if key != seen or r:
        seen = key
        e = state(c)
        e['rebase'] = r
        events.append(e)
    if until and getattr(c, until[0]) == until[1]:
        break
    time.sleep_ms(10)

out = {'import_bytes': import_bytes, 'instance_bytes': instance_bytes, 'events': events,
       'final': state(c), 'exchange_loaded': loaded, 'bits': 32 if sys.maxsize < (1 << 32) else 64}
if args.get('alloc'):
    def cycle_reads():                  # what a control cycle reads from the clock
        return c.valid + c.elapsed_s()
    idle = c.pending == 0 and time.ticks_diff(c.due, time.ticks_ms()) > 1000
    out['alloc'] = {'elapsed_s': locked(c.elapsed_s, 1000), 'cycle_reads': locked(cycle_reads, 1000),
                    'idle_poll': locked(lambda: c.poll(time.ticks_ms()), 1000) if idle else 'not idle',
                    'elapsed_s_value': c.elapsed_s()}
if 'created' in args:
    fresh = wallclock.Clock(c.host, c.port)      # never synced: invalid
    out['created'] = [c.check_created(c.now_s() + d) for d in args['created']]
    out['created_invalid'] = fresh.check_created(c.now_s() - 86400)
import ntp_exchange                     # noqa: E402 (the socket is the exchange's to close)
ntp_exchange.close(c)
print(json.dumps(out))
