"""The site planner (tools/planner.py, issue 11 item 8): its schedule validates and stays inside the
commissioned bounds, the risk flag raises the reserve, a known event is a firm interval at the
committed power, the hour before the window charges to the reserve, --publish leaves a retained
(signed) schedule on a loopback mosquitto, bad input is refused with a message; the LP's 3x phase
cost; an undersized depot's protection levels, honoured by the core in closed loop; the default
block and the versions fit the device. Small inputs (15-min steps): the long benchmark is
`make bench` (docs/benchmarks.md)."""
import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip('scipy')

import commands  # noqa: E402
import command_mac  # noqa: E402
import planner  # noqa: E402
import schedule  # noqa: E402
from mqtt_fixtures import Broker, Collector, wait_for, ROOT, procs  # noqa: E402,F401

T0 = 1783641600                 # 2026-07-10 00:00 UTC
STEP = 900
KEY = '00112233445566778899aabbccddeeff'
SITE = {
    'id': 'site-7', 'utc_offset_s': 0,
    'control': {'objective': 'ss', 'import_limit_w': 60000, 'ev_headroom_w': 5000, 'max_charge_w': 50000,
                'max_discharge_w': 50000, 'min_soc_bp': 1000, 'max_soc_bp': 9500, 'usable_wh': 100000},
    'battery': {'capacity_wh': 100000, 'soc_bp': 3000},
    'commitment': {'committed_w': 40000, 'event_duration_s': 3600, 'usable_wh': 100000, 'derate_bp': 2000,
                   'availability_bp': 9500, 'window': ['14:00', '19:00'],
                   'events': [{'start': '17:00', 'duration_s': 3600}], 'risk_margin_bp': 1000},
    'planner': {'end_soc_bp': 3000},
}
RESERVE = 1000 + 5264           # lib/reserve.py: 40 kWh over 100 kWh x 0.8 x 0.95, above min SoC


def day():
    """A summer day per quarter hour: building load with an evening peak, a PV bell, prices."""
    load, pv, price = [], [], []
    for k in range(96):
        h = (k + 0.5) / 4.0
        load.append(18000 + 12000 * math.exp(-((h - 19.0) / 2.5) ** 2))
        pv.append(max(0.0, 55000 * math.sin(math.pi * (h - 6.0) / 14.0)) if 6 < h < 20 else 0.0)
        price.append(60.0 + 150.0 * math.exp(-((h - 18.5) / 1.5) ** 2) - 30.0 * math.exp(-((h - 13) / 2) ** 2))
    return load, pv, price


def write_inputs(d, site=SITE, rows=None, prices=None):
    load, pv, price = day()
    sp = d / 'site.json'
    sp.write_text(json.dumps(site))
    fp = d / 'forecast.csv'
    lines = rows if rows is not None else ['%d,%d,%d,0,0,0' % (T0 + k * STEP, load[k], pv[k]) for k in range(96)]
    fp.write_text('time,load_w,pv_w,ev_l1_w,ev_l2_w,ev_l3_w\n' + '\n'.join(lines) + '\n')
    pp = d / 'prices.csv'
    pl = prices if prices is not None else ['%d,%.1f' % (T0 + k * STEP, price[k]) for k in range(96)]
    pp.write_text('time,price_per_mwh\n' + '\n'.join(pl) + '\n')
    return [str(sp), str(fp), str(pp)]


