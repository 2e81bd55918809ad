"""Issue 11, firmware in the loop: the real firmware (unix port) against the Modbus site simulator,
a real mosquitto and the loopback NTP server. A signed schedule pushed on the retained schedule
topic -> status 'active' -> the battery follows it on the wire -> a bad one is rejected and
changes nothing -> reboot mid-schedule: the persisted schedule applies again once the clock is
valid -> clock lost: the default block -> a schedule that expires: the default block, reported."""
import json
import time

import command_mac
from fil import Rig
from modbus_sim import Scenario
from mqtt_fixtures import Broker, Collector, wait_for
from ntp_server import NtpServer

KEY = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff'
CONTROL = {'objective': 'gce', 'import_limit_w': 60000, 'max_charge_w': 40000, 'max_discharge_w': 40000,
           'ramp_w_per_s': 40000, 'usable_wh': 100000}
SITE = [(0, 80000, 0, 0, 0, 0)]         # 80 kW load: 20 kW over the 60 kW limit
TOPIC = 'bess/site1/schedule'


def signed(d):
    body = json.dumps(d, separators=(',', ':')).encode()
    return command_mac.sign(bytes.fromhex(KEY), TOPIC, body)


def schedule(version, power_w, valid_s=3600, **kw):
    now = int(time.time())
    d = {'v': 1, 'id': 'site1/test', 'version': version, 'created': now - 60, 'valid_until': now + valid_s,
         'default': {'objective': 'gce', 'reserve_soc_bp': 3000},
         'intervals': [{'start': now - 60, 'duration_s': valid_s + 60, 'power_w': power_w, 'firm': True}]}
    d.update(kw)
    return d


def statuses(col):
    return [json.loads(m[1]) for m in col.get('bess/site1/schedule/status')]


def sp_near(col, w, tol=600, after=None, **sch):
    """One of the last 3 records (received after the monotonic time `after`, when given) has the
    battery setpoint within tol of w and the schedule fields sch."""
    def f():
        t = [json.loads(m[1]) for m in col.get('bess/site1/telemetry') if after is None or m[3] > after]
        return [r for r in t[-3:] if abs(r['bat_sp_w'] - w) <= tol
                and all(r['sch'][k] == v for k, v in sch.items())]
    return f


