#!/usr/bin/env python3
"""Plan every site of a fleet for one day (issue 12, item 2): tools/planner.py per site, in
parallel through an executor, and the fleet's aggregates before a capacity event.

    python tools/fleet/plan_fleet.py --sites sites.csv --day 2026-07-14 --forecasts DIR --prices DIR \\
        --out DIR [--risk] [--soc soc.json] [--window 16:00 20:00] [--event 17:00 3600] \\
        [--executor process|dask|dask://HOST:PORT] [--workers N]

Inputs: the sites file (tools/fleet/inventory.py); per site a forecast CSV DIR/<id>.csv in the
planner's format (time, load_w, pv_w[, ev_l1_w, ev_l2_w, ev_l3_w]; a day from local midnight) or,
when there is none, a profile from the fleet's own telemetry (profile_from_history(): the same
weekday of the last weeks); per tariff a day-ahead price CSV DIR/<tariff>.csv (time,
price_per_mwh); the battery's SoC per site (soc.json, {id: bp}; default 5000); the risk flag of
the day (a heat advisory: the planner raises the reserve by the site's risk margin and suspends
arbitrage discharge).

Executors: local processes by default (concurrent.futures); `dask` starts a local Dask cluster,
`dask://HOST:PORT` uses a running Dask scheduler (a fleet beyond one machine): the same job
function either way, no distribution layer of our own.

Output: DIR/schedules/<id>.json (schedule format v1, unsigned: the push signs with each device's
key) and DIR/plan.json: per site the reserve, the deliverable energy at the event (energy above
min SoC the plan keeps at the event's start, after discharge losses, at most power x duration)
against its committed share, and the fleet's sums with the shortfall flagged.
"""
import argparse
import datetime
import json
import os
import sys
import time

import fleetpath  # noqa: E402,F401 (tools/ and lib/ on sys.path)

import inventory  # noqa: E402
import planner  # noqa: E402

STEP_S = 900
DEFAULT_SOC_BP = 5000


class FleetPlanError(ValueError):
    pass


