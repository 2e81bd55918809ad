"""The real firmware on the MicroPython unix port against the Modbus RTU site simulator (real time).

Each test starts tools/fil.Rig: the simulator (Eastron SDM630 meter id 1, SunSpec 802/124 battery
id 2 on one pty) and firmware/main.py with a site config pointing at that pty.
"""
import json
import os

import pytest

from fil import Rig, parse_cycle
from modbus_sim import Scenario

PERIOD_MS = 500
LIMITS = {'import_limit_w': 60000, 'phase_limit_w': 25000, 'max_charge_w': 40000,
          'max_discharge_w': 40000, 'ramp_w_per_s': 40000}
BAT = {'capacity_wh': 100000, 'soc_bp': 6000, 'max_chg_w': 40000, 'max_dis_w': 40000}


def rig(scenario, control=None, cycles=0, battery_kw=None, **kw):
    c = dict(LIMITS)
    c.update(control or {})
    return Rig(c, scenario=Scenario(scenario), battery_kw=dict(BAT, **(battery_kw or {})),
               period_ms=PERIOD_MS, cycles=cycles, **kw)


def wait_for(r, pred, cycles, what):
    for c in r.wait_cycles(cycles):
        if pred(c):
            return c
    raise AssertionError('%s not seen within %d cycles; last: %s' % (what, cycles, r.lines[-3:]))


def gcp(c):
    return c['sim']['gcp_w']


def test_ev_step_over_the_limit_is_shaved_within_a_few_cycles_total_and_per_phase():
    # 30 kW base; at 3 s a 22 kW three-phase EV and two 7.4 kW single-phase EVs on L1:
    # 66.8 kW total (limit 60), L1 32.1 kW (limit 25): the phase needs 3 x 7.1 kW of battery.
    sc = [(0, 30000, 0, 0, 0, 0), (3, 30000, 0, 22134, 7333, 7333)]
    with rig(sc, control={'ev_headroom_w': 25000}) as r:
        over = wait_for(r, lambda c: c['gcp'] > 60000 or c['l1'] > 25000, 20, 'EV step')
        assert over['sp'] > 0                # reacts in the cycle that first sees the excess
        after = r.wait_cycles(4)
        last = after[-1]
        g = gcp(last)
        assert last['state'] == 'discharging' and last['bind'] == 'phase_limit'
        assert max(g['l1'], g['l2'], g['l3']) <= 25000 + 100 and g['total'] <= 60000
        assert abs(last['sp'] - 3 * (32134 - 25000)) <= 300


def test_rp2040_board_hard_timer_and_de_pin():
    """pico_w.json: hard timer IRQ (the shim runs it with the heap locked, as an RP2040 would) and a
    DE/RE pin; the same firmware holds the limit. The UART is mapped onto the simulator's pty."""
    sc = [(0, 80000, 0, 0, 0, 0)]
    with rig(sc, control={'phase_limit_w': 0}, cycles=12, board='pico_w') as r:
        c = wait_for(r, lambda c: c['state'] == 'discharging' and abs(c['sp'] - 20000) <= 300, 10,
                     'discharge under a hard timer')
        assert r.wait_exit(30) == 0
    assert 'MemoryError' not in '\n'.join(r.lines) and any(ln.startswith('done: 12 cycles') for ln in r.lines)


def test_taper_and_min_soc_hysteresis_through_the_bus():
    sc = [(0, 80000, 0, 0, 0, 0)]           # 20 kW over the limit, all the time
    ctl = {'min_soc_bp': 1000, 'taper_band_bp': 500, 'hysteresis_bp': 200, 'phase_limit_w': 0}
    with rig(sc, control=ctl, battery_kw={'soc_bp': 3000}) as r:
        c = wait_for(r, lambda c: c['state'] == 'discharging', 10, 'discharge')
        assert abs(c['sp'] - 20000) <= 300

        def set_soc(bp):                    # the battery's SoC, as its BMS would report it
            with r.sim.lock:
                r.sim.bat.energy_mwh = r.sim.bat.capacity_mwh * bp // 10000

        set_soc(1250)                       # halfway into the taper band: cap 20 kW
        c = wait_for(r, lambda c: c['state'] == 'tapering' and c['soc'] < 1300, 6, 'taper')
        assert c['bind'] == 'taper' and c['sp'] <= 40000 * (c['soc'] - 1000) // 500 + 10
        set_soc(1000)
        c = wait_for(r, lambda c: c['state'] == 'min_soc_lock', 6, 'min-SoC lock')
        assert c['sp'] == 0
        set_soc(1150)                       # inside the hysteresis band: stays locked
        for c in r.wait_cycles(4):
            assert c['sp'] == 0 and c['state'] == 'min_soc_lock'
        assert r.sim.status()['battery']['setpoint_w'] == 0
        set_soc(1210)                       # min + 2 %: discharge resumes (tapered)
        c = wait_for(r, lambda c: c['sp'] > 0, 6, 'release at min + hysteresis')
        assert c['soc'] >= 1200


