#!/usr/bin/env python3
"""Where the firmware's heap goes, by kind of block (docs/resources.md): the deployed firmware
(tools/heapfit.py's run: MQTT, outage, schedule, commands, bus faults) on a 32-bit MicroPython
whose heap map names every block's type, dumped with micropython.mem_info(1) after the run.

    python tools/heapmap.py [--heap 150000] [--cycles 300] [--no-schedule]

Builds its own variant of the fixed-heap image once (build/mp32tagged/, ~30 s): py/gc.c's map
tags qstr pools (Q) and qstr text (q, the chunk heads), classes (Y), instances of our classes (I),
bound methods (b), big ints (i) besides MicroPython's own T/L/D/S/A/F/B/M; 'h' is the rest
(bytecode, raw code, member tables, array data). Prints bytes and counts per kind, the qstr
figures, the largest blocks and the sizes of the 'h' blocks; writes out/heapmap-<heap>.json.
A measuring tool, not a test: the image is not the one `make test` uses.
"""
import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, 'build', 'mp32tagged')
EXE = os.path.join(OUT, 'micropython')

import mp32fixed  # noqa: E402

# py/gc.c (v1.28.0), gc_dump_alloc_table(): more kinds, and the qstr tags MicroPython keeps under #if 0
GC_FROM = """                    } else if (*ptr == &mp_type_module) {
                        c = 'M';
                    } else {
                        c = 'h';
                        #if 0"""
GC_TO = """                    } else if (*ptr == &mp_type_module) {
                        c = 'M';
                    } else if (*ptr == &mp_type_type) {
                        c = 'Y';
                    } else if (*ptr == &mp_type_bound_meth) {
                        c = 'b';
                    } else if (*ptr == &mp_type_int) {
                        c = 'i';
                    } else {
                        c = 'h';
                        {   // an instance of a class made at run time: its type is a heap block of type 'type'
                            byte *tp = (byte *)*ptr;
                            mp_state_mem_area_t *ar = &MP_STATE_MEM(area);
                            if (tp >= ar->gc_pool_start && tp < ar->gc_pool_end
                                && ((uintptr_t)tp & (BYTES_PER_BLOCK - 1)) == 0 && *(void **)tp == &mp_type_type) {
                                c = 'I';
                            }
                        }
                        #if 1"""
GC_SUBS = [
    (GC_FROM, GC_TO),
    ('for (qstr_pool_t *pool = MP_STATE_VM(last_pool);', 'for (const qstr_pool_t *pool = MP_STATE_VM(last_pool);'),
    ('if ((qstr_pool_t *)ptr == pool) {', 'if ((const qstr_pool_t *)ptr == pool) {'),
    ('for (const byte **q = pool->qstrs, **q_top = pool->qstrs + pool->len; q < q_top; q++) {',
     'for (const char *const *q = pool->qstrs, *const *q_top = pool->qstrs + pool->len; q < q_top; q++) {'),
    ('if ((const byte *)ptr == *q) {', 'if ((const char *)ptr == *q) {'),
]
KINDS = {'h': 'other (bytecode, raw code, member tables, array data)', 'q': 'qstr text', 'Q': 'qstr pools',
         'B': 'function objects', 'S': 'str / bytes', 'Y': 'classes', 'T': 'tuples', 'D': 'dicts',
         'I': 'instances', 'A': 'arrays / bytearrays', 'i': 'big ints', 'M': 'modules', 'L': 'lists',
         'b': 'bound methods', 'F': 'floats'}


def build():
    if os.path.exists(EXE):
        return EXE
    mp32fixed._check_compiler()
    mp32fixed._source()
    src = os.path.join(OUT, 'micropython-1.28.0')
    if not os.path.exists(src):
        shutil.copytree(mp32fixed.SRC, src, ignore=shutil.ignore_patterns('build-*'))
    gc_c = os.path.join(src, 'py', 'gc.c')
    text = open(gc_c).read()
    if GC_TO not in text:
        for a, b in GC_SUBS:
            if a not in text:
                raise RuntimeError('py/gc.c is not the v1.28.0 this tool patches (%r not found)' % a[:60])
            text = text.replace(a, b)
        with open(gc_c, 'w') as f:
            f.write(text)
    subprocess.check_call(['make', '-C', os.path.join(src, 'mpy-cross'), '-j2'], stdout=subprocess.DEVNULL)
    subprocess.check_call(['make', '-C', os.path.join(src, 'ports', 'unix'), '-j2', 'BUILD=build-tagged']
                          + mp32fixed.FLAGS + ['FROZEN_MANIFEST='], stdout=subprocess.DEVNULL)
    shutil.copy(os.path.join(src, 'ports', 'unix', 'build-tagged', 'micropython'), EXE)
    return EXE


