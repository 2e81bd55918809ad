#!/usr/bin/env python3
"""Site planner (issue 11, item 8): forecasts + prices + the capacity commitment -> an LP (scipy
HiGHS) -> a schedule format v1 (lib/schedule.py, docs/schedule.md) for one site.

    python tools/planner.py --site site.json --forecast f.csv --prices p.csv [--risk] [--out s.json]
        [--publish mqtt://127.0.0.1:1883/<topic> --key HEX] [--version N | --version-file PATH]

Priorities, as weights of one LP (each tier outweighs everything below it over a day):
  1. energy above the import limit and above each phase's limit (a symmetric battery moves each
     phase by a third of its power, so a phase costs 3 W of battery per W of excess);
  2. the capacity obligation: the firm event power, the reserve floor in the delivery window
     (and the charge to reach it before the window);
  3. self-consumption: grid import energy;
  4. arbitrage: grid energy at the day-ahead price (import pays, export earns);
  5. battery throughput (no needless cycling).
The LP also models what the core does that costs energy or power: efficiency, the min-SoC taper,
grid charging only within the import limit less the EV headroom, no battery export where the
schedule forbids it. tools/bench/optimum.py runs the same LP (without the core's rules) as the
perfect-foresight bound of the scenario benchmark.

The schedule translates the LP per quarter hour (make_schedule, _slot_fields): a firm power per
event; the reserve in the window and a charge-to-reserve target over the hour before it; targets
where the LP charges from the grid, an economic power where it sells; and protection levels where
the LP lets excess through to keep energy for a costlier excess later (protect_import_w /
protect_phase_w with the LP's SoC at the quarter's start as the reserve: the core holds the levels
only while the battery has no more than the plan expected). Versions default to seconds since
2020, unique per site on this host (next_version).

Input files (docs/benchmarks.md, "Site planner"): site.json holds the site's id and clock offset,
the commissioned control config (lib/bess_config keys), the battery's state and efficiency, the
capacity commitment (committed_w, event_duration_s, usable_wh, derate_bp, availability_bp, the
delivery window, known events, the risk margin) and the day's end SoC. The forecast CSV has
`time` (unix s, step start) and `load_w`, `pv_w`, `ev_l1_w`, `ev_l2_w`, `ev_l3_w` (W, means over
the step; missing EV columns = 0) at one step size (60, 300 or 900 s). The price CSV has `time`
and `price_per_mwh`, each row in force until the next.
"""
import argparse
import csv
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import paths  # noqa: E402,F401 (lib/ on sys.path)

import bess_config  # noqa: E402
from bess_core import is_int as _is_int  # noqa: E402
import schedule  # noqa: E402

DAY_S = 86400
SLOT_S = 900                    # schedule interval grid: the day-ahead market's quarter hour
# tier weights per kWh (per kWh x h for the reserve shortfall): a kWh of a tier outweighs any kWh
# of the tiers below it (prices are at most a few currency units per kWh)
W_EXCESS = 1000000.0
W_OBLIGATION = 10000.0
W_IMPORT = 10.0
W_PRICE = 1.0                   # x price in currency per kWh (0.05 .. 0.5)
W_THROUGHPUT = 0.001
# the core's charge-to-target lands a little short (it estimates the charging losses, the BMS
# derates near full): targets aim this much above the LP's SoC, so a reserve is really reached
TARGET_MARGIN_BP = 50
CHARGE_LEAD_S = 3600            # the last hour before the delivery window charges to the reserve
VERSION_MAX = 2 ** 30 - 1       # format v1 (docs/schedule.md): versions are small ints on the device
VERSION_EPOCH_S = 1577836800    # 2020-01-01 00:00 UTC: default versions count seconds from here


class PlanError(ValueError):
    """Bad planner input; the message says what and where."""


