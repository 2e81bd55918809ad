#!/usr/bin/env python3
"""`make fleet`: the whole VPP on one machine (issue 12, item 7), until Ctrl-C.

    python tools/fleet/demo.py [--twins 50] [--firmware 2] [--port 8080] [--out out/fleet-demo]

mosquitto on 127.0.0.1 with the provisioned passwords and ACL; --twins device twins publishing
telemetry every 5 s and --firmware real firmware instances (MicroPython unix port, each with its
Modbus simulator on a pty, NTP for its clock); the service: ingest into SQLite, the day planned
for every site as the seed's heat-advisory day (reserve raised by each site's risk margin,
arbitrage suspended, a one-hour capacity event at 17:00 local), pushed with acks against a
deadline two minutes away, and the web console on http://127.0.0.1:<port>/. The day runs in real
time (the devices' clocks are real clocks); the console shows the plan's aggregates and
shortfall, the push report and each site's telemetry, and its override form acts on the fleet.
"""
import argparse
import json
import os
import shutil
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.dirname(HERE)
ROOT = os.path.dirname(TOOLS)
for p in (TOOLS, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

import fleet_bench  # noqa: E402
import console  # noqa: E402
import ingest as ingest_mod  # noqa: E402
import inventory  # noqa: E402
import loopback  # noqa: E402
import plan_fleet  # noqa: E402
import provision  # noqa: E402
import push  # noqa: E402
import store as store_mod  # noqa: E402
from broker import wait_for  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--twins', type=int, default=50)
    ap.add_argument('--firmware', type=int, default=2)
    ap.add_argument('--port', type=int, default=8080)
    ap.add_argument('--out', default=os.path.join(ROOT, 'out', 'fleet-demo'))
    ap.add_argument('--seconds', type=float, default=0, help='stop after this long (0: until Ctrl-C)')
    a = ap.parse_args(argv)
    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    ids = ['tw%03d' % i for i in range(a.twins)]
    fw = ['fw%d' % i for i in range(1, a.firmware + 1)]
    with open(os.path.join(a.out, 'sites.csv'), 'w') as f:
        f.write('id,capacity_kwh,power_kw,import_limit_w,committed_w,utc_offset_s\n')
        for k, i in enumerate(ids + fw):
            f.write('%s,%d,%d,40000,%d,7200\n' % (i, (10, 20)[k % 2], (5, 10)[k % 2], (2500, 5000, 6000)[k % 3]))
    fleet = os.path.join(a.out, 'fleet')
    sec = provision.provision(os.path.join(a.out, 'sites.csv'), fleet, '127.0.0.1', n_service=6)
    br = loopback.broker(fleet)
    svc = sec['services']
    db = 'sqlite:///%s' % os.path.join(a.out, 'fleet.db')
    st = store_mod.open_store(db)
    ing = ingest_mod.Ingest(st, '127.0.0.1', br.port, svc[1]['user'], svc[1]['password'], group='demo')
    tw = loopback.twins(br.port, os.path.join(fleet, 'secrets.json'), ids, '--telemetry-s', '5')
    rigs, ntp = [], None
    try:
        if fw:
            from ntp_server import NtpServer
            ntp = NtpServer().start()
            rigs = [loopback.firmware(sec, i, br.port, ntp.port, telemetry_ms=5000) for i in fw]
        # the heat-advisory day, planned for every site from its local midnight
        sites = inventory.load(os.path.join(a.out, 'sites.csv'))
        day = time.strftime('%Y-%m-%d', time.gmtime(time.time() + 7200))
        fc, pr = fleet_bench._forecasts(sites, day, os.path.join(a.out, 'inputs'))
        tl = plan_fleet.tasks(sites, day, fc, pr, risk=True, events=[('17:00', 3600)])
        res = plan_fleet.run(tl, 'process')
        agg = plan_fleet.aggregates(res)
        pdir = os.path.join(a.out, 'plan')
        plan_fleet.write(pdir, res, agg, {'day': day, 'risk': True})
        report = os.path.join(a.out, 'push.json')
        srv = console.serve(console.create_app(db, fleet, pdir, report, mqtt_port=br.port, port=a.port), a.port)
        print('fleet: mosquitto on 127.0.0.1:%d, %d twins + %d firmware instances' % (br.port, len(ids), len(fw)))
        print('fleet: planned %d sites for %s (heat advisory): committed %.1f kWh, deliverable %.1f kWh%s'
              % (agg['planned'], day, agg['committed_wh'] / 1000, agg['deliverable_wh'] / 1000,
                 ', SHORTFALL at %d sites' % len(agg['short_sites']) if agg['shortfall'] else ''))
        print('fleet: console http://127.0.0.1:%d/  user %s  password %s' % (a.port, sec['console']['user'],
                                                                              sec['console']['password']))
        print('fleet: files in %s (plan/, push.json, fleet.db); Ctrl-C stops everything' % a.out)
        wait_for(lambda: len(st.devices()) >= len(ids) + len(fw), 60, step=1)
        devs = push.load_plan(pdir, sec)
        p = push.Push(devs, '127.0.0.1', br.port, svc[0]['user'], svc[0]['password'], rate_per_min=6000, retry_s=20)
        holder = {}

        def do_push():
            try:
                rep = p.run(time.time() + 120)
                rep['deadline_utc'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(rep['deadline']))
                with open(report, 'w') as f:
                    json.dump(rep, f)
                holder['rep'] = rep
                print(push.table(rep))
            finally:
                p.close()
        threading.Thread(target=do_push, daemon=True).start()
        end = time.time() + a.seconds if a.seconds else None
        while end is None or time.time() < end:
            time.sleep(1)
        srv.shutdown()
    except KeyboardInterrupt:
        pass
    finally:
        ing.close()
        tw.terminate()
        for r in rigs:
            r.stop()
        if ntp:
            ntp.stop()
        br.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
