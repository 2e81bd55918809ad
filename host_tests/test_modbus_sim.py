"""tools/modbus_sim.py: RTU round trips on a pty with pymodbus' client, setpoints, faults, CLI."""
import json
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip('pymodbus')
from pymodbus import FramerType  # noqa: E402
from pymodbus.client import ModbusSerialClient  # noqa: E402
from pymodbus.exceptions import ModbusIOException  # noqa: E402

import devprofile  # noqa: E402
import modbus_sim  # noqa: E402
import regdecode as rd  # noqa: E402
from test_profiles import BATTERY_VALUES, METER_VALUES, expected  # noqa: E402

TIMEOUT_S = 0.3


def client(path):
    c = ModbusSerialClient(port=path, framer=FramerType.RTU, baudrate=9600, timeout=TIMEOUT_S, retries=0)
    assert c.connect()
    return c


def read_block(c, unit, b):
    f = c.read_input_registers if b.fc == 4 else c.read_holding_registers
    r = f(b.start, count=b.count, device_id=unit)
    assert not r.isError(), r
    return r.registers


def read_profile(c, unit, prof):
    for b in prof.blocks:
        b.buf[:] = type(b.buf)('H', read_block(c, unit, b))
        b.ok = 1


def send_writes(c, unit, writes):
    for w in writes:
        if w.fc == 6:
            r = c.write_register(w.addr, w.buf[0], device_id=unit)
        else:
            r = c.write_registers(w.addr, list(w.buf), device_id=unit)
        assert not r.isError(), r


def attempt(c, unit=1, addr=12, fc=4, count=2):
    """(seconds, response or exception) for one read."""
    t = time.monotonic()
    try:
        f = c.read_input_registers if fc == 4 else c.read_holding_registers
        r = f(addr, count=count, device_id=unit)
    except ModbusIOException as e:
        r = e
    return time.monotonic() - t, r


def ok(r):
    return not isinstance(r, Exception) and not r.isError()


# meter + battery on ONE line (two unit ids); every profile goes through a real RTU round trip
PAIRS = [('eastron_sdm630', 'sunspec_battery_802_124'),
         ('carlo_gavazzi_em24', 'sungrow_sh'),
         ('sunspec_meter_203', 'huawei_luna2000')]


@pytest.mark.parametrize('meter, battery', PAIRS)
def test_rtu_round_trip_exact(meter, battery):
    with modbus_sim.SiteSimulator(meter=meter, battery=battery, meter_id=1, battery_id=2) as sim:
        assert len(sim.paths) == 1 and sim.path_of(1) == sim.path_of(2)
        for d in sim.devices:
            d.frozen = True
        c = client(sim.paths[0])
        try:
            for mv, bv in zip(METER_VALUES, BATTERY_VALUES):
                with sim.lock:
                    sim.meter.set_values({k: v for k, v in mv.items() if k in sim.meter.prof.points})
                    sim.battery.set_values({k: v for k, v in bv.items() if k in sim.battery.prof.points})
                for dev in sim.devices:
                    prof = devprofile.load(modbus_sim.profile_path(dev.prof.name))
                    read_profile(c, dev.unit_id, prof)
                    vals = mv if prof.kind == 'meter' else bv
                    for name, q in prof.points.items():
                        sf = 0
                        if q.sf_block is not None:
                            sf = rd.decode_sf([dev.regs[q.fc][q.sf_addr]], 0)
                        assert prof.value(name) == expected(q, vals[name], sf), (prof.name, name)
        finally:
            c.close()


