"""Operator overrides (issue 12, item 3): tools/fleet/override.py. Schedule overrides are new
versions of the plan's schedules, checked here by the device's rules; a dispatch is a signed
command that the real firmware (MicroPython unix port) accepts with its own key and acks."""
import json
import os
import time

from mqtt_fixtures import Device, wait_for, procs  # noqa: F401
from fleet_fixtures import Stopper, provisioned_broker, twins, write_plan, simple_schedule

import override  # noqa: E402  (tools/fleet)
import schedule_host  # noqa: E402

NOW = 1790000000
COMM = {'min_soc_bp': 1000, 'max_soc_bp': 9500, 'import_limit_w': 20000}


def _plan_schedule():
    iv = []
    for k in range(8):
        e = {'start': NOW + 900 * k, 'duration_s': 900, 'reserve_soc_bp': 3000}
        if k in (1, 5):
            e['power_w'] = 4000                     # economic (arbitrage)
        if k == 3:
            e.update(power_w=5000, firm=True, export=True)      # an obligation, as the planner writes it
        iv.append(e)
    return {'v': 1, 'id': 's/day', 'version': 10, 'created': NOW - 60, 'valid_until': NOW + 86400,
            'default': {'objective': 'ss'}, 'intervals': iv}


def test_suspending_arbitrage_keeps_the_obligation_and_ends_at_the_expiry():
    d = _plan_schedule()
    s = override.override_schedule(d, 'suspend_arbitrage', NOW + 4 * 900, 11)
    assert schedule_host.validate(s, COMM, 10) == []
    iv = s['intervals']
    assert 'power_w' not in iv[1] and iv[1]['export'] is False          # arbitrage gone, no export
    assert iv[3] == d['intervals'][3] and iv[3]['export'] is True     # the obligation stays, export too
    assert iv[5] == d['intervals'][5]                                  # after the expiry: the plan
    assert d['intervals'][1]['power_w'] == 4000                        # the plan itself is untouched


def test_forcing_the_reserve_never_lowers_it():
    s = override.override_schedule(_plan_schedule(), 'force_reserve', NOW + 2 * 900, 12, reserve_bp=6000)
    assert [i['reserve_soc_bp'] for i in s['intervals'][:3]] == [6000, 6000, 3000]
    s = override.override_schedule(_plan_schedule(), 'force_reserve', NOW + 900, 12, reserve_bp=2000)
    assert s['intervals'][0]['reserve_soc_bp'] == 3000
    assert schedule_host.validate(s, COMM, 10) == []


def test_a_schedule_override_goes_out_as_a_new_version_and_is_acked(tmp_path, procs):
    ids = ['o1', 'o2', 'o3']
    br, sec, fleet = provisioned_broker(tmp_path, ids)
    procs.append(br)
    t = twins(br.port, os.path.join(fleet, 'secrets.json'), ids)
    procs.append(Stopper(t))
    plan = write_plan(tmp_path / 'plan', ids, 100)
    r = override.main(['--plan', plan, '--secrets', os.path.join(fleet, 'secrets.json'), '--port', str(br.port),
                       '--sites', 'o1,o3', '--until', '+1800', '--force-reserve', '7000', '--deadline', '+20'])
    assert r == 0
    s1 = json.load(open(os.path.join(plan, 'schedules', 'o1.json')))
    s2 = json.load(open(os.path.join(plan, 'schedules', 'o2.json')))
    assert s1['version'] > 100 and s1['intervals'][0]['reserve_soc_bp'] == 7000
    assert s2 == simple_schedule('o2', 100, s2['created'] + 60)        # not chosen: unchanged


