"""MQTT link end to end (issue #4): a real mosquitto on 127.0.0.1, started here, and the firmware
link (firmware/mqtt_link.py over umqtt.simple 1.3.4 from build/vendor) running on the MicroPython
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

import commands
import telemetry
from figures import record
from mqtt_fixtures import Broker, Collector, Device, wait_for, ROOT, MICROPYPATH, micropython_exe, procs  # noqa: F401

KEY = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff'


def check_schema(r):
    assert set(r) == set(telemetry.SCHEMA_V1), set(r) ^ set(telemetry.SCHEMA_V1)
    assert r['v'] == telemetry.SCHEMA_VERSION == 1
    for k, t in telemetry.SCHEMA_V1.items():
        v = r[k]
        if t == 'int':
            assert isinstance(v, int) and not isinstance(v, bool), (k, v)
        elif t == 'int|null':
            assert v is None or (isinstance(v, int) and not isinstance(v, bool)), (k, v)
        elif t == 'str':
            assert isinstance(v, str), (k, v)
        else:
            assert isinstance(v, dict) and set(v) == set(telemetry.ERR_KEYS), (k, v)
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
    return commands.sign(bytes.fromhex(key), 'bess/%s/cmd/%s' % (dev, name), b)


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
    # retained: status online, state, config, HA discovery (8 sensors + objective select)
    st = col.get('bess/devT/status')
    assert st and st[0][1] == b'online' and st[0][2]
    state = col.get('bess/devT/state')
    assert state and state[0][2] and json.loads(state[0][1])['state'] == 'discharging'
    assert retained_config(col, 'devT')['import_limit_w'] == 10000
    disc = [m for m in col.get() if m[0].startswith('homeassistant/') and m[0].endswith('/config')]
    assert len(disc) == 9 and all(m[2] for m in disc)
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
    extra = {'sock_timeout_ms': 200, 'connect_timeout_ms': 400}
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
                   silent_broker={'sock_timeout_ms': 200, 'worst_cycle_work_us': s2['work_max_us'],
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
    # a payload beyond max_rx_bytes (2048) is not even read: the link drops the connection
    # (memory), reconnects, and nothing changes
    n_ack = len(col.get('bess/devC/cmd/ack'))
    col.publish('bess/devC/cmd/import_limit', b'{"value":9000,"pad":"' + b'x' * 10000 + b'"}')
    assert wait_for(lambda: dev.last().get('lost', 0) >= 1 and dev.last()['link'] == 'up', 5), dev.last()
    assert 'too large' in dev.last()['err']
    time.sleep(0.3)
    assert len(col.get('bess/devC/cmd/ack')) == n_ack and retained_config(col, 'devC') == cfg0
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
    assert retained_config(col, 'devC')['import_limit_w'] == 10000


def test_hmac_replay_and_restart(tmp_path, broker, procs):
    col = Collector(broker.port, ('bess/devH/#',))
    procs.append(col)
    dev = Device(tmp_path, 'devH', broker.port, hmac_key=KEY, mqtt_extra={'ha_discovery': False})
    procs.append(dev.start())
    assert wait_for(lambda: retained_config(col, 'devH'), 5)
    body = {'value': 9000, 'ctr': 1}
    good = signed('devH', 'import_limit', body)
    bad_key = commands.sign(b'k' * 32, 'bess/devH/cmd/import_limit', b'{"value":9000,"ctr":1}')
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


def test_a_trickling_broker_cannot_stretch_a_poll():
    """A peer that sends a command one byte every 0.2 s (a lossy link, or on purpose) must not hold
    poll() beyond its budget: sock_timeout_ms plus at most one socket timeout (was 25 s)."""
    import socket
    import threading
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(('127.0.0.1', 0))
    ls.listen(1)
    port = ls.getsockname()[1]

    def broker():
        c, _ = ls.accept()
        c.recv(1024)                                # CONNECT
        c.sendall(b'\x20\x02\x00\x00')              # CONNACK
        time.sleep(0.3)
        c.recv(1024)                                # SUBSCRIBE (+ status)
        c.sendall(b'\x90\x03\x00\x01\x00')          # SUBACK
        time.sleep(0.3)
        topic = b'bess/d1/cmd/objective'
        body = len(topic).to_bytes(2, 'big') + topic + b'{"value":"ss"}' + b' ' * 80
        for b in b'\x30' + bytes([len(body)]) + body:
            try:
                c.sendall(bytes([b]))
            except OSError:
                break
            time.sleep(0.2)
        c.close()
    t = threading.Thread(target=broker, daemon=True)
    t.start()
    r = subprocess.run([micropython_exe(), os.path.join(ROOT, 'host_tests', 'mp', 'poll_bound.py'), str(port), '500'],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ, MICROPYPATH=MICROPYPATH))
    ls.close()
    assert r.returncode == 0, r.stderr
    worst = int(next(ln for ln in r.stdout.splitlines() if ln.startswith('worst_poll_ms')).split()[1])
    assert worst <= 2 * 500 + 200, r.stdout         # budget + one socket timeout + slack
    record('mqtt', trickle={'sock_timeout_ms': 500, 'worst_poll_ms': worst})