def test_live_physics_and_setpoint_over_modbus():
    scen = modbus_sim.Scenario.from_csv(os.path.join(modbus_sim.SCENARIO_DIR, 'ev_site_morning.csv'))
    with modbus_sim.SiteSimulator(scenario=scen, speed=1.0, tick_ms=20) as sim:
        c = client(sim.paths[0])
        try:
            meter = devprofile.load(modbus_sim.profile_path('eastron_sdm630'))
            bat = devprofile.load(modbus_sim.profile_path('sunspec_battery_802_124'))
            read_profile(c, 1, meter)
            assert meter.value('total_w') == 6000 and meter.value('l1_w') == 2000
            read_profile(c, 2, bat)
            soc0 = bat.value('soc_bp')
            assert soc0 == 5000 and bat.value('power_w') == 0
            send_writes(c, 2, bat.control.plan(-20000))        # charge 20 kW (40 % of WChaMax)
            assert sim.bat.setpoint_w == -20000 and sim.bat.revert_ms == 60000
            time.sleep(0.6)                                      # ramp 50 kW/s: reached in 0.4 s
            read_profile(c, 2, bat)
            read_profile(c, 1, meter)
            assert bat.value('power_w') == -20000
            # charging shows as import (site_model splits the battery per phase with //3)
            assert meter.value('total_w') == sim.site.phases(0, -20000)[3] == 26001
            send_writes(c, 2, bat.control.plan(15000))
            time.sleep(0.8)
            read_profile(c, 1, meter)
            read_profile(c, 2, bat)
            assert bat.value('power_w') == 15000
            assert meter.value('total_w') == sim.site.phases(1, 15000)[3] == 6000 - 15000
            assert meter.value('import_wh') >= 0 and bat.value('soc_bp') < 5000 + 100
        finally:
            c.close()


def test_revert_timer_over_modbus():
    with modbus_sim.SiteSimulator(tick_ms=20) as sim:
        c = client(sim.paths[0])
        try:
            bat = devprofile.load(modbus_sim.profile_path('sunspec_battery_802_124'))
            read_profile(c, 2, bat)
            bat.control.revert_s = 1                            # RvrtTms = 1 s
            send_writes(c, 2, bat.control.plan(10000))
            time.sleep(0.4)
            assert sim.bat.actual_w == 10000 and sim.bat.revert_ms == 1000
            time.sleep(1.0)                                      # controller went quiet
            assert sim.bat.actual_w == 0
            send_writes(c, 2, bat.control.plan(10000))          # re-armed
            time.sleep(0.4)
            assert sim.bat.actual_w == 10000
        finally:
            c.close()


def test_scenario_drives_meter_deterministically():
    scen = modbus_sim.Scenario.from_csv(os.path.join(modbus_sim.SCENARIO_DIR, 'ev_site_morning.csv'))
    sim = modbus_sim.SiteSimulator(meter='carlo_gavazzi_em24', battery='sungrow_sh', battery_id=2, scenario=scen)
    try:
        sim.step_physics(250000)                                # t = 250 s, no threads
        prof = devprofile.load(modbus_sim.profile_path('carlo_gavazzi_em24'))
        for b in prof.blocks:
            for k in range(b.count):
                b.buf[k] = sim.meter.regs[b.fc][b.start + k]
            b.ok = 1
        l1, l2, l3, tot = sim.site.phases(250, 0)
        assert (prof.value('l1_w'), prof.value('l2_w'), prof.value('l3_w'), prof.value('total_w')) == (l1, l2, l3, tot)
        assert l1 == 7500 // 3 - 15000 // 3 + 18400 and l2 == l3 == 7500 // 3 - 15000 // 3 + 11000
    finally:
        sim.stop()


# --- faults -------------------------------------------------------------------------------------------------

@pytest.fixture
def sim_client():
    sim = modbus_sim.SiteSimulator().start()
    c = client(sim.paths[0])
    yield sim, c
    c.close()
    sim.stop()


