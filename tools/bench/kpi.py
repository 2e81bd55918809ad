"""KPIs of one day's series. Pure functions of numpy arrays (W, bp) sampled every dt_s seconds.

Signs as everywhere: GCP + import; battery + discharge.
"""
import numpy as np

WH = 3600.0


def energy_wh(p_w, dt_s):
    return float(np.sum(p_w)) * dt_s / WH


def tolerance_w(limit_w):
    """Excess that does not count as a minute above the limit: 0.1 % of the limit (a class 1 meter
    cannot see it; site_model's integer thirds alone make 1-2 W). The energy KPI counts every W."""
    return limit_w // 1000


def above(p_w, limit_w, dt_s, tol_w=0):
    """(energy above the limit in Wh, minutes more than tol_w above it)."""
    ex = np.clip(np.asarray(p_w, dtype=float) - limit_w, 0, None)
    return energy_wh(ex, dt_s), float(np.count_nonzero(ex > tol_w)) * dt_s / 60.0


def worst_phase_above(l1, l2, l3, limit_w, dt_s, tol_w=0):
    """(energy of the worst phase's excess in Wh, minutes with any phase more than tol_w above)."""
    worst = np.maximum(np.maximum(l1, l2), l3)
    return above(worst, limit_w, dt_s, tol_w)


def self_sufficiency(consumption_w, gcp_w, dt_s):
    """1 - grid import / consumption (consumption = building + EVs, without the battery)."""
    cons = energy_wh(consumption_w, dt_s)
    imp = energy_wh(np.clip(gcp_w, 0, None), dt_s)
    return 1.0 - imp / cons if cons > 0 else float('nan')


def battery_export_wh(gcp_w, bat_w, dt_s):
    """Export the battery caused: per sample min(export, battery discharge)."""
    exp = np.clip(-np.asarray(gcp_w, dtype=float), 0, None)
    dis = np.clip(np.asarray(bat_w, dtype=float), 0, None)
    return energy_wh(np.minimum(exp, dis), dt_s)


def import_soc_corrected_wh(gcp_w, soc_bp, battery, dt_s):
    """Import energy less the AC energy the battery gained over the day (stored energy change x
    discharge efficiency; a loss of stored energy adds, divided by it): runs that end the day with
    a fuller battery are not penalised for the energy they hold."""
    imp = energy_wh(np.clip(gcp_w, 0, None), dt_s)
    d_wh = (float(soc_bp[-1]) - battery.get('soc_bp', 5000)) / 10000.0 * battery['capacity_wh']
    eta = battery.get('eta_dis_bp', 9600) / 10000.0
    return imp - (d_wh * eta if d_wh > 0 else d_wh / eta)


def full_cycles(bat_w, capacity_wh, dt_s):
    """Equivalent full cycles: AC throughput (charge + discharge) / (2 x nominal capacity)."""
    return energy_wh(np.abs(bat_w), dt_s) / (2.0 * capacity_wh)


def reversals(bat_w, threshold_w):
    """Charge<->discharge direction changes. Samples with |P| <= threshold keep the last direction,
    so idling between two discharges is no reversal, discharge -> idle -> charge is one."""
    b = np.asarray(bat_w, dtype=float)
    s = np.where(b > threshold_w, 1, np.where(b < -threshold_w, -1, 0))
    s = s[s != 0]
    return int(np.count_nonzero(s[1:] != s[:-1])) if len(s) > 1 else 0


def min_soc_violation(soc_bp, min_soc_bp, dt_s):
    """(episodes below min SoC, seconds below it). Reaching min SoC exactly is no violation."""
    below = np.asarray(soc_bp) < min_soc_bp
    n = int(np.count_nonzero(below[1:] & ~below[:-1])) + int(below[0]) if len(below) else 0
    return n, float(np.count_nonzero(below)) * dt_s