class Problem:
    """One day's planning LP. Series are per step (numpy arrays, W); scalars in W, Wh, bp.

    Optional core rules (None/0 = off, as in the bound of tools/bench/optimum.py):
      taper_bp: discharge scaled down linearly within taper_bp above min SoC (bess_core step 3);
      headroom_w: grid charging only while import stays under limit - headroom (and 3 x the worst
        phase under 3 x its limit - headroom), as the core charges; PV surplus is always free;
      no_export: per step, the battery never discharges more than the site's demand.
    Obligation: reserve_bp per step (0 = none: the floor E >= reserve, short of it costs tier 2);
    event_w per step (net discharge at least this, tier 2). end_soc_bp: the day ends at least there.
    """

    def __init__(self, step_s, base_w, pv_w, ev_w, import_limit_w, phase_limit_w, capacity_wh, soc0_bp,
                 min_soc_bp, max_soc_bp, max_chg_w, max_dis_w, eta_chg_bp=9600, eta_dis_bp=9600):
        import numpy as np
        self.step_s = step_s
        self.base_w = np.asarray(base_w, dtype=float)
        self.pv_w = np.asarray(pv_w, dtype=float)
        self.ev_w = [np.asarray(e, dtype=float) for e in ev_w]
        self.T = len(self.base_w)
        for a in [self.pv_w] + self.ev_w:
            if len(a) != self.T:
                raise PlanError('every series needs %d steps' % self.T)
        self.limit_w = np.full(self.T, float(import_limit_w))
        self.phase_limit_w = phase_limit_w
        self.capacity_wh = capacity_wh
        self.soc0_bp = soc0_bp
        self.min_soc_bp = min_soc_bp
        self.max_soc_bp = max_soc_bp
        self.max_chg_w = max_chg_w
        self.max_dis_w = max_dis_w
        self.eta_chg_bp = eta_chg_bp
        self.eta_dis_bp = eta_dis_bp
        self.bms = None             # (rated charge W, rated discharge W): site_model's BMS derating
        self.taper_bp = 0
        self.headroom_w = None
        self.zfi_min_import_w = None
        self.no_export = np.zeros(self.T, dtype=bool)
        self.reserve_bp = np.zeros(self.T)
        self.event_w = np.zeros(self.T)
        self.price = np.zeros(self.T)      # currency per kWh
        self.end_soc_bp = None
        self.w_peak = 0.0           # per kW of the day's peak import
        self.w_import = W_IMPORT
        self.w_excess = W_EXCESS
        self.w_throughput = W_THROUGHPUT

    @property
    def net_w(self):
        return self.base_w - self.pv_w + self.ev_w[0] + self.ev_w[1] + self.ev_w[2]

    def phase0_w(self, k):
        """Phase k's load without the battery: base and PV split evenly, as site_model does."""
        return (self.base_w - self.pv_w) / 3.0 + self.ev_w[k]