def test_each_fault_observable(sim_client):
    sim, c = sim_client
    dt, r = attempt(c)
    assert ok(r) and dt < 0.1

    sim.set_fault('exception', unit=1, count=1, code=6)
    dt, r = attempt(c)
    assert not isinstance(r, Exception) and r.isError() and r.exception_code == 6

    for kind in ('silent', 'bad_crc', 'garbage', 'truncate'):
        sim.set_fault(kind, unit=1, count=1)
        dt, r = attempt(c)
        assert isinstance(r, ModbusIOException), kind
        assert dt >= TIMEOUT_S * 0.9, kind
        time.sleep(0.05)
        dt, r = attempt(c)
        assert ok(r), kind                                       # count=1: back to normal

    sim.set_fault('slow', unit=1, count=1, delay_ms=150)
    dt, r = attempt(c)
    assert ok(r) and 0.14 <= dt < TIMEOUT_S                      # late but inside the timeout
    sim.set_fault('slow', unit=1, count=1, delay_ms=500)
    dt, r = attempt(c)
    assert isinstance(r, ModbusIOException)                      # too late: a timeout
    time.sleep(0.4)                                              # the late answer arrives, stale
    c.close()
    c.connect()
    stats = sim.lines[0].stats
    assert stats['faults'] == 7


def test_fault_scoped_to_unit_and_line(sim_client):
    sim, c = sim_client
    sim.set_fault('silent', unit=1)
    assert isinstance(attempt(c, 1)[1], ModbusIOException)
    assert ok(attempt(c, 2, addr=40081, fc=3, count=1)[1])       # the battery still answers
    sim.clear_faults()
    assert ok(attempt(c, 1)[1])
    sim.set_fault('silent', count=2)                             # whole line
    assert isinstance(attempt(c, 1)[1], ModbusIOException)
    assert isinstance(attempt(c, 2, addr=40081, fc=3, count=1)[1], ModbusIOException)
    assert ok(attempt(c, 1)[1])


def test_a_fault_restricted_to_reads_or_writes(sim_client, tmp_path):
    """only='read': the battery's reads fail while its writes work (0 W must still get through);
    only='write': the reverse. count counts only the requests the fault applies to. The same
    option through the control file and the CLI."""
    sim, c = sim_client
    bat = devprofile.load(modbus_sim.profile_path('sunspec_battery_802_124'))
    read_profile(c, 2, bat)
    f = sim.set_fault('bad_crc', unit=2, only='read', count=2)
    send_writes(c, 2, bat.control.plan(8000))                   # FC 16 answered
    assert sim.bat.setpoint_w == 8000 and f.hits == 0
    assert isinstance(attempt(c, 2, addr=40081, fc=3, count=1)[1], ModbusIOException)
    send_writes(c, 2, bat.control.plan(0))                      # 0 W needs no readings
    assert sim.bat.setpoint_w == 0
    assert isinstance(attempt(c, 2, addr=40081, fc=3, count=1)[1], ModbusIOException)
    assert ok(attempt(c, 2, addr=40081, fc=3, count=1)[1])       # the 2 reads used the count up
    assert ok(attempt(c, 1)[1])                                  # the meter never was affected

    sim.set_fault('exception', unit=2, only='write', code=4)
    assert ok(attempt(c, 2, addr=40081, fc=3, count=1)[1])
    r = c.write_register(40149, 60, device_id=2)
    assert r.isError() and r.exception_code == 4
    sim.clear_faults()

    with pytest.raises(ValueError):
        sim.set_fault('silent', only='reads')
    ctl = tmp_path / 'ctl.json'
    tool = os.path.join(modbus_sim.HERE, 'modbus_sim.py')
    assert subprocess.call([sys.executable, tool, 'fault', str(ctl), 'silent', '--unit', '2',
                            '--only', 'read']) == 0
    assert json.loads(ctl.read_text()) == {'faults': [{'kind': 'silent', 'unit': 2, 'only': 'read'}]}
    sim.apply_control(json.loads(ctl.read_text()))
    assert isinstance(attempt(c, 2, addr=40081, fc=3, count=1)[1], ModbusIOException)
    send_writes(c, 2, bat.control.plan(5000))
    assert sim.bat.setpoint_w == 5000
    assert subprocess.call([sys.executable, tool, 'fault', str(ctl), 'silent', '--only', 'both'],
                           stderr=subprocess.DEVNULL) != 0


