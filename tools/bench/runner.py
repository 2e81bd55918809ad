"""Closed-loop runs: a controller (core or comparator) against site_model's Site and Battery, 1 s
steps over 24 h, through site_model.run() exactly like `make sim` and the closed-loop tests.

The planner scenarios (scenarios.PLAN_NAMES) add runs of the core with a schedule from
tools/planner.py, driven like the firmware drives it (Plan.tick before every step), from a perfect
forecast or from yesterday's profile plus noise."""
import random

import numpy as np

import site_model
from bess_core import Controller
from bench import comparators, data, scenarios

CONTROLLERS = ('no_battery', 'peak_shaving', 'bang_bang', 'ours')
# ours + planner: perfect forecast / yesterday + noise / perfect with the delivery window closing
# when the event ends (a what-if: not the seed's rule, docs/benchmarks.md)
PLANNED = ('planned', 'planned_fc', 'planned_ew')
STEP_S = 60                     # the planner's forecast step in the benchmark
NOISE = 0.10                    # imperfect forecast: sigma of a multiplicative error per quarter hour
NOISE_SEED = 2025


def make_controller(kind, cfg):
    if kind == 'ours':
        return Controller(cfg)
    return {'no_battery': comparators.NoBattery, 'peak_shaving': comparators.PeakShaving,
            'bang_bang': comparators.BangBang}[kind](cfg)


class Driven:
    """The core as the firmware runs it, for site_model.run(): the schedule's Plan.tick(clock
    valid, seconds since the clock base) before every step (firmware/cycle.py's order) and
    dispatch commands at their second."""

    def __init__(self, ctl, plan=None, dispatch=()):
        self.ctl = ctl
        self.inp = ctl.inp
        self.out = ctl.out
        self.plan = plan
        self.dispatch = {t: (p, d) for t, p, d in dispatch}
        self.t_s = 0

    def step(self):
        t = self.t_s
        c = self.ctl
        if t in self.dispatch:
            c.start_dispatch(*self.dispatch[t])
        if self.plan is not None:
            self.plan.tick(1, t)
        c.step()
        self.t_s = t + self.inp.dt_ms // 1000


def _run(sc, ctl, dt_ms=1000):
    """site_model.run() of one controller on one scenario; a dict of numpy arrays, one sample per
    step (binding and reserve_bp where the controller reports them)."""
    base, pv, (e1, e2, e3) = sc.base, sc.pv, sc.ev
    site = site_model.Site(base.__getitem__, pv.__getitem__, lambda t: (e1[t], e2[t], e3[t]))
    bat = site_model.Battery(**sc.battery)
    n = data.DAY_S * 1000 // dt_ms
    g, l1, l2, l3, p, s, bd, rs = ([0] * n for _ in range(8))
    k = [0]

    def rec(t_s, ctl_, bat_, ph):
        j = k[0]
        l1[j], l2[j], l3[j], g[j] = ph
        p[j] = bat_.actual_w
        s[j] = bat_.soc_bp
        o = ctl_.out
        bd[j] = o.binding
        rs[j] = getattr(o, 'reserve_bp', 0)
        k[0] = j + 1

    site_model.run(ctl, site, bat, data.DAY_S, dt_ms=dt_ms, on_step=rec)
    cons = np.asarray(base, dtype=np.int64) + np.asarray(e1) + np.asarray(e2) + np.asarray(e3)
    return {'gcp': np.asarray(g), 'l1': np.asarray(l1), 'l2': np.asarray(l2), 'l3': np.asarray(l3),
            'bat': np.asarray(p), 'soc': np.asarray(s), 'cons': cons, 'binding': np.asarray(bd),
            'reserve': np.asarray(rs)}


def simulate(sc, kind, dt_ms=1000):
    """Run one controller on one scenario; returns a dict of numpy arrays, one sample per step."""
    if kind in PLANNED:
        return simulate_planned(sc, kind, dt_ms)
    ctl = make_controller(kind, sc.cfg)
    if kind == 'ours' and sc.planning is not None and sc.planning.dispatch:
        ctl = Driven(ctl, dispatch=sc.planning.dispatch)    # the VPP's command, no planner
    return _run(sc, ctl, dt_ms)


def forecast(sc, kind, step_s=STEP_S):
    """(base, pv, [ev1, ev2, ev3]) means per step_s the planner gets: 'perfect' = the day itself;
    'yesterday' = the day before with a seeded multiplicative error (sigma NOISE) per quarter hour
    and series (the previous day's profile plus noise)."""
    src = (sc.base, sc.pv, sc.ev) if kind == 'perfect' else sc.planning.yesterday()
    series = [src[0], src[1]] + list(src[2])
    out = [np.asarray(x, dtype=float).reshape(-1, step_s).mean(axis=1) for x in series]
    if kind != 'perfect':
        rng = random.Random(NOISE_SEED)
        per = 900 // step_s
        for j in range(len(out)):
            f = np.repeat([max(0.0, 1.0 + rng.gauss(0.0, NOISE)) for _ in range(len(out[j]) // per)], per)
            out[j] = out[j] * f
    return out[0], out[1], out[2:]


_PLANS = {}


def window_ends_with_event(site_d):
    """A copy of site.json dict site_d whose delivery window closes when its last event ends."""
    import copy
    d = copy.deepcopy(site_d)
    c = d['commitment']
    end_s = max(int(e['start'][:2]) * 3600 + int(e['start'][3:]) * 60 + e['duration_s'] for e in c['events'])
    c['window'] = [c['window'][0], '%02d:%02d' % (end_s // 3600, end_s % 3600 // 60)]
    return d


def plan_for(sc, fc, ends_with_event=False):
    """(schedule dict, LP solution, Problem, Site) of the planner for scenario sc from forecast fc
    (ends_with_event: the delivery window closes with the event, window_ends_with_event)."""
    key = (sc.name, fc, ends_with_event)
    if key not in _PLANS:
        import planner
        site_d = window_ends_with_event(sc.planning.site) if ends_with_event else sc.planning.site
        site = planner.Site(site_d, sc.name)
        base, pv, ev = forecast(sc, fc)
        t0 = sc.planning.epoch(sc.date)
        prices = np.repeat(np.asarray(sc.planning.prices_h, dtype=float) / 1000.0, 3600 // STEP_S)
        d, sol, p = planner.plan(site, t0, STEP_S, base, pv, ev, prices, risk=sc.planning.risk, created=t0,
                                 version=1)
        _PLANS[key] = (d, sol, p, site)
    return _PLANS[key]


def simulate_planned(sc, kind, dt_ms=1000):
    """The core with the planner's schedule: compiled (lib/schedule.py), evaluated per cycle by
    lib/plan.Plan, the clock valid from the day's 00:00."""
    import plan as plan_mod
    import schedule
    d, sol, p, site = plan_for(sc, 'yesterday' if kind.endswith('_fc') else 'perfect', kind == 'planned_ew')
    ctl = Controller(site.cfg)
    pl = plan_mod.Plan(ctl)
    pl.load(schedule.compile_(d, commissioned=site.cfg))
    pl.rebase(sc.planning.epoch(sc.date))
    return _run(sc, Driven(ctl, pl), dt_ms)


def plan_lp(sc, ends_with_event=False):
    """The planner's own LP (perfect forecast) as KPI series at its step."""
    from bench import optimum
    d, sol, p, site = plan_for(sc, 'perfect', ends_with_event)
    return optimum.series(sol, sc, STEP_S), sol['info']


_CACHE = {}


def scenario(name):
    if name not in _CACHE:
        _CACHE[name] = scenarios.build(name)
    return _CACHE[name]