def test_a_dispatch_reaches_the_real_firmware_signed_and_is_acked(tmp_path, procs):
    ids = ['fw1']
    br, sec, fleet = provisioned_broker(tmp_path, ids)
    procs.append(br)
    dev = sec['devices']['fw1']
    fw = Device(tmp_path, 'fw1', br.port, mqtt_extra={'user': 'fw1', 'password': dev['password']},
                hmac_key=dev['hmac_key'], base_cfg={'import_limit_w': 20000, 'max_discharge_w': 8000})
    procs.append(fw.start())
    assert wait_for(lambda: fw.last().get('connected') or fw.last().get('published'), 20), fw.stats[-3:]
    acks = override.dispatch(sec, ids, 3000, 600, '127.0.0.1', br.port, time.time() + 15)
    assert acks['fw1'] and acks['fw1']['ok'], acks
    # the same command again (a replay: its ctr is not newer) is refused by the device
    t, pl = override.dispatch_payload(dev['hmac_key'], 'fw1', 3000, 600, ctr=5, req_id='ovr-fw1')
    acks2 = {}
    import paho.mqtt.client as mqtt
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    svc = sec['services'][2]
    c.username_pw_set(svc['user'], svc['password'])
    c.on_message = lambda cl, u, m: acks2.setdefault('a', json.loads(m.payload))
    c.connect('127.0.0.1', br.port)
    c.loop_start()
    c.subscribe('bess/fw1/cmd/ack', 1)
    time.sleep(0.3)
    c.publish(t, pl, qos=1)
    assert wait_for(lambda: acks2, 10)
    c.disconnect()
    c.loop_stop()
    assert acks2['a']['ok'] is False and 'replay' in acks2['a']['reason']


def test_an_override_the_device_would_refuse_changes_nothing(tmp_path):
    plan = write_plan(tmp_path / 'plan', ['v1', 'v2'], 100)
    before = {i: open(os.path.join(plan, 'schedules', i + '.json')).read() for i in ('v1', 'v2')}
    import pytest
    with pytest.raises(override.OverrideError, match='reserve_soc_bp'):
        override.schedules(plan, ['v1', 'v2'], 'force_reserve', time.time() + 3600, 20000, version=101)
    assert {i: open(os.path.join(plan, 'schedules', i + '.json')).read() for i in ('v1', 'v2')} == before
    override.schedules(plan, ['v1'], 'suspend_arbitrage', time.time() + 3600, version=102)    # still possible


def test_a_site_without_its_commissioned_config_is_refused_and_nothing_changes(tmp_path):
    # the override must be checked against the site's commissioned limits: without them it is not
    # waved through (review finding), and the other sites of the same override stay as they were
    plan = write_plan(tmp_path / 'plan', ['v1', 'v2'], 100)
    fleet = tmp_path / 'fleet'
    (fleet / 'sites').mkdir(parents=True)
    (fleet / 'sites' / 'v1.json').write_text(json.dumps({'control': COMM}))
    before = {i: open(os.path.join(plan, 'schedules', i + '.json')).read() for i in ('v1', 'v2')}
    import pytest
    with pytest.raises(override.OverrideError, match='v2: its commissioned site config'):
        override.schedules(plan, ['v1', 'v2'], 'suspend_arbitrage', time.time() + 3600, version=103,
                           fleet_dir=str(fleet))
    assert {i: open(os.path.join(plan, 'schedules', i + '.json')).read() for i in ('v1', 'v2')} == before
    (fleet / 'sites' / 'v2.json').write_text('{"control": 5}')
    with pytest.raises(override.OverrideError, match='"control" is not an object'):
        override.schedules(plan, ['v2'], 'suspend_arbitrage', time.time() + 3600, version=104, fleet_dir=str(fleet))
    for bad in ({}, {'import_limit_w': '20000'}):          # no limits, or not the device's kind of limits
        (fleet / 'sites' / 'v2.json').write_text(json.dumps({'control': bad}))
        with pytest.raises(override.OverrideError, match='v2: its commissioned site config'):
            override.schedules(plan, ['v1', 'v2'], 'suspend_arbitrage', time.time() + 3600, version=104,
                               fleet_dir=str(fleet))
        assert {i: open(os.path.join(plan, 'schedules', i + '.json')).read() for i in ('v1', 'v2')} == before
        assert not [f for f in os.listdir(os.path.join(plan, 'schedules')) if f.endswith('.new')]
    (fleet / 'sites' / 'v2.json').write_text(json.dumps({'control': COMM}))
    assert override.schedules(plan, ['v2', 'v2'], 'suspend_arbitrage', time.time() + 3600, version=106,
                              fleet_dir=str(fleet)) == ['v2']          # named twice: once
    assert override.schedules(plan, ['v1', 'v2'], 'suspend_arbitrage', time.time() + 3600, version=105,
                              fleet_dir=str(fleet)) == ['v1', 'v2']


def test_command_counters_always_increase(tmp_path):
    state = str(tmp_path / 'ctr')
    a = [override._bump(state, 1000) for _ in range(5)]
    assert a == [1000, 1001, 1002, 1003, 1004]
    assert override._bump(state, 999) == 1005          # the clock stepped back: still newer
