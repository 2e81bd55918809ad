#!/usr/bin/env python3
"""`make fleet`: the whole VPP on one machine (issue 12, item 7), the seed's heat-advisory day at
accelerated time, until Ctrl-C.

    python tools/fleet/demo.py [--twins 50] [--firmware 2] [--speed 30] [--start 05:00]
        [--deadline 07:00] [--port 8080] [--out out/fleet-demo] [--seconds 0]

mosquitto on 127.0.0.1 with the provisioned passwords and ACL; --twins device twins publishing
telemetry every 5 s and --firmware real firmware instances (MicroPython unix port, each with its
Modbus simulator on a pty, NTP for its clock); the service: ingest into SQLite, the day planned
for every site as the seed's heat-advisory day (reserve raised by each site's risk margin from
14:00, arbitrage suspended, a one-hour capacity event at 17:00 local), pushed with acks against
the 07:00 deadline, and the web console on http://127.0.0.1:<port>/.

Accelerated time (tools/fleet/demo_clock.py): the fleet's clock starts at --start local time on
today's date and runs --speed times real time (30: the day from 05:00 to midnight in 38 min). The
twins stamp their telemetry with it; the firmware instances get it from the NTP server (their
control period stays 1 s of real time; they sync every 10 s, the site config's minimum, and count
real time in between, so a firmware's clock lags the fleet's by up to 10 s x (speed - 1), 290 s at
30: its interval changes come up to ~5 fleet minutes late); their simulators run the battery's
energy and the site's load and PV (the site's own forecast: the plan's truth) at the same speed;
the console reads and overrides in fleet time. Every fleet hour a line says what the firmware
instances do (SoC, battery power, reserve in force, schedule version).
"""
import argparse
import calendar
import json
import os
import shutil
import signal
import sys
import threading
import time

from fleetpath import ROOT  # noqa: E402 (tools/ and lib/ on sys.path)

import fleet_bench  # noqa: E402
from demo_clock import DemoClock  # noqa: E402
import console  # noqa: E402
import ingest as ingest_mod  # noqa: E402
import inventory  # noqa: E402
import loopback  # noqa: E402
import plan_fleet  # noqa: E402
import provision  # noqa: E402
import push  # noqa: E402
import store as store_mod  # noqa: E402
from broker import wait_for  # noqa: E402
from modbus_sim import Scenario  # noqa: E402

UTC_OFFSET_S = 7200                 # every demo site's local time (the seed's: CEST)


def _hhmm(s):
    try:
        h, m = (int(x) for x in s.split(':'))
    except ValueError:
        raise argparse.ArgumentTypeError('local time HH:MM expected, got %r' % s)
    if not (0 <= h < 24 and 0 <= m < 60):
        raise argparse.ArgumentTypeError('local time HH:MM expected, got %r' % s)
    return h * 3600 + m * 60


def local(t):
    return time.strftime('%H:%M', time.gmtime(t + UTC_OFFSET_S))


def scenario_from(forecast_csv, start_s):
    """The site's forecast (load_w, pv_w per 15 min; tools/planner.py's format) as the simulator's
    scenario from start_s on (its time 0): the plan's forecast is the demo's truth."""
    import planner
    t0, step, base, pv, _ = planner.read_forecast(forecast_csv)
    rows = [(max(0, t0 + k * step - start_s), int(base[k]), int(pv[k]), 0, 0, 0)
            for k in range(len(base)) if t0 + (k + 1) * step > start_s]
    return Scenario(rows)


def progress(st, fw, clk):
    """One line on what the firmware instances do now."""
    devs = {d['dev']: d for d in st.devices()}
    parts = []
    for i in fw:
        d = devs.get(i) or {}
        soc, bw, rsv = d.get('soc_bp'), d.get('bat_w'), d.get('reserve_bp')
        parts.append('%s SoC %s battery %s reserve %s schedule v%s' % (
            i, '-' if soc is None else '%.1f %%' % (soc / 100), '-' if bw is None else '%+d W' % bw,
            '-' if rsv is None else '%.1f %%' % (rsv / 100), d.get('sch_version') or '-'))
    on = sum(1 for d in devs.values() if d.get('online'))
    return 'fleet %s local: %d of %d online; %s' % (local(clk()), on, len(devs), '; '.join(parts) or 'no firmware')


