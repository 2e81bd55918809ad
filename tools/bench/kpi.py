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
