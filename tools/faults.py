#!/usr/bin/env python3
"""Fault-injection suite: every fault class of issue 10 against the real firmware, one table.

    python tools/faults.py                  # full run (make faults, ~25 min), table on stdout
    python tools/faults.py --quick          # few tries, short steady/fuzz/soak (~10 min)
    python tools/faults.py --out out/faults.json --md out/faults.md
    python tools/faults.py --only frozen    # the cases whose name contains "frozen"

Columns: fault, tries, time to 0 W on the wire (min / median / max over the tries: from the
fault's start at the worst timing to the simulated battery's setpoint at 0 W), recovery (from
the fault's end to the battery back at 90 % of its setpoint: median, max), lost / duplicated
telemetry records (MQTT rows and the soak), note (the bound and whether it was met, counts).

Rows: Modbus side (tools/faults_modbus.py: meter and battery faults, the whole line, frozen
data, a steady site, fuzz), broken site configs (tools/faults_boot.py), the soak on the 32-bit
fixed heap (tools/faults_soak.py), and the MQTT side: every case_* function of
tools/faults_mqtt.py when that module is there. A case that raises becomes a row saying so;
the suite goes on. The bounds are asserted by host_tests/test_faults.py, not here: this is
the benchmark.
"""
import argparse
import datetime
import inspect
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import paths  # noqa: E402,F401 (lib/ on sys.path)

import faults_boot  # noqa: E402
import faults_modbus as fm  # noqa: E402
import faults_soak  # noqa: E402

# tries per fault class and per frozen case, seconds of steady site and of fuzz, soak minutes;
# the MQTT cases run at their own defaults (full) or with one try and short outages (quick)
FULL = dict(tries=6, frozen=3, steady_s=180, fuzz_s=180, soak_min=6, quick=False)
QUICK = dict(tries=2, frozen=1, steady_s=60, fuzz_s=60, soak_min=1.5, quick=True)


def mqtt_cases(quick):
    """(name, thunk) of every case_* in tools/faults_mqtt.py, in source order; [] without it.
    Full: each at its own defaults. Quick: one try, and its short outage where it takes one."""
    try:
        import faults_mqtt
    except ImportError as e:
        if getattr(e, 'name', None) != 'faults_mqtt':
            raise                       # the module is there but broken: say so
        return []
    fns = [f for n, f in inspect.getmembers(faults_mqtt, inspect.isfunction)
           if n.startswith('case_') and f.__module__ == faults_mqtt.__name__]
    fns.sort(key=lambda f: f.__code__.co_firstlineno)
    out = []
    for f in fns:
        kw = {}
        if quick:
            params = inspect.signature(f).parameters
            if 'tries' in params:
                kw['tries'] = 1
            if 'down_s' in params and hasattr(faults_mqtt, 'QUICK_DOWN_S'):
                kw['down_s'] = faults_mqtt.QUICK_DOWN_S
        out.append(('mqtt ' + f.__name__[5:].replace('_', ' '), lambda f=f, kw=kw: f(**kw)))
    return out


def cases(p):
    """(name, thunk) for every case at the settings p (FULL or QUICK)."""
    out = [(n, lambda n=n: fm.case_fault(n, p['tries'])) for n in fm.FAULTS]
    out += [('meter frozen', lambda: fm.case_frozen('meter', p['frozen'])),
            ('battery frozen', lambda: fm.case_frozen('battery', p['frozen'])),
            ('steady site', lambda: fm.case_steady(p['steady_s'])),
            ('Modbus fuzz', lambda: fm.case_fuzz(p['fuzz_s'])),
            ('broken site configs', faults_boot.case_broken_configs),
            ('soak', lambda: faults_soak.case_soak(p['soak_min']))]
    out += mqtt_cases(p['quick'])
    return out


# --- the table ----------------------------------------------------------------------------------------

def _s(x):
    return '–' if x is None else '%.2f' % x


def t0w_cells(r):
    v = r.get('t0w_s')
    if v is None:
        return ['–'] * 3
    got = [x for x in v if x is not None]
    if not got:
        return ['never'] * 3
    st = fm.stats_of(got)
    mx = _s(st[2]) if len(got) == len(v) else 'never (%d of %d)' % (len(v) - len(got), len(v))
    return [_s(st[0]), _s(st[1]), mx]


def recovery_cell(r):
    v = r.get('recovery_s')
    if v is None:
        return '–'
    got = [x for x in v if x is not None]
    if not got:
        return 'none'
    st = fm.stats_of(got)
    return '%s (%s)' % (_s(st[1]), _s(st[2])) if len(got) > 1 else _s(st[1])


def markdown(rows):
    head = ('| fault | tries | 0 W min (s) | median | max | recovery (s): median (max) | lost | dup | note |\n'
            '|---|---:|---:|---:|---:|---:|---:|---:|---|\n')
    lines = []
    for r in rows:
        cells = [r['fault'], str(r['tries'])] + t0w_cells(r) + [
            recovery_cell(r), '–' if r.get('lost') is None else str(r['lost']),
            '–' if r.get('dup') is None else str(r['dup']), str(r.get('note', '')).replace('|', '/')]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return head + '\n'.join(lines) + '\n'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--quick', action='store_true', help='few tries, short steady/fuzz/soak')
    ap.add_argument('--out', help='write the rows and the run as JSON here')
    ap.add_argument('--md', help='write the Markdown table here')
    ap.add_argument('--only', help='run the cases whose name contains this text')
    a = ap.parse_args(argv)
    p = QUICK if a.quick else FULL
    todo = [(n, f) for n, f in cases(p) if not a.only or a.only.lower() in n.lower()]
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    rows = []
    for name, fn in todo:
        t = time.monotonic()
        print('faults: %s ...' % name, file=sys.stderr, flush=True)
        try:
            r = fn()
        except Exception as e:          # one broken case must not cost the others' figures
            traceback.print_exc()
            r = fm.row(name, 0, note=('ERROR: %s: %s' % (type(e).__name__, e))[:300])
        r['wall_s'] = round(time.monotonic() - t, 1)
        rows.append(r)
        print('faults: %s: %s (%.0f s)' % (name, r.get('note', ''), r['wall_s']), file=sys.stderr, flush=True)
    cmd = 'python tools/faults.py' + (' --quick' if a.quick else '') + (' --only %s' % a.only if a.only else '')
    title = ('Fault-injection table: `%s`, %s, %s (%.0f min)\n\n'
             % (cmd, started.strftime('%Y-%m-%d'), 'quick' if a.quick else 'full',
                (time.monotonic() - t_start) / 60))
    md = title + markdown(rows)
    print(md)
    if a.md:
        os.makedirs(os.path.dirname(os.path.abspath(a.md)), exist_ok=True)
        with open(a.md, 'w') as f:
            f.write(md)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, 'w') as f:
            json.dump({'command': cmd, 'date': started.isoformat(), 'quick': a.quick, 'settings': p,
                       'wall_s': round(time.monotonic() - t_start, 1), 'rows': rows}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
