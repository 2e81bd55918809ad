"""The scenario suite: site, battery, controller config and input series for one day each.

Every number here is a documented assumption (docs/benchmarks.md repeats them). All series are
integer W at 1 s. EV distributions, per scenario:
- depot: delivery vans return in the evening, arrival ~ N(17:30, 1 h) clipped to 15:00..21:00,
  energy ~ U(15, 35) kWh, they stay overnight; 60 % single-phase 7.4 kW on-board chargers
  (32 A) wired mostly to L1 (L1 50 %, L2 30 %, L3 20 %: no phase rotation at the depot),
  40 % three-phase 22 kW.
- workplace: employees arrive ~ N(08:15, 40 min) clipped 06:30..10:30, energy ~ U(6, 20) kWh,
  dwell ~ U(7, 9.5) h; 70 % three-phase 11 kW, 30 % single-phase 3.7 kW, phases rotated evenly.
- retail (zero feed-in): customers arrive ~ N(14:00, 3 h) clipped 08:00..20:00, energy
  ~ U(5, 15) kWh, dwell ~ U(0.5, 1.5) h; 50 % 11 kW, 20 % 22 kW three-phase, 30 % single-phase
  7.4 kW rotated evenly.
"""
from bench import data

ROTATED = [(1, 'L1'), (1, 'L2'), (1, 'L3')]
DEPOT_WIRING = [(0.50, 'L1'), (0.30, 'L2'), (0.20, 'L3')]


class Scenario:
    def __init__(self, name, title, date, objective, cfg, battery, base, pv, ev, notes):
        self.name = name
        self.title = title
        self.date = date
        self.objective = objective
        self.cfg = cfg                  # controller config (bess_config schema)
        self.battery = battery          # kwargs for site_model.Battery
        self.base = base                # W per second
        self.pv = pv
        self.ev = ev                    # [l1, l2, l3] W per second
        self.notes = notes
        self.import_limit_w = cfg['import_limit_w']
        # per-phase limit used for the phase KPIs: the configured one, else a third of the total
        self.phase_limit_w = cfg.get('phase_limit_w', 0) or cfg['import_limit_w'] // 3


def _depot(name, title, cap_wh, p_w, seed, notes, soc_bp=5000):
    date = '2025-11-19'
    sess = data.ev_sessions(seed, n=14, arrive_mean_h=17.5, arrive_sd_h=1.0, arrive_lo_h=15.0, arrive_hi_h=21.0,
                            energy_kwh=(15, 35), dwell_h=(10, 14),
                            types=[(0.6, 7400, DEPOT_WIRING), (0.4, 22000, 'L123')])
    cfg = {'objective': 'gce', 'import_limit_w': 120000, 'phase_limit_w': 45000, 'ev_headroom_w': 15000,
           'max_charge_w': p_w, 'max_discharge_w': p_w, 'min_soc_bp': 1000, 'max_soc_bp': 9500}
    bat = {'capacity_wh': cap_wh, 'soc_bp': soc_bp, 'max_chg_w': p_w, 'max_dis_w': p_w}
    return Scenario(name, title, date, 'gce', cfg, bat, data.load_series(date, 250.0), data.pv_series(date, 30.0),
                    data.ev_phase_series(sess), notes)


def _workplace(name, title, date, seed, notes):
    sess = data.ev_sessions(seed, n=30, arrive_mean_h=8.25, arrive_sd_h=0.67, arrive_lo_h=6.5, arrive_hi_h=10.5,
                            energy_kwh=(6, 20), dwell_h=(7, 9.5),
                            types=[(0.7, 11000, 'L123'), (0.3, 3700, ROTATED)])
    cfg = {'objective': 'ss', 'import_limit_w': 150000, 'ev_headroom_w': 20000,
           'max_charge_w': 100000, 'max_discharge_w': 100000, 'min_soc_bp': 1000, 'max_soc_bp': 9500}
    bat = {'capacity_wh': 200000, 'soc_bp': 3000, 'max_chg_w': 100000, 'max_dis_w': 100000}
    return Scenario(name, title, date, 'ss', cfg, bat, data.load_series(date, 400.0), data.pv_series(date, 200.0),
                    data.ev_phase_series(sess), notes)


def build(name):
    if name == 'depot_evening':
        return _depot(name, 'EV depot, evening peak, single-phase EVs, tight import limit',
                      250000, 100000, 11,
                      '120 kW import limit, 45 kW per phase; base 250 MWh/a G25; 30 kWp PV; 14 vans; '
                      '250 kWh / 100 kW battery at 50 %; objective gce, 15 kW EV headroom')
    if name == 'small_battery':
        return _depot(name, 'EV depot with a small battery that runs into min SoC',
                      50000, 60000, 11,
                      'as depot_evening but a 50 kWh / 60 kW battery: it empties during the evening peak, '
                      'so taper (5 %) and hysteresis (2 %) act', soc_bp=5000)
    if name == 'workplace_pv':
        return _workplace(name, 'Workplace with midday PV (clear day)', '2025-06-25', 21,
                          '150 kW import limit; base 400 MWh/a G25; 200 kWp PV, clear June day; 30 employee EVs; '
                          '200 kWh / 100 kW battery at 30 %; objective ss')
    if name == 'cloudy_day':
        return _workplace(name, 'Workplace on a cloudy day', '2025-06-16', 21,
                          'as workplace_pv on the TMY day 2025-06-16 (broken cloud, about half the clear-day '
                          'irradiation)')
    if name == 'cloudy_reserve':
        sc = _workplace(name, 'Workplace on a cloudy day, 50 % reserve SoC', '2025-06-16', 21,
                        'cloudy_day with reserve_soc_bp 5000: self-sufficiency discharge stops at 50 %, the rest is '
                        'kept for the import limit (the battery starts at 30 %, so it holds that)')
        sc.cfg['reserve_soc_bp'] = 5000
        return sc
    if name == 'zero_feed_in':
        date = '2025-05-21'
        sess = data.ev_sessions(31, n=40, arrive_mean_h=14.0, arrive_sd_h=3.0, arrive_lo_h=8.0, arrive_hi_h=20.0,
                                energy_kwh=(5, 15), dwell_h=(0.5, 1.5),
                                types=[(0.5, 11000, 'L123'), (0.2, 22000, 'L123'), (0.3, 7400, ROTATED)])
        cfg = {'objective': 'zfi', 'import_limit_w': 100000, 'ev_headroom_w': 20000, 'min_import_w': 200,
               'max_charge_w': 50000, 'max_discharge_w': 50000, 'min_soc_bp': 1000, 'max_soc_bp': 9500}
        bat = {'capacity_wh': 100000, 'soc_bp': 3000, 'max_chg_w': 50000, 'max_dis_w': 50000}
        return Scenario(name, 'Retail site, zero feed-in', date, 'zfi', cfg, bat, data.load_series(date, 250.0),
                        data.pv_series(date, 150.0), data.ev_phase_series(sess),
                        '100 kW import limit; base 250 MWh/a G25; 150 kWp PV; 40 customer EVs; '
                        '100 kWh / 50 kW battery at 30 %; objective zfi (200 W minimum import)')
    raise KeyError(name)


NAMES = ('depot_evening', 'workplace_pv', 'zero_feed_in', 'cloudy_day', 'cloudy_reserve', 'small_battery')