def solve_lp(p):
    """Solve Problem p. Returns a dict of numpy arrays per step (W; soc_bp and e_wh at the step's
    end) and 'info'. Raises PlanError when HiGHS finds no solution (the message says why)."""
    import numpy as np
    from scipy import sparse
    from scipy.optimize import linprog

    T = p.T
    h = p.step_s / 3600.0
    kw = 1000.0                         # the LP works in kW and kWh (numerically better scaled)
    net = p.net_w / kw
    lim = p.limit_w / kw
    plim = p.phase_limit_w / kw
    ph0 = [p.phase0_w(k) / kw for k in range(3)]
    C = p.capacity_wh / kw
    etac, etad = p.eta_chg_bp / 10000.0, p.eta_dis_bp / 10000.0
    e0 = C * p.soc0_bp / 10000.0
    emin, emax = C * p.min_soc_bp / 10000.0, C * p.max_soc_bp / 10000.0
    phases = plim > 0

    rmask = p.reserve_bp > 0
    emask = p.event_w > 0
    names = (['c', 'd', 'e', 'imp', 'exp', 'exc'] + (['p1', 'p2', 'p3'] if phases else [])
             + (['rs'] if rmask.any() else []) + (['es'] if emask.any() else []))
    col = {nm: j * T for j, nm in enumerate(names)}
    iPK = len(names) * T
    n = iPK + 1
    idx = np.arange(T)
    rows, cols, vals, rhs = [], [], [], []
    r = [0]

    def block(terms, b, mask=None):
        """One row per step (where mask): sum of coef * var <= b. terms: (column array, coef)."""
        m = idx if mask is None else idx[mask]
        k = len(m)
        for c, v in terms:
            c = np.broadcast_to(c, (T,))[m]
            rows.append(r[0] + np.arange(k))
            cols.append(c)
            vals.append(np.broadcast_to(np.asarray(v, dtype=float), (T,))[m])
        rhs.append(np.broadcast_to(np.asarray(b, dtype=float), (T,))[m])
        r[0] += k

    c_, d_, e_ = col['c'] + idx, col['d'] + idx, col['e'] + idx
    prev = e_ - 1
    has_prev = idx > 0
    # excess over the import limit: net + c - d - lim <= exc
    block([(c_, 1), (d_, -1), (col['exc'] + idx, -1)], lim - net)
    if phases:
        for k in range(3):
            block([(c_, 1 / 3.0), (d_, -1 / 3.0), (col['p%d' % (k + 1)] + idx, -1)], plim - ph0[k])
    # peak >= gcp
    block([(c_, 1), (d_, -1), (np.full(T, iPK), -1)], -net)
    # reserve shortfall: E_t + rs_t >= reserve_t (only where a reserve is set)
    if 'rs' in col:
        block([(e_, -1), (col['rs'] + idx, -1)], -C * p.reserve_bp / 10000.0, rmask)
    # event: the battery's net power d_t - c_t + es_t >= event_t (charging while "discharging" is no delivery)
    if 'es' in col:
        block([(d_, -1), (c_, 1), (col['es'] + idx, -1)], -p.event_w / kw, emask)

    def soc_law(coef_var, kcoef, const):
        # var_t + kcoef * E_{t-1} <= const (E_{-1} = e0 is a constant)
        rows.append(r[0] + idx)
        cols.append(coef_var)
        vals.append(np.ones(T))
        rows.append(r[0] + idx[has_prev])
        cols.append(prev[has_prev])
        vals.append(np.full(T - 1, kcoef))
        rhs.append(np.where(has_prev, const, const - kcoef * e0))
        r[0] += T

    if p.bms is not None:
        bms_c, bms_d = p.bms[0] / kw, p.bms[1] / kw
        # site_model.Battery: charge derated linearly above 90 %, discharge below 5 %
        soc_law(c_, bms_c / (0.1 * C), 10 * bms_c)
        soc_law(d_, -bms_d / (0.05 * C), 0.0)
    pd_ = p.max_dis_w / kw
    if p.taper_bp:
        # the core's taper: d_t <= Pd * (E_{t-1} - Emin) / band
        kt = pd_ / (C * p.taper_bp / 10000.0)
        soc_law(d_, -kt, -kt * emin)
    A_ub = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r[0], n))
    b_ub = np.concatenate(rhs)

    # equalities: SoC dynamics and the grid balance imp - exp = net + c - d
    er = [idx, idx[has_prev], idx, idx, T + idx, T + idx, T + idx, T + idx]
    ec = [e_, prev[has_prev], c_, d_, col['imp'] + idx, col['exp'] + idx, c_, d_]
    ev = [np.ones(T), -np.ones(T - 1), np.full(T, -h * etac), np.full(T, h / etad),
          np.ones(T), -np.ones(T), -np.ones(T), np.ones(T)]
    A_eq = sparse.csr_matrix((np.concatenate(ev), (np.concatenate(er), np.concatenate(ec))), shape=(2 * T, n))
    b_eq = np.concatenate([np.where(idx == 0, e0, 0.0), net])

    bounds = np.zeros((n, 2))
    bounds[:, 1] = np.inf
    cmax = np.full(T, p.max_chg_w / kw)
    if p.headroom_w is not None:
        spare = lim - net
        if phases:
            spare = np.minimum(spare, 3 * (plim - np.maximum(np.maximum(ph0[0], ph0[1]), ph0[2])))
        cmax = np.minimum(cmax, np.clip(-net, 0, None) + np.clip(spare - p.headroom_w / kw, 0, None))
    dmax = np.full(T, pd_)
    if p.zfi_min_import_w is not None:
        dmax = np.minimum(dmax, np.clip(net - p.zfi_min_import_w / kw, 0, None))
    dmax = np.where(p.no_export, np.minimum(dmax, np.clip(net, 0, None)), dmax)
    # an event may need more than the taper or the limits allow: its shortfall variable absorbs it
    bounds[col['c']:col['c'] + T, 1] = cmax
    bounds[col['d']:col['d'] + T, 1] = dmax
    bounds[col['e']:col['e'] + T, 0] = emin
    bounds[col['e']:col['e'] + T, 1] = emax
    if p.end_soc_bp is not None:
        bounds[col['e'] + T - 1, 0] = max(emin, min(emax, C * p.end_soc_bp / 10000.0))
    bounds[iPK, 0] = -np.inf

    cost = np.zeros(n)
    cost[col['exc']:col['exc'] + T] = p.w_excess * h
    if phases:
        cost[col['p1']:col['p3'] + T] = p.w_excess * h
    for nm in ('rs', 'es'):
        if nm in col:
            cost[col[nm]:col[nm] + T] = W_OBLIGATION * h
    cost[iPK] = p.w_peak
    cost[col['imp']:col['imp'] + T] = (p.w_import + W_PRICE * p.price) * h
    cost[col['exp']:col['exp'] + T] = -W_PRICE * p.price * h
    cost[c_] = p.w_throughput * h
    cost[d_] = p.w_throughput * h

    res = linprog(cost, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method='highs')
    if res.status != 0:
        raise PlanError('the planning LP has no solution: %s' % res.message)
    x = res.x
    c, d, E = x[c_], x[d_], x[e_]
    bat = d - c
    out = {
        'chg_w': c * kw, 'dis_w': d * kw, 'bat_w': bat * kw,
        'gcp_w': (net - bat) * kw,
        'phase_w': [(ph0[k] - bat / 3.0) * kw for k in range(3)],
        'e_wh': E * kw, 'soc_bp': E / C * 10000.0,
        'reserve_short_wh': x[col['rs']:col['rs'] + T] * kw if 'rs' in col else np.zeros(T),
        'event_short_w': x[col['es']:col['es'] + T] * kw if 'es' in col else np.zeros(T),
        'info': {'objective': float(res.fun), 'vars': n, 'rows': A_ub.shape[0] + A_eq.shape[0],
                 'simultaneous_kwh': float(np.sum(np.minimum(c, d)) * h)},
    }
    return out


