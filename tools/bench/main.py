"""Scenario benchmark: `make bench` (or .venv/bin/python tools/bench/main.py [--update-docs]).

Runs the core controller and three comparators in closed loop (site_model, 1 s steps, 24 h) on
every scenario, solves the perfect-foresight LP, computes the KPIs, writes one PNG per scenario
and out/bench/results.md, and prints the tables. Then the planner scenarios (issue 11): the core
with tools/planner.py's schedule against the planner's LP (and the bound). --update-docs also
replaces the two results sections of docs/benchmarks.md.
"""
import argparse
import json
import multiprocessing
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if os.path.join(ROOT, 'tools') not in sys.path:    # run as tools/bench/main.py
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
import paths  # noqa: E402,F401 (lib/ on sys.path)

from bench import kpi, runner, scenarios  # noqa: E402

COLUMNS = ('no_battery', 'peak_shaving', 'bang_bang', 'ours', 'optimum')
HEADERS = ('no battery', 'OpenEMS peak shaving', 'bang-bang SC', '**ours**', 'optimum (LP, 1 min)')
SHORT = {'no_battery': 'no battery', 'peak_shaving': 'peak shaving', 'bang_bang': 'bang-bang'}
# absolute slack per unit before a comparator counts as better than ours
SLACK = {'kW': 0.5, 'kWh': 0.1, 'min': 0.5, '': 0.005, '%': 0.1, 's': 1.0, '1/h': 0.05}
BEGIN, END = '<!-- results:begin -->', '<!-- results:end -->'
PLAN_BEGIN, PLAN_END = '<!-- plan-results:begin -->', '<!-- plan-results:end -->'
# planner scenarios: their columns (runner kinds) and headers
PLAN_COLUMNS = {
    'vpp_day': ('no_battery', 'ours', 'planned', 'planned_fc', 'plan_lp', 'planned_ew', 'plan_lp_ew'),
    'depot_undersized': ('no_battery', 'ours', 'planned', 'planned_fc', 'plan_lp', 'optimum'),
}
PLAN_HEADERS = {'no_battery': 'no battery', 'ours': 'ours, no planner', 'planned': '**ours + planner**',
                'planned_fc': '**ours + planner, forecast**', 'plan_lp': "planner's LP (1 min)",
                'planned_ew': 'ours + planner, window ends with the event†',
                'plan_lp_ew': "planner's LP, window ends with the event†", 'optimum': 'optimum (LP, 1 min)'}
PLAN_REF = {'vpp_day': 'plan_lp', 'depot_undersized': 'optimum'}     # the ratio's denominator


def _job(args):
    name, kind = args
    sc = runner.scenario(name)
    t0 = time.time()
    if kind == 'optimum':
        from bench import optimum
        series, info = optimum.solve(sc)
        return name, kind, series, info, time.time() - t0
    if kind == 'plan_lp_ew':
        series, info = runner.plan_lp(sc, ends_with_event=True)
        return name, kind, series, {}, time.time() - t0
    if kind == 'plan_lp':
        series, info = runner.plan_lp(sc)
        d = runner.plan_for(sc, 'perfect')[0]
        d2 = runner.plan_for(sc, 'yesterday')[0]
        info = dict(info, intervals=len(d['intervals']), intervals_fc=len(d2['intervals']),
                    bytes=len(json.dumps(d, separators=(',', ':'))))
        return name, kind, series, info, time.time() - t0
    return name, kind, runner.simulate(sc, kind), {}, time.time() - t0


def _fmt(v, unit):
    if unit == 's' or isinstance(v, int):
        return '%d' % v
    if unit == '':
        return '%.3f' % v
    return '%.1f' % v if abs(v) >= 10 or unit in ('min', '%') else '%.2f' % v


def better(a, b, direction, unit):
    """True if value a is better than b beyond the slack."""
    slack = max(SLACK.get(unit, 0.0), 0.01 * abs(b))
    return a < b - slack if direction == 'low' else a > b + slack


def losses(k):
    """[(kpi label, comparator, its value, ours)] where a comparator beats ours."""
    out = []
    for key, label, unit, direction, _ in kpi.KPIS:
        if direction is None:
            continue
        for c in ('no_battery', 'peak_shaving', 'bang_bang'):
            if better(k[c][key], k['ours'][key], direction, unit):
                out.append((label, c, k[c][key], k['ours'][key], unit))
    return out


