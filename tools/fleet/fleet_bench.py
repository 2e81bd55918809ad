#!/usr/bin/env python3
"""Fleet scale benchmark on loopback (issue 12, item 6): `make fleet-bench`.

    python tools/fleet/fleet_bench.py [--devices 800] [--firmware 4] [--plan-sites 800] [--ingest-s 30]
        [--rate-per-min 60000] [--out out/fleet-bench]

One mosquitto on 127.0.0.1 with the provisioned passwords and ACL; N device twins
(tools/fleet/twin.py, 1 000 per process) plus K real firmware instances (MicroPython unix
port, each with its Modbus simulator on a pty: tools/fil.py) in the same fleet; then, each timed:
  provision   the fleet's files for N + K devices
  online      every twin connected (its retained "online" seen)
  plan        tools/fleet/plan_fleet.py for --plan-sites sites (local processes)
  push        a schedule to every device (signed, retained QoS 1, --rate-per-min) until 100 % acked
              (the firmware instances check theirs with the real code)
  ingest      every device publishing one record per 10 s, two ingest instances on a shared
              subscription, for --ingest-s seconds, into SQLite and then PostgreSQL: records
              stored per second, and what the store alone takes (batches of 500)
and the broker's and this service's CPU seconds and peak RSS. Figures as JSON (out/.../bench.json)
and a Markdown table; a benchmark, never an assertion.
"""
import argparse
import json
import math
import os
import sys
import time

from fleetpath import ROOT  # noqa: E402 (tools/ and lib/ on sys.path)

import paho.mqtt.client as mqtt  # noqa: E402

from broker import wait_for  # noqa: E402
import ingest as ingest_mod  # noqa: E402
import inventory  # noqa: E402
import loopback  # noqa: E402
import plan_fleet  # noqa: E402
import provision  # noqa: E402
import push  # noqa: E402
import store as store_mod  # noqa: E402

TWINS_PER_PROC = 1000            # (twin.MAX_PER_PROCESS is 2 000)


