"""`make bench-core`: control-core cost on CPython, MicroPython unix (63-bit) and 32-bit MicroPython.

Reports: time per step (median of batches), bytes allocated per step, heap in use after importing
the core and constructing a Controller, and the size of the compiled .mpy files.
Timing on the host says nothing absolute about an ESP32; it tracks regressions, and the .mpy
and heap figures are what the device will see.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, 'lib')
BIN = os.path.dirname(sys.executable)
SCRIPT = os.path.join(ROOT, 'tools', 'bench_core_mp.py')


def parse(out):
    return {k: int(v) for k, v in (line.split() for line in out.splitlines() if line.strip())}


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode:
        sys.exit('failed: %s\n%s' % (' '.join(cmd), r.stderr))
    return parse(r.stdout)


def main():
    mpy_dir = tempfile.mkdtemp()
    try:
        sizes = {}
        for src in sorted(glob.glob(os.path.join(LIB, 'bess_*.py'))):
            name = os.path.basename(src)[:-3]
            dst = os.path.join(mpy_dir, name + '.mpy')
            subprocess.run([os.path.join(BIN, 'mpy-cross'), '-o', dst, src], check=True)
            sizes[name] = (os.path.getsize(src), os.path.getsize(dst))
        rows = [
            ('CPython %d.%d' % sys.version_info[:2], run([sys.executable, SCRIPT, LIB])),
            ('MicroPython unix (.py)', run([os.path.join(BIN, 'micropython'), SCRIPT, LIB])),
            ('MicroPython unix (.mpy)', run([os.path.join(BIN, 'micropython'), SCRIPT, mpy_dir])),
            ('MicroPython 32-bit wasm (.py)', run(['node', os.path.join(ROOT, 'tools', 'mp32', 'run.mjs'),
                                                   '--put', LIB + ':/lib', SCRIPT, '/lib'])),
        ]
    finally:
        shutil.rmtree(mpy_dir)
    print('control core: one Controller.step() incl. writing 8 inputs, a site that moves every step')
    print('%-30s %12s %12s %16s %18s' % ('runtime', 'us/step med', 'us/step min', 'alloc B/step', 'heap after import'))
    for name, r in rows:
        alloc = '%.3f' % (r['alloc_bytes_per_step_x1000'] / 1000) if 'alloc_bytes_per_step_x1000' in r else 'n/a'
        heap = '%d B' % r['heap_after_import_and_construct_bytes'] if 'heap_after_import_and_construct_bytes' in r else 'n/a'
        print('%-30s %12.2f %12.2f %16s %18s' % (name, r['step_ns_median'] / 1000, r['step_ns_min'] / 1000, alloc, heap))
    print()
    print('%-16s %10s %10s' % ('module', '.py bytes', '.mpy bytes'))
    for name, (py, mpy) in sizes.items():
        print('%-16s %10d %10d' % (name, py, mpy))
    print('%-16s %10d %10d' % ('total', sum(p for p, _ in sizes.values()), sum(m for _, m in sizes.values())))


if __name__ == '__main__':
    main()