# --- inputs: site.json, forecast CSV, price CSV ------------------------------------------------
class Site:
    """What site.json says, checked. Times of day ("HH:MM") are local: utc_offset_s from UTC."""

    def __init__(self, d, where='site.json'):
        if not isinstance(d, dict):
            raise PlanError('%s: must be a JSON object' % where)
        errs = []
        for k in d:
            if k not in ('_doc', 'id', 'utc_offset_s', 'control', 'battery', 'commitment', 'planner'):
                errs.append('%s: unknown key %r' % (where, k))
        self.id = d.get('id')
        if not isinstance(self.id, str) or not 0 < len(self.id) <= 40:
            errs.append('%s: id must be a string of 1..40 characters (the schedule id starts with it)' % where)
        self.utc_offset_s = d.get('utc_offset_s', 0)
        if not _is_int(self.utc_offset_s) or abs(self.utc_offset_s) > 14 * 3600:
            errs.append('%s: utc_offset_s must be an integer within +-14 h' % where)
        try:
            self.cfg = bess_config.validate(d.get('control'))
            self.commit_reserve_bp = bess_config.commitment_reserve_bp(self.cfg)
        except ValueError as e:
            errs.append('%s: control: %s' % (where, str(e).replace('\n', '\n  ')))
            self.cfg = None
        b = d.get('battery')
        self.battery = {}
        if not isinstance(b, dict):
            errs.append('%s: battery must be an object with capacity_wh and soc_bp' % where)
        else:
            for k, lo, hi, dflt in (('capacity_wh', 1, 10 ** 9, None), ('soc_bp', 0, 10000, None),
                                    ('eta_chg_bp', 5000, 10000, 9600), ('eta_dis_bp', 5000, 10000, 9600)):
                v = b.get(k, dflt)
                if not _is_int(v) or not lo <= v <= hi:
                    errs.append('%s: battery.%s must be an integer %d..%d, got %r' % (where, k, lo, hi, v))
                self.battery[k] = v
            for k in b:
                if k not in ('capacity_wh', 'soc_bp', 'eta_chg_bp', 'eta_dis_bp'):
                    errs.append('%s: battery: unknown key %r' % (where, k))
        self.commitment = self._commitment(d.get('commitment'), errs, where)
        if self.commitment is not None and self.cfg is not None and not errs:
            try:
                self.reserve_bp(False)
            except ValueError as e:
                errs.append('%s: commitment: %s' % (where, e))
        pl = d.get('planner', {})
        self.end_soc_bp = None
        self.slot_s = SLOT_S
        if not isinstance(pl, dict):
            errs.append('%s: planner must be an object' % where)
        else:
            for k in pl:
                if k != 'end_soc_bp':
                    errs.append('%s: planner: unknown key %r' % (where, k))
            v = pl.get('end_soc_bp')
            if v is not None and (not _is_int(v) or not 0 <= v <= 10000):
                errs.append('%s: planner.end_soc_bp must be an integer 0..10000' % where)
            self.end_soc_bp = v
        if errs:
            raise PlanError('\n'.join(errs))

    @staticmethod
    def _commitment(c, errs, where):
        """None (no capacity commitment) or the checked commitment (times in seconds of the day)."""
        if c is None:
            return None
        if not isinstance(c, dict):
            errs.append('%s: commitment must be an object' % where)
            return None
        out = {}
        keys = ('committed_w', 'event_duration_s', 'usable_wh', 'derate_bp', 'availability_bp', 'window',
                'events', 'risk_margin_bp')
        for k in c:
            if k not in keys:
                errs.append('%s: commitment: unknown key %r' % (where, k))
        for k, lo, hi, dflt in (('committed_w', 1, 10 ** 7, None), ('event_duration_s', 1, 86400, 3600),
                                ('usable_wh', 1, 10 ** 9, None), ('derate_bp', 0, 9999, 0),
                                ('availability_bp', 1, 10000, 10000), ('risk_margin_bp', 0, 10000, 1000)):
            v = c.get(k, dflt)
            if not _is_int(v) or not lo <= v <= hi:
                errs.append('%s: commitment.%s must be an integer %d..%d, got %r' % (where, k, lo, hi, v))
            out[k] = v
        w = c.get('window')
        if not (isinstance(w, list) and len(w) == 2):
            errs.append('%s: commitment.window must be ["HH:MM", "HH:MM"] (the delivery hours, local)' % where)
        else:
            out['window'] = [_hhmm(x, errs, '%s: commitment.window' % where) for x in w]
        out['events'] = []
        for n, e in enumerate(c.get('events', [])):
            if not isinstance(e, dict) or set(e) - {'start', 'duration_s'} or not _is_int(e.get('duration_s')) \
                    or not 0 < e.get('duration_s', 0) <= 86400:
                errs.append('%s: commitment.events[%d] must be {"start": "HH:MM", "duration_s": s}' % (where, n))
                continue
            out['events'].append((_hhmm(e.get('start'), errs, '%s: commitment.events[%d]' % (where, n)),
                                  e['duration_s']))
        return out

    def reserve_bp(self, risk):
        """The reserve the commitment needs (lib/reserve.py), raised by risk_margin_bp on a high-risk
        day; never above what the config lets the reserve lock release below max SoC."""
        from reserve import reserve_soc_bp
        c = self.commitment
        r = reserve_soc_bp(c['committed_w'], c['event_duration_s'], c['usable_wh'], c['derate_bp'],
                           c['availability_bp'], self.cfg['min_soc_bp'])
        if risk:
            r += c['risk_margin_bp']
        top = self.cfg['max_soc_bp'] - self.cfg['hysteresis_bp'] - 1
        if r > top:
            if not risk:
                raise PlanError('commitment: the reserve %d bp does not fit below max_soc_bp - hysteresis_bp (%d)'
                                % (r, top + 1))
            r = top
        return r