def test_meter_silent_means_zero_watts_within_3_s_and_recovery():
    sc = [(0, 80000, 0, 0, 0, 0)]
    with rig(sc, control={'phase_limit_w': 0}) as r:
        wait_for(r, lambda c: c['state'] == 'discharging', 10, 'discharge')
        wait_for(r, lambda c: r.sim.status()['battery']['setpoint_w'] > 15000, 6, 'battery at setpoint')
        r.sim.set_fault('silent', unit=1, duration_s=5)
        t0 = r.sim.status()['t_ms']
        zero = wait_for(r, lambda c: c['sim']['battery']['setpoint_w'] == 0, 12, 'battery at 0 W')
        assert zero['sim']['t_ms'] - t0 <= 3000
        assert zero['state'] == 'failsafe' and zero['flags'] & 16          # meter_bad
        c = wait_for(r, lambda c: c['state'] == 'discharging', 16, 'recovery')
        assert c['sim']['battery']['setpoint_w'] > 0


def test_battery_silent_raises_alarm_retries_and_recovers():
    sc = [(0, 80000, 0, 0, 0, 0)]
    with rig(sc, control={'phase_limit_w': 0}, cycles=44) as r:
        wait_for(r, lambda c: c['state'] == 'discharging', 10, 'discharge')
        r.sim.set_fault('silent', unit=2, duration_s=4)
        c = wait_for(r, lambda c: c['state'] == 'failsafe', 10, 'battery alarm')
        assert c['flags'] & 32 and not c['flags'] & 16                    # battery_bad only
        wait_for(r, lambda c: c['state'] == 'discharging', 16, 'recovery')
        assert r.wait_exit(30) == 0
    stats = json.loads([ln for ln in r.lines if ln.startswith('stats ')][0][6:])
    b = stats['battery']
    assert b['no_response'] >= 2 and b['retries'] >= 1 and b['failed_calls'] >= 1
    assert stats['meter']['failed_calls'] == 0


def test_every_injected_fault_is_counted_and_never_crashes_the_loop():
    sc = [(0, 80000, 0, 0, 0, 0)]
    with rig(sc, control={'phase_limit_w': 0}, cycles=34) as r:
        wait_for(r, lambda c: c['state'] == 'discharging', 10, 'discharge')
        for kind, unit in (('bad_crc', 1), ('exception', 2), ('garbage', 1), ('truncate', 2),
                           ('slow', 1), ('gone', 2)):
            r.sim.set_fault(kind, unit=unit, count=2, code=2, delay_ms=400)
            r.wait_cycles(4)
        assert r.wait_exit(60) == 0
    stats = json.loads([ln for ln in r.lines if ln.startswith('stats ')][0][6:])
    m, b = stats['meter'], stats['battery']
    assert m['bad_crc'] >= 2
    assert b['exception'] >= 1 and b['last_exc'] == 2
    assert m['garbled'] + m['bad_crc'] + m['wrong_unit'] >= 4          # garbage: random bytes
    assert b['garbled'] >= 1                                            # truncated answers
    assert m['no_response'] + m['garbled'] >= 1                         # slow: past the timeout
    assert b['no_response'] >= 2                                        # gone
    done = [ln for ln in r.lines if ln.startswith('done:')]
    assert done and 'Traceback' not in '\n'.join(r.lines)


