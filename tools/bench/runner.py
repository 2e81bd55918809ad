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
# ours + planner: perfect forecast / yesterday + noise; *_rule: with the core rule the depot needs
# (proposed, not in the core: emulated here, see Driven)
PLANNED = ('planned', 'planned_fc', 'planned_rule', 'planned_rule_fc')
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
    dispatch commands at their second.

    levels = (SoC bp, import W, phase W) per slot_s (planner.protection_levels) EMULATES a core
    rule that does not exist yet: while the SoC is at or below the plan's for the interval, import-
    limit protection holds the plan's levels instead of the limits, so the battery covers only the
    excess the plan expects it to cover and keeps the rest for the peak where a watt saves more
    (docs/benchmarks.md, "Undersized depot"). It writes the core's limits before each step."""

    def __init__(self, ctl, plan=None, dispatch=(), levels=None, slot_s=900):
        self.ctl = ctl
        self.inp = ctl.inp
        self.out = ctl.out
        self.plan = plan
        self.dispatch = {t: (p, d) for t, p, d in dispatch}
        self.levels = levels
        self.slot_s = slot_s
        self.lim0 = (ctl.import_limit_w, ctl.phase_limit_w)
        self.t_s = 0

    def step(self):
        t = self.t_s
        c = self.ctl
        if t in self.dispatch:
            c.start_dispatch(*self.dispatch[t])
        if self.plan is not None:
            self.plan.tick(1, t)
        if self.levels is not None:
            soc, imp, ph = self.levels
            k = min(t // self.slot_s, len(soc) - 1)
            if self.inp.soc_bp <= soc[k]:
                c.import_limit_w = max(self.lim0[0], imp[k])
                c.phase_limit_w = max(self.lim0[1], ph[k])
            else:
                c.import_limit_w, c.phase_limit_w = self.lim0
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


def plan_for(sc, fc):
    """(schedule dict, LP solution, Problem, Site) of the planner for scenario sc from forecast fc."""
    key = (sc.name, fc)
    if key not in _PLANS:
        import planner
        site = planner.Site(sc.planning.site, sc.name)
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
    import planner
    import schedule
    d, sol, p, site = plan_for(sc, 'yesterday' if kind.endswith('_fc') else 'perfect')
    ctl = Controller(site.cfg)
    pl = plan_mod.Plan(ctl)
    pl.load(schedule.compile_(d, commissioned=site.cfg))
    pl.rebase(sc.planning.epoch(sc.date))
    levels = planner.protection_levels(p, sol) if kind.startswith('planned_rule') else None
    return _run(sc, Driven(ctl, pl, levels=levels), dt_ms)


def plan_lp(sc):
    """The planner's own LP (perfect forecast) as KPI series at its step."""
    from bench import optimum
    d, sol, p, site = plan_for(sc, 'perfect')
    return optimum.series(sol, sc, STEP_S), sol['info']


_CACHE = {}


def scenario(name):
    if name not in _CACHE:
        _CACHE[name] = scenarios.build(name)
    return _CACHE[name]
