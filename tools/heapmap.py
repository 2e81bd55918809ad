#!/usr/bin/env python3
"""Where the firmware's heap goes, by kind of block (docs/resources.md): the deployed firmware
(tools/heapfit.py's run: MQTT, outage, schedule, commands, bus faults) on a 32-bit MicroPython
whose heap map names every block's type, dumped with micropython.mem_info(1) after the run.

    python tools/heapmap.py [--heap 150000] [--cycles 300] [--no-schedule] [--around-commands]

Builds its own variant of the fixed-heap image once (build/mp32tagged/, ~30 s): py/gc.c's map
tags qstr pools (Q) and qstr text (q, the chunk heads), classes (Y), instances of our classes (I),
bound methods (b), big ints (i) besides MicroPython's own T/L/D/S/A/F/B/M; 'h' is the rest
(bytecode, raw code, member tables, array data). Prints bytes and counts per kind, the qstr
figures, the largest blocks and the sizes of the 'h' blocks; writes out/heapmap-<heap>.json.
--around-commands: instead, the map right before the first command loads the command path and
right after that path is dropped (its idle unload), and what the burst left where the heap had
been free: long-lived objects made while the path's code was loaded cut the heap its next load
needs (docs/resources.md). (The wrapper imports reporting, to hook it, before main.py's own
resident imports: a slightly different layout from the deployed one.)
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
    seq = _map(text[text.index('HEAPMAP-START'):text.index('qstr pool')])
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


# --around-commands: the heap right before the first command loads the command path and right
# after that path is dropped again (CommandHandler's idle unload), both after a collection
AROUND = """import gc, micropython, reporting
_call, _idle = reporting.CommandHandler.__call__, reporting.CommandHandler.idle
def _dump(tag):
    gc.collect()
    print(tag + '-START')
    micropython.mem_info(1)
    print(tag + '-END')
def _c(self, *a):
    if self.t_last is None and not getattr(reporting, '_a', 0):
        reporting._a = 1
        _dump('AROUND-A')
    return _call(self, *a)
def _i(self, now):
    t = self.t_last
    _idle(self, now)
    if t is not None and self.t_last is None and not getattr(reporting, '_b', 0):
        reporting._b = 1
        _dump('AROUND-B')
reporting.CommandHandler.__call__ = _c
reporting.CommandHandler.idle = _i
import firmware_main
"""


def blocks(lines, tag):
    """The map between <tag>-START and <tag>-END as one string, a character per 16-byte block
    ('.' free; 'h', 'S', ... the kind of the block starting there; '=' its continuation)."""
    text = '\n'.join(lines)
    if tag + '-START' not in text or tag + '-END' not in text:
        raise RuntimeError('no %s map in the firmware output (did a command come and go?)' % tag)
    return _map(text[text.index(tag + '-START'):text.index(tag + '-END')])


def _map(text):
    """micropython.mem_info(1)'s layout lines as one string, a character per block."""
    seq = []
    for ln in text.splitlines():
        m = re.match(r'^([0-9a-f]{8}): (.*)$', ln)
        if m:
            seq.append(m.group(2))
        m = re.match(r'^\s*\((\d+) lines all free\)', ln)
        if m:
            seq.append('.' * (int(m.group(1)) * 64))
    return ''.join(seq)


def left_behind(a, b):
    """What b holds where a was free: {kind: bytes} of the blocks that start on a free block of a
    (what a phase between the two maps made and kept), and the free runs (bytes) of each map."""
    kept = collections.Counter()
    i, n = 0, min(len(a), len(b))
    while i < n:
        if a[i] == '.' and b[i] not in '.=':
            j = i + 1
            while j < n and b[j] == '=':
                j += 1
            kept[b[i]] += (j - i) * 16
            i = j
        else:
            i += 1

    def runs(s):
        return sorted((len(x) * 16 for x in re.findall(r'\.+', s)), reverse=True)
    return dict(kept), runs(a), runs(b)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--heap', type=int, default=150000)
    ap.add_argument('--cycles', type=int, default=300)
    ap.add_argument('--no-schedule', action='store_true')
    ap.add_argument('--around-commands', action='store_true',
                    help='what the first command burst leaves in the heap once its code is dropped')
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
        f.write(AROUND if a.around_commands else
                "import firmware_main\nimport gc, micropython\ngc.collect()\nprint('HEAPMAP-START')\n"
                "micropython.mem_info(1)\nmicropython.qstr_info()\n")
    lines = []
    r = heapfit.Run(a.heap, root, cycles=a.cycles, schedule=not a.no_schedule, echo=lines.append).run()
    if a.around_commands:
        try:
            kept, ra, rb = left_behind(blocks(lines, 'AROUND-A'), blocks(lines, 'AROUND-B'))
        except RuntimeError as e:
            print('heapmap: %s; the run: %s' % (e, r.get('why') or r.get('done')), file=sys.stderr)
            return 1
        print('heap %d B, %s: the first command burst, before its code loaded and after it was dropped'
              % (a.heap, 'no schedule' if a.no_schedule else 'a full schedule'))
        print('  left behind where the heap was free before: %d B %s' % (sum(kept.values()), kept))
        for tag, rs in (('before', ra), ('after', rb)):
            print('  free %s: %d B in %d pieces, the largest %s' % (tag, sum(rs), len(rs), rs[:8]))
        return 0
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