def compute(series, sc, dt_s):
    """All KPIs of one run. series: dict of arrays gcp, l1, l2, l3, bat, soc, cons."""
    gcp, bat, soc = series['gcp'], series['bat'], series['soc']
    hours = len(gcp) * dt_s / 3600.0
    cap = sc.battery['capacity_wh']
    e_tot, m_tot = above(gcp, sc.import_limit_w, dt_s, tolerance_w(sc.import_limit_w))
    e_ph, m_ph = worst_phase_above(series['l1'], series['l2'], series['l3'], sc.phase_limit_w, dt_s,
                                   tolerance_w(sc.phase_limit_w))
    viol_n, viol_s = min_soc_violation(soc, sc.cfg.get('min_soc_bp', 1000), dt_s)
    thr = max(100, sc.battery['max_dis_w'] // 100)
    return {
        'peak_kw': float(np.max(gcp)) / 1000.0,
        'over_kwh': e_tot / 1000.0,
        'over_min': m_tot,
        'phase_over_kwh': e_ph / 1000.0,
        'phase_over_min': m_ph,
        'import_kwh': energy_wh(np.clip(gcp, 0, None), dt_s) / 1000.0,
        'import_adj_kwh': import_soc_corrected_wh(gcp, soc, sc.battery, dt_s) / 1000.0,
        'export_kwh': energy_wh(np.clip(-np.asarray(gcp), 0, None), dt_s) / 1000.0,
        'ssr': self_sufficiency(series['cons'], gcp, dt_s),
        'bat_export_kwh': battery_export_wh(gcp, bat, dt_s) / 1000.0,
        'efc': full_cycles(bat, cap, dt_s),
        'min_soc_pct': float(np.min(soc)) / 100.0,
        'end_soc_pct': float(soc[-1]) / 100.0,
        'soc_viol_n': viol_n,
        'soc_viol_s': viol_s,
        'rev_per_h': reversals(bat, thr) / hours,
    }


# name, label, unit, better ('low'/'high'/None = information only), has a ratio to the optimum
KPIS = (
    ('peak_kw', 'peak import', 'kW', 'low', True),
    ('over_kwh', 'energy above import limit', 'kWh', 'low', True),
    ('over_min', 'minutes above import limit', 'min', 'low', True),
    ('phase_over_kwh', 'worst-phase energy above phase limit', 'kWh', 'low', True),
    ('phase_over_min', 'minutes a phase is above its limit', 'min', 'low', True),
    ('import_kwh', 'import energy', 'kWh', 'low', True),
    ('import_adj_kwh', 'import energy, end-SoC corrected', 'kWh', 'low', True),
    ('export_kwh', 'export energy', 'kWh', 'low', True),
    ('ssr', 'self-sufficiency', '', 'high', True),
    ('bat_export_kwh', 'battery-caused export', 'kWh', 'low', True),
    ('efc', 'equivalent full cycles', '', None, True),
    ('min_soc_pct', 'minimum SoC reached', '%', None, False),
    ('end_soc_pct', 'SoC at the end of the day', '%', None, False),
    ('soc_viol_n', 'min-SoC violations (episodes)', '', 'low', False),
    ('soc_viol_s', 'time below min SoC', 's', 'low', False),
    ('rev_per_h', 'direction reversals per hour', '1/h', 'low', False),
)


# --- the planner benchmark (issue 11; tools/bench/main.py PLAN_NAMES) ------------------------------
def limits_wh(series, sc, dt_s):
    """(energy above the limits = above the import limit + each phase above its limit, the total
    part, the phases' part) in Wh: what the LP minimises first (tools/planner.py tier 1)."""
    tot, _ = above(series['gcp'], sc.import_limit_w, dt_s)
    ph = sum(above(series[k], sc.phase_limit_w, dt_s)[0] for k in ('l1', 'l2', 'l3'))
    return tot + ph, tot, ph


_DEPOT_FROM_COMPUTE = ('over_kwh', 'phase_over_kwh', 'over_min', 'phase_over_min', 'peak_kw', 'import_adj_kwh',
                       'efc', 'end_soc_pct')


def depot(series, sc, dt_s):
    """The undersized depot's KPIs: the limits first, then compute()'s rows about them."""
    both, tot, ph = limits_wh(series, sc, dt_s)
    k = compute(series, sc, dt_s)
    out = {key: k[key] for key in _DEPOT_FROM_COMPUTE}
    out.update(limits_kwh=both / 1000.0, phases_kwh=ph / 1000.0)
    return out


DEPOT_KPIS = ((('limits_kwh', 'energy above the limits (import + each phase)', 'kWh', 'low', True),
               ('phases_kwh', 'energy above the phase limit, all phases', 'kWh', 'low', True))
              + tuple(row for row in KPIS if row[0] in _DEPOT_FROM_COMPUTE))


class Obligation:
    """What the VPP day's KPIs judge against, in seconds of the day: the reserve in force in the
    delivery window (risk-raised), the window, the events [(start, duration)], the committed power,
    the day-ahead price per MWh for every hour."""

    def __init__(self, reserve_bp, window, events, committed_w, prices_h):
        self.reserve_bp = reserve_bp
        self.window = window
        self.events = events
        self.committed_w = committed_w
        self.prices_h = prices_h

    def masks(self, n, dt_s):
        t = np.arange(n) * dt_s
        ev = np.zeros(n, dtype=bool)
        for s, d in self.events:
            ev |= (t >= s) & (t < s + d)
        win = (t >= self.window[0]) & (t < self.window[1])
        first = min(s for s, _ in self.events) if self.events else self.window[1]
        last = max(s + d for s, d in self.events) if self.events else self.window[1]
        return t, ev, win & ~ev & (t < first), win & ~ev & (t >= last)

    def cost(self, gcp_w, dt_s):
        """Grid energy at the day-ahead prices (import pays, export earns), currency."""
        t = np.arange(len(gcp_w)) * dt_s
        price = np.asarray(self.prices_h, dtype=float)[(t // 3600).astype(int)]
        return float(np.sum(np.asarray(gcp_w, dtype=float) * price)) * dt_s / WH / 1e6


def vpp(series, sc, dt_s, ob, protect=None):
    """The VPP day's KPIs. protect: per sample True where the core's import-limit protection set
    the setpoint (its binding); those seconds below the reserve are not the plan's (None: LP)."""
    gcp, bat, soc = (np.asarray(series[k], dtype=float) for k in ('gcp', 'bat', 'soc'))
    t, ev, before, after = ob.masks(len(gcp), dt_s)
    tol = max(100, ob.committed_w // 1000)
    delivered = float(np.sum(np.clip(bat[ev], 0, ob.committed_w))) * dt_s / WH
    below = soc < ob.reserve_bp - 10               # 0.1 % below: SoC is reported in whole bp
    if protect is not None:
        below &= ~np.asarray(protect, dtype=bool)
    net = np.asarray(sc.base, dtype=float) - np.asarray(sc.pv) + sum(np.asarray(e, dtype=float) for e in sc.ev)
    if dt_s != 1:
        net = net.reshape(-1, dt_s).mean(axis=1)
    d_wh = (float(soc[-1]) - sc.battery['soc_bp']) / 10000.0 * sc.battery['capacity_wh']
    mean_price = float(np.mean(ob.prices_h))
    stored = d_wh * (sc.battery.get('eta_dis_bp', 9600) / 10000.0 if d_wh > 0 else 10000.0 / sc.battery.get(
        'eta_dis_bp', 9600)) * mean_price / 1e6
    k = compute(series, sc, dt_s)
    return {
        'delivered_kwh': delivered / 1000.0,
        'below_commit_s': float(np.count_nonzero(bat[ev] < ob.committed_w - tol)) * dt_s,
        'below_reserve_before_s': float(np.count_nonzero(below & before)) * dt_s,
        'below_reserve_after_s': float(np.count_nonzero(below & after)) * dt_s,
        'soc_at_event_pct': float(soc[max(0, np.argmax(ev) - 1)]) / 100.0 if ev.any() else float('nan'),
        'ssr': k['ssr'],
        'import_adj_kwh': k['import_adj_kwh'],
        'over_kwh': k['over_kwh'],
        'value': ob.cost(net, dt_s) - ob.cost(gcp, dt_s) + stored,
        'end_soc_pct': k['end_soc_pct'],
    }


VPP_KPIS = (
    ('delivered_kwh', 'obligation delivered', 'kWh', 'high', True),
    ('below_commit_s', 'seconds below the committed power in the event', 's', 'low', False),
    ('below_reserve_before_s', 'seconds below the reserve, window before the event (not import protection)', 's',
     'low', False),
    ('below_reserve_after_s', 'seconds below the reserve, window after the event (recharging)', 's', 'low', False),
    ('soc_at_event_pct', 'SoC when the event starts', '%', None, False),
    ('ssr', 'self-sufficiency', '', 'high', True),
    ('import_adj_kwh', 'import energy, end-SoC corrected', 'kWh', 'low', True),
    ('over_kwh', 'energy above the import limit', 'kWh', 'low', False),
    ('value', 'arbitrage value: grid cost saved at day-ahead prices, end-SoC corrected', 'EUR', 'high', True),
    ('end_soc_pct', 'SoC at the end of the day', '%', None, False),
)
