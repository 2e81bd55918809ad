"""Fleet planning (issue 12, item 2): tools/fleet/plan_fleet.py runs the site planner for every
site through an executor (local processes; a local Dask cluster) and sums the fleet before the
capacity event. Each schedule is checked by the device's own rules (lib/schedule_host.py)."""
import datetime
import json
import math
import os
import subprocess
import sys

import pytest

from paths import ROOT

sys.path.insert(0, os.path.join(ROOT, 'tools', 'fleet'))
import inventory  # noqa: E402
import plan_fleet as pf  # noqa: E402
import schedule_host  # noqa: E402

DAY = '2026-07-14'
DAY0 = int(datetime.datetime(2026, 7, 14, tzinfo=datetime.timezone.utc).timestamp())
SITES = """id,capacity_kwh,power_kw,import_limit_w,committed_w,tariff,utc_offset_s
s1,10,5,20000,2500,da,7200
s2,20,10,30000,5000,da,7200
s3,10,5,20000,8000,da,7200
s4,10,5,20000,0,flat,0
"""


def _inputs(tmp_path, sites_text=SITES):
    (tmp_path / 'sites.csv').write_text(sites_text)
    fc = tmp_path / 'fc'
    fc.mkdir(exist_ok=True)
    pr = tmp_path / 'pr'
    pr.mkdir(exist_ok=True)
    for s in inventory.load(str(tmp_path / 'sites.csv')):
        t0 = DAY0 - s['utc_offset_s']
        rows = ['time,load_w,pv_w']
        for k in range(96):
            h = k / 4.0
            load = 3000 + 2500 * math.exp(-((h - 18.5) / 2.0) ** 2)
            pv = max(0.0, 6000 * math.sin(math.pi * (h - 6) / 14)) if 6 <= h <= 20 else 0.0
            rows.append('%d,%.0f,%.0f' % (t0 + 900 * k, load, pv))
        (fc / (s['id'] + '.csv')).write_text('\n'.join(rows) + '\n')
    start = DAY0 - 86400
    (pr / 'da.csv').write_text('time,price_per_mwh\n' + ''.join(
        '%d,%d\n' % (start + 3600 * h, 60 + 120 * (17 <= (h % 24) <= 20)) for h in range(72)))
    (pr / 'flat.csv').write_text('time,price_per_mwh\n%d,100\n' % start)
    return str(tmp_path / 'sites.csv'), str(fc), str(pr)


def _plan(tmp_path, executor='inline', risk=False, soc=None, **kw):
    sites_path, fc, pr = _inputs(tmp_path, **kw)
    sites = inventory.load(sites_path)
    tl = pf.tasks(sites, DAY, fc, pr, soc, risk, ('16:00', '20:00'), [('17:00', 3600)], version=1000)
    return sites, pf.run(tl, executor, workers=2)


def test_every_site_gets_a_schedule_the_device_accepts_and_the_fleet_is_summed(tmp_path):
    sites, res = _plan(tmp_path)
    assert [r['id'] for r in res] == ['s1', 's2', 's3', 's4'] and all(r['ok'] for r in res), res
    for s, r in zip(sites, res):
        errs = schedule_host.validate(r['schedule'], inventory.control(s), 0)
        assert errs == [], (s['id'], errs)
        assert r['schedule']['version'] == 1000
    by = {r['id']: r for r in res}
    assert by['s1']['committed_wh'] == 2500 and by['s2']['committed_wh'] == 5000
    # s3 has committed 8 kW from a 5 kW battery: it cannot deliver, whatever the plan
    assert by['s3']['deliverable_wh'] <= 5000 < by['s3']['committed_wh']
    assert by['s1']['deliverable_wh'] >= 2500 and by['s2']['deliverable_wh'] >= 5000
    agg = pf.aggregates(res)
    assert agg['committed_wh'] == 15500 and agg['short_sites'] == ['s3'] and agg['shortfall']
    assert agg['shortfall_wh'] == 8000 - min(8000, by['s3']['deliverable_wh'])
    # the reserve in the delivery window: the commitment's, in the schedule the device gets
    iv = by['s2']['schedule']['intervals']
    assert by['s2']['reserve_bp'] and any(i.get('reserve_soc_bp') == by['s2']['reserve_bp'] for i in iv)