def test_schedule_push_ack_behaviour_reboot_clock_loss_fallback(tmp_path):
    broker = Broker(tmp_path).start()
    ntp = NtpServer().start()
    col = Collector(broker.port)
    mq = {'client_id': 'site1', 'server': '127.0.0.1', 'port': broker.port, 'telemetry_ms': 1000,
          'keepalive': 10, 'backoff_min_ms': 200, 'backoff_max_ms': 1000, 'hmac_key': KEY}
    r = Rig(dict(CONTROL), scenario=Scenario(SITE), period_ms=500, mqtt=mq, workdir=str(tmp_path),
            battery_kw={'capacity_wh': 100000, 'soc_bp': 6000, 'max_chg_w': 40000, 'max_dis_w': 40000})
    r.site['schedule'] = {'ntp_host': '127.0.0.1', 'ntp_port': ntp.port, 'ntp_period_s': 10,
                          'ntp_retry_s': 1, 'clock_max_age_s': 20, 'path': str(tmp_path / 'schedule.json')}
    try:
        r.start()
        # no schedule: the commissioned config (gce: 20 kW over the limit -> 20 kW)
        assert wait_for(sp_near(col, 20000, source='config'), 30), r.lines[-20:]
        # 1. push a signed schedule: status active, the firm 30 kW on the wire
        col.publish(TOPIC, signed(schedule(5, 30000)), retain=True)
        assert wait_for(lambda: [s for s in statuses(col) if s['status'] == 'active' and s['version'] == 5], 15), \
            (statuses(col), r.lines[-20:])
        rec = wait_for(sp_near(col, 30000, source='schedule', version=5, id='site1/test'), 20)
        assert rec, col.telemetry('site1')[-3:]
        assert 29000 <= r.sim.status()['battery']['setpoint_w'] <= 31000       # on the wire
        # 2. an older version and a forged one: rejected with a reason, nothing changes
        col.publish(TOPIC, signed(schedule(4, 10000)), retain=True)
        assert wait_for(lambda: [s for s in statuses(col) if s['status'] == 'rejected'
                                 and 'not newer' in s['reason']], 15), statuses(col)
        forged = signed(schedule(9, 10000)).replace(b'"version":9', b'"version":8')
        col.publish(TOPIC, forged, retain=True)
        assert wait_for(lambda: [s for s in statuses(col) if s['status'] == 'rejected'
                                 and 'mac' in s['reason']], 15), statuses(col)
        time.sleep(2)
        assert wait_for(sp_near(col, 30000, source='schedule', version=5), 5)
        # 3. reboot mid-schedule: the persisted schedule applies again once the clock is valid
        t_boot = time.monotonic()
        r.restart_firmware()
        assert wait_for(lambda: any('schedule: site1/test version 5 loaded' in ln for ln in r.lines), 20), r.lines[-20:]
        # (records from after the restart: the ones before it said the same)
        assert wait_for(sp_near(col, 30000, source='schedule', version=5, after=t_boot), 30), col.telemetry('site1')[-3:]
        # 4. clock lost (the NTP server goes silent past clock_max_age_s): the default block
        ntp.configure(mode='silent')
        assert wait_for(lambda: [s for s in statuses(col) if s['status'] == 'fallback'
                                 and s['reason'] == 'no_clock'], 40), (statuses(col)[-3:], r.lines[-30:])
        assert wait_for(sp_near(col, 20000, source='fallback'), 10)
        ntp.configure(mode='ok')
        assert wait_for(sp_near(col, 30000, source='schedule', version=5), 30)
        # 5. a schedule that expires: the default block within a cycle, reported as expired
        col.publish(TOPIC, signed(schedule(6, 35000, valid_s=12)), retain=True)
        assert wait_for(sp_near(col, 35000, source='schedule', version=6), 15), statuses(col)[-3:]
        # the status says so, in the same interval index as version 5 had (it once stayed silent)
        assert wait_for(lambda: [s for s in statuses(col) if s['status'] == 'active' and s['version'] == 6
                                 and s.get('superseded') == {'id': 'site1/test', 'version': 5}], 10), statuses(col)[-3:]
        assert wait_for(lambda: [s for s in statuses(col) if s['status'] == 'expired' and s['version'] == 6], 25)
        assert wait_for(sp_near(col, 20000, source='fallback', version=6), 10)
        assert not [ln for ln in r.lines if 'Traceback' in ln or 'failed' in ln.lower() and 'cycle' in ln], r.lines
    finally:
        r.stop()
        col.close()
        ntp.stop()
        broker.stop()


def test_telemetry_time_follows_the_wall_clock_once_it_syncs(tmp_path):
    # records hold uptime; their ts_ms is the wall clock at uptime 0 plus uptime. Before a sync that
    # is the device's time.time() at boot (a board without a set RTC: no wall time at all), after
    # it the NTP time, followed at every sync (make fleet's accelerated day relies on it).
    broker = Broker(tmp_path).start()
    ahead_s = 2 * 86400
    ntp = NtpServer(offset_s=ahead_s, mode='silent').start()
    col = Collector(broker.port)
    mq = {'client_id': 'site1', 'server': '127.0.0.1', 'port': broker.port, 'telemetry_ms': 1000}
    r = Rig(dict(CONTROL), scenario=Scenario(SITE), period_ms=500, mqtt=mq, workdir=str(tmp_path))
    r.site['schedule'] = {'ntp_host': '127.0.0.1', 'ntp_port': ntp.port, 'ntp_period_s': 10, 'ntp_retry_s': 1,
                          'path': str(tmp_path / 'schedule.json')}

    mono0, wall0 = time.monotonic(), time.time()

    def offsets(after):
        """ts - the host's wall clock when the record came, for the records received after `after`."""
        return [json.loads(m[1])['ts_ms'] / 1000 - (wall0 + m[3] - mono0) for m in col.get('bess/site1/telemetry')
                if m[3] > after]
    try:
        r.start()
        assert wait_for(lambda: len(offsets(mono0)) >= 2, 30), r.lines[-20:]
        assert all(-10 < x < 2 for x in offsets(mono0)), offsets(mono0)     # no sync yet: the host's clock (records may wait for the link)
        ntp.configure(mode='ok')
        assert wait_for(lambda: any(-10 < x - ahead_s < 2 for x in offsets(mono0)), 20), offsets(mono0)[-3:]
        t2 = time.monotonic()
        assert wait_for(lambda: len(offsets(t2)) >= 3, 20)
        assert all(-10 < x - ahead_s < 2 for x in offsets(t2)), offsets(t2)
    finally:
        r.stop()
        col.close()
        ntp.stop()
        broker.stop()
