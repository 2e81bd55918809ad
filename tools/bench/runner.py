"""Closed-loop runs: a controller (core or comparator) against site_model's Site and Battery, 1 s
steps over 24 h, through site_model.run() exactly like `make sim` and the closed-loop tests."""
import numpy as np

import site_model
from bess_core import Controller
from bench import comparators, data, scenarios

CONTROLLERS = ('no_battery', 'peak_shaving', 'bang_bang', 'ours')


def make_controller(kind, cfg):
    if kind == 'ours':
        return Controller(cfg)
    return {'no_battery': comparators.NoBattery, 'peak_shaving': comparators.PeakShaving,
            'bang_bang': comparators.BangBang}[kind](cfg)


def simulate(sc, kind, dt_ms=1000):
    """Run one controller on one scenario; returns a dict of numpy arrays, one sample per step."""
    base, pv, (e1, e2, e3) = sc.base, sc.pv, sc.ev
    site = site_model.Site(base.__getitem__, pv.__getitem__, lambda t: (e1[t], e2[t], e3[t]))
    bat = site_model.Battery(**sc.battery)
    ctl = make_controller(kind, sc.cfg)
    n = data.DAY_S * 1000 // dt_ms
    g = [0] * n
    l1 = [0] * n
    l2 = [0] * n
    l3 = [0] * n
    p = [0] * n
    s = [0] * n
    k = [0]

    def rec(t_s, ctl_, bat_, ph):
        j = k[0]
        l1[j], l2[j], l3[j], g[j] = ph
        p[j] = bat_.actual_w
        s[j] = bat_.soc_bp
        k[0] = j + 1

    site_model.run(ctl, site, bat, data.DAY_S, dt_ms=dt_ms, on_step=rec)
    cons = np.asarray(base, dtype=np.int64) + np.asarray(e1) + np.asarray(e2) + np.asarray(e3)
    return {'gcp': np.asarray(g), 'l1': np.asarray(l1), 'l2': np.asarray(l2), 'l3': np.asarray(l3),
            'bat': np.asarray(p), 'soc': np.asarray(s), 'cons': cons}


_CACHE = {}


def scenario(name):
    if name not in _CACHE:
        _CACHE[name] = scenarios.build(name)
    return _CACHE[name]