def test_a_heat_advisory_raises_the_reserve_from_2_pm(tmp_path):
    _, normal = _plan(tmp_path)
    (tmp_path / 'r').mkdir()
    _, risky = _plan(tmp_path / 'r', risk=True)
    for a, b in zip(normal, risky):
        if a['reserve_bp'] is not None:
            assert b['reserve_bp'] > a['reserve_bp']
            # held in the intervals from 14:00 local (utc_offset_s 7200: 12:00 UTC) on
            at14 = DAY0 - 7200 + 14 * 3600

            def at(sch, t):
                iv = [i for i in sch['intervals'] if i['start'] <= t < i['start'] + i['duration_s']]
                return iv[0].get('reserve_soc_bp', 0) if iv else sch['default'].get('reserve_soc_bp', 0)
            assert at(b['schedule'], at14) >= b['reserve_bp']
            assert at(b['schedule'], at14 - 3 * 3600) < b['reserve_bp']      # raised from 14:00, not all day


def test_process_pool_and_dask_give_the_same_schedules(tmp_path):
    _, inline = _plan(tmp_path, 'inline')
    _, procs = _plan(tmp_path, 'process')
    _, dask = _plan(tmp_path, 'dask')
    strip = [{k: v for k, v in r.items() if k != 'plan_s'} for r in inline]
    assert [{k: v for k, v in r.items() if k != 'plan_s'} for r in procs] == strip
    assert [{k: v for k, v in r.items() if k != 'plan_s'} for r in dask] == strip


def test_missing_inputs_are_listed_per_site_and_nothing_is_planned(tmp_path):
    sites_path, fc, pr = _inputs(tmp_path)
    os.remove(os.path.join(fc, 's2.csv'))
    os.remove(os.path.join(pr, 'flat.csv'))
    with pytest.raises(pf.FleetPlanError) as e:
        pf.tasks(inventory.load(sites_path), DAY, fc, pr, version=5)
    msg = str(e.value)
    assert 'site s2: no forecast' in msg and 'site s4: ' in msg and 'flat.csv' in msg


def test_a_forecast_from_the_fleets_own_telemetry(tmp_path):
    day0 = DAY0
    recs = []
    for w in range(1, 5):                   # the same weekday, four weeks back: 1 kW .. 4 kW at 10:00
        t = day0 - 7 * 86400 * w + 10 * 3600
        recs.append((t, 1000.0 * w))
    recs.append((day0 - 86400 + 10 * 3600, 99999.0))      # yesterday: another weekday, ignored
    prof = pf.profile_from_history(recs, day0)
    assert prof[40] == 2500.0 and prof[0] == 2500.0       # no data at 00:00: the history's mean
    assert pf.profile_from_history([], day0) is None
    sites_path, fc, pr = _inputs(tmp_path)
    os.remove(os.path.join(fc, 's4.csv'))
    tl = pf.tasks(inventory.load(sites_path), DAY, fc, pr, history={'s4': recs}, version=7)
    assert tl[3]['base_w'][40] == 2500.0
    assert pf.run(tl[3:], 'inline')[0]['ok']


def test_the_command_line_writes_the_schedules_and_the_report(tmp_path):
    sites_path, fc, pr = _inputs(tmp_path)
    out = tmp_path / 'out'
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'fleet', 'plan_fleet.py'), '--sites', sites_path,
                        '--day', DAY, '--forecasts', fc, '--prices', pr, '--event', '17:00', '3600',
                        '--executor', 'inline', '--out', str(out)], capture_output=True, text=True,
                       env=dict(os.environ, XDG_STATE_HOME=str(tmp_path / 'state')))
    assert r.returncode == 0, r.stderr
    assert 'SHORTFALL' in r.stdout and '4 of 4 sites planned' in r.stdout
    rep = json.loads((out / 'plan.json').read_text())
    assert rep['aggregates']['short_sites'] == ['s3']
    assert sorted(os.listdir(out / 'schedules')) == ['s1.json', 's2.json', 's3.json', 's4.json']
    # a second run issues a newer version
    r2 = subprocess.run(r.args, capture_output=True, text=True, env=dict(os.environ, XDG_STATE_HOME=str(tmp_path / 'state')))
    rep2 = json.loads((out / 'plan.json').read_text())
    assert r2.returncode == 0 and rep2['sites'][0]['version'] > rep['sites'][0]['version']