def table(sc, k):
    lines = ['| KPI | unit | ' + ' | '.join(HEADERS) + ' | ours loses to |',
             '|---|---|' + '---:|' * len(HEADERS) + '---|']
    opt = k['optimum']
    for key, label, unit, direction, has_ratio in kpi.KPIS:
        cells = []
        for c in COLUMNS:
            v = k[c][key]
            if c == 'optimum' and key in ('rev_per_h',):
                cells.append('(n/a)')
                continue
            s = _fmt(v, unit)
            if has_ratio and c != 'optimum':
                o = opt[key]
                if abs(o) > 1e-3:
                    s += ' (%.2f×)' % (v / o)
                elif abs(v) > 1e-3:
                    s += ' (opt 0)'
            if c == 'ours':
                s = '**%s**' % s
            cells.append(s)
        lost = []
        if direction is not None:
            for c in ('no_battery', 'peak_shaving', 'bang_bang'):
                if better(k[c][key], k['ours'][key], direction, unit):
                    lost.append(SHORT[c])
        lines.append('| %s | %s | %s | %s |' % (label, unit, ' | '.join(cells), ', '.join(lost) or '—'))
    return '\n'.join(lines)


def report(results, infos, plot_paths):
    parts = []
    for name in results:
        sc = runner.scenario(name)
        k = results[name]
        parts.append('### %s — %s\n\n%s. Date %s (TMY3 Greensboro irradiation %.1f kWh/m²).\n' % (
            name, sc.title, sc.notes, sc.date, _ghi(sc.date)))
        parts.append(table(sc, k))
        li = infos[name]
        parts.append('\nLP: %d variables, %d constraints, %.2f kWh simultaneous charge+discharge in the '
                     'solution. Plot: `%s`.\n' % (li['vars'], li['rows'], li['simultaneous_kwh'], plot_paths[name]))
        ls = losses(k)
        if ls:
            parts.append('Where ours loses: ' + '; '.join(
                '%s: %s %s vs ours %s %s' % (lab, SHORT[c], _fmt(v, u), _fmt(o, u), u)
                for lab, c, v, o, u in ls) + '.\n')
        else:
            parts.append('Ours loses to no comparator on any KPI with a direction.\n')
    return '\n'.join(parts)


def _ghi(date):
    from bench import data
    return data.daily_ghi_kwh_m2(date)


def update_docs(path, text, begin=BEGIN, end=END):
    with open(path) as f:
        doc = f.read()
    a, b = doc.index(begin) + len(begin), doc.index(end)
    with open(path, 'w') as f:
        f.write(doc[:a] + '\n' + text + '\n' + doc[b:])


def obligation(sc):
    """kpi.Obligation of a planner scenario (its commitment as the planner reads it)."""
    import planner
    site = planner.Site(sc.planning.site, sc.name)
    c = site.commitment
    return kpi.Obligation(site.reserve_bp(sc.planning.risk), c['window'], c['events'], c['committed_w'],
                          sc.planning.prices_h)


def plan_kpis(name, series):
    """{column: KPI dict} of one planner scenario."""
    from bench import optimum, plots
    from bess_core import B_IMPORT, B_PHASE
    sc = runner.scenario(name)
    out = {}
    for c, s in series.items():
        dt = optimum.STEP_S if c in plots.LP_KINDS else 1
        if name == 'vpp_day':
            prot = None if dt != 1 else (s['binding'] == B_IMPORT) | (s['binding'] == B_PHASE)
            out[c] = kpi.vpp(s, sc, dt, obligation(sc), prot)
        else:
            out[c] = kpi.depot(s, sc, dt)
    return out