def parse(lines):
    """{kind: [bytes, count]}, the qstr line, the largest blocks, the 'h' sizes, from the dump."""
    text = '\n'.join(lines)
    if 'HEAPMAP-START' not in text or 'qstr pool' not in text:
        raise RuntimeError('no heap map in the firmware output (did it run to the end?)')
    s = text[text.index('HEAPMAP-START'):text.index('qstr pool')]
    seq = []
    for ln in s.splitlines():
        m = re.match(r'^([0-9a-f]{8}): (.*)$', ln)
        if m:
            seq.append(m.group(2))
        m = re.match(r'^\s*\((\d+) lines all free\)', ln)
        if m:
            seq.append('.' * (int(m.group(1)) * 64))
    seq = ''.join(seq)
    kinds = collections.defaultdict(lambda: [0, 0])
    blocks, i = [], 0
    while i < len(seq):
        c = seq[i]
        if c == '=':
            i += 1
            continue
        if c == '.':
            kinds['free'][0] += 16
            i += 1
            continue
        j = i + 1
        while j < len(seq) and seq[j] == '=':
            j += 1
        kinds[c][0] += (j - i) * 16
        kinds[c][1] += 1
        blocks.append(((j - i) * 16, c))
        i = j
    q = re.search(r'qstr pool: .*', text).group(0)
    hsizes = collections.Counter(sz for sz, c in blocks if c == 'h')
    return dict(kinds), q, sorted(blocks, reverse=True)[:20], sorted(hsizes.items())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--heap', type=int, default=150000)
    ap.add_argument('--cycles', type=int, default=300)
    ap.add_argument('--no-schedule', action='store_true')
    a = ap.parse_args(argv)
    try:
        exe = build()
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print('heapmap: %s' % e, file=sys.stderr)
        return 1
    import heapfit
    mp32fixed.exe = lambda frozen=False: exe          # heapfit's run, on the tagged image
    root = heapfit.prepare_root('esp32', False)
    os.replace(os.path.join(root, 'main.py'), os.path.join(root, 'firmware_main.py'))
    with open(os.path.join(root, 'main.py'), 'w') as f:
        f.write("import firmware_main\nimport gc, micropython\ngc.collect()\nprint('HEAPMAP-START')\n"
                "micropython.mem_info(1)\nmicropython.qstr_info()\n")
    lines = []
    r = heapfit.Run(a.heap, root, cycles=a.cycles, schedule=not a.no_schedule, echo=lines.append).run()
    try:
        kinds, q, big, hs = parse(lines)
    except RuntimeError as e:
        print('heapmap: %s; the run: %s' % (e, r.get('why') or r.get('done')), file=sys.stderr)
        return 1
    print('heap %d B, %s, run %s' % (a.heap, 'no schedule' if a.no_schedule else 'a full schedule',
                                    'passed' if r['pass'] else 'FAILED'))
    for k, (b, n) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        print('  %-5s %7d B %5s  %s' % (k, b, n or '', KINDS.get(k, '')))
    print('  ' + q)
    print('  largest blocks: ' + ', '.join('%d %s' % x for x in big))
    print('  "h" blocks by size: ' + ', '.join('%dx%d' % (n, sz) for sz, n in hs))
    os.makedirs(os.path.join(ROOT, 'out'), exist_ok=True)
    path = os.path.join(ROOT, 'out', 'heapmap-%d.json' % a.heap)
    with open(path, 'w') as f:
        json.dump({'heap': a.heap, 'schedule': not a.no_schedule, 'pass': r['pass'], 'kinds': kinds, 'qstr': q,
                   'largest': big, 'h_sizes': hs}, f, indent=1)
    print('  -> %s' % path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