def run_cli(args, state_dir):
    """tools/planner.py with args; state_dir holds its default version file (never the user's)."""
    env = dict(os.environ, XDG_STATE_HOME=str(state_dir))
    return subprocess.run([sys.executable, 'tools/planner.py'] + args, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


def plan_day(risk=False):
    load, pv, price = day()
    site = planner.Site(json.loads(json.dumps(SITE)))
    d, sol, p = planner.plan(site, T0, STEP, load, pv, [[0] * 96] * 3, [x / 1000.0 for x in price], risk=risk,
                             created=T0, version=5)
    return d, sol, site


def in_window(e):
    return T0 + 14 * 3600 <= e['start'] and e['start'] + e['duration_s'] <= T0 + 19 * 3600


def test_schedule_validates_and_stays_inside_the_commissioned_bounds():
    for risk in (False, True):
        d, sol, site = plan_day(risk)
        assert schedule.validate(d, commissioned=site.cfg) == []
        s = schedule.compile_(d, commissioned=site.cfg)
        assert s.n == len(d['intervals']) <= schedule.MAX_INTERVALS
        assert d['created'] <= d['intervals'][0]['start'] and d['valid_until'] == T0 + 86400
        for e in d['intervals'] + [d['default']]:
            for k in ('reserve_soc_bp', 'target_soc_bp'):
                assert site.cfg['min_soc_bp'] <= e.get(k, 5000) <= site.cfg['max_soc_bp']
            assert e.get('import_limit_w', 0) <= site.cfg['import_limit_w']
            assert abs(e.get('power_w', 0)) <= site.cfg['max_discharge_w']
        # the LP itself: SoC inside the window, the commitment's reserve before the event
        assert sol['soc_bp'].min() >= 1000 - 1 and sol['soc_bp'].max() <= 9500 + 1
        k_event = 17 * 4
        assert sol['soc_bp'][k_event - 1] >= RESERVE - 1


def test_risk_flag_raises_the_reserve_and_suspends_arbitrage_discharge():
    d0, _, _ = plan_day(False)
    d1, _, _ = plan_day(True)
    assert d0['default']['reserve_soc_bp'] == RESERVE
    assert d1['default']['reserve_soc_bp'] == RESERVE + 1000
    w0 = [e['reserve_soc_bp'] for e in d0['intervals'] if in_window(e) and 'reserve_soc_bp' in e]
    w1 = [e['reserve_soc_bp'] for e in d1['intervals'] if in_window(e) and 'reserve_soc_bp' in e]
    assert w0 and w1 and min(w0) >= RESERVE and min(w1) >= RESERVE + 1000
    # a high-risk day: no battery export outside the event, no economic discharge
    for e in d1['intervals']:
        if not e.get('firm'):
            assert e.get('export') is False and e.get('power_w', 0) <= 0
    assert d1['id'].endswith('/risk') and not d0['id'].endswith('/risk')


def test_event_interval_is_firm_at_the_committed_power():
    for risk in (False, True):
        d, _, _ = plan_day(risk)
        ev = [e for e in d['intervals'] if e.get('firm')]
        assert len(ev) == 1
        e = ev[0]
        assert e['start'] == T0 + 17 * 3600 and e['duration_s'] == 3600
        assert e['power_w'] == 40000 and e['firm'] is True and 'target_soc_bp' not in e


def test_without_pv_the_plan_charges_to_the_reserve_before_the_window():
    load, pv, price = day()
    site = planner.Site(json.loads(json.dumps(SITE)))
    d, sol, p = planner.plan(site, T0, STEP, load, [0] * 96, [[0] * 96] * 3, [x / 1000.0 for x in price],
                             created=T0, version=1)
    before = [e for e in d['intervals'] if 'target_soc_bp' in e and e['start'] < T0 + 14 * 3600]
    assert before, d['intervals']
    last = max(before, key=lambda e: e['start'])
    assert last['start'] + last['duration_s'] <= T0 + 14 * 3600 and last['target_soc_bp'] >= RESERVE


def test_the_hour_before_the_window_charges_to_the_reserve_whatever_the_forecast():
    # a sunny forecast: the LP expects PV to fill the battery; the schedule still asks the core to
    # reach the reserve by 14:00 (one target over the hour: the core charges only what is missing)
    for risk in (False, True):
        d, sol, site = plan_day(risk)
        lead = [e for e in d['intervals'] if e['start'] < T0 + 14 * 3600 <= e['start'] + e['duration_s']]
        assert len(lead) == 1, d['intervals']
        e = lead[0]
        assert e['start'] == T0 + 13 * 3600 and e['duration_s'] == 3600
        assert e['target_soc_bp'] >= RESERVE + (1000 if risk else 0) and 'power_w' not in e


def test_lp_pays_three_watts_of_battery_per_watt_of_phase_excess():
    # two steps of one hour: first 1 kW over the phase limit on L1 (covering it costs 3 kW of a
    # symmetric battery), then 3 kW over the total limit; 3 kWh in the battery: the LP keeps it for
    # the total limit (3 kWh saved) instead of the phase (1 kWh saved)
    p = planner.Problem(3600, [30000, 33000], [0, 0], [[1000, 0], [0, 0], [0, 0]], 30000, 10000, 100000, 1300,
                        1000, 9500, 50000, 50000, 10000, 10000)
    sol = planner.solve_lp(p)
    assert sol['dis_w'][0] == pytest.approx(0, abs=1) and sol['dis_w'][1] == pytest.approx(3000, abs=1)
    # with enough energy it covers both (and then some: self-consumption is the next tier)
    p.soc0_bp = 5000
    sol = planner.solve_lp(p)
    assert sol['dis_w'][0] >= 3000 - 1 and sol['dis_w'][1] >= 3000 - 1
    assert max(sol['gcp_w']) <= 30000 + 1 and max(sol['phase_w'][0]) <= 10000 + 1


def test_cli_writes_a_valid_schedule(tmp_path):
    site, fc, pr = write_inputs(tmp_path)
    out = tmp_path / 's.json'
    r = run_cli(['--site', site, '--forecast', fc, '--prices', pr, '--risk', '--out', str(out),
                 '--version', '7', '--created', str(T0)], tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d['version'] == 7 and schedule.validate(d, commissioned=planner.Site(SITE).cfg) == []
    assert 'intervals' in r.stderr and 'site-7/2026-07-10/risk' in r.stderr


def test_publish_sends_a_retained_signed_schedule(tmp_path, procs):
    br = Broker(tmp_path).start()
    procs.append(br)
    topic = 'bess/site-7/schedule'
    site, fc, pr = write_inputs(tmp_path)
    r = run_cli(['--site', site, '--forecast', fc, '--prices', pr, '--version', '3', '--created', str(T0),
                 '--publish', 'mqtt://127.0.0.1:%d/%s' % (br.port, topic), '--key', KEY], tmp_path)
    assert r.returncode == 0, r.stderr
    body = r.stdout.strip().encode()
    # a subscriber that comes later gets it: retained
    col = Collector(br.port, topics=(topic,))
    procs.append(col)
    assert wait_for(lambda: col.get(topic), 5)
    t, payload, retain, _ = col.get(topic)[0]
    assert retain
    checked, signed = commands.Auth(command_mac.parse_key(KEY)).verify(topic, payload)
    assert signed and checked == body
    d = json.loads(checked)
    assert d['version'] == 3 and schedule.validate(d, commissioned=planner.Site(SITE).cfg) == []
    # a forged copy does not verify
    with pytest.raises(commands.Rejected):
        commands.Auth(command_mac.parse_key(KEY)).verify(topic, payload.replace(b'40000', b'40001'))


@pytest.mark.parametrize('case,needle', [
    ('missing_column', 'missing column(s) pv_w'),
    ('gap', 'is not 900 s after the previous row'),
    ('bad_number', "load_w = 'x' is not a number"),
    ('late_prices', 'starts after the forecast'),
    ('unknown_site_key', "unknown key 'colour'"),
    ('bad_control', 'import_limit_w: required'),
    ('bad_window', 'is not a time "HH:MM"'),
    ('commitment_too_big', 'more than the usable capacity holds'),
    ('too_long', 'at most 96 intervals'),
    ('key_without_publish', '--key signs what --publish sends'),
    ('created_late', 'is after the forecast start'),
    ('bad_url', 'expected mqtt://host[:port]/<topic>'),
])
def test_bad_input_is_refused_with_a_message(tmp_path, case, needle):
    load, pv, price = day()
    rows = ['%d,%d,%d,0,0,0' % (T0 + k * STEP, load[k], pv[k]) for k in range(96)]
    site = json.loads(json.dumps(SITE))
    extra = []
    kw = {}
    if case == 'missing_column':
        (tmp_path / 'x').mkdir()
        args = write_inputs(tmp_path, rows=rows)
        args[1] = str(tmp_path / 'x' / 'f.csv')
        (tmp_path / 'x' / 'f.csv').write_text('time,load_w\n%d,1000\n%d,1000\n' % (T0, T0 + STEP))
    else:
        if case == 'gap':
            del rows[10]
        elif case == 'bad_number':
            rows[3] = '%d,x,0,0,0,0' % (T0 + 3 * STEP)
        elif case == 'late_prices':
            kw['prices'] = ['%d,50' % (T0 + 3600)]
        elif case == 'unknown_site_key':
            site['colour'] = 'blue'
        elif case == 'bad_control':
            del site['control']['import_limit_w']
        elif case == 'commitment_too_big':
            site['commitment']['committed_w'] = 90000
        elif case == 'bad_window':
            site['commitment']['window'] = ['14h', '19:00']
        elif case == 'too_long':
            rows += ['%d,1000,0,0,0,0' % (T0 + k * STEP) for k in range(96, 100)]
        elif case == 'created_late':
            extra = ['--created', str(T0 + 60)]
        elif case == 'key_without_publish':
            extra = ['--key', KEY]
        elif case == 'bad_url':
            extra = ['--publish', 'http://127.0.0.1/x']
        args = write_inputs(tmp_path, site=site, rows=rows, **kw)
    r = run_cli(['--site', args[0], '--forecast', args[1], '--prices', args[2]] + extra, tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr, r.stderr


def test_energy_the_day_does_not_need_is_sold_at_the_price_peak_above_the_reserve():
    # a sunny day with a small load and no end SoC: what the battery holds beyond the evening's
    # self-consumption is arbitrage: economic (not firm) discharge in the dearest hours only
    load, pv, price = day()
    site_d = json.loads(json.dumps(SITE))
    del site_d['planner'], site_d['commitment']
    site = planner.Site(site_d)
    d, sol, p = planner.plan(site, T0, STEP, [4000] * 96, [2 * x for x in pv], [[0] * 96] * 3,
                             [x / 1000.0 for x in price], created=T0, version=1)
    eco = [e for e in d['intervals'] if e.get('power_w', 0) > 0 and not e.get('firm')]
    assert eco, d['intervals']
    k_peak = max(range(96), key=lambda k: price[k])
    assert any(e['start'] <= T0 + k_peak * STEP < e['start'] + e['duration_s'] for e in eco)
    for e in eco:
        assert e['firm'] is False and e['power_w'] <= site.cfg['max_discharge_w']
    assert schedule.validate(d, commissioned=site.cfg) == []


# --- the undersized depot: protection levels (lib/bess_core.py plan_protect_*) ---------------------
DEPOT = {
    'id': 'depot-3', 'utc_offset_s': 0,
    'control': {'objective': 'gce', 'import_limit_w': 120000, 'phase_limit_w': 39000, 'ev_headroom_w': 15000,
                'max_charge_w': 60000, 'max_discharge_w': 60000, 'min_soc_bp': 1000, 'max_soc_bp': 9500,
                'usable_wh': 30000},
    'battery': {'capacity_wh': 30000, 'soc_bp': 5000},
}


def depot_hours():
    """Three hours per quarter hour: (base W, EV on L1 W). Hour 1: an EV puts L1 6 kW over its limit
    (covering it costs a symmetric battery 18 kW: 1 W saved per 3 W); hour 2: the building puts
    every phase 6 kW and the total 15 kW over (18 kW of battery saves 33 kW); hour 3: quiet."""
    base = [90000] * 4 + [135000] * 4 + [60000] * 4
    ev1 = [15000] * 4 + [0] * 8
    return base, ev1


def plan_depot():
    base, ev1 = depot_hours()
    site = planner.Site(json.loads(json.dumps(DEPOT)))
    d, sol, p = planner.plan(site, T0, STEP, base, [0] * 12, [ev1, [0] * 12, [0] * 12], [0.0] * 12,
                             created=T0, version=9)
    return d, sol, site


def run_depot_hour(d, site, soc_bp):
    """The core with schedule d (lib/plan.Plan ticked before each step, as the firmware does) in
    closed loop with site_model for the first hour: (per-second worst phase W, battery W), the SoC."""
    import plan as plan_mod
    import site_model
    from bench.runner import Driven
    from bess_core import Controller
    base, ev1 = depot_hours()
    ctl = Controller(site.cfg)
    pl = plan_mod.Plan(ctl)
    pl.load(schedule.compile_(d, commissioned=site.cfg))
    pl.rebase(T0)
    sm = site_model.Site(lambda t: base[t // STEP], lambda t: 0, lambda t: (ev1[t // STEP], 0, 0))
    bat = site_model.Battery(site.battery['capacity_wh'], soc_bp, 60000, 60000)
    rec = []
    site_model.run(Driven(ctl, pl), sm, bat, 3600, on_step=lambda t, c, b, ph: rec.append((max(ph[:3]), b.actual_w)))
    return rec, bat.soc_bp


def test_depot_plan_carries_protection_levels_where_it_keeps_energy_for_a_costlier_excess():
    d, sol, site = plan_depot()
    assert schedule.validate(d, commissioned=site.cfg) == []
    first = [e for e in d['intervals'] if e['start'] < T0 + 3600]
    assert first and sum(e['duration_s'] for e in first) == 3600, d['intervals']
    for e in first:
        # the LP lets L1's excess through and keeps the battery for hour 2, where a watt saves
        # more: hour 1 holds the LP's levels while the SoC is at or below the LP's (the reserve)
        assert 44000 <= e['protect_phase_w'] <= 45000 + 1 and 'protect_import_w' not in e
        assert e['reserve_soc_bp'] == pytest.approx(5000, abs=5)
    assert max(sol['dis_w'][:4]) < 100 and sum(sol['dis_w'][4:8]) * STEP / 3600 > 10000     # Wh
    # hour 3 has no excess: nothing to hold there
    assert not [e for e in d['intervals'] if e['start'] >= T0 + 7200]


def test_core_holds_the_plan_levels_at_or_below_the_reserve_and_protects_fully_above_it():
    d, sol, site = plan_depot()
    # at the plan's SoC (the reserve): import protection holds L1 at the level, the battery keeps
    # its energy for hour 2
    rec, soc = run_depot_hour(d, site, 5000)
    assert all(w <= 45000 + 1 for w, _ in rec) and max(w for w, _ in rec) > 44000
    assert max(b for _, b in rec) <= 0 and soc >= 5000 - 1
    # with 6 % more than planned the core protects fully (3 W per W of phase excess) until it is
    # back at the plan's SoC, then holds the level
    rec, soc = run_depot_hour(d, site, 5600)
    assert min(w for w, _ in rec[5:300]) <= 39000 + 100
    assert 5000 - 10 <= soc <= 5000 + 10
    assert rec[-1][0] > 44000 and rec[-1][1] <= 0


def test_default_block_and_version_fit_the_device():
    for d in (plan_day(True)[0], plan_depot()[0]):
        assert not {'power_w', 'target_soc_bp', 'firm'} & set(d['default'])
        assert 1 <= d['version'] <= 2 ** 30 - 1


def test_default_version_counts_seconds_since_2020_and_never_repeats(tmp_path):
    path = str(tmp_path / 'v' / 'versions.json')
    now = 1783641600                    # 2026-07-10: 205 804 800 s after 2020-01-01
    v1 = planner.next_version('site-7', path, now)
    v2 = planner.next_version('site-7', path, now)          # the same second: still newer
    v3 = planner.next_version('depot-3', path, now)         # per site
    assert v1 == now - 1577836800 and v2 == v1 + 1 and v3 == v1
    assert planner.next_version('site-7', path, now + 60) == v1 + 60
    # without the file the clock still orders them; past 2054 there is no small-int version left
    assert planner.next_version('site-7', str(tmp_path / 'other.json'), now + 61) == v1 + 61
    with pytest.raises(planner.PlanError, match='no version left'):
        planner.next_version('site-7', path, 1577836800 + 2 ** 30)
    load, pv, price = day()
    site = planner.Site(json.loads(json.dumps(SITE)))
    d, _, _ = planner.plan(site, T0, STEP, load, pv, [[0] * 96] * 3, [x / 1000.0 for x in price], created=T0,
                           version_path=path)
    assert v1 < d['version'] <= 2 ** 30 - 1
    with pytest.raises(planner.PlanError, match='version must be an integer'):
        planner.plan(site, T0, STEP, load, pv, [[0] * 96] * 3, [x / 1000.0 for x in price], created=T0,
                     version=2 ** 30)