def _hhmm(s, errs, where):
    """"HH:MM" -> seconds of the local day."""
    try:
        hh, mm = s.split(':')
        v = int(hh) * 3600 + int(mm) * 60
        if not (0 <= int(hh) <= 24 and 0 <= int(mm) < 60 and v <= DAY_S):
            raise ValueError
        return v
    except (AttributeError, ValueError):
        errs.append('%s: %r is not a time "HH:MM"' % (where, s))
        return 0


def read_csv(path, columns, optional=()):
    """{column: list of floats} and the `time` column (ints) of a CSV with a header row."""
    try:
        f = open(path, newline='')
    except OSError as e:
        raise PlanError('%s: cannot read: %s' % (path, e.strerror))
    with f:
        rd = csv.DictReader(f)
        head = rd.fieldnames or []
        miss = [c for c in ('time',) + tuple(columns) if c not in head]
        if miss:
            raise PlanError('%s: missing column(s) %s (header: %s)' % (path, ', '.join(miss), ','.join(head)))
        out = {c: [] for c in ('time',) + tuple(columns) + tuple(c for c in optional if c in head)}
        for n, row in enumerate(rd, 2):
            for c in out:
                v = row.get(c)
                try:
                    out[c].append(int(v) if c == 'time' else float(v))
                except (TypeError, ValueError):
                    raise PlanError('%s line %d: %s = %r is not a number' % (path, n, c, v))
    if not out['time']:
        raise PlanError('%s: no data rows' % path)
    return out


def read_forecast(path):
    """(t0 unix s, step_s, base_w, pv_w, [ev_l1_w, ev_l2_w, ev_l3_w]) from a forecast CSV."""
    d = read_csv(path, ('load_w', 'pv_w'), optional=('ev_l1_w', 'ev_l2_w', 'ev_l3_w'))
    t = d['time']
    if len(t) < 2:
        raise PlanError('%s: needs at least two rows' % path)
    step = t[1] - t[0]
    if step not in (60, 300, 900):
        raise PlanError('%s: step %d s; use 60, 300 or 900 s' % (path, step))
    for n in range(1, len(t)):
        if t[n] - t[n - 1] != step:
            raise PlanError('%s line %d: time %d is not %d s after the previous row (no gaps, sorted)'
                            % (path, n + 2, t[n], step))
    if len(t) * step > DAY_S:
        raise PlanError('%s: %d s of forecast; a schedule holds at most %d intervals of %d s (24 h)'
                        % (path, len(t) * step, schedule.MAX_INTERVALS, SLOT_S))
    if (len(t) * step) % SLOT_S:
        raise PlanError('%s: the horizon must be whole quarter hours' % path)
    for c in d:
        if c != 'time' and any(v != v or abs(v) > 10 ** 7 for v in d[c]):
            raise PlanError('%s: %s has a value outside +-10 MW or NaN' % (path, c))
    if any(v < 0 for v in d['pv_w']):
        raise PlanError('%s: pv_w must be >= 0 (PV production)' % path)
    ev = [d.get('ev_l%d_w' % k, [0.0] * len(t)) for k in (1, 2, 3)]
    return t[0], step, d['load_w'], d['pv_w'], ev


def read_prices(path, t0, step_s, n):
    """Price per kWh for each of n steps from t0: each CSV row (price_per_mwh) holds until the next."""
    d = read_csv(path, ('price_per_mwh',))
    t, pr = d['time'], d['price_per_mwh']
    if any(t[k] <= t[k - 1] for k in range(1, len(t))):
        raise PlanError('%s: time must increase' % path)
    if t[0] > t0:
        raise PlanError('%s: the first price (%d) starts after the forecast (%d)' % (path, t[0], t0))
    out = []
    j = 0
    for k in range(n):
        ts = t0 + k * step_s
        while j + 1 < len(t) and t[j + 1] <= ts:
            j += 1
        out.append(pr[j] / 1000.0)
    return out


# --- the day's problem and the schedule --------------------------------------------------------
def build_problem(site, t0, step_s, base_w, pv_w, ev_w, prices, risk=False):
    """planner Problem for the site's day from t0 (unix s), with the commitment and the core's rules.
    Returns (problem, meta): meta holds the reserve, the window and event steps for the schedule."""
    import numpy as np
    cfg, bat = site.cfg, site.battery
    p = Problem(step_s, base_w, pv_w, ev_w, cfg['import_limit_w'], cfg['phase_limit_w'], bat['capacity_wh'],
                bat['soc_bp'], cfg['min_soc_bp'], cfg['max_soc_bp'], cfg['max_charge_w'], cfg['max_discharge_w'],
                bat['eta_chg_bp'], bat['eta_dis_bp'])
    p.taper_bp = cfg['taper_band_bp']
    p.headroom_w = cfg['ev_headroom_w']
    if cfg['objective'] == 'zfi':
        p.zfi_min_import_w = cfg['min_import_w']
    p.price = np.asarray(prices, dtype=float)
    p.end_soc_bp = site.end_soc_bp
    # the core holds its configured reserve (and a configured commitment's) all day
    base_rsv = max(cfg['reserve_soc_bp'], site.commit_reserve_bp)
    p.reserve_bp[:] = base_rsv if base_rsv > cfg['min_soc_bp'] else 0
    meta = {'reserve_bp': None, 'window': None, 'events': [], 'risk': risk}
    c = site.commitment
    if c is not None:
        r = site.reserve_bp(risk)
        meta['reserve_bp'] = r
        tod = (np.arange(p.T) * step_s + t0 + site.utc_offset_s) % DAY_S     # local second of day
        a, b = c['window']
        win = (tod >= a) & (tod < b)
        ev = np.zeros(p.T, dtype=bool)
        for start, dur in c['events']:
            e = (tod >= start) & (tod < start + dur)
            ev |= e
            if e.any():
                meta['events'].append((int(np.argmax(e)), int(e.sum())))
        p.event_w[ev] = c['committed_w']
        # the reserve is what the event takes: held in the window, not during the event itself
        p.reserve_bp[win & ~ev] = np.maximum(p.reserve_bp[win & ~ev], r)
        meta['window'] = win
        if risk:
            p.no_export[~ev] = True     # a high-risk day suspends arbitrage discharge (the seed)
    return p, meta