def plan_table(name, k):
    cols = PLAN_COLUMNS[name]
    kpis = kpi.VPP_KPIS if name == 'vpp_day' else kpi.DEPOT_KPIS
    ref = k[PLAN_REF[name]]
    lines = ['| KPI | unit | ' + ' | '.join(PLAN_HEADERS[c] for c in cols) + ' |',
             '|---|---|' + '---:|' * len(cols)]
    for key, label, unit, direction, has_ratio in kpis:
        cells = []
        for c in cols:
            v = k[c][key]
            cell = _fmt(v, unit)
            if has_ratio and c != PLAN_REF[name] and abs(ref[key]) > 1e-3:
                cell += ' (%.3f×)' % (v / ref[key])
            cells.append('**%s**' % cell if c in ('planned', 'planned_fc') else cell)
        lines.append('| %s | %s | %s |' % (label, unit, ' | '.join(cells)))
    return '\n'.join(lines)


def plan_report(results, infos, plot_paths):
    parts = []
    for name in results:
        sc = runner.scenario(name)
        li = infos[name]
        parts.append('### %s — %s\n\n%s. Date %s.\n' % (name, sc.title, sc.notes, sc.date))
        parts.append(plan_table(name, results[name]))
        parts.append('\nRatios: to the %s. Schedule (perfect forecast): %d intervals, %d bytes of JSON; from the '
                     'forecast: %d intervals. Planner LP: %d variables, %d constraints. Plot: `%s`.\n' % (
                         "planner's LP" if PLAN_REF[name] == 'plan_lp' else 'optimum', li['intervals'], li['bytes'],
                         li['intervals_fc'], li['vars'], li['rows'], plot_paths[name]))
    return '\n'.join(parts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=os.path.join(ROOT, 'out', 'bench'))
    ap.add_argument('--jobs', type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument('--scenarios', default=','.join(scenarios.NAMES + scenarios.PLAN_NAMES))
    ap.add_argument('--update-docs', action='store_true', help='rewrite the results sections of docs/benchmarks.md')
    a = ap.parse_args(argv)
    t0 = time.time()
    names = [n for n in a.scenarios.split(',') if n]
    for n in names:
        if n not in scenarios.NAMES + scenarios.PLAN_NAMES:
            ap.error('unknown scenario %s (have %s)' % (n, ', '.join(scenarios.NAMES + scenarios.PLAN_NAMES)))
    jobs = [(n, c) for n in names for c in (PLAN_COLUMNS[n] if n in PLAN_COLUMNS else COLUMNS)]
    series = {n: {} for n in names}
    infos = {}
    if a.jobs > 1:
        ctx = multiprocessing.get_context('fork')
        with ctx.Pool(a.jobs) as pool:
            done = pool.imap_unordered(_job, jobs)
            for name, kind, s, info, dt in done:
                series[name][kind] = s
                if info and (kind == 'plan_lp' or name not in PLAN_COLUMNS):
                    infos[name] = info
    else:
        for j in jobs:
            name, kind, s, info, dt = _job(j)
            series[name][kind] = s
            if info and (kind == 'plan_lp' or name not in PLAN_COLUMNS):
                infos[name] = info
    from bench import optimum, plots
    results, paths, plan_results, plan_paths = {}, {}, {}, {}
    for n in names:
        sc = runner.scenario(n)
        p = os.path.join(a.out, '%s.png' % n)
        plots.plot(sc, series[n], p)
        if n in PLAN_COLUMNS:
            plan_results[n] = plan_kpis(n, series[n])
            plan_paths[n] = os.path.relpath(p, ROOT)
            continue
        results[n] = {c: kpi.compute(series[n][c], sc, optimum.STEP_S if c == 'optimum' else 1) for c in COLUMNS}
        paths[n] = os.path.relpath(p, ROOT)
    text = report(results, infos, paths)
    ptext = plan_report(plan_results, infos, plan_paths)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, 'results.md'), 'w') as f:
        f.write(text + '\n' + ptext)
    print(text)
    print(ptext)
    if a.update_docs:
        doc = os.path.join(ROOT, 'docs', 'benchmarks.md')
        if results:
            update_docs(doc, text)
        if plan_results:
            update_docs(doc, ptext, PLAN_BEGIN, PLAN_END)
        print('updated docs/benchmarks.md')
    print('bench: %d scenarios, %d runs and LPs in %.1f s (%d processes); results in %s' % (
        len(names), len(jobs), time.time() - t0, a.jobs, os.path.relpath(a.out, ROOT)))


if __name__ == '__main__':
    main()
