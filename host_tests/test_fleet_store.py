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
    assert st.count() == 5 and st.bad == 1 and st.stored == 5
    st.add(_batch('a', 5))                               # the same records again (a backlog re-sent)
    assert st.count() == 5 and st.stored == 5            # stored counts rows added, not duplicates
    d = {r['dev']: r for r in st.devices()}
    assert d['a']['online'] is None                      # online / offline: from the status topic only
    assert d['a']['last_seen'] == 1790000040 and d['a']['gcp_w'] == 5004
    assert d['a']['sch_version'] == 9 and d['a']['sch_status'] == 'rejected' and 'bad mac' in d['a']['sch_reason']
    assert d['b']['online'] == 0 and d['b']['soc_bp'] is None
    st.add([('schedule', 'a', b'{"status": "active", "version": 10}', 0)])
    d = {r['dev']: r for r in st.devices()}
    assert d['a']['sch_status'] == 'active' and d['a']['sch_acked'] == 10 and d['a']['sch_reason'] is None
    assert d['a']['soc_bp'] == 6000                      # a partial update keeps the other columns
    assert st.net_load('a', 1790000000, 1790000030) == [(1790000000, 4900), (1790000010, 4901), (1790000020, 4902)]


def test_the_firmwares_record_keeps_its_own_time_and_state_and_is_stored_once(st):
    """Schema v2 as the firmware sends it (docs/telemetry.md): ts_ms and a state name; a record
    sent again (store-and-forward after a lost ack) is one row."""
    rec = json.dumps({'v': 2, 'seq': 7, 'ts_ms': 1790000000123, 'gcp_w': 100, 'bat_w': 50, 'soc_bp': 4000,
                      'state': 'charging', 'err': {'meter': 0}}).encode()
    st.add([('telemetry', 'fw', rec, 1790003600)])        # received an hour later (a backlog)
    st.add([('telemetry', 'fw', rec, 1790003601)])        # and again
    assert st.count() == 1
    d = {r['dev']: r for r in st.devices()}
    assert d['fw']['last_seen'] == 1790000000 and d['fw']['state'] == 'charging' and d['fw']['alarms'] is None
    assert st.net_load('fw', 1789999999, 1790000001) == [(1790000000, 150)]


def test_a_devices_malformed_payload_never_stops_the_store(st):
    """Text a database refuses, numbers beyond its columns, odd shapes: cleaned, or the one message
    is refused -- the others of its batch are stored."""
    bad = [('schedule', 'p', b'{"status": "\\ud800x\\u0000y", "last_rejected": "x"}', 0),
           ('telemetry', 'p', json.dumps({'seq': 1, 'ts': 1790000000, 'gcp_w': 2 ** 31, 'state': '\x00\ud800',
                                          'alarms': {'\x00': '\ud800'}}).encode(), 0),
           ('telemetry', 'p', json.dumps({'seq': 2, 'ts': 1790000001, 'gcp_w': 2 ** 70}).encode(), 0)]
    assert st.add(bad + _batch('q', 3)) == 5
    d = {r['dev']: r for r in st.devices()}
    assert d['p']['sch_status'] == '?xy' and d['q']['gcp_w'] == 5002      # no NUL, no lone surrogate
    assert [r[1] for r in st.history('p', 0, 2 ** 40)] == [2 ** 31, None]     # beyond 2**62: no value


def test_ingest_drops_only_what_the_store_refuses(tmp_path):
    class Picky:                            # a store that refuses one device's messages
        def __init__(self):
            self.rows = []

        def add(self, batch):
            if any(m[1] == 'evil' for m in batch):
                raise ValueError('refused')
            self.rows += batch

        def ping(self):
            return True
    ing = ingest.Ingest.__new__(ingest.Ingest)
    ing.st, ing.dropped = Picky(), 0
    assert ing._one_by_one([('telemetry', 'ok1', b'{}', 0), ('telemetry', 'evil', b'{}', 0),
                            ('telemetry', 'ok2', b'{}', 0)], ValueError()) == []
    assert [m[1] for m in ing.st.rows] == ['ok1', 'ok2'] and ing.dropped == 1
    assert ing._one_by_one([('telemetry', 'evil', b'{}', 0)], ValueError()) == [] and ing.dropped == 2
    ing.st.ping = lambda: False             # the database is down: everything is kept
    assert len(ing._one_by_one([('telemetry', 'evil', b'{}', 0)], OSError())) == 1


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


def test_a_database_of_another_store_version_is_refused_untouched(tmp_path):
    import sqlite3
    p = str(tmp_path / 'old.db')
    c = sqlite3.connect(p)
    c.execute('CREATE TABLE telemetry (dev TEXT, seq BIGINT, ts BIGINT, state INTEGER, rec TEXT)')
    c.execute("INSERT INTO telemetry VALUES ('a', 1, 1, 1, '{}')")
    c.commit()
    c.close()
    with pytest.raises(store.StoreError, match='another version'):
        store.open_store('sqlite:///' + p)
    c = sqlite3.connect(p)
    assert c.execute('SELECT COUNT(*) FROM telemetry').fetchone()[0] == 1      # nothing lost
    assert c.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'schema_version'").fetchone()[0] == 0