def _slot_fields(p, sol, meta, k0, k1, site):
    """Schedule fields for LP steps k0..k1-1 (one slot or an event): what the plan needs there."""
    import numpy as np
    h = p.step_s / 3600.0
    obj = site.cfg['objective']
    sl = slice(k0, k1)
    net = p.net_w[sl]
    c, d = sol['chg_w'][sl], sol['dis_w'][sl]
    soc_end = int(round(sol['soc_bp'][k1 - 1]))
    soc_start = int(round(sol['soc_bp'][k0 - 1])) if k0 > 0 else p.soc0_bp
    tol_w = max(100.0, 0.005 * p.max_dis_w)
    f = {}
    ev = p.event_w[sl]
    if ev.max() > 0:
        f['power_w'] = int(ev.max())
        f['firm'] = True
        f['export'] = True
        return f
    rsv = p.reserve_bp[sl].max()
    if meta['reserve_bp'] is not None and meta['window'][sl].any():
        f['reserve_soc_bp'] = int(rsv)
    grid_chg = np.clip(c - np.clip(-net, 0, None), 0, None).sum() * h
    if obj != 'gce' and grid_chg > tol_w * 0.25 and soc_end > soc_start:
        # charging from the grid (to the reserve before the window, or at a low price): the core
        # charges at the pace that reaches the LP's SoC by the slot's end
        f['target_soc_bp'] = min(soc_end + TARGET_MARGIN_BP, site.cfg['max_soc_bp'])
    elif d.mean() > np.clip(net, 0, None).mean() + tol_w and not p.no_export[sl].any():
        # discharge beyond the site's demand: arbitrage at a high price (only above the reserve)
        f['power_w'] = int(round(d.mean()))
        f['firm'] = False
    elif obj != 'gce' and d.mean() < np.clip(net, 0, None).mean() - tol_w and soc_end > site.cfg['min_soc_bp']:
        # the LP keeps energy for later (a higher price, the reserve, a peak): self-consumption
        # stops at the SoC the LP ends the slot with
        f['reserve_soc_bp'] = max(f.get('reserve_soc_bp', 0), soc_end)
    elif obj == 'gce' and d.mean() > _required_w(p, sl).mean() + tol_w:
        # grid capacity expansion discharges only for the limits: where the LP discharges more
        # (energy the day does not need later), the plan lowers the import limit to the LP's import
        f['import_limit_w'] = max(0, int(sol['gcp_w'][sl].max()))
    lv = _protection_levels(p, sol, sl, site)
    if lv:
        # the LP lets excess through here to keep energy for a later excess where a watt of battery
        # saves more: while the battery holds no more than the LP expects at the slot's start (the
        # reserve), the core protects only down to the LP's import and worst-phase levels
        f['reserve_soc_bp'] = max(f.get('reserve_soc_bp', 0), soc_start)
        f.update(lv)
    if p.no_export[sl].any():
        f['export'] = False
    return f


def _protection_levels(p, sol, sl, site):
    """{'protect_import_w': W, 'protect_phase_w': W} where the LP's mean import over steps sl, or
    its mean worst phase, stays above the limit (by more than 0.1 %: not solver noise); {} where the
    LP covers every excess (the levels would equal the limits) or protection below the reserve is
    off (the reserve would then stop protection altogether, docs/schedule.md)."""
    import numpy as np
    if not site.cfg['protect_below_reserve']:
        return {}
    out = {}
    g = float(np.mean(sol['gcp_w'][sl]))
    lim = p.limit_w[sl].min()
    if g > lim + lim // 1000:
        out['protect_import_w'] = int(g)
    if p.phase_limit_w > 0:
        ph = sol['phase_w']
        w = float(np.mean(np.maximum(np.maximum(ph[0][sl], ph[1][sl]), ph[2][sl])))
        if w > p.phase_limit_w + p.phase_limit_w // 1000:
            out['protect_phase_w'] = int(w)
    return out


