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

The planner scenarios (PLAN_NAMES, issue 11) add a `Planning`: the site as tools/planner.py reads
it (site.json), the day-ahead prices, the risk flag, the dispatch command a VPP operator sends when
the site has no planner, and yesterday's series (the imperfect forecast's base).
"""
import calendar

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
        self.planning = None            # Planning for the planner scenarios


class Planning:
    """The planner's view of a scenario. site: a site.json dict (tools/planner.py Site); prices_h:
    24 hourly day-ahead prices per MWh; dispatch: [(t_s, power_w, duration_ms)] commands the VPP
    sends the core when there is no planner; yesterday(): (base, pv, ev) of the day before, 1 s."""

    def __init__(self, site, prices_h, risk, yesterday, dispatch=()):
        self.site = site
        self.prices_h = prices_h
        self.risk = risk
        self.yesterday = yesterday
        self.dispatch = list(dispatch)

    def epoch(self, date):
        """Unix seconds of the scenario day's 00:00 (site clock = UTC + utc_offset_s)."""
        y, m, d = (int(x) for x in date.split('-'))
        return calendar.timegm((y, m, d, 0, 0, 0)) - self.site.get('utc_offset_s', 0)


def _day_before(date):
    y, m, d = (int(x) for x in date.split('-'))
    import datetime
    return (datetime.date(y, m, d) - datetime.timedelta(days=1)).isoformat()


def _depot_series(date, seed):
    """Depot inputs of one day: building (250 MWh/a G25), 30 kWp PV, 14 vans (seeded)."""
    sess = data.ev_sessions(seed, n=14, arrive_mean_h=17.5, arrive_sd_h=1.0, arrive_lo_h=15.0, arrive_hi_h=21.0,
                            energy_kwh=(15, 35), dwell_h=(10, 14),
                            types=[(0.6, 7400, DEPOT_WIRING), (0.4, 22000, 'L123')])
    return data.load_series(date, 250.0), data.pv_series(date, 30.0), data.ev_phase_series(sess)


def _depot(name, title, cap_wh, p_w, seed, notes, soc_bp=5000, date='2025-11-19'):
    cfg = {'objective': 'gce', 'import_limit_w': 120000, 'phase_limit_w': 45000, 'ev_headroom_w': 15000,
           'max_charge_w': p_w, 'max_discharge_w': p_w, 'min_soc_bp': 1000, 'max_soc_bp': 9500}
    bat = {'capacity_wh': cap_wh, 'soc_bp': soc_bp, 'max_chg_w': p_w, 'max_dis_w': p_w}
    base, pv, ev = _depot_series(date, seed)
    return Scenario(name, title, date, 'gce', cfg, bat, base, pv, ev, notes)


def _site(name, cfg, bat, commitment=None, end_soc_bp=None):
    """site.json for tools/planner.py from a scenario's config and battery."""
    d = {'id': name, 'utc_offset_s': 0, 'control': dict(cfg),
         'battery': {'capacity_wh': bat['capacity_wh'], 'soc_bp': bat['soc_bp'],
                     'eta_chg_bp': bat.get('eta_chg_bp', 9600), 'eta_dis_bp': bat.get('eta_dis_bp', 9600)}}
    if commitment:
        d['commitment'] = commitment
    if end_soc_bp is not None:
        d['planner'] = {'end_soc_bp': end_soc_bp}
    return d


# Day-ahead prices of the VPP day, per MWh, hour 0..23: a hot summer weekday's duck curve
# (cheap at midday under PV, a steep evening peak with the air conditioning). Synthetic, shaped
# after such days; only the spreads matter for the plan.
VPP_PRICES_H = (95, 88, 84, 82, 84, 92, 110, 135, 128, 105, 80, 62,
                48, 42, 45, 60, 95, 160, 240, 210, 165, 130, 112, 100)
VPP_COMMITMENT = {'committed_w': 40000, 'event_duration_s': 3600, 'usable_wh': 100000, 'derate_bp': 2000,
                  'availability_bp': 9500, 'window': ['14:00', '19:00'],
                  'events': [{'start': '17:00', 'duration_s': 3600}], 'risk_margin_bp': 1000}


def _vpp_series(date):
    """Residential subscribers' building: 120 MWh/a H25 + 2 kW/K air conditioning above 24 C; 60 kWp."""
    load = data.load_series(date, 120.0, 'H25')
    cool = data.cooling_series(date, 2000)
    return [a + b for a, b in zip(load, cool)], data.pv_series(date, 60.0), [[0] * data.DAY_S] * 3


def _vpp_day(name):
    date = '2025-07-10'
    cfg = {'objective': 'ss', 'import_limit_w': 60000, 'ev_headroom_w': 5000, 'max_charge_w': 50000,
           'max_discharge_w': 50000, 'min_soc_bp': 1000, 'max_soc_bp': 9500, 'usable_wh': 100000}
    bat = {'capacity_wh': 100000, 'soc_bp': 3000, 'max_chg_w': 50000, 'max_dis_w': 50000}
    # without a planner the commitment's reserve is commissioned: held all day
    ours = dict(cfg, **{k: VPP_COMMITMENT[k] for k in ('committed_w', 'event_duration_s', 'derate_bp',
                                                       'availability_bp')})
    base, pv, ev = _vpp_series(date)
    sc = Scenario(name, 'VPP day: heat advisory, capacity event at 17:00', date, 'ss', ours, bat, base, pv, ev,
                  'residential subscribers (120 MWh/a H25 + 2 kW/K air conditioning above 24 C), 60 kWp PV, '
                  '100 kWh / 50 kW battery at 30 %, 60 kW import limit, objective ss; commitment 40 kW x 1 h '
                  '(reserve 62.64 %, +10 % on the high-risk day = 72.64 %), window 14:00-19:00, event '
                  '17:00-18:00; day-ahead prices 42..240 /MWh')
    sc.planning = Planning(_site(name, cfg, bat, VPP_COMMITMENT, end_soc_bp=bat['soc_bp']), VPP_PRICES_H, True,
                           lambda: _vpp_series(_day_before(date)),
                           dispatch=[(17 * 3600, VPP_COMMITMENT['committed_w'], 3600 * 1000)])
    return sc


def _depot_undersized(name):
    sc = _depot(name, 'Undersized depot battery, single-phase EVs, 39 kW phase limit', 50000, 60000, 11,
                'small_battery (50 kWh / 60 kW at 50 %, 120 kW import limit, 14 vans) with a 39 kW per-phase '
                'limit: the evening needs more than the battery holds')
    sc.cfg['phase_limit_w'] = sc.phase_limit_w = 39000
    sc.cfg['usable_wh'] = sc.battery['capacity_wh']
    sc.planning = Planning(_site(name, sc.cfg, sc.battery), (0,) * 24, False,
                           lambda: _depot_series(_day_before(sc.date), 10))
    return sc


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
    if name == 'vpp_day':
        return _vpp_day(name)
    if name == 'depot_undersized':
        return _depot_undersized(name)
    raise KeyError(name)


PLAN_NAMES = ('vpp_day', 'depot_undersized')
NAMES = ('depot_evening', 'workplace_pv', 'zero_feed_in', 'cloudy_day', 'cloudy_reserve', 'small_battery')