def profile_from_history(records, day_t0, step_s=STEP_S, weeks=4, utc_offset_s=0):
    """A day's net load forecast (W per step from day_t0) from telemetry: records (t_s, net_w),
    net = grid import + battery discharge (what the site draws without the battery). Each step is
    the mean of the same local weekday and time of day over the last `weeks` weeks; a step no week
    has data for takes the mean of the whole history. None when there is no history."""
    if not records:
        return None
    n = 86400 // step_s
    sums = [0.0] * n
    cnt = [0] * n
    start = day_t0 - weeks * 7 * 86400
    for t, w in records:
        if not start <= t < day_t0:
            continue
        d = t - day_t0
        if (d // 86400) % 7:                    # another weekday
            continue
        k = (d % 86400) // step_s
        sums[k] += w
        cnt[k] += 1
    if not any(cnt):
        return None
    allm = sum(sums) / sum(cnt)
    return [sums[k] / cnt[k] if cnt[k] else allm for k in range(n)]


def job(task):
    """One site (runs in a worker process or a Dask worker): the planner's schedule and the
    site's figures, or the error. task: a plain dict (picklable)."""
    t = time.perf_counter()
    sid = task['site']['id']
    try:
        s = planner.Site(task['planner_site'], sid)
        d, sol, p = planner.plan(s, task['t0'], task['step_s'], task['base_w'], task['pv_w'], task['ev_w'],
                                 task['prices'], task['risk'], task['created'], task['version'])
        out = {'id': sid, 'ok': True, 'schedule': d, 'version': d['version']}
        out.update(_deliverable(task, s, sol))
    except (planner.PlanError, ValueError) as e:
        out = {'id': sid, 'ok': False, 'error': str(e)}
    out['plan_s'] = round(time.perf_counter() - t, 4)
    return out


def _deliverable(task, s, sol):
    """The site's energy for the event: what the plan keeps above min SoC at the event's start
    (the window's start without an event), after discharge losses, at most power x duration."""
    site = task['site']
    dur = site['event_duration_s']
    at = task.get('event_step')
    if at is None:
        at = task.get('window_step', 0)
    cap = site['capacity_wh']
    above = max(0.0, float(sol['e_wh'][at]) - site['min_soc_bp'] * cap / 10000.0)
    eta = s.battery['eta_dis_bp'] / 10000.0
    deliverable = min(above * eta, site['power_w'] * dur / 3600.0)
    r = {'deliverable_wh': int(deliverable), 'committed_wh': int(site['committed_w'] * dur / 3600),
         'soc_at_event_bp': int(round(float(sol['soc_bp'][at])))}
    r['reserve_bp'] = s.reserve_bp(task['risk']) if s.commitment is not None else None
    return r


def _local_step(hhmm, utc_offset_s, t0, step_s):
    """The step of local time hhmm in the day that starts at t0 (UTC s)."""
    h, m = hhmm.split(':')
    local = int(h) * 3600 + int(m) * 60
    return ((local - utc_offset_s - (t0 % 86400)) % 86400) // step_s


def tasks(sites, day, forecasts, prices_dir, soc=None, risk=False, window=('16:00', '20:00'), events=(),
          history=None, created=None, version=None, risk_from='14:00'):
    """One task per site (see job()); FleetPlanError listing every site whose inputs are missing.
    On a high-risk day (a heat advisory) the elevated reserve is held from risk_from (the seed:
    "increase all fleet SOC reserves to the elevated threshold by 2 PM"), reached by charging in
    the hour before, and arbitrage discharge is suspended (tools/planner.py)."""
    if risk and risk_from < window[0]:
        window = (risk_from, window[1])
    errs, out = [], []
    soc = soc or {}
    day0 = int(datetime.datetime.strptime(day, '%Y-%m-%d').replace(tzinfo=datetime.timezone.utc).timestamp())
    version = version or next_version()
    for s in sites:
        t0 = day0 - s['utc_offset_s']           # local midnight
        fpath = os.path.join(forecasts, s['id'] + '.csv') if forecasts else None
        try:
            if fpath and os.path.exists(fpath):
                ft0, step, base, pv, ev = planner.read_forecast(fpath)
                if ft0 != t0:
                    raise planner.PlanError('%s starts at %d, not at local midnight %d' % (fpath, ft0, t0))
            else:
                prof = profile_from_history((history or {}).get(s['id']), t0, STEP_S)
                if prof is None:
                    raise planner.PlanError('no forecast %s and no telemetry history' % (fpath or '(no folder)'))
                step, base, pv, ev = STEP_S, prof, [0.0] * len(prof), [[0.0] * len(prof)] * 3
            pr = planner.read_prices(os.path.join(prices_dir, s['tariff'] + '.csv'), t0, step, len(base))
        except planner.PlanError as e:
            errs.append('site %s: %s' % (s['id'], e))
            continue
        ev_list = [(e[0], int(e[1])) for e in events]
        task = {'site': dict(s), 'planner_site': inventory.planner_site(s, soc.get(s['id'], DEFAULT_SOC_BP),
                                                                        window, ev_list),
                't0': t0, 'step_s': step, 'base_w': list(base), 'pv_w': list(pv), 'ev_w': [list(e) for e in ev],
                'prices': pr, 'risk': risk, 'created': created, 'version': version,
                'window_step': _local_step(window[0], s['utc_offset_s'], t0, step)}
        if ev_list:
            task['event_step'] = _local_step(ev_list[0][0], s['utc_offset_s'], t0, step)
        out.append(task)
    if errs:
        raise FleetPlanError('\n'.join(errs))
    return out


def next_version(now_s=None, state=None):
    """One version for the whole run: seconds since 2020 (planner.VERSION_EPOCH_S), above the
    last one this host issued (state: a file holding it; default beside the planner's)."""
    import override                     # its _bump: read, raise, write back under a lock
    state = state or os.path.join(os.path.dirname(planner.version_file()), 'fleet-version')
    v = override._bump(state, int((time.time() if now_s is None else now_s) - planner.VERSION_EPOCH_S))
    if not 1 <= v <= planner.VERSION_MAX:
        raise FleetPlanError('version %d outside 1..2**30-1' % v)
    return v


def run(task_list, executor='process', workers=None):
    """Results of job() for every task, in task order, through the executor."""
    if executor == 'process':
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(max_workers=workers) as ex:
            return list(ex.map(job, task_list, chunksize=max(1, len(task_list) // (4 * (workers or os.cpu_count() or 1)))))
    if executor == 'inline':
        return [job(t) for t in task_list]
    if executor == 'dask' or executor.startswith('dask://'):
        from dask.distributed import Client, LocalCluster
        if executor == 'dask':
            with LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                              processes=True, dashboard_address=None) as cl, Client(cl) as c:
                return c.gather(c.map(job, task_list, pure=False))
        with Client(executor[len('dask://'):]) as c:
            return c.gather(c.map(job, task_list, pure=False))
    raise FleetPlanError('executor %r: use process, inline, dask or dask://HOST:PORT' % executor)


def aggregates(results):
    """The fleet before the event: sums over the planned sites, the shortfall flagged."""
    ok = [r for r in results if r['ok']]
    committed = sum(r['committed_wh'] for r in ok)
    deliverable = sum(min(r['deliverable_wh'], r['committed_wh']) if r['committed_wh'] else 0 for r in ok)
    short = [r['id'] for r in ok if r['committed_wh'] and r['deliverable_wh'] < r['committed_wh']]
    return {'sites': len(results), 'planned': len(ok), 'failed': [r['id'] for r in results if not r['ok']],
            'committed_wh': committed, 'deliverable_wh': deliverable,
            'deliverable_all_wh': sum(r['deliverable_wh'] for r in ok),
            'shortfall_wh': max(0, committed - deliverable), 'short_sites': short,
            'shortfall': committed > deliverable or bool(short)}


def write(out, results, agg, meta):
    d = os.path.join(out, 'schedules')
    os.makedirs(d, exist_ok=True)
    for r in results:
        if r['ok']:
            with open(os.path.join(d, r['id'] + '.json'), 'w') as f:
                json.dump(r['schedule'], f, separators=(',', ':'))
    rep = dict(meta, aggregates=agg, sites=[{k: v for k, v in r.items() if k != 'schedule'} for r in results])
    with open(os.path.join(out, 'plan.json.new'), 'w') as f:
        json.dump(rep, f, indent=1)
    os.replace(os.path.join(out, 'plan.json.new'), os.path.join(out, 'plan.json'))
    return rep


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sites', required=True)
    ap.add_argument('--day', required=True, help='YYYY-MM-DD (each site from its local midnight)')
    ap.add_argument('--forecasts', help='folder of <id>.csv forecasts')
    ap.add_argument('--prices', required=True, help='folder of <tariff>.csv day-ahead prices')
    ap.add_argument('--soc', help='JSON {id: soc_bp} (latest telemetry); default %d' % DEFAULT_SOC_BP)
    ap.add_argument('--risk', action='store_true', help='heat advisory: reserve raised from --risk-from, '
                    'arbitrage suspended')
    ap.add_argument('--risk-from', default='14:00', help='local HH:MM the raised reserve is held from (risk days)')
    ap.add_argument('--db', help='telemetry store (sqlite:///... or postgresql://...): forecasts for sites '
                    'without a file, from the same weekday of the last four weeks')
    ap.add_argument('--window', nargs=2, default=('16:00', '20:00'), metavar=('FROM', 'TO'))
    ap.add_argument('--event', nargs=2, action='append', default=[], metavar=('HH:MM', 'DURATION_S'))
    ap.add_argument('--executor', default='process')
    ap.add_argument('--workers', type=int)
    ap.add_argument('--out', required=True)
    a = ap.parse_args(argv)
    try:
        sites = inventory.load(a.sites)
        soc = {}
        if a.soc:
            with open(a.soc) as f:
                soc = json.load(f)
        history = None
        if a.db:
            import store as store_mod
            st = store_mod.open_store(a.db)
            day0 = int(datetime.datetime.strptime(a.day, '%Y-%m-%d').replace(tzinfo=datetime.timezone.utc).timestamp())
            history = {s['id']: st.net_load(s['id'], day0 - 29 * 86400, day0 + 86400) for s in sites}
            st.close()
        t = time.perf_counter()
        tl = tasks(sites, a.day, a.forecasts, a.prices, soc, a.risk, tuple(a.window), a.event, history=history,
                   risk_from=a.risk_from)
        res = run(tl, a.executor, a.workers)
        wall = time.perf_counter() - t
    except (inventory.InventoryError, FleetPlanError, OSError, ValueError) as e:
        print('plan_fleet: nothing planned:\n  ' + str(e).replace('\n', '\n  '), file=sys.stderr)
        return 2
    agg = aggregates(res)
    write(a.out, res, agg, {'day': a.day, 'risk': a.risk, 'executor': a.executor, 'wall_s': round(wall, 2)})
    print('plan_fleet: %d of %d sites planned in %.1f s (%s); committed %.1f kWh, deliverable %.1f kWh%s'
          % (agg['planned'], agg['sites'], wall, a.executor, agg['committed_wh'] / 1000, agg['deliverable_wh'] / 1000,
             ', SHORTFALL %.1f kWh at %d sites' % (agg['shortfall_wh'] / 1000, len(agg['short_sites']))
             if agg['shortfall'] else ''))
    for r in res:
        if not r['ok']:
            print('  %s: %s' % (r['id'], r['error']), file=sys.stderr)
    return 0 if not agg['failed'] else 1


if __name__ == '__main__':
    sys.exit(main())