def _charge_lead(p, sol, meta, site):
    """(k0, k1, target bp): the steps before the delivery window (CHARGE_LEAD_S) in which the core
    is to reach the reserve, or the LP's SoC at the window's start if that is higher, even where the
    LP expects PV to do it (a forecast that is not the truth); None without a window ahead."""
    import numpy as np
    if meta['reserve_bp'] is None or not meta['window'].any():
        return None
    k1 = int(np.argmax(meta['window']))
    k0 = max(0, k1 - CHARGE_LEAD_S // p.step_s)
    if k1 == 0:
        return None
    want = max(meta['reserve_bp'], int(round(sol['soc_bp'][k1 - 1])))
    return k0, k1, min(want + TARGET_MARGIN_BP, site.cfg['max_soc_bp'])


def _required_w(p, sl):
    """Discharge the limits alone require per step (total excess, 3 x the worst phase's excess)."""
    import numpy as np
    req = np.clip(p.net_w[sl] - p.limit_w[sl], 0, None)
    if p.phase_limit_w > 0:
        worst = np.maximum(np.maximum(p.phase0_w(0)[sl], p.phase0_w(1)[sl]), p.phase0_w(2)[sl])
        req = np.maximum(req, 3 * (worst - p.phase_limit_w))
    return req


def make_schedule(site, p, sol, meta, t0, created=None, version=None, risk=False, version_path=None):
    """Schedule format v1 (a dict) from the LP solution: one interval per quarter hour and one per
    event, equal neighbours merged; a default block (the site's objective with the reserve) for
    anything else and for the fallback. Validated against the commissioned config (PlanError).
    version None: next_version(site.id, version_path)."""
    import time as _time
    import datetime
    n_slot = site.slot_s // p.step_s
    cuts = set(range(0, p.T + 1, n_slot))
    for k, n in meta['events']:
        cuts.update((k, k + n))
    lead = _charge_lead(p, sol, meta, site)
    if lead:
        cuts.update(lead[:2])
    cuts = sorted(c for c in cuts if 0 <= c <= p.T)
    iv = []
    for k0, k1 in zip(cuts, cuts[1:]):
        f = _slot_fields(p, sol, meta, k0, k1, site)
        if lead and lead[0] <= k0 and k1 <= lead[1] and not f.get('firm'):
            # the seed's charge-to-reserve before the window, whatever the forecast: one target
            # over the lead (the core charges only what the SoC lacks, PV first)
            f.pop('power_w', None)
            f.pop('firm', None)
            f['target_soc_bp'] = lead[2]
            if f.get('reserve_soc_bp', 0) <= lead[2]:
                f.pop('reserve_soc_bp', None)       # the target is the higher discharge floor
        start = t0 + k0 * p.step_s
        dur = (k1 - k0) * p.step_s
        if iv and iv[-1]['start'] + iv[-1]['duration_s'] == start and _same_fields(iv[-1], f):
            iv[-1]['duration_s'] += dur
        else:
            iv.append(dict(start=start, duration_s=dur, **f))
    iv = [e for e in iv if len(e) > 2]          # nothing to say: the default block applies
    if len(iv) > schedule.MAX_INTERVALS:
        raise PlanError('the plan needs %d intervals, more than %d' % (len(iv), schedule.MAX_INTERVALS))
    now = int(_time.time())
    if created is None:
        created = min(now, t0)
    elif created > t0:
        raise PlanError('created %d is after the forecast start %d: a schedule covers nothing before it'
                        % (created, t0))
    if version is None:
        version = next_version(site.id, version_path)
    elif not _is_int(version) or not 1 <= version <= VERSION_MAX:
        raise PlanError('version must be an integer 1..%d (a small int on a 32-bit device), got %r'
                        % (VERSION_MAX, version))
    # the default block is also the fallback (expired, clock lost): the site's objective and the
    # commitment's reserve, never a power, a target or a firm obligation (their time has passed)
    default = {'objective': site.cfg['objective']}
    if meta['reserve_bp'] is not None:
        default['reserve_soc_bp'] = meta['reserve_bp']
    day = datetime.datetime.fromtimestamp(t0 + site.utc_offset_s, datetime.timezone.utc).strftime('%Y-%m-%d')
    d = {'v': schedule.FORMAT, 'id': '%s/%s%s' % (site.id, day, '/risk' if risk else ''),
         'version': version, 'created': created,
         'valid_until': t0 + p.T * p.step_s, 'default': default, 'intervals': iv}
    errs = schedule.validate(d, commissioned=site.cfg)
    if errs:
        raise PlanError('the planner made an invalid schedule (a bug):\n  ' + '\n  '.join(errs))
    return d


def _same_fields(a, f):
    return {k: v for k, v in a.items() if k not in ('start', 'duration_s')} == f


def version_file():
    """Where the planner keeps the last version it issued per site: $XDG_STATE_HOME (or
    ~/.local/state)/bess-planner/versions.json."""
    base = os.environ.get('XDG_STATE_HOME') or os.path.join(os.path.expanduser('~'), '.local', 'state')
    return os.path.join(base, 'bess-planner', 'versions.json')


def next_version(site_id, path=None, now_s=None):
    """The default schedule version for site_id: seconds since 2020-01-01 UTC (below 2**30 until
    2054: a small int on a 32-bit device), and at least one above the last version this host issued
    for the site (path, JSON {site id: version}, updated under an exclusive lock), so two runs in
    the same second differ and a lost file still leaves the versions increasing with the clock."""
    import fcntl
    import time as _time
    path = path or version_file()
    now_s = int(_time.time()) if now_s is None else now_s
    v = now_s - VERSION_EPOCH_S
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + '.lock', 'a') as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        try:
            with open(path) as f:
                last = json.load(f)
        except (OSError, ValueError):
            last = {}
        if not isinstance(last, dict):
            last = {}
        prev = last.get(site_id)
        if _is_int(prev) and prev >= v:
            v = prev + 1
        if not 1 <= v <= VERSION_MAX:
            raise PlanError('no version left for %s: %d is outside 1..%d (clock before 2020 or after 2054, '
                            'or %s runs ahead; give --version)' % (site_id, v, VERSION_MAX, path))
        last[site_id] = v
        tmp = path + '.new'
        with open(tmp, 'w') as f:
            json.dump(last, f, sort_keys=True)
        os.replace(tmp, path)
    return v


