# The schedule modules on MicroPython (host_tests/test_schedule.py, test_schedule_stream.py).
#   schedule_mp.py LIB                              compile_ from a dict: two lines
#   schedule_mp.py LIB load FILE KEYHEX TOPIC       + the signed payload in FILE streamed in (the
#                                                     loader's) chunks: the compiled form as JSON,
#                                                     then a bad mac
#   schedule_mp.py LIB measure FILE KEYHEX TOPIC [preloaded] [chunk=N]
#                                                   heap and time of that load, as JSON (one line)
import sys
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else 'lib')
import gc
import json
import os
import time
try:
    import binascii
except ImportError:
    import ubinascii as binascii

MODE = sys.argv[2] if len(sys.argv) > 2 else ''
COMM = {'min_soc_bp': 1000, 'max_soc_bp': 9500, 'import_limit_w': 60000}
T0 = 1764300000
CHUNK = None                # read buffer: the loader's own (schedule_load.CHUNK); chunk=N
for _a in sys.argv[6:]:
    if _a.startswith('chunk='):
        CHUNK = int(_a[6:])


def _buf():
    return bytearray(CHUNK) if CHUNK else None


def reader(f, sample=None):
    def read(buf):
        n = f.readinto(buf)
        if sample is not None:
            sample()
        return n
    return read


def load(path, key, topic, buf, sample=None, last_version=2):
    import schedule_load as sl
    total = os.stat(path)[6]
    with open(path, 'rb') as f:
        return sl.load_stream(reader(f, sample), COMM, last_version, sl.MacStream(key, topic, total), buf)


def compiled(s):
    return [s.id, s.version, s.base_s, s.valid_s, s.randomize_s, s.n, list(s.start), list(s.end),
            dict((k, list(a)) for k, a in s.fields.items())]


def _alloc():
    gc.collect()
    return gc.mem_alloc()


def _warm(path, key, topic):
    load(path, key, topic, _buf())
    _drop('schedule_load')


def _sampled(path, key, topic, peak):
    def sample():
        a = _alloc()
        if a > peak[0]:
            peak[0] = a
    return load(path, key, topic, _buf(), sample)


def _timed(path, key, topic):
    buf = _buf()
    best = None
    for _ in range(3):
        gc.collect()
        t = time.ticks_us()
        load(path, key, topic, buf)
        t = time.ticks_diff(time.ticks_us(), t)
        best = t if best is None or t < best else best
    return best


def _drop(name):
    del sys.modules[name]


def _imported(name):
    """Heap of importing a module: the first time (with the names it interns, which stay), what
    stays once it is unloaded, and importing it again."""
    a0 = _alloc()
    __import__(name)
    a1 = _alloc()
    _drop(name)
    a2 = _alloc()
    __import__(name)
    a3 = _alloc()
    _drop(name)
    return a1 - a0, a2 - a0, a3 - a2


def _preload():
    """Both modules in the heap before a load (a frozen build keeps their code in flash)."""
    import schedule_load
    import schedule_mac
    schedule_load.MacStream = schedule_mac.MacStream       # not re-imported by the shim


def measure(path, key, topic, preloaded):
    """Heap (gc.mem_alloc after a collection at every chunk: the live bytes at chunk boundaries)
    and time of a streamed load of a signed payload, JSON on one line. The modules: the first
    import (interning their names: they stay), what stays after unloading, an import again.
    base: bess_core and schedule imported (resident on the device anyway) and one load done
    before (left_after_unload_bytes is what a second load leaves). preloaded: the loader's and
    the mac's code are in the heap before base; else they are imported on demand, as on the
    device, and count in the peak. Each step runs in its own function: MicroPython's GC is
    conservative and a value left in a frame's stack slot would keep garbage alive."""
    out = {}
    __import__('bess_core')                 # resident on the device
    a0 = _alloc()
    __import__('schedule')                  # resident while a schedule is in force
    out['schedule_module_bytes'] = _alloc() - a0
    for name, tag in (('schedule_load', 'loader'), ('schedule_mac', 'mac')):
        first, left, again = _imported(name)
        out[tag + '_first_import_bytes'] = first
        out[tag + '_names_bytes'] = left
        out[tag + '_import_bytes'] = again
    _warm(path, key, topic)                 # a first load: what it interns (names: never freed) stays
    a0 = _alloc()
    _warm(path, key, topic)                 # a second one must leave nothing behind
    out['left_after_unload_bytes'] = _alloc() - a0
    if preloaded:
        _preload()
    base = _alloc()
    peak = [0]
    s = _sampled(path, key, topic, peak)
    if not preloaded:
        _drop('schedule_load')
    out['compiled_bytes'] = _alloc() - base
    out['peak_bytes'] = peak[0] - base
    out['peak_beyond_compiled_bytes'] = peak[0] - base - out['compiled_bytes']
    out['n'] = s.n
    out['columns'] = len(s.fields)
    s = None
    _preload()
    out['chunk'] = CHUNK or sys.modules['schedule_load'].CHUNK
    out['load_us'] = _timed(path, key, topic)     # the modules loaded, no collections during a load
    print(json.dumps(out))


if MODE == 'measure':
    measure(sys.argv[3], binascii.unhexlify(sys.argv[4]), sys.argv[5], 'preloaded' in sys.argv[6:])
    sys.exit(0)

import schedule as sc       # noqa: E402

d = {'v': 1, 'id': 'x', 'version': 3, 'created': T0, 'valid_until': T0 + 86400,
     'default': {'objective': 'ss'},
     'intervals': [{'start': T0 + 3600, 'duration_s': 3600, 'power_w': -1, 'firm': True}]}
s = sc.compile_(d, COMM)
print(s.at(3600), s.get('power_w', 0), s.get('firm', 0), s.get('objective', 1), s.at(0))
try:
    sc.compile_(dict(d, version=0))
except sc.ScheduleError as e:
    print('rejected', str(e).count('\n'))

if MODE == 'load':
    path, key, topic = sys.argv[3], binascii.unhexlify(sys.argv[4]), sys.argv[5]
    json.dump(compiled(load(path, key, topic, _buf())), sys.stdout)     # streamed out: 32-bit heap
    print()
    try:
        load(path, key + b'x', topic, _buf())
    except sc.ScheduleError as e:
        print('bad mac rejected' if 'bad mac' in str(e) else str(e))