def test_a_cycle_that_raises_fails_safe_and_the_loop_goes_on(tmp_path):
    """Cycles 4-6 raise after the core asked for 20 kW: the battery gets 0 W at once, the loop
    keeps running, the watchdog is not fed for those cycles; then control resumes."""
    import subprocess
    from fil import MICROPYTHON, MICROPYPATH, ROOT
    r = rig([(0, 80000, 0, 0, 0, 0)], control={'phase_limit_w': 0})
    r.sim.start()
    try:
        site = dict(r.site)
        site['bus'] = dict(site['bus'], device=r.sim.paths[0])
        cfg = tmp_path / 'site.json'
        cfg.write_text(json.dumps(site))
        p = subprocess.Popen([MICROPYTHON, os.path.join(ROOT, 'host_tests', 'mp', 'cycle_fault.py'), str(cfg), ROOT],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, MICROPYPATH=MICROPYPATH))
        lines = list(p.stdout)
        p.wait(30)
    finally:
        r.sim.stop()
    out = ''.join(lines)
    assert p.returncode == 0, out
    assert "injected fault in cycle 4',); 0 W sent" in out, out
    assert 'RESULT cycles=10 cycle_errors=3 fed=7' in out, out
    # the first reading after the faults: the battery had been commanded 0 W (it was at 20 kW)
    k = next(i for i, x in enumerate(lines) if x.startswith('cycle failed'))
    before = [parse_cycle(x) for x in lines[:k] if x.startswith('cyc ')]
    after = [parse_cycle(x) for x in lines[k:] if x.startswith('cyc ')]
    assert before[-1]['bat'] > 15000 and after[0]['bat'] == 0, out
    assert after[-1]['state'] == 'discharging'                  # control resumed


def test_a_device_whose_layout_differs_from_its_profile_is_refused_and_never_written():
    """The SunSpec battery profile asserts its model chain (identify). A battery that answers
    model 803 where 802 is expected is refused: no setpoint is ever written to it, fail-safe."""
    sc = [(0, 80000, 0, 0, 0, 0)]
    r = rig(sc, control={'phase_limit_w': 0}, cycles=6)
    with r.sim.lock:
        r.sim.battery.regs[3][40070] = 803
    with r:
        cyc = r.wait_cycles(6)
        assert r.wait_exit(30) == 0
    out = '\n'.join(r.lines)
    assert 'REFUSED sunspec_battery_802_124 at unit 2: register 40070 reads 803' in out, out
    assert all(c['state'] == 'failsafe' and c['sp'] == 0 for c in cyc)
    assert r.sim.status()['battery']['setpoint_w'] == 0
    assert r.sim.battery.regs[3].get(40139, 0) == 0            # StorCtl_Mod never written
    assert 'REFUSED eastron' not in out          # the meter (no identify entries) is unaffected


@pytest.mark.parametrize('kind', ['bad_crc', 'silent', 'garbage'])
def test_transient_errors_while_identifying_are_retried_not_refused(kind):
    """Issue 10 #3: two transient errors on the identify read used to refuse the battery until
    reboot. Now only registers that read but differ (or do not exist) refuse; the rest is retried
    with a backoff, said in the log, and the battery is confirmed and controlled afterwards."""
    sc = [(0, 80000, 0, 0, 0, 0)]
    r = rig(sc, control={'phase_limit_w': 0}, cycles=30)
    r.sim.set_fault(kind, unit=2, count=4)          # the first identify attempts (with retries)
    with r:
        c = wait_for(r, lambda c: c['state'] == 'discharging', 25, 'control after identify retries')
        assert abs(c['sp'] - 20000) <= 300
    out = '\n'.join(r.lines)
    assert 'REFUSED' not in out, out
    assert 'sunspec_battery_802_124 at unit 2: identify register 40000 not read' in out, out
    assert 'sunspec_battery_802_124 at unit 2: layout confirmed' in out, out


def test_a_broken_mqtt_section_never_costs_battery_control():
    """Telemetry settings must not take away import-limit protection: an mqtt section the link
    cannot use (no client id, a bad HMAC key) disables MQTT with a message; control runs."""
    sc = [(0, 80000, 0, 0, 0, 0)]
    for mq in ({'server': '127.0.0.1', 'port': 1}, {'server': '127.0.0.1', 'client_id': 'x', 'hmac_key': 'zz'}):
        r = rig(sc, control={'phase_limit_w': 0}, cycles=8, mqtt=mq)
        with r:
            c = wait_for(r, lambda c: c['state'] == 'discharging', 8, 'control without MQTT')
            assert abs(c['sp'] - 20000) <= 300
            assert r.wait_exit(30) == 0
        assert any(ln.startswith('MQTT DISABLED') for ln in r.lines), r.lines[:5]


def test_timing_the_watchdog_cannot_survive_boots_into_the_safe_state_not_a_reset_loop():
    r = Rig(dict(LIMITS, stale_ms=24000), scenario=Scenario([(0, 80000, 0, 0, 0, 0)]), battery_kw=BAT, period_ms=12000)
    with r:
        ok = False
        for _ in range(40):
            if any('SAFE STATE' in ln for ln in r.lines):
                ok = True
                break
            import time
            time.sleep(0.25)
        assert ok, r.lines
        assert r.proc.poll() is None                # held safe, not reset by the watchdog
    assert any("3/4 of the board's watchdog" in ln for ln in r.lines), r.lines