def plan(site, t0, step_s, base_w, pv_w, ev_w, prices, risk=False, created=None, version=None, version_path=None):
    """The whole planner: (schedule dict, LP solution, problem)."""
    p, meta = build_problem(site, t0, step_s, base_w, pv_w, ev_w, prices, risk)
    sol = solve_lp(p)
    return make_schedule(site, p, sol, meta, t0, created, version, risk, version_path), sol, p


# --- CLI -----------------------------------------------------------------------------------------
def publish(url, payload, key=None):
    """Send the schedule retained at QoS 1 to mqtt://host:port/<topic>; signed (lib/command_mac.sign:
    HMAC-SHA256 over "<topic>\\n<body>", the mac as the last member) when a key is given."""
    from urllib.parse import urlparse
    import paho.mqtt.client as mqtt
    import command_mac
    u = urlparse(url)
    topic = u.path.lstrip('/')
    if u.scheme != 'mqtt' or not u.hostname or not topic:
        raise PlanError('--publish: expected mqtt://host[:port]/<topic>, got %r' % url)
    if key is not None:
        payload = command_mac.sign(command_mac.parse_key(key), topic, payload)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if u.username:
        c.username_pw_set(u.username, u.password)
    try:
        c.connect(u.hostname, u.port or 1883, keepalive=10)
    except OSError as e:
        raise PlanError('--publish: cannot connect to %s:%d: %s' % (u.hostname, u.port or 1883, e))
    c.loop_start()
    try:
        info = c.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(10)
        if not info.is_published():
            raise PlanError('--publish: the broker did not acknowledge the schedule within 10 s')
    finally:
        c.disconnect()
        c.loop_stop()
    return payload


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--site', required=True, help='site.json (control config, battery, commitment)')
    ap.add_argument('--forecast', required=True, help='CSV: time,load_w,pv_w[,ev_l1_w,ev_l2_w,ev_l3_w]')
    ap.add_argument('--prices', required=True, help='CSV: time,price_per_mwh (day-ahead)')
    ap.add_argument('--risk', action='store_true', help='high-risk day: reserve raised, no arbitrage discharge')
    ap.add_argument('--out', help='write the schedule JSON here (default: stdout)')
    ap.add_argument('--publish', metavar='URL', help='mqtt://host:port/<topic>: send it retained')
    ap.add_argument('--key', metavar='HEX', help='per-device HMAC key: sign the published schedule')
    ap.add_argument('--version', type=int, help='schedule version 1..2**30-1 (default: seconds since 2020, '
                    'above the last one issued for the site: see --version-file)')
    ap.add_argument('--version-file', metavar='PATH', help='where the last versions issued are kept (default: '
                    '$XDG_STATE_HOME or ~/.local/state, bess-planner/versions.json)')
    ap.add_argument('--created', type=int, help='created (default: min(now, forecast start))')
    a = ap.parse_args(argv)
    if a.key and not a.publish:
        ap.error('--key signs what --publish sends; give --publish too')
    try:
        try:
            with open(a.site) as f:
                site = Site(json.load(f), a.site)
        except OSError as e:
            raise PlanError('%s: cannot read: %s' % (a.site, e.strerror))
        except ValueError as e:
            if isinstance(e, PlanError):
                raise
            raise PlanError('%s: not JSON: %s' % (a.site, e))
        t0, step, base, pv, ev = read_forecast(a.forecast)
        prices = read_prices(a.prices, t0, step, len(base))
        d, sol, p = plan(site, t0, step, base, pv, ev, prices, a.risk, a.created, a.version, a.version_file)
        body = json.dumps(d, separators=(',', ':'))
        if a.out:
            with open(a.out, 'w') as f:
                f.write(body + '\n')
        else:
            print(body)
        if a.publish:
            publish(a.publish, body.encode(), a.key)
        sys.stderr.write('planner: %s version %d, %d intervals, %d bytes%s\n' % (
            d['id'], d['version'], len(d['intervals']), len(body), ', published' if a.publish else ''))
    except PlanError as e:
        sys.stderr.write('planner: %s\n' % e)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