MIN_PUSH_S = 60                     # real seconds from the start to the deadline: boot, connect, push, acks


def main(argv=None):
    ap = argparse.ArgumentParser(description="make fleet: the whole VPP on one machine, the seed's heat-advisory "
                                             "day at accelerated time")
    ap.add_argument('--twins', type=int, default=50)
    ap.add_argument('--firmware', type=int, default=2)
    ap.add_argument('--port', type=int, default=8080)
    ap.add_argument('--out', default=os.path.join(ROOT, 'out', 'fleet-demo'))
    ap.add_argument('--seconds', type=float, default=0, help='stop after this long (0: until Ctrl-C)')
    ap.add_argument('--speed', type=float, default=30,
                    help='fleet time runs this many times real time (1..3600; at least %d real seconds must remain '
                         'from --start to --deadline: at most 120 with the defaults)' % MIN_PUSH_S)
    ap.add_argument('--start', type=_hhmm, default='05:00', help='the fleet clock starts at this local time, today')
    ap.add_argument('--deadline', type=_hhmm, default='07:00', help='the push deadline, local fleet time')
    a = ap.parse_args(argv)
    if a.twins < 0 or a.firmware < 0 or a.twins + a.firmware < 1:
        ap.error('--twins and --firmware: 0 or more each, at least one device in all')
    if not a.seconds >= 0:
        ap.error('--seconds must be >= 0')
    if not 1 <= a.speed <= 3600:
        ap.error('--speed must be in 1..3600')
    if a.deadline <= a.start:
        ap.error('--deadline must come after --start')
    if (a.deadline - a.start) / a.speed < MIN_PUSH_S:
        ap.error('--speed %g leaves %.1f s of real time from --start to --deadline; the devices need %d s to '
                 'start and ack: lower --speed or move --start earlier' % (a.speed, (a.deadline - a.start) / a.speed,
                                                                         MIN_PUSH_S))
    if os.path.isdir(a.out) and os.listdir(a.out) and not os.path.exists(os.path.join(a.out, 'sites.csv')):
        ap.error('--out %s is a folder with other things in it: a demo starts afresh there (use a new folder)'
                 % a.out)
    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    ids = ['tw%03d' % i for i in range(a.twins)]
    fw = ['fw%d' % i for i in range(1, a.firmware + 1)]
    with open(os.path.join(a.out, 'sites.csv'), 'w') as f:
        f.write('id,capacity_kwh,power_kw,import_limit_w,committed_w,utc_offset_s\n')
        for k, i in enumerate(ids + fw):
            kwh, kw = (20, 10) if i in fw else ((10, 20)[k % 2], (5, 10)[k % 2])   # fw: the simulator's battery
            f.write('%s,%d,%d,40000,%d,%d\n' % (i, kwh, kw, (2500, 5000, 6000)[k % 3], UTC_OFFSET_S))
    day = time.strftime('%Y-%m-%d', time.gmtime(time.time() + UTC_OFFSET_S))
    midnight = calendar.timegm(time.strptime(day, '%Y-%m-%d')) - UTC_OFFSET_S     # local midnight, unix s
    deadline_s = midnight + a.deadline                                            # fleet time, unix s
    clk = DemoClock(t0=midnight + a.start, speed=a.speed)      # anchored below, once the service is up
    fleet = os.path.join(a.out, 'fleet')
    sec = provision.provision(os.path.join(a.out, 'sites.csv'), fleet, '127.0.0.1', n_service=6)
    svc = sec['services']
    db = 'sqlite:///%s' % os.path.join(a.out, 'fleet.db')
    pdir = os.path.join(a.out, 'plan')
    report = os.path.join(a.out, 'push.json')

    def term(*_):
        raise KeyboardInterrupt         # SIGTERM stops everything as Ctrl-C does
    signal.signal(signal.SIGTERM, term)
    br = ing = tw = ntp = srv = None
    rigs = []
    try:
        br = loopback.broker(fleet)
        st = store_mod.open_store(db)
        ing = ingest_mod.Ingest(st, '127.0.0.1', br.port, svc[1]['user'], svc[1]['password'], group='demo')
        # the heat-advisory day, planned for every site from its local midnight
        sites = inventory.load(os.path.join(a.out, 'sites.csv'))
        fc, pr = fleet_bench._forecasts(sites, day, os.path.join(a.out, 'inputs'))
        tl = plan_fleet.tasks(sites, day, fc, pr, risk=True, events=[('17:00', 3600)])
        res = plan_fleet.run(tl, 'process')
        agg = plan_fleet.aggregates(res)
        plan_fleet.write(pdir, res, agg, {'day': day, 'risk': True})
        srv = console.serve(console.create_app(db, fleet, pdir, report, mqtt_port=br.port, port=a.port, clock=clk,
                                               speed=a.speed), a.port)
        # fleet time starts now at --start: the devices come up in it
        clk.anchor()
        if fw:
            from ntp_server import NtpServer
            ntp = NtpServer(clock=clk).start()
            for i in fw:
                rigs.append(loopback.firmware(sec, i, br.port, ntp.port, telemetry_ms=5000, speed=a.speed,
                                              ntp_period_s=10, scenario=scenario_from(os.path.join(fc, i + '.csv'),
                                                                                      clk())))
        if ids:
            tw = loopback.twins(br.port, os.path.join(fleet, 'secrets.json'), ids, '--telemetry-s', '5',
                                '--clock', clk.arg())
        print('fleet: mosquitto on 127.0.0.1:%d, %d twins + %d firmware instances' % (br.port, len(ids), len(fw)))
        print('fleet: planned %d sites for %s (heat advisory): committed %.1f kWh, deliverable %.1f kWh%s'
              % (agg['planned'], day, agg['committed_wh'] / 1000, agg['deliverable_wh'] / 1000,
                 ', SHORTFALL at %d sites' % len(agg['short_sites']) if agg['shortfall'] else ''))
        print('fleet: console http://127.0.0.1:%d/  user %s  password %s' % (a.port, sec['console']['user'],
                                                                              sec['console']['password']))
        rel = lambda t: (clk.real_at(midnight + t) - time.time()) / 60  # noqa: E731
        print('fleet: fleet time runs x%g from %s local (now %s): deadline %s in %.1f min, reserve raised by 14:00 '
              'in %.1f min, the capacity event 17:00-18:00 in %.1f min, midnight in %.1f min'
              % (a.speed, local(clk.t0), local(clk()), local(deadline_s), rel(a.deadline),
                 rel(14 * 3600), rel(17 * 3600), rel(86400)))
        print('fleet: files in %s (plan/, push.json, fleet.db); Ctrl-C stops everything' % a.out, flush=True)
        rd = store_mod.open_store(db)       # this thread's own connection (the ingest thread writes on st's)
        wait_for(lambda: len(rd.devices()) >= len(ids) + len(fw) or time.time() > clk.real_at(deadline_s),
                 60, step=1)
        devs = push.load_plan(pdir, sec)
        p = push.Push(devs, '127.0.0.1', br.port, svc[0]['user'], svc[0]['password'], rate_per_min=6000, retry_s=20)

        def do_push():
            try:
                rep = p.run(clk.real_at(deadline_s))
                rep['deadline_real'] = rep['deadline']
                rep['deadline'] = deadline_s             # in fleet time, as the console reads it
                rep['deadline_utc'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(rep['deadline']))
                with open(report, 'w') as f:
                    json.dump(rep, f)
                print(push.table(rep), flush=True)
            finally:
                p.close()
        threading.Thread(target=do_push, daemon=True).start()
        end = time.time() + a.seconds if a.seconds else None
        hour = int(clk() // 3600)
        while end is None or time.time() < end:
            time.sleep(0.2)
            h = int(clk() // 3600)
            if h != hour:
                hour = h
                print(progress(rd, fw, clk), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a second signal must not cut the clean-up short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if srv is not None:
            srv.shutdown()
        if ing is not None:
            ing.close()
        if tw is not None:
            tw.terminate()
            try:
                tw.wait(10)
            except Exception:
                tw.kill()
        for r in rigs:
            r.stop()
        if ntp is not None:
            ntp.stop()
        if br is not None:
            br.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