def test_alarms_are_the_error_counters_that_are_not_zero_and_the_newest_wins(st):
    rec = {'v': 2, 'seq': 1, 'ts_ms': 1790000000000, 'state': 'idle', 'err': {'meter': 3, 'battery': 0}}
    st.add([('telemetry', 'a', json.dumps(rec).encode(), 0)])
    old = dict(rec, seq=0, ts_ms=1789999990000, err={'meter': 0})
    st.add([('telemetry', 'a', json.dumps(old).encode(), 0)])     # an older record, committed later
    d = {r['dev']: r for r in st.devices()}
    assert json.loads(d['a']['alarms']) == {'meter': 3}


def test_a_clock_stepped_back_at_a_sync_does_not_freeze_the_devices_row(st):
    # a device that booted on a clock an hour ahead of NTP: its first sync moves ts back, seq goes
    # on. The row follows the records (review finding: it stayed on the last pre-sync record).
    t = 1790000000000
    recs = [dict(seq=3, ts_ms=t, soc_bp=5000), dict(seq=4, ts_ms=t - 3600000 + 1000, soc_bp=5100),
            dict(seq=5, ts_ms=t - 3600000 + 2000, soc_bp=5200)]
    st.add([('telemetry', 'a', json.dumps(dict(r, v=2, state='idle')).encode(), 0) for r in recs[:2]])
    st.add([('telemetry', 'a', json.dumps(dict(recs[2], v=2, state='idle')).encode(), 0)])
    d = {r['dev']: r for r in st.devices()}['a']
    assert d['soc_bp'] == 5200 and d['last_seen'] == (t - 3600000 + 2000) // 1000
    # an older record arriving late (a backlog) still changes nothing: its time and seq are older
    st.add([('telemetry', 'a', json.dumps(dict(seq=2, ts_ms=t - 3600000, soc_bp=4000, v=2, state='idle')).encode(), 0)])
    assert {r['dev']: r for r in st.devices()}['a']['soc_bp'] == 5200
    # a reboot: seq starts again, time goes on
    st.add([('telemetry', 'a', json.dumps(dict(seq=0, ts_ms=t - 3600000 + 60000, soc_bp=5300, v=2,
                                               state='idle')).encode(), 0)])
    assert {r['dev']: r for r in st.devices()}['a']['soc_bp'] == 5300


def test_in_the_same_second_the_later_seq_wins_and_a_schema_2_database_is_migrated(tmp_path):
    import sqlite3
    p = str(tmp_path / 's2.db')
    c = sqlite3.connect(p)                              # what the store of schema 2 made
    c.execute('CREATE TABLE schema_version (v INTEGER NOT NULL)')
    c.execute('INSERT INTO schema_version VALUES (2)')
    c.execute('CREATE TABLE telemetry (dev TEXT NOT NULL, seq BIGINT, ts BIGINT NOT NULL, gcp_w BIGINT, bat_w BIGINT, '
              'soc_bp BIGINT, state TEXT, reserve_bp BIGINT, sch_version BIGINT, rec TEXT NOT NULL)')
    c.execute('CREATE TABLE devices (dev TEXT PRIMARY KEY, online INTEGER, last_seen BIGINT, soc_bp BIGINT, '
              'state TEXT, gcp_w BIGINT, bat_w BIGINT, reserve_bp BIGINT, sch_version BIGINT, sch_status TEXT, '
              'sch_acked BIGINT, sch_reason TEXT, alarms TEXT)')
    c.execute("INSERT INTO devices (dev, last_seen, soc_bp) VALUES ('a', 1790000000, 7000)")
    c.commit()
    c.close()
    st = store.open_store('sqlite:///' + p)
    assert {r['dev']: r for r in st.devices()}['a']['soc_bp'] == 7000            # kept
    t = 1790000001000

    def rec(seq, ms, soc):
        return ('telemetry', 'a', json.dumps({'v': 2, 'seq': seq, 'ts_ms': t + ms, 'soc_bp': soc, 'state': 'idle'}).encode(), 0)
    st.add([rec(6, 500, 8100)])
    st.add([rec(5, 100, 8000)])                         # older, late, in the same second: ignored
    assert {r['dev']: r for r in st.devices()}['a']['soc_bp'] == 8100
    st.close()
    assert sqlite3.connect(p).execute('SELECT v FROM schema_version').fetchone()[0] == store.SCHEMA_VERSION


def test_a_locked_database_keeps_the_messages(tmp_path):
    import sqlite3
    p = str(tmp_path / 'l.db')
    st = store.open_store('sqlite:///' + p)
    st.conn.execute('PRAGMA busy_timeout = 200')
    other = sqlite3.connect(p)
    other.execute('BEGIN IMMEDIATE')                      # another writer holds the lock
    ing = ingest.Ingest.__new__(ingest.Ingest)
    ing.st, ing.dropped = st, 0
    buf = _batch('a', 3)
    try:
        st.add(buf)
        raise AssertionError('the add should have failed')
    except sqlite3.OperationalError as e:
        kept = ing._one_by_one(buf, e)
    assert len(kept) == 3 and ing.dropped == 0
    other.rollback()
    other.close()
    assert st.add(kept) == 3