def test_device_disappears_and_comes_back(sim_client):
    sim, c = sim_client
    bat = devprofile.load(modbus_sim.profile_path('sunspec_battery_802_124'))
    read_profile(c, 2, bat)
    send_writes(c, 2, bat.control.plan(8000))
    assert sim.bat.setpoint_w == 8000
    sim.set_fault('gone', unit=2, duration_s=0.8)
    assert isinstance(attempt(c, 2, addr=40081, fc=3, count=1)[1], ModbusIOException)
    time.sleep(0.6)
    dt, r = attempt(c, 2, addr=40081, fc=3, count=1)
    assert ok(r)                                                 # back, rebooted:
    assert sim.bat.setpoint_w == 0 and sim.battery.regs[3][40139] == 0


def test_protocol_errors_and_unknown_unit(sim_client):
    sim, c = sim_client
    dt, r = attempt(c, 1, addr=0, count=2)                       # not in any read block
    assert r.isError() and r.exception_code == 2
    dt, r = attempt(c, 1, addr=50, count=10)                     # runs past the block (12..53)
    assert r.isError() and r.exception_code == 2
    r = c.write_register(40081, 1, device_id=2)                  # SoC is read-only
    assert r.isError() and r.exception_code == 2
    dt, r = attempt(c, 9)                                        # nobody at id 9: silence
    assert isinstance(r, ModbusIOException)


def test_garbage_on_the_line_from_the_master_side(sim_client):
    """Noise before a request: the responder drops it at the inter-frame gap and resyncs."""
    sim, c = sim_client
    c.close()
    fd = os.open(sim.paths[0], os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b'\x01\x04\xff\x13\x37')                   # half a frame of junk
        time.sleep(0.1)
        os.write(fd, modbus_sim.with_crc(bytes((1, 4, 0, 52, 0, 2))))
        time.sleep(0.1)
        resp = os.read(fd, 64)
        assert resp[:3] == bytes((1, 4, 4)) and modbus_sim.crc_ok(resp)
        assert sim.lines[0].stats['crc_errors'] >= 1
    finally:
        os.close(fd)


def test_split_lines():
    with modbus_sim.SiteSimulator(split=True) as sim:
        assert len(sim.paths) == 2 and sim.path_of(1) != sim.path_of(2)
        c = client(sim.path_of(1))
        try:
            assert ok(attempt(c, 1)[1])
            assert isinstance(attempt(c, 2, addr=40081, fc=3, count=1)[1], ModbusIOException)
        finally:
            c.close()


def test_cli_run_and_control_file(tmp_path):
    pty_file = tmp_path / 'pty.json'
    ctl = tmp_path / 'ctl.json'
    status = tmp_path / 'status.json'
    tool = os.path.join(modbus_sim.HERE, 'modbus_sim.py')
    p = subprocess.Popen([sys.executable, tool, 'run', '--meter', 'eastron_sdm630', '--battery', 'sungrow_sh',
                          '--battery-id', '2', '--pty-file', str(pty_file), '--control', str(ctl),
                          '--status', str(status)], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith('PTY /dev/') and '1=eastron_sdm630' in line and '2=sungrow_sh' in line
        info = json.loads(pty_file.read_text())
        path = info['lines'][0]['path']
        assert line.split()[1] == path
        c = client(path)
        try:
            assert ok(attempt(c, 1)[1])
            assert subprocess.call([sys.executable, tool, 'fault', str(ctl), 'exception', '--unit', '1',
                                    '--code', '4']) == 0
            deadline = time.monotonic() + 3
            r = None
            while time.monotonic() < deadline:
                r = attempt(c, 1)[1]
                if not ok(r):
                    break
                time.sleep(0.05)
            assert r.isError() and r.exception_code == 4
            assert ok(attempt(c, 2, addr=13022, fc=4, count=1)[1])
            assert subprocess.call([sys.executable, tool, 'clear', str(ctl)]) == 0
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not ok(attempt(c, 1)[1]):
                time.sleep(0.05)
            assert ok(attempt(c, 1)[1])
            st = json.loads(status.read_text())
            assert st['lines'][0]['path'] == path and 'soc_bp' in st['battery']
        finally:
            c.close()
    finally:
        p.terminate()
        p.wait(5)
    assert p.returncode == 0