def _proc_stats(pid):
    """(cpu seconds, rss kB, peak rss kB) of a process from /proc."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
        rss = peak = 0
        with open('/proc/%d/status' % pid) as f:
            for ln in f:
                if ln.startswith('VmRSS:'):
                    rss = int(ln.split()[1])
                elif ln.startswith('VmHWM:'):
                    peak = int(ln.split()[1])
        return cpu, rss, peak
    except OSError:
        return None, None, None


class Monitor:
    """A service connection counting devices online and acks (bess/+/status)."""

    def __init__(self, port, user, password):
        self.online = set()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, password)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe('bess/+/status', 1)
        self.c.on_message = self._msg
        self.c.connect('127.0.0.1', port)
        self.c.loop_start()

    def _msg(self, c, u, m):
        d = m.topic.split('/')[1]
        if bytes(m.payload) == b'online':
            self.online.add(d)
        else:
            self.online.discard(d)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def _forecasts(sites, day, folder):
    """Synthetic forecasts and prices for the planning run (a load peak at 18:30, PV at noon)."""
    import datetime
    day0 = int(datetime.datetime.strptime(day, '%Y-%m-%d').replace(tzinfo=datetime.timezone.utc).timestamp())
    fc, pr = os.path.join(folder, 'fc'), os.path.join(folder, 'pr')
    os.makedirs(fc, exist_ok=True)
    os.makedirs(pr, exist_ok=True)
    for k, s in enumerate(sites):
        t0 = day0 - s['utc_offset_s']
        rows = ['time,load_w,pv_w']
        for j in range(96):
            h = j / 4.0
            load = (2000 + 300 * (k % 7)) + 2500 * math.exp(-((h - 18.5) / 2.0) ** 2)
            pv = max(0.0, 4000 * math.sin(math.pi * (h - 6) / 14)) if 6 <= h <= 20 else 0.0
            rows.append('%d,%.0f,%.0f' % (t0 + 900 * j, load, pv))
        with open(os.path.join(fc, s['id'] + '.csv'), 'w') as f:
            f.write('\n'.join(rows) + '\n')
    with open(os.path.join(pr, 'default.csv'), 'w') as f:
        f.write('time,price_per_mwh\n' + ''.join('%d,%d\n' % (day0 - 86400 + 3600 * h, 60 + 120 * (17 <= h % 24 <= 20))
                                                 for h in range(72)))
    return fc, pr


def run(n, k_fw, plan_sites, ingest_s, rate_per_min, out, pg=True):
    os.makedirs(out, exist_ok=True)
    fig = {'devices': n, 'firmware': k_fw, 'cores': os.cpu_count()}
    loopback.raise_nofile(2 * (n + k_fw) + 4096)          # the broker (a child) holds a socket per device
    ids = ['tw%05d' % i for i in range(n)]
    fw_ids = ['fw%d' % i for i in range(1, k_fw + 1)]
    with open(os.path.join(out, 'sites.csv'), 'w') as f:
        f.write('id,capacity_kwh,power_kw,import_limit_w,committed_w\n')
        for i in ids + fw_ids:
            f.write('%s,%d,%d,%d,%d\n' % (i, 10 if i.endswith(('0', '2', '4', '6', '8')) else 20,
                                          5 if i.endswith(('0', '2', '4', '6', '8')) else 10, 40000, 2500))
    t = time.perf_counter()
    fleet = os.path.join(out, 'fleet')
    sec = provision.provision(os.path.join(out, 'sites.csv'), fleet, '127.0.0.1', n_service=6)
    fig['provision_s'] = round(time.perf_counter() - t, 2)
    br = loopback.broker(fleet, extra=['max_queued_messages 100000', 'max_inflight_messages 1000'])
    bpid = br.proc.pid
    procs, rigs, ntp = [], [], None
    svc = sec['services']
    mon = Monitor(br.port, svc[3]['user'], svc[3]['password'])
    try:
        # twins, TWINS_PER_PROC per process (one thread each serves them all)
        t = time.perf_counter()
        for j in range(0, n, TWINS_PER_PROC):
            procs.append(loopback.twins(br.port, os.path.join(fleet, 'secrets.json'), ids[j:j + TWINS_PER_PROC],
                                        '--telemetry-s', '10'))
        ok = wait_for(lambda: len(mon.online & set(ids)) == n, 300, step=0.5)
        fig['twins_online_s'] = round(time.perf_counter() - t, 2) if ok else None
        fig['twins_online'] = len(mon.online & set(ids))
        # real firmware instances (MicroPython unix port + pty Modbus simulator), NTP for their clock
        if k_fw:
            from ntp_server import NtpServer
            ntp = NtpServer().start()
            rigs = [loopback.firmware(sec, i, br.port, ntp.port) for i in fw_ids]
            fig['firmware_online'] = bool(wait_for(lambda: set(fw_ids) <= mon.online, 60, step=0.5))
        # planning
        sites = inventory.load(os.path.join(out, 'sites.csv'))[:plan_sites]
        day = time.strftime('%Y-%m-%d', time.gmtime(time.time() + 86400))
        fc, pr = _forecasts(sites, day, os.path.join(out, 'inputs'))
        t = time.perf_counter()
        tl = plan_fleet.tasks(sites, day, fc, pr, events=[('17:00', 3600)])
        res = plan_fleet.run(tl, 'process')
        fig['plan_sites'] = len(sites)
        fig['plan_s'] = round(time.perf_counter() - t, 2)
        fig['plan_failed'] = sum(1 for r in res if not r['ok'])
        agg = plan_fleet.aggregates(res)
        fig['plan_shortfall_sites'] = len(agg['short_sites'])
        # push: the planned schedules where there are some, a simple one-interval schedule elsewhere
        pdir = os.path.join(out, 'plan')
        plan_fleet.write(pdir, res, agg, {'day': day})
        now = int(time.time())
        version = max([r['version'] for r in res if r['ok']] or [plan_fleet.next_version()])
        for i in ids + fw_ids:
            p = os.path.join(pdir, 'schedules', i + '.json')
            s = None
            if os.path.exists(p):
                with open(p) as f:
                    s = json.load(f)
                if s['created'] > now or s['intervals'] and s['intervals'][0]['start'] > now + 86400:
                    s = None
            if s is None:
                s = {'v': 1, 'id': i + '/bench', 'version': version, 'created': now - 60, 'valid_until': now + 86400,
                     'default': {'objective': 'gce'}, 'intervals': [{'start': now - 60, 'duration_s': 3600,
                                                                     'reserve_soc_bp': 3000}]}
            with open(p, 'w') as f:
                json.dump(s, f, separators=(',', ':'))
        devs = push.load_plan(pdir, sec)
        p = push.Push(devs, '127.0.0.1', br.port, svc[0]['user'], svc[0]['password'], rate_per_min=rate_per_min,
                      retry_s=30)
        c0 = _proc_stats(bpid)[0]
        try:
            rep = p.run(time.time() + 600)
        finally:
            p.close()
        fig['push'] = {'rate_per_min': rate_per_min, 'counts': rep['counts'], 'all_acked_s': rep['all_acked_s'],
                       'last_ack_s': rep['last_ack_s'], 'broker_cpu_s': round(_proc_stats(bpid)[0] - c0, 2),
                       'firmware_states': {r['id']: r['state'] for r in rep['rows'] if r['id'] in fw_ids}}
        with open(os.path.join(out, 'push.json'), 'w') as f:
            json.dump(rep, f)
        # ingest: SQLite, then PostgreSQL
        fig['ingest'] = {}
        for f in ('fleet.db', 'fleet.db-wal', 'fleet.db-shm'):       # the bench's own, thrown away
            if os.path.exists(os.path.join(out, f)):
                os.remove(os.path.join(out, f))
        dbs = [('sqlite', 'sqlite:///%s' % os.path.join(out, 'fleet.db'))]
        pgc = None
        if pg:
            try:
                pgc = _Postgres()
                dbs.append(('postgresql', pgc.url))
            except Exception as e:
                fig['ingest']['postgresql'] = {'error': str(e)}
        for name, url in dbs:
            st = store_mod.open_store(url)
            a = ingest_mod.Ingest(st, '127.0.0.1', br.port, svc[1]['user'], svc[1]['password'], group='bench',
                                  status_owner=True)
            b = ingest_mod.Ingest(st, '127.0.0.1', br.port, svc[2]['user'], svc[2]['password'], group='bench',
                                  status_owner=False)
            time.sleep(2)
            c0, s0, me0 = _proc_stats(bpid)[0], st.stored, _proc_stats(os.getpid())[0]
            t = time.perf_counter()
            time.sleep(ingest_s)
            dt = time.perf_counter() - t
            rate = (st.stored - s0) / dt
            a.close()
            b.close()
            # the store alone: batches of 500 synthetic records
            batch = [('telemetry', 'tw%05d' % (j % max(1, n)), json.dumps({'v': 2, 'seq': j, 'ts': now + j, 'gcp_w': j,
                                                                        'soc_bp': 5000}).encode(), now)
                     for j in range(500)]
            t = time.perf_counter()
            for _ in range(20):
                st.add(batch)
            store_rate = 20 * 500 / (time.perf_counter() - t)
            fig['ingest'][name] = {'offered_per_s': round(n / 10.0 + k_fw / 10.0, 1), 'stored_per_s': round(rate, 1),
                                   'store_alone_per_s': round(store_rate), 'broker_cpu_s': round(_proc_stats(bpid)[0] - c0, 2),
                                   'service_cpu_s': round(_proc_stats(os.getpid())[0] - me0, 2), 'seconds': round(dt, 1)}
            st.close()
        if pgc:
            pgc.stop()
        bc, brss, bpeak = _proc_stats(bpid)
        sc, srss, speak = _proc_stats(os.getpid())
        fig['broker'] = {'cpu_s': bc, 'rss_mb': round(brss / 1024, 1), 'peak_rss_mb': round(bpeak / 1024, 1)}
        fig['service'] = {'cpu_s': sc, 'peak_rss_mb': round(speak / 1024, 1)}
        tw = [_proc_stats(x.pid) for x in procs]
        fig['twins'] = {'processes': len(procs), 'peak_rss_mb_each': max(round((x[2] or 0) / 1024, 1) for x in tw) if tw else 0}
    finally:
        mon.close()
        for x in procs:
            x.terminate()
        for r in rigs:
            r.stop()
        if ntp:
            ntp.stop()
        br.stop()
    with open(os.path.join(out, 'bench.json'), 'w') as f:
        json.dump(fig, f, indent=1)
    return fig


class _Postgres:
    """A throwaway cluster for the bench (as host_tests/fleet_fixtures.Postgres)."""

    def __init__(self):
        sys.path.insert(0, os.path.join(ROOT, 'host_tests'))
        from fleet_fixtures import Postgres
        self.pg = Postgres(None)
        self.url = self.pg.url

    def stop(self):
        self.pg.stop()


def table(fig):
    p = fig.get('push', {})
    rows = ['| figure | value |', '|---|---|',
            '| devices (twins + real firmware) | %d + %d |' % (fig['devices'], fig['firmware']),
            '| provision | %s s |' % fig.get('provision_s'),
            '| twins online | %s s |' % fig.get('twins_online_s'),
            '| planning, %s sites, %d cores | %s s (%s failed) |' % (fig.get('plan_sites'), fig['cores'], fig.get('plan_s'),
                                                                    fig.get('plan_failed')),
            '| push start -> 100 %% acked (rate %s/min) | %s s (%s) |' % (p.get('rate_per_min'), p.get('all_acked_s'),
                                                                        p.get('counts'))]
    for name, d in fig.get('ingest', {}).items():
        if 'error' in d:
            rows.append('| ingest %s | %s |' % (name, d['error']))
        else:
            rows.append('| ingest %s: offered / stored / store alone | %s / %s / %s records/s |'
                        % (name, d['offered_per_s'], d['stored_per_s'], d['store_alone_per_s']))
    b, s = fig.get('broker', {}), fig.get('service', {})
    rows.append('| broker CPU / peak RSS | %s s / %s MB |' % (b.get('cpu_s'), b.get('peak_rss_mb')))
    rows.append('| service (this process) CPU / peak RSS | %s s / %s MB |' % (s.get('cpu_s'), s.get('peak_rss_mb')))
    return '\n'.join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--devices', type=int, default=800)
    ap.add_argument('--firmware', type=int, default=4)
    ap.add_argument('--plan-sites', type=int, default=800)
    ap.add_argument('--ingest-s', type=float, default=30)
    ap.add_argument('--rate-per-min', type=int, default=60000)
    ap.add_argument('--no-pg', action='store_true')
    ap.add_argument('--out', default=os.path.join(ROOT, 'out', 'fleet-bench'))
    a = ap.parse_args(argv)
    fig = run(a.devices, a.firmware, a.plan_sites, a.ingest_s, a.rate_per_min, a.out, pg=not a.no_pg)
    print(json.dumps(fig, indent=1))
    print(table(fig))
    return 0


if __name__ == '__main__':
    sys.exit(main())
