"""The fleet's telemetry store and its ingest (issue 12, item 4): SQLite (WAL) and PostgreSQL (a
throwaway cluster on 127.0.0.1) behind one interface; two ingest instances split the fleet's
messages through an MQTT 5 shared subscription on mosquitto, and nothing is lost or doubled."""
import json
import os
import threading
import time

import pytest

from mqtt_fixtures import Collector, wait_for, procs  # noqa: F401
from fleet_fixtures import Postgres, provisioned_broker

import ingest  # noqa: E402  (tools/fleet, on the path through fleet_fixtures)
import store  # noqa: E402


def _batch(dev, n, t0=1790000000, seq0=1):
    b = [('telemetry', dev, json.dumps({'v': 2, 'seq': seq0 + k, 'ts': t0 + 10 * k, 'gcp_w': 5000 + k, 'bat_w': -100,
                                        'soc_bp': 6000, 'state': 1, 'reserve_bp': 4000,
                                        'sch': {'id': dev + '/day', 'version': 9}}).encode(), t0 + 10 * k)
         for k in range(n)]
    return b


@pytest.fixture(params=['sqlite', 'postgresql'])
def st(request, tmp_path):
    if request.param == 'sqlite':
        s = store.open_store('sqlite:///%s' % (tmp_path / 'db' / 'fleet.db'))
        yield s
        s.close()
    else:
        pg = Postgres(tmp_path)
        try:
            s = store.open_store(pg.url)
            yield s
            s.close()
        finally:
            pg.stop()


def test_the_store_keeps_telemetry_and_the_latest_of_each_device(st):
    assert st.add(_batch('a', 5) + [('status', 'b', b'offline', 1790000000), ('telemetry', 'a', b'not json', 0),
                                    ('schedule', 'a', b'{"status": "rejected", "version": 8, '
                                     b'"last_rejected": {"reason": "unauthorized: bad mac"}}', 0)]) == 5
    assert st.count() == 5 and st.bad == 1
    d = {r['dev']: r for r in st.devices()}
    assert d['a']['online'] == 1 and d['a']['last_seen'] == 1790000040 and d['a']['gcp_w'] == 5004
    assert d['a']['sch_version'] == 9 and d['a']['sch_status'] == 'rejected' and 'bad mac' in d['a']['sch_reason']
    assert d['b']['online'] == 0 and d['b']['soc_bp'] is None
    st.add([('schedule', 'a', b'{"status": "active", "version": 10}', 0)])
    d = {r['dev']: r for r in st.devices()}
    assert d['a']['sch_status'] == 'active' and d['a']['sch_acked'] == 10 and d['a']['sch_reason'] is None
    assert d['a']['soc_bp'] == 6000                      # a partial update keeps the other columns
    assert st.net_load('a', 1790000000, 1790000030) == [(1790000000, 4900), (1790000010, 4901), (1790000020, 4902)]


def test_two_ingest_instances_split_the_fleet_through_a_shared_subscription(tmp_path, procs):
    ids = ['t%02d' % k for k in range(10)]
    br, sec, fleet = provisioned_broker(tmp_path, ids)
    procs.append(br)
    st = store.open_store('sqlite:///%s' % (tmp_path / 'fleet.db'))
    s2, s3 = sec['services'][1], sec['services'][2]
    a = ingest.Ingest(st, '127.0.0.1', br.port, s2['user'], s2['password'], group='g', status_owner=True)
    b = ingest.Ingest(st, '127.0.0.1', br.port, s3['user'], s3['password'], group='g', status_owner=False)
    # the devices publish with their own credentials (the ACL lets each write its own topics)
    pubs = [Collector(br.port, topics=(), user=i, password=sec['devices'][i]['password']) for i in ids]
    procs.extend(pubs)
    time.sleep(0.3)
    n = 100
    for k in range(n):
        for i, p in zip(ids, pubs):
            p.c.publish('bess/%s/telemetry' % i, json.dumps({'v': 2, 'seq': k, 'ts': 1790000000 + k, 'gcp_w': k}), qos=1)
    pubs[0].c.publish('bess/t00/status', b'online', qos=1, retain=True)
    assert wait_for(lambda: st.count() == n * len(ids), 30), (st.count(), a.received, b.received)
    a.close()
    b.close()
    assert a.received + b.received == n * len(ids) + 1         # each message to one instance of the group
    assert a.received > n and b.received > n                   # and both took a share
    d = {r['dev']: r for r in st.devices()}
    assert len(d) == 10 and d['t00']['online'] == 1 and d['t05']['gcp_w'] == n - 1
