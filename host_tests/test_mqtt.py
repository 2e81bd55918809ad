"""MQTT link end to end (issue #4): a real mosquitto on 127.0.0.1, started here, and the firmware
link (firmware/mqtt_link.py and mqtt_sock.py: MQTT 3.1.1 of its own) running on the MicroPython
unix port inside a stand-in main loop (host_tests/mp/mqtt_device.py: a real bess_core.Controller,
a fake site). Figures (outage, cycle lateness) are written to out/mqtt_figures.json.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import command_mac
import faults_mqtt
import telemetry
import telemetry_schema
from faults_mqtt import TricklingBroker
from figures import record
from mqtt_fixtures import Broker, Collector, Device, wait_for, ROOT, MICROPYPATH, micropython_exe, procs  # noqa: F401

KEY = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff'


def check_schema(r):
    assert set(r) == set(telemetry_schema.SCHEMA_V2), set(r) ^ set(telemetry_schema.SCHEMA_V2)
    assert r['v'] == telemetry.SCHEMA_VERSION == 2
    for k, t in telemetry_schema.SCHEMA_V2.items():
        v = r[k]
        if t == 'int':
            assert isinstance(v, int) and not isinstance(v, bool), (k, v)
        elif t == 'int|null':
            assert v is None or (isinstance(v, int) and not isinstance(v, bool)), (k, v)
        elif t == 'str':
            assert isinstance(v, str), (k, v)
        elif k == 'sch':
            assert set(v) == set(telemetry_schema.SCH_KEYS) and v['source'] in telemetry.SOURCE_NAMES, (k, v)
            assert v['id'] is None or isinstance(v['id'], str)
        else:
            assert isinstance(v, dict) and set(v) == set(telemetry_schema.ERR_KEYS), (k, v)
            assert all(isinstance(x, int) for x in v.values())


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()



def cmd(col, dev, name, body, retain=False, timeout=3.0):
    """Publish a command (dict -> compact JSON, or raw bytes) and return its ack (dict)."""
    if isinstance(body, dict):
        payload = json.dumps(body, separators=(',', ':')).encode()
    else:
        payload = body
    n = len(col.get('bess/%s/cmd/ack' % dev))
    col.publish('bess/%s/cmd/%s' % (dev, name), payload, retain=retain)
    ok = wait_for(lambda: len(col.get('bess/%s/cmd/ack' % dev)) > n, timeout)
    assert ok, 'no ack for %s %r' % (name, payload[:80])
    return json.loads(col.get('bess/%s/cmd/ack' % dev)[n][1])


def signed(dev, name, body, key=KEY):
    b = json.dumps(body, separators=(',', ':')).encode()
    return command_mac.sign(bytes.fromhex(key), 'bess/%s/cmd/%s' % (dev, name), b)


def retained_config(col, dev):
    m = col.get('bess/%s/config' % dev)
    return json.loads(m[-1][1]) if m else None


# --- telemetry, schema, state, discovery, LWT ---------------------------------------------------
def test_telemetry_schema_discovery_and_lwt(tmp_path, broker, procs):
    dev = Device(tmp_path, 'devT', broker.port, telemetry_ms=200)
    procs.append(dev.start())
    assert wait_for(lambda: dev.last().get('link') == 'up', 5), dev.last()
    time.sleep(0.3)
    col = Collector(broker.port, ('bess/#', 'homeassistant/#'))     # subscribes late: sees retained
    procs.append(col)
    assert wait_for(lambda: len(col.telemetry('devT')) >= 5, 5)
    recs = col.telemetry('devT')
    t_now = time.time() * 1000
    for r in recs:
        check_schema(r)
        assert abs(r['ts_ms'] - t_now) < 10000
    seqs = [r['seq'] for r in recs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    r = recs[-1]
    # constant site: load 12 kW, limit 10 kW, gce -> discharge 2 kW, GCP at the limit
    assert (r['import_limit_w'], r['bat_sp_w'], r['bat_w'], r['gcp_w']) == (10000, 2000, 2000, 10000)
    assert (r['state'], r['objective'], r['binding'], r['soc_bp']) == ('discharging', 'gce', 'import_limit', 5000)
    assert r['gcp_l1_w'] + r['gcp_l2_w'] + r['gcp_l3_w'] == r['gcp_w']
    assert r['heap_free'] > 0 and r['cycle_max_us'] > 0
    # retained: status online, state, config, HA discovery (10 sensors + objective select)
    st = col.get('bess/devT/status')
    assert st and st[0][1] == b'online' and st[0][2]
    state = col.get('bess/devT/state')
    assert state and state[0][2] and json.loads(state[0][1])['state'] == 'discharging'
    assert retained_config(col, 'devT')['import_limit_w'] == 10000
    disc = [m for m in col.get() if m[0].startswith('homeassistant/') and m[0].endswith('/config')]
    assert len(disc) == 11 and all(m[2] for m in disc)
    sel = [json.loads(m[1]) for m in disc if '/select/' in m[0]][0]
    assert sel['command_topic'] == 'bess/devT/cmd/objective' and sel['options'] == ['gce', 'ss', 'zfi']
    # LWT: killed without DISCONNECT -> the broker publishes the retained "offline"
    dev.kill(signal.SIGKILL)
    assert wait_for(lambda: col.get('bess/devT/status')[-1][1] == b'offline', 3)
    assert col.get('bess/devT/status')[-1][2] is False     # live delivery of the retained will


# --- broker outage: reconnect, store-and-forward, control period ---------------------------------
def test_broker_outage_store_and_forward(tmp_path, procs):
    br = Broker(tmp_path, persistence=True).start()
    procs.append(br)
    # persistent session + queue_qos0_messages: the collector misses nothing while both reconnect
    col = Collector(br.port, ('bess/devO/telemetry', 'bess/devO/status'), client_id='collector-o',
                    persistent=True)
    procs.append(col)
    dev = Device(tmp_path, 'devO', br.port, telemetry_ms=100, period_ms=100)
    procs.append(dev.start())
    assert wait_for(lambda: len(col.telemetry('devO')) >= 10, 6)
    br.stop()
    t_stop = time.time() * 1000
    time.sleep(3.0)
    assert dev.last().get('link') != 'up'
    buffered = dev.last()['ring']
    t_restart = time.time() * 1000
    br.start()
    col.connected.clear()
    assert col.connected.wait(5)
    assert wait_for(lambda: dev.last().get('link') == 'up' and dev.last().get('ring', 99) <= 2, 8), dev.last()
    t_up = time.time() * 1000
    time.sleep(1.0)
    last_seq = dev.last()['seq']
    assert wait_for(lambda: col.telemetry('devO') and col.telemetry('devO')[-1]['seq'] >= last_seq - 12, 3)
    dev.kill(signal.SIGTERM)
    s = dev.last()
    recs = col.telemetry('devO')
    seqs = [r['seq'] for r in recs]
    # in order; a record is repeated only if it was sent but unconfirmed when the broker died
    firsts = []
    seen = set()
    for q in seqs:
        if q not in seen:
            seen.add(q)
            firsts.append(q)
    assert firsts == sorted(firsts), 'out of order'
    assert firsts == list(range(firsts[0], firsts[-1] + 1)), 'gap: %s' % sorted(set(range(firsts[0], firsts[-1] + 1)) - seen)
    assert firsts[0] == 0
    dups = len(seqs) - len(firsts)
    # records captured while the broker was down arrive exactly once, with their original times
    during = [r for r in recs if t_stop + 300 < r['ts_ms'] < t_restart - 100]
    assert len(during) >= 20
    dseq = [r['seq'] for r in during]
    assert len(dseq) == len(set(dseq))
    assert all(r['ts_ms'] < t_up for r in during)
    gaps = [b['ts_ms'] - a['ts_ms'] for a, b in zip(during, during[1:])]
    assert all(50 <= g <= 250 for g in gaps), gaps
    assert s['lost'] >= 1 and s['connects'] >= 2 and s['dropped'] == 0
    # the control cycle kept its 100 ms period while the broker was down
    assert s['late_max_down_ms'] < 50, s
    assert s['work_max_down_us'] < 50000, s
    record('mqtt', outage={
        'broker_down_ms': int(t_restart - t_stop), 'buffered_at_restart': buffered,
        'records_captured_during_outage': len(during), 'records_received_total': len(seqs),
        'distinct_records': len(firsts), 'repeats_at_reconnect': dups,
        'worst_cycle_lateness_while_down_ms': s['late_max_down_ms'],
        'worst_cycle_work_while_down_us': s['work_max_down_us'],
        'worst_cycle_lateness_overall_ms': s['late_max_ms'], 'worst_cycle_work_overall_us': s['work_max_us'],
        'cycles_while_not_up': s['down_cycles'], 'period_ms': 100})


def test_unresponsive_broker_is_bounded(tmp_path, procs):
    """Two dead brokers the loopback can imitate. (1) A black hole: a listener whose accept queue
    is full drops every SYN, so the TCP connect never completes (like a dead route). (2) A silent
    broker: TCP accepted, CONNACK never sent. Either way the link polls and gives up after
    connect_timeout_ms without ever blocking a cycle."""
    import socket as so
    hole = so.socket()
    hole.bind(('127.0.0.1', 0))
    hole.listen(0)
    filler = so.create_connection(hole.getsockname())     # fills the accept queue
    silent = so.socket()
    silent.bind(('127.0.0.1', 0))
    silent.listen(8)
    extra = {'poll_budget_ms': 200, 'connect_timeout_ms': 400}
    d1 = Device(tmp_path, 'devBH', hole.getsockname()[1], mqtt_extra=extra)
    d2 = Device(tmp_path, 'devSL', silent.getsockname()[1], mqtt_extra=extra)
    procs.append(d1.start())
    procs.append(d2.start())
    try:
        assert wait_for(lambda: d1.last().get('t', 0) >= 3000 and d2.last().get('t', 0) >= 3000, 8)
        s1 = d1.last()
        s2 = d2.last()
    finally:
        d1.kill()
        d2.kill()
        filler.close()
        hole.close()
        silent.close()
    for s in (s1, s2):
        assert s['connects'] == 0 and s['link'] != 'up', s
        assert s['err'] and ('ETIMEDOUT' in s['err'] or '110' in s['err']), s
    for s in (s1, s2):
        assert s['work_max_us'] < 20000 and s['late_max_ms'] < 20, s       # never blocked
    record('mqtt', black_hole={'connect_timeout_ms': 400, 'worst_cycle_work_us': s1['work_max_us'],
                               'worst_cycle_lateness_ms': s1['late_max_ms']},
                   silent_broker={'poll_budget_ms': 200, 'worst_cycle_work_us': s2['work_max_us'],
                                  'worst_cycle_lateness_ms': s2['late_max_ms']})


# --- commands ------------------------------------------------------------------------------------
BAD = [
    ('import_limit', b'not json', 'malformed'),
    ('import_limit', b'[9000]', 'malformed'),
    ('import_limit', {'value': '9000', 'id': 'a'}, 'must be an integer'),
    ('import_limit', {'value': True}, 'must be an integer'),
    ('import_limit', {'value': 9000.5}, 'must be an integer'),
    ('import_limit', {'value': 0}, 'must be in 1..10000000'),
    ('import_limit', {'value': 100}, 'min_import_w: must be below import_limit_w'),
    ('import_limit', {'value': 9000, 'extra': 1}, 'unknown member'),
    ('import_limit', {}, 'missing "value"'),
    ('max_soc', {'value': 500}, 'reserve_soc_bp'),
    ('reserve_soc', {'value': 9900}, 'reserve_soc_bp'),
    ('ev_headroom', {'value': 20000}, 'ev_headroom_w: must be below import_limit_w'),
    ('objective', {'value': 'max'}, 'objective: must be one of'),
    ('max_charge', {'value': -1}, 'must be in 0..'),
    ('dispatch', {'power_w': 3000}, 'duration_ms'),
    ('dispatch', {'power_w': 3000, 'duration_ms': 86400001}, 'duration_ms'),
    ('dispatch', {'power_w': 20000000, 'duration_ms': 1000}, 'power_w'),
    ('override', {'power_w': 500, 'duration_ms': 0}, 'stop'),
    ('reboot', {'value': 1}, 'unknown command'),
    ('import_limit', {'value': 9000, 'id': 'x' * 600}, 'oversized'),
    ('import_limit', {'value': 9000, 'ctr': -5}, 'ctr'),
]


def test_commands_rejected_accepted_persisted(tmp_path, broker, procs):
    col = Collector(broker.port, ('bess/devC/#',))
    procs.append(col)
    # a retained command waiting on the broker must not be executed at (re)connect
    col.publish('bess/devC/cmd/import_limit', b'{"value":7777,"id":"ret"}', retain=True)
    dev = Device(tmp_path, 'devC', broker.port, mqtt_extra={'ha_discovery': False})
    procs.append(dev.start())
    assert wait_for(lambda: col.get('bess/devC/cmd/ack'), 5)
    a = json.loads(col.get('bess/devC/cmd/ack')[0][1])
    assert a['ok'] is False and 'retained' in a['reason']
    col.publish('bess/devC/cmd/import_limit', b'', retain=True)    # clear it (live: rejected, empty)
    assert wait_for(lambda: len(col.get('bess/devC/cmd/ack')) == 2, 3)
    assert 'empty' in json.loads(col.get('bess/devC/cmd/ack')[1][1])['reason']
    assert wait_for(lambda: retained_config(col, 'devC'), 3)
    cfg0 = retained_config(col, 'devC')
    assert not os.path.exists(dev.state_path)
    for name, body, why in BAD:
        a = cmd(col, 'devC', name, body)
        assert a['ok'] is False and why in a['reason'], (name, body, a)
        assert a['cmd'] == name
    assert json.loads(col.get('bess/devC/cmd/ack')[4][1]).get('id') == 'a'    # echoed when rejected
    time.sleep(0.3)
    assert retained_config(col, 'devC') == cfg0 and len(col.get('bess/devC/config')) == 1
    assert not os.path.exists(dev.state_path), 'a rejected command wrote the settings file'
    assert all(r['import_limit_w'] == 10000 and r['bat_sp_w'] == 2000 for r in col.telemetry('devC'))
    assert col.telemetry('devC')[-1]['err']['cmd_rejected'] == len(BAD) + 2
    # a packet longer than the link's inbound buffer is never held in memory: its bytes are
    # skipped as they arrive, the command is rejected as oversized, the link stays up (with QoS 1
    # and a persistent session, dropping the connection would only bring it back, for ever)
    a = cmd(col, 'devC', 'import_limit', b'{"value":9000,"pad":"' + b'x' * 10000 + b'"}')
    assert not a['ok'] and a['reason'] == 'oversized: payload 10023 bytes > 512 (not read)', a
    a = cmd(col, 'devC', 'import_limit', {'value': 9000, 'id': 'after'})
    assert a['ok'] and a['id'] == 'after', a
    assert dev.last().get('lost', 0) == 0, dev.last()
    a = cmd(col, 'devC', 'import_limit', {'value': 10000})      # back to where it was
    assert a['ok'], a
    assert wait_for(lambda: retained_config(col, 'devC') == cfg0, 3)
    # accepted: effective from the very next cycle's record (telemetry every cycle here)
    a = cmd(col, 'devC', 'import_limit', {'value': 9000, 'id': 'lim'})
    assert a['ok'] is True and a['id'] == 'lim', a
    eff = a['eff_seq']
    assert wait_for(lambda: any(r['seq'] == eff for r in col.telemetry('devC')), 3)
    by = {r['seq']: r for r in col.telemetry('devC')}
    assert by[eff - 1]['import_limit_w'] == 10000 and by[eff]['import_limit_w'] == 9000
    assert by[eff]['bat_sp_w'] == 3000
    assert wait_for(lambda: retained_config(col, 'devC')['import_limit_w'] == 9000, 2)
    assert cmd(col, 'devC', 'objective', {'value': 'zfi'})['ok']
    # dispatch expires by itself; override ranks above it; stop works
    a = cmd(col, 'devC', 'dispatch', {'power_w': 1500, 'duration_ms': 600})
    assert a['ok'], a
    assert wait_for(lambda: any(r['seq'] >= a['eff_seq'] + 8 for r in col.telemetry('devC')), 3)
    by = {r['seq']: r for r in col.telemetry('devC')}
    d = by[a['eff_seq']]
    assert by[a['eff_seq'] - 1]['state'] == 'discharging'
    assert d['state'] == 'dispatch' and d['bat_sp_w'] == 1500 and 0 < d['dispatch_left_ms'] <= 600, d
    assert wait_for(lambda: col.telemetry('devC')[-1]['state'] != 'dispatch', 2)
    a = cmd(col, 'devC', 'override', {'power_w': 1000, 'duration_ms': 60000})
    assert a['ok']
    assert wait_for(lambda: col.telemetry('devC')[-1]['state'] == 'override', 2)
    assert cmd(col, 'devC', 'override', {'duration_ms': 0})['ok']
    assert wait_for(lambda: col.telemetry('devC')[-1]['state'] != 'override', 2)
    # survives a restart (killed hard: the file was written before the ack)
    dev.kill(signal.SIGKILL)
    n = len(col.get('bess/devC/config'))
    dev.start()
    assert wait_for(lambda: len(col.get('bess/devC/config')) > n, 5)
    c = retained_config(col, 'devC')
    assert c['import_limit_w'] == 9000 and c['objective'] == 'zfi'
    assert wait_for(lambda: col.telemetry('devC')[-1]['import_limit_w'] == 9000, 3)
    dev.kill()
    assert dev.stderr == ''         # normal boot from the saved file: no message
    # a corrupt file boots into the commissioned config with a clear message
    with open(dev.state_path, 'r+b') as f:
        f.seek(10)
        f.write(b'#')
    n = len(col.get('bess/devC/state'))
    dev.start()
    assert wait_for(lambda: len(col.get('bess/devC/state')) > n, 5)
    dev.kill()
    assert 'SAVED SETTINGS UNUSABLE' in dev.stderr and 'checksum' in dev.stderr, dev.stderr
    st = json.loads(col.get('bess/devC/state')[-1][1])
    assert 'UNUSABLE' in st['notice']
    # the config goes out in the same flush as the state, but the collector's thread may not have
    # taken it in yet when the state is seen
    assert wait_for(lambda: retained_config(col, 'devC')['import_limit_w'] == 10000, 3)


def test_hmac_replay_and_restart(tmp_path, broker, procs):
    col = Collector(broker.port, ('bess/devH/#',))
    procs.append(col)
    dev = Device(tmp_path, 'devH', broker.port, hmac_key=KEY, mqtt_extra={'ha_discovery': False})
    procs.append(dev.start())
    assert wait_for(lambda: retained_config(col, 'devH'), 5)
    body = {'value': 9000, 'ctr': 1}
    good = signed('devH', 'import_limit', body)
    bad_key = command_mac.sign(b'k' * 32, 'bess/devH/cmd/import_limit', b'{"value":9000,"ctr":1}')
    other_dev = signed('devX', 'import_limit', body)
    other_cmd = signed('devH', 'max_discharge', body)
    tampered = good.replace(b'9000', b'9900')
    for payload, why in ((b'{"value":9000}', 'mac required'),
                         (b'{"value":9000,"ctr":1}', 'mac required'),
                         (bad_key, 'bad mac'), (other_dev, 'bad mac'), (other_cmd, 'bad mac'),
                         (tampered, 'bad mac'),
                         (good[:-66] + b'zz' + good[-64:], 'not hex'),
                         (signed('devH', 'import_limit', {'value': 9000}), 'ctr must be')):
        a = cmd(col, 'devH', 'import_limit', payload)
        assert a['ok'] is False and why in a['reason'], (payload, a)
    assert not os.path.exists(dev.state_path)
    a = cmd(col, 'devH', 'import_limit', good)
    assert a['ok'] and a['ctr'] == 1, a
    a = cmd(col, 'devH', 'import_limit', good)                    # replay
    assert not a['ok'] and 'replay' in a['reason']
    a = cmd(col, 'devH', 'import_limit', signed('devH', 'import_limit', {'value': 8000, 'ctr': 1}))
    assert not a['ok'] and 'replay' in a['reason']
    d2 = signed('devH', 'dispatch', {'power_w': 1000, 'duration_ms': 300, 'ctr': 5})
    assert cmd(col, 'devH', 'dispatch', d2)['ok']
    assert retained_config(col, 'devH')['import_limit_w'] == 9000
    dev.kill()
    dev.start()
    assert wait_for(lambda: dev.last().get('link') == 'up', 5)
    for name, p in (('import_limit', good), ('dispatch', d2)):     # still replays after a restart
        a = cmd(col, 'devH', name, p)
        assert not a['ok'] and 'replay' in a['reason'], a
    a = cmd(col, 'devH', 'max_soc', signed('devH', 'max_soc', {'value': 9000, 'ctr': 6}))
    assert a['ok'], a
    assert wait_for(lambda: retained_config(col, 'devH')['max_soc_bp'] == 9000, 2)


# --- broker authentication and ACL: one device cannot command another ----------------------------
def test_acl_device_cannot_command_another(tmp_path, procs):
    pw = tmp_path / 'passwd'
    users = {'devA': 'pwA', 'devB': 'pwB', 'operator': 'pwOp'}
    pw.write_text(''.join('%s:%s\n' % kv for kv in users.items()))
    subprocess.run(['mosquitto_passwd', '-U', str(pw)], check=True)
    acl = tmp_path / 'acl'
    acl.write_text(
        'user operator\ntopic readwrite bess/#\ntopic read homeassistant/#\n\n'
        'pattern read bess/%u/cmd/#\npattern write bess/%u/+\npattern write bess/%u/cmd/ack\n'
        'pattern write homeassistant/+/%u/#\n')
    br = Broker(tmp_path, extra=('allow_anonymous false', 'password_file %s' % pw, 'acl_file %s' % acl))
    procs.append(br.start())
    op = Collector(br.port, ('bess/#',), user='operator', password='pwOp')
    procs.append(op)
    for d in ('devA', 'devB'):
        procs.append(Device(tmp_path, d, br.port, mqtt_extra={'user': d, 'password': users[d]}).start())
    assert wait_for(lambda: op.telemetry('devA') and op.telemetry('devB'), 5)
    # devA's credentials publishing a command for devB: the broker drops it, devB sees nothing
    import paho.mqtt.client as mqtt
    evil = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    evil.username_pw_set('devA', 'pwA')
    evil.connect('127.0.0.1', br.port)
    evil.loop_start()
    try:
        evil.publish('bess/devB/cmd/import_limit', b'{"value":9000}', qos=1).wait_for_publish(3)
        evil.publish('bess/devA/cmd/import_limit', b'{"value":9000}', qos=1).wait_for_publish(3)
        time.sleep(1.0)
    finally:
        evil.loop_stop()
        evil.disconnect()
    assert op.get('bess/devB/cmd/ack') == [] and op.get('bess/devA/cmd/ack') == []
    assert op.telemetry('devB')[-1]['import_limit_w'] == 10000
    # no credentials / wrong password: refused
    for u, p in ((None, None), ('devA', 'wrong')):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        if u:
            c.username_pw_set(u, p)
        rc = []
        c.on_connect = lambda c_, u_, f, r, pr=None: rc.append(r)
        c.connect('127.0.0.1', br.port)
        c.loop_start()
        wait_for(lambda: rc, 3)
        c.loop_stop()
        assert rc and rc[0].is_failure, (u, rc)
    # a device with a wrong password never connects (and keeps its control loop running)
    bad = Device(tmp_path, 'devA2', br.port, mqtt_extra={'user': 'devA', 'password': 'nope'})
    procs.append(bad.start())
    assert wait_for(lambda: bad.last().get('t', 0) >= 1000, 4)
    assert bad.last()['connects'] == 0 and 'MQTTException' in bad.last()['err'], bad.last()
    # positive control: the operator may command devB
    a = cmd(op, 'devB', 'import_limit', {'value': 9000})
    assert a['ok'], a
    assert wait_for(lambda: op.telemetry('devB')[-1]['import_limit_w'] == 9000, 2)


# --- consumer tool (tools/mqtt_consumer.py, paho-mqtt) --------------------------------------------
def test_consumer_table_csv_plot(tmp_path, broker, procs):
    for d in ('devP1', 'devP2'):
        procs.append(Device(tmp_path, d, broker.port, telemetry_ms=200, mqtt_extra={'ha_discovery': False}).start())
    csv_path = tmp_path / 's.csv'
    png = tmp_path / 's.png'
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'mqtt_consumer.py'), '--port', str(broker.port),
                        '--duration', '2.5', '--csv', str(csv_path), '--plot', str(png)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert 'devP1' in r.stdout and 'devP2' in r.stdout and 'discharging' in r.stdout     # the table
    import csv as _csv
    rows = list(_csv.DictReader(open(csv_path)))
    assert {x['device'] for x in rows} == {'devP1', 'devP2'}
    assert all(x['import_limit_w'] == '10000' for x in rows) and len(rows) >= 10
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    png2 = tmp_path / 's2.png'
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'mqtt_consumer.py'), '--from-csv', str(csv_path),
                        '--plot', str(png2)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and png2.stat().st_size > 10000, r.stderr


POLL_BUDGET_MS = 200
POLL_SLACK_MS = 30          # the step under way at the deadline (one write, one record): host CPU


@pytest.mark.parametrize('reads', [True, False], ids=['trickles', 'trickles_and_stops_reading'])
def test_a_trickling_broker_cannot_stretch_a_poll(reads):
    """Issue 10 #5: a peer that sends a command one byte every 0.3 s (a lossy link, or on purpose)
    and, in the second case, also stops reading, must not hold poll() beyond poll_budget_ms (+ a
    small constant). Reads never wait (a partial packet stays for the next poll); a write waits
    only until the deadline, then the link reconnects. It used to take sock_timeout_ms + one
    socket timeout (1.2 s measured at 500 ms), and 25 s before that."""
    br = TricklingBroker(reads=reads)
    try:
        r = subprocess.run([micropython_exe(), os.path.join(ROOT, 'host_tests', 'mp', 'poll_bound.py'),
                            str(br.port), str(POLL_BUDGET_MS), '6'],
                           capture_output=True, text=True, timeout=60, env=dict(os.environ, MICROPYPATH=MICROPYPATH))
    finally:
        br.close()
    assert r.returncode == 0, r.stderr
    f = dict(zip(*[iter(next(ln for ln in r.stdout.split('\n') if ln.startswith('worst_poll_ms')).split())] * 2))
    worst, lost, connects = int(f['worst_poll_ms']), int(f['lost']), int(f['connects'])
    assert connects >= 1, r.stdout
    assert worst <= POLL_BUDGET_MS + POLL_SLACK_MS, r.stdout
    if not reads:
        # the writes did block: the budget ended them (link lost, reconnected, blocked again)
        assert lost >= 2 and worst >= POLL_BUDGET_MS, r.stdout
    record('mqtt', **{'trickle' if reads else 'trickle_no_read': {
        'poll_budget_ms': POLL_BUDGET_MS, 'worst_poll_ms': worst, 'links_lost': lost, 'connects': connects}})


FLOOD = 2000


@pytest.mark.parametrize('flood_qos', [0, 1])
def test_a_command_flood_is_counted_and_a_valid_command_behind_it_runs(tmp_path, procs, flood_qos):
    """Issue 10 #6: 2 000 wrong-MAC commands, then one valid signed command. The link reads the
    backlog at most max_cmd_per_poll commands per poll; its PINGRESP, behind the backlog, does not
    make it declare the link dead while data is still unread; acks take at most half of each
    poll's publishes and rejected commands beyond 3 waiting rejections are only counted; so the link
    stays up, telemetry keeps flowing without a gap, every rejected command is counted
    (err.cmd_rejected) and the valid command is executed and acked. QoS 0 flood: the whole
    backlog sits in the device's socket. QoS 1 flood: the broker sends 20 at a time (its in-flight
    window) and holds the rest (max_queued_messages must hold the flood: docs/telemetry.md)."""
    f = faults_mqtt.flood_run(tmp_path, FLOOD, flood_qos, procs=procs)
    s = f['dev']
    a = f['valid_ack']
    assert a is not None, s
    assert a['ok'] is True and a['ctr'] == 1 and f['applied'], a
    # telemetry kept flowing: every record from boot to now arrived (no seq gap)...
    first = sorted(set(f['seqs']))
    assert first == list(range(0, first[-1] + 1)), 'seq gap'
    # ... and while the flood was worked through, not after it (one record per 100 ms cycle)
    assert f['records_during'] >= 0.5 * f['flood_s'] / 0.1, (f['records_during'], f['flood_s'])
    # every wrong-MAC command was verified, rejected and counted; few got an ack of their own
    rejected = [x for x in f['acks'] if not x['ok']]
    skipped = sum(x.get('skipped', 0) for x in f['acks'])
    assert all('bad mac' in x['reason'] for x in rejected), rejected[:3]
    assert len(rejected) + skipped == FLOOD and len(rejected) < FLOOD // 4, (len(rejected), skipped)
    assert f['last_record']['err']['cmd_rejected'] == FLOOD and s['rejected'] == FLOOD, (f['last_record']['err'], s)
    assert s['accepted'] == 1 and s['lost'] == 0 and s['connects'] == 1, s        # the link never dropped
    record('mqtt', **{'flood_qos%d' % flood_qos: {
        'wrong_mac_commands': FLOOD, 'rejected_counted': f['last_record']['err']['cmd_rejected'],
        'rejected_acked': len(rejected), 'rejected_not_acked_counted': skipped,
        'valid_command_acked_after_s': round(f['valid_ack_s'], 2), 'links_lost': s['lost'],
        'telemetry_records_during_flood': f['records_during'], 'flood_s': round(f['flood_s'], 2),
        'period_ms': 100, 'work_max_us': s['work_max_us']}})


@pytest.mark.parametrize('clean', [False, True], ids=['persistent_session', 'clean_session'])
def test_a_command_sent_while_the_link_is_down_runs_after_the_reconnect(tmp_path, broker, procs, clean):
    """Commands are subscribed at QoS 1 with a persistent session (clean_session False, the
    default): one published while the device is cut off waits at the broker and is executed
    after the reconnect. Negative control, clean_session True: it is lost (as every QoS 0
    command was before, and a flood's backlog with it)."""
    col = Collector(broker.port, ('bess/devQ/#',))
    procs.append(col)
    dev = Device(tmp_path, 'devQ', broker.port, hmac_key=KEY,
                 mqtt_extra={'ha_discovery': False, 'keepalive': 2, 'clean_session': clean})
    procs.append(dev.start())
    assert wait_for(lambda: retained_config(col, 'devQ'), 5)
    dev.proc.send_signal(signal.SIGSTOP)            # frozen: the broker drops it after 1.5 x keepalive
    try:
        assert wait_for(lambda: col.get('bess/devQ/status')[-1][1] == b'offline', 6)
        col.publish('bess/devQ/cmd/import_limit',
                    signed('devQ', 'import_limit', {'value': 9000, 'ctr': 1, 'id': 'queued'}))
        time.sleep(0.5)
    finally:
        dev.proc.send_signal(signal.SIGCONT)
    assert wait_for(lambda: dev.last().get('lost', 0) >= 1 and dev.last()['link'] == 'up', 8), dev.last()
    acked = wait_for(lambda: col.get('bess/devQ/cmd/ack'), 4)
    if clean:
        assert not acked and retained_config(col, 'devQ')['import_limit_w'] == 10000
        return
    a = json.loads(col.get('bess/devQ/cmd/ack')[0][1])
    assert a['ok'] and a['id'] == 'queued', a
    assert wait_for(lambda: retained_config(col, 'devQ')['import_limit_w'] == 9000, 3)


def test_a_burst_of_commands_is_acked_in_full(tmp_path, broker, procs):
    """A burst is not a flood: 30 commands at once (10 rejected, 20 accepted) get 30 acks. Rejected
    acks are only counted beyond 3 waiting; accepted ones are always acked, and while 4 acks wait
    the link leaves further commands unread (QoS 1: at the broker) instead of dropping acks."""
    col = Collector(broker.port, ('bess/devB/#',))
    procs.append(col)
    dev = Device(tmp_path, 'devB', broker.port, mqtt_extra={'ha_discovery': False})
    procs.append(dev.start())
    assert wait_for(lambda: retained_config(col, 'devB'), 5)
    for k in range(30):
        body = {'value': 'x' if k % 3 == 0 else 9000 + k, 'id': 'b%d' % k}
        col.c.publish('bess/devB/cmd/import_limit', json.dumps(body), qos=1)
    assert wait_for(lambda: len(col.get('bess/devB/cmd/ack')) >= 30, 10), len(col.get('bess/devB/cmd/ack'))
    acks = [json.loads(m[1]) for m in col.get('bess/devB/cmd/ack')]
    assert sorted(a['id'] for a in acks) == sorted('b%d' % k for k in range(30))
    assert [a['ok'] for a in acks].count(False) == 10 and not any('skipped' in a for a in acks)
    assert dev.last()['lost'] == 0


def test_a_link_lost_while_acks_wait_comes_back_up(tmp_path, broker):
    """Acks leave only while the link is up, and commands are held back while ACK_MAX acks wait:
    a link lost with ACK_MAX acks waiting (a burst handled, then a reset before they were sent)
    must still read the CONNACK of its reconnect and then send them. It used to wait in
    'handshake' until the connect timeout, again and again (found in review)."""
    r = subprocess.run([micropython_exe(), os.path.join(ROOT, 'host_tests', 'mp', 'ack_reconnect_mp.py'),
                        str(broker.port), str(tmp_path / 'settings.json')], capture_output=True, text=True,
                       env=dict(os.environ, MICROPYPATH=MICROPYPATH), timeout=60)
    lines = [ln for ln in r.stdout.split('\n') if ln.startswith(('up ', 'waiting ', 'after '))]
    assert r.returncode == 0 and lines[0] == 'up True', r.stdout + r.stderr
    assert lines[1] == 'waiting 4', r.stdout
    assert lines[2] == 'after up 2 0', r.stdout         # reconnected, every waiting ack sent


def test_a_topic_longer_than_the_inbound_buffer_is_rejected_not_fatal(tmp_path, broker, procs):
    """A PUBLISH whose topic (+ packet id) does not fit the inbound buffer (~551 bytes for devP) is
    not parsed into memory: mqtt_sock keeps its topic length and packet id, discards the rest as
    it arrives, and the link rejects it as an oversized command and PUBACKs it. Raising instead
    dropped the link, and the message came back at every connect (retained, or QoS 1 unacked):
    the link stayed down for ever. Retained one waiting at subscribe time, then live QoS 1 ones
    around the buffer's edge (tl 544: topic + id fit; 545: the id's 2nd byte does not; 546...);
    then a restart with the same persistent session gets the retained one again, nothing else."""
    col = Collector(broker.port, ('bess/devP/#',))
    procs.append(col)
    t = 'bess/devP/cmd/'
    col.publish(t + 'a' * 600, b'{"value":9000}', retain=True)
    dev = Device(tmp_path, 'devP', broker.port, mqtt_extra={'ha_discovery': False})
    procs.append(dev.start())
    assert wait_for(lambda: col.get('bess/devP/cmd/ack'), 5)
    a = json.loads(col.get('bess/devP/cmd/ack')[0][1])
    assert a['ok'] is False and 'retained' in a['reason'], a
    n_tele = len(col.telemetry('devP'))
    for k in (530, 531, 532, 600, 20000):           # topic length: 14 + k
        a = cmd(col, 'devP', 'a' * k, b'{"value":9000}')
        assert a['ok'] is False and a['reason'].startswith('oversized'), (k, a)
        if k > 530:
            assert a['reason'] == 'oversized: topic %d bytes (not read)' % (14 + k) and a['cmd'] == '?', a
    a = cmd(col, 'devP', 'import_limit', {'value': 9000, 'id': 'after'})
    assert a['ok'] and a['id'] == 'after', a
    assert wait_for(lambda: retained_config(col, 'devP')['import_limit_w'] == 9000, 3)
    assert wait_for(lambda: col.telemetry('devP')[-1]['err']['cmd_rejected'] == 6, 3), col.telemetry('devP')[-1]
    assert len(col.telemetry('devP')) > n_tele + 5                     # telemetry kept flowing
    assert wait_for(lambda: dev.last().get('accepted') == 1, 3), dev.last()
    s = dev.last()
    assert s['rejected'] == 6 and s['connects'] == 1 and s['lost'] == 0, s     # never dropped
    # every one was PUBACKed: a restart (same session) gets only the retained one again
    dev.kill(signal.SIGKILL)
    n = len(col.get('bess/devP/cmd/ack'))
    dev2 = Device(tmp_path, 'devP', broker.port, mqtt_extra={'ha_discovery': False})
    procs.append(dev2.start())
    assert wait_for(lambda: len(col.get('bess/devP/cmd/ack')) > n, 5)
    time.sleep(1.0)
    acks = [json.loads(m[1]) for m in col.get('bess/devP/cmd/ack')[n:]]
    assert len(acks) == 1 and 'retained' in acks[0]['reason'], acks
    assert wait_for(lambda: dev2.last().get('rejected') == 1, 3), dev2.last()
    assert dev2.last()['connects'] == 1 and dev2.last()['lost'] == 0, dev2.last()
