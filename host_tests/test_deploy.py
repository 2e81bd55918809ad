"""Boards and deployment (issue #5) against a virtual board: the MicroPython unix port behind a pty
with its own filesystem root (tools/vboard.py). Every deploy here is the real `make deploy`
(tools/deploy.py over mpremote's serial transport); the firmware then boots from the deployed
files on the unix port and controls the Modbus RTU site simulator (tools/modbus_sim.py).
"""
import glob
import json
import os
import re
import shutil
import subprocess
import time

import pytest

import build as fwbuild
import site_config
from modbus_sim import SiteSimulator, Scenario
from vboard import VirtualBoard
from figures import record
from mqtt_fixtures import Broker, Collector, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAT = {'capacity_wh': 100000, 'soc_bp': 6000, 'max_chg_w': 40000, 'max_dis_w': 40000}
OVER = [(0, 80000, 0, 0, 0, 0)]         # 80 kW base load: 20 kW over a 60 kW limit, all the time
VALUES = {'IMPORT_LIMIT_W': 60000, 'MAX_CHARGE_W': 40000, 'MAX_DISCHARGE_W': 40000, 'RAMP_W_PER_S': 40000,
          'PERIOD_MS': 500, 'LOG_CYCLES': 1, 'BUS_TIMEOUT_MS': 150}


def make(target, timeout=120, **var):
    cmd = ['make', '-s', '--no-print-directory', target] + ['%s=%s' % kv for kv in var.items()]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def deploy(vb, sim=None, log_s=3, **values):
    v = dict(VALUES, BOARD='unix')
    if sim is not None:
        v['BUS_DEVICE'] = sim.paths[0]
    v.update(values)
    v = {k: x for k, x in v.items() if x is not None}
    t0 = time.monotonic()
    rc, out = make('deploy', PORT=vb.port, LOG_S=log_s, **v)
    return rc, out, time.monotonic() - t0


def copied(out):
    m = re.search(r'deploy: (\d+) files copied \((\d+) bytes\), (\d+) up to date, \d+ removed, ([\d.]+) s', out)
    assert m, out
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), float(m.group(4))


@pytest.fixture
def sim():
    s = SiteSimulator(scenario=Scenario(OVER), battery_kw=BAT).start()
    yield s
    s.stop()


@pytest.fixture
def board(tmp_path):
    vb = VirtualBoard(str(tmp_path / 'fs')).start()
    yield vb
    vb.stop()


def cycles_in(text):
    return [ln for ln in text.splitlines() if ln.startswith('cyc ')]


# --- checks before anything is copied ---------------------------------------------------------------

def test_errors_come_before_anything_reaches_the_board(board):
    with open(os.path.join(board.root, 'keep.txt'), 'w') as f:
        f.write('user file')
    before = board.files()
    time.sleep(0.3)
    mark = board.mark()
    cases = [
        (dict(BOARD='unix', PORT='', IMPORT_LIMIT_W=60000), 'PORT missing'),
        (dict(BOARD='unix', PORT='/dev/does-not-exist', IMPORT_LIMIT_W=60000), 'does not exist'),
        (dict(BOARD='esp8266', PORT=board.port, IMPORT_LIMIT_W=60000), "unknown board 'esp8266'"),
        (dict(BOARD='', PORT=board.port), 'BOARD missing'),
        (dict(BOARD='unix', PORT=board.port), 'no value for IMPORT_LIMIT_W'),
        (dict(BOARD='unix', PORT=board.port, IMPORT_LIMIT_W=60000, MIN_SOC_BP=9900), 'control.taper_band_bp'),
        (dict(BOARD='unix', PORT=board.port, IMPORT_LIMIT_W=60000, METER_PROFILE='nosuch'), "no profile 'nosuch'"),
        (dict(BOARD='unix', PORT=board.port, IMPORT_LIMIT_W=60000, BATTERY_PROFILE='eastron_sdm630'),
         'is a meter profile'),
        (dict(BOARD='unix', PORT=board.port, IMPORT_LIMIT_W=60000, BAUD=9601), 'bus.baud'),
        (dict(BOARD='unix', PORT=board.port, IMPORT_LIMIT_W=60000, METER_ID=2), 'must differ'),
        (dict(BOARD='unix', PORT=board.port, IMPORT_LIMIT_W=60000, TYPO_LIMIT=3), 'unknown setting TYPO_LIMIT'),
        (dict(BOARD='unix', PORT=board.port, IMPORT_LIMT_W=60000), 'unknown setting IMPORT_LIMT_W: did you mean '
                                                                    'IMPORT_LIMIT_W?'),
        (dict(BOARD='unix', PORT=board.port, VALUES='no-such-site.env'), 'VALUES file no-such-site.env not found'),
        (dict(BOARD='unix', PORT=board.port, IMPORT_LIMIT_W=60000, STALE_MS=1500),
         'STALE_MS=1500 is below 2 x PERIOD_MS=1000'),
    ]
    for var, msg in cases:
        rc, out = make('deploy', **var)
        assert rc != 0, (var, out)
        assert msg in out, (var, out)
        if var.get('PORT'):
            assert 'nothing was sent to the board' in out, out
    assert board.files() == before
    assert board.console_since(mark) == '' and board.boots == 1       # never even interrupted


def test_site_config_errors_say_what_to_fix(tmp_path, capsys):
    """The three a newcomer meets first, each one clear line: a VALUES file that is not there, a
    mistyped name (with the nearest known one), STALE_MS under two periods (naming both)."""
    missing = tmp_path / 'my-site.env'
    assert site_config.main(['--board', 'unix', '--values', str(missing)]) == 2
    assert capsys.readouterr().err == 'site config: error: VALUES file %s not found\n' % missing

    with pytest.raises(site_config.SiteError) as e:
        site_config.make('unix', {'IMPORT_LIMT_W': 60000})
    assert str(e.value) == 'unknown setting IMPORT_LIMT_W: did you mean IMPORT_LIMIT_W?'   # not also "no value"
    with pytest.raises(site_config.SiteError) as e:
        site_config.make('unix', {'IMPORT_LIMIT_W': 60000, 'MAX_DISCHRGE_W': 1, 'XYZZY': 2})
    assert str(e.value).splitlines() == ['unknown setting MAX_DISCHRGE_W: did you mean MAX_DISCHARGE_W?',
                                         '  unknown setting XYZZY (names: tools/site.template.json _vars)']
    # a known name whose section is dropped is not called unknown
    with pytest.raises(site_config.SiteError) as e:
        site_config.make('unix', {'IMPORT_LIMIT_W': 60000, 'MQTT_PORT': 1884})
    assert str(e.value) == ('setting MQTT_PORT has no effect without MQTT_SERVER (the section it belongs to '
                            'is dropped)')

    with pytest.raises(site_config.SiteError) as e:
        site_config.make('unix', {'IMPORT_LIMIT_W': 60000, 'PERIOD_MS': 1000, 'STALE_MS': 1999})
    assert 'control.stale_ms: STALE_MS=1999 is below 2 x PERIOD_MS=1000' in str(e.value)
    assert 'STALE_MS >= 2000' in str(e.value)
    for period, stale in ((1000, 2000), (500, 1000), (2000, 4000)):     # 2 x PERIOD_MS is enough
        site = site_config.make('unix', {'IMPORT_LIMIT_W': 60000, 'PERIOD_MS': period, 'STALE_MS': stale})[0]
        assert site['control']['stale_ms'] == stale
    # a period the profiles' freshness window cannot span: a steady device would look frozen
    with pytest.raises(site_config.SiteError) as e:
        site_config.make('unix', {'IMPORT_LIMIT_W': 60000, 'PERIOD_MS': 4000, 'STALE_MS': 8000})
    assert ('meter.profile: eastron_sdm630 judges its data frozen after 3500 ms without a change, but it is '
            'read only every 4000 ms') in str(e.value)
    assert 'battery.profile: sunspec_battery_802_124 judges its data frozen after 3000 ms' in str(e.value)
    # from a values file too, through the command line
    vals = tmp_path / 'site.env'
    vals.write_text('# site\nIMPORT_LIMIT_W=60000\nPERIOD_MS=2000\n')
    assert site_config.main(['--board', 'unix', '--values', str(vals), '-o', str(tmp_path / 's.json')]) == 2
    err = capsys.readouterr().err
    assert 'STALE_MS=2000 is below 2 x PERIOD_MS=2000' in err and 'set STALE_MS >= 4000' in err


def test_build_layout_sizes_and_packaging():
    res = fwbuild.build('esp32')
    files = res['files']
    assert 'main.py' in files and 'cycle.mpy' in files and 'startup.mpy' in files and 'lib/bess_core.mpy' in files
    # umodbus and umqtt.simple: host comparisons only (docs/bus.md, host_tests/test_mqtt_wire.py)
    assert not any('umodbus' in p or 'umqtt' in p for p in files)
    assert 'boards/esp32.json' in files and 'profiles/eastron_sdm630.json' in files
    assert not any(p.endswith('.py') and p != 'main.py' for p in files)
    assert 'lib/machine.mpy' not in files                    # the unix shim only for the unix board
    on_disk = {os.path.relpath(p, res['dir']) for p in glob.glob(res['dir'] + '/**', recursive=True)
               if os.path.isfile(p)}
    assert on_disk == set(files)
    assert res['native'] == []
    sizes = {}
    for b in ('esp32', 'wt32_eth01', 'olimex_esp32_poe', 'pico_w', 'unix'):
        r = fwbuild.build(b)
        sizes[b] = sum(s for s, _ in r['files'].values())
        if r['fs_bytes']:
            assert sizes[b] < r['fs_bytes'] // 4
    frozen = fwbuild.build('pico_w', frozen=True)
    assert set(p.split('/')[0] for p in frozen['files']) == {'main.py', 'profiles', 'boards'}
    record('deploy', build_bytes=sizes, mpy_bytes={p: s for p, (s, _) in files.items() if p.endswith('.mpy')})
    # generated packaging is current (tools/build.py --packaging)
    with open(os.path.join(ROOT, 'package.json')) as f:
        assert f.read() == fwbuild.package_json(), 'run: .venv/bin/python tools/build.py --packaging'
    with open(os.path.join(ROOT, 'manifest.py')) as f:
        assert f.read() == fwbuild.manifest_py(), 'run: .venv/bin/python tools/build.py --packaging'
    pkg = json.loads(fwbuild.package_json())
    assert 'deps' not in pkg and 'require(' not in fwbuild.manifest_py()    # nothing third-party
    for dest, src in pkg['urls']:
        assert os.path.exists(os.path.join(ROOT, src)), src


def test_every_board_file_is_complete():
    for b in fwbuild.boards():
        d = fwbuild.load_board(b)
        assert d['name'] == b
        for k in ('uart', 'rs485_de_pin', 'led_pin', 'wdt_timeout_ms', 'timer', 'network', 'build'):
            assert k in d, (b, k)
        assert 1000 <= d['wdt_timeout_ms'] <= 10000
        net = d['network']
        assert 'password' not in json.dumps(net) and 'ssid' not in json.dumps(net)
        if d['build']['port'] == 'esp32':
            assert d['timer']['hard'] is False                   # ESP32 timers are soft only
        if d['build']['port'] == 'rp2':
            assert d['wdt_timeout_ms'] <= 8388


# --- deploy, re-deploy, run -------------------------------------------------------------------------

@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    b.start()
    col = Collector(b.port)
    yield b, col
    col.close()
    b.stop()


def test_deploy_then_nothing_unchanged_then_only_the_config_and_the_firmware_controls_the_site(board, sim, broker):
    b, col = broker
    mq = dict(MQTT_SERVER='127.0.0.1', MQTT_PORT=b.port, DEVICE_ID='site1', MQTT_TELEMETRY_MS=1000)
    rc, out, dt1 = deploy(board, sim, **mq)
    assert rc == 0, out
    n1, bytes1, same1, c1 = copied(out)
    build_files = fwbuild.build('unix')['files']
    assert n1 == len(build_files) + 1 and same1 == 0          # everything + site.json
    on_board = board.files()
    for p, (size, _) in build_files.items():
        assert len(on_board[p]) == size, p
    site = json.loads(on_board['site.json'])
    assert site['bus']['device'] == sim.paths[0] and site['control']['import_limit_w'] == 60000
    assert 'deploy_hold' not in on_board
    assert '| MPY: soft reboot' in out and '| bus: 9600 baud' in out, out      # the boot log

    # the deployed firmware (booted by the deploy's soft reset) controls the simulated site
    def discharging():
        c = cycles_in(board.console_text())
        return c and 'state=discharging' in c[-1] and sim.status()['battery']['actual_w'] > 15000
    assert wait_for(discharging, 20), board.console_text()[-2000:]
    g = wait_for(lambda: sim.status()['gcp_w']['total'] <= 60000 + 300 and sim.status()['gcp_w'], 10)
    assert g, sim.status()
    # ... and publishes to the test broker: telemetry with what it read and did
    tele = wait_for(lambda: [t for t in col.telemetry('site1') if t['state'] == 'discharging'
                         and t['bat_sp_w'] > 15000], 15)
    assert tele and tele[-1]['import_limit_w'] == 60000, col.get()[-5:]
    assert [m for m in col.get('bess/site1/status') if m[1] == b'online']

    rc, out, dt2 = deploy(board, sim, **mq)                    # the firmware is running: interrupted
    assert rc == 0, out
    n2, _, same2, c2 = copied(out)
    assert n2 == 0 and same2 == len(build_files) + 1, out
    assert wait_for(lambda: len(cycles_in(board.console_since(board.mark() - 2000))) > 0, 10)

    rc, out = make('logs', PORT=board.port, SECONDS=3)          # the running firmware's output
    assert rc == 0 and 'cyc ' in out and 'state=discharging' in out, out

    rc, out, dt3 = deploy(board, sim, IMPORT_LIMIT_W=70000, **mq)
    assert rc == 0, out
    n3, _, _, c3 = copied(out)
    assert n3 == 1 and '  copied site.json' in out, out
    assert json.loads(board.files()['site.json'])['control']['import_limit_w'] == 70000
    record('deploy', deploy_first_copy_s=c1, deploy_first_files=n1, deploy_first_bytes=bytes1,
           deploy_second_copy_s=c2, deploy_second_copied=n2, deploy_config_change_copied=n3,
           deploy_config_change_copy_s=c3, make_deploy_wall_s=[round(dt1, 2), round(dt2, 2), round(dt3, 2)],
           boot_log_s=3)


def test_make_deploy_board_esp32_runs_on_the_virtual_board(tmp_path, sim):
    """BOARD=esp32 exactly as for a real gateway; the unix machine shim maps UART(2) to the simulator."""
    vb = VirtualBoard(str(tmp_path / 'fs'), env={'MACHINE_UART2': sim.paths[0]}).start()
    try:
        rc, out, _ = deploy(vb, BOARD='esp32', log_s=3)
        assert rc == 0, out
        assert 'WIFI_SSID is not set' in out                   # a warning, not an error
        assert 'boards/esp32.json' in vb.files() and 'boards/unix.json' not in vb.files()
        assert '| network: wlan not available on this port' in out, out
        assert wait_for(lambda: sim.status()['battery']['actual_w'] > 15000, 20), vb.console_text()[-2000:]
    finally:
        vb.stop()


# --- first boot without config, bad config: safe state ----------------------------------------------

def _install_without_config(vb):
    src = fwbuild.build('unix')['dir']
    for p in fwbuild.build('unix')['files']:
        os.makedirs(os.path.dirname(os.path.join(vb.root, p)), exist_ok=True)
        shutil.copy(os.path.join(src, p), os.path.join(vb.root, p))


def _reboot(vb):
    """Power-cycle the virtual board (Ctrl-C, then Ctrl-D at the prompt: it boots main.py)."""
    mark = vb.mark()
    os.kill(vb._proc.pid, 9)
    assert vb.wait_console('reset', mark, 5)
    return mark


def test_first_boot_without_config_is_safe_and_says_what_to_set(board):
    _install_without_config(board)
    mark = _reboot(board)
    assert board.wait_console('SAFE STATE', mark, 10), board.console_since(mark)
    text = board.console_since(mark)
    assert 'site config site.json: missing' in text
    assert 'set the site config: board, bus {baud, parity}, meter {profile, unit_id}, battery' in text
    assert 'battery NOT commanded: cannot talk to any battery (no site config)' in text
    assert 'Traceback' not in text


def test_bad_config_is_safe_battery_held_at_0_w_with_the_validation_error(board, sim):
    with sim.lock:
        sim.bat.setpoint_w = 20000          # the battery was left discharging by someone else
    _install_without_config(board)
    site = site_config.make('unix', dict(VALUES, BUS_DEVICE=sim.paths[0]))[0]
    site['control']['min_soc_bp'] = 9900    # invalid: above max_soc_bp
    site['meter']['profile'] = 'nosuch'
    with open(os.path.join(board.root, 'site.json'), 'w') as f:
        json.dump(site, f)
    mark = _reboot(board)
    assert board.wait_console('SAFE STATE', mark, 10), board.console_since(mark)
    assert wait_for(lambda: sim.status()['battery']['setpoint_w'] == 0, 10), sim.status()
    assert board.wait_console('battery held at 0 W (sunspec_battery_802_124 id 2', mark, 10), \
        board.console_since(mark)
    text = board.console_since(mark)
    assert 'site config site.json invalid' in text and 'control.reserve_soc_bp' in text, text
    assert 'Traceback' not in text

    # battery section itself broken: cannot command any battery, says so
    site['battery'] = {'profile': 'sunspec_battery_802_124', 'unit_id': 0}
    with open(os.path.join(board.root, 'site.json'), 'w') as f:
        json.dump(site, f)
    mark = _reboot(board)
    assert board.wait_console('SAFE STATE', mark, 10), board.console_since(mark)
    text = board.console_since(mark)
    assert 'battery NOT commanded: cannot talk to any battery (battery.unit_id: must be an integer' in text, text


@pytest.mark.parametrize('values, msg', [
    ({'PERIOD_MS': 12000, 'STALE_MS': 24000}, "3/4 of the board's watchdog"),
    ({'BUS_TIMEOUT_MS': 4000, 'BUS_RETRIES': 2}, "3/4 of the board's watchdog"),
    ({'MQTT_SERVER': '127.0.0.1'}, 'mqtt.client_id: required'),
    ({'MQTT_SERVER': '127.0.0.1', 'DEVICE_ID': 'a/+/#'}, 'mqtt.client_id'),
])
def test_deploy_rejects_timing_the_watchdog_cannot_survive_and_a_broken_mqtt_section(board, values, msg):
    """Values that would pass a structural check but boot-loop on the watchdog (a silent bus must
    end in fail-safe, not resets) or leave the MQTT link unusable: refused before any copy."""
    before = board.files()
    rc, out, _ = deploy(board, None, BUS_DEVICE='/dev/null', **values)
    assert rc != 0 and msg in out, out
    assert board.files() == before


def test_an_interrupted_deploy_stays_held_and_a_broken_install_says_so(tmp_path):
    """The hold stays until every file is in place; a module that cannot be imported gives a clear
    message, not a traceback into the REPL (no watchdog is armed: no reset loop)."""
    import shutil
    res = fwbuild.build('unix')
    root = tmp_path / 'fs'
    shutil.copytree(res['dir'], root)
    (root / 'deploy_hold').write_text('')              # the copy never finished
    vb = VirtualBoard(str(root)).start()
    try:
        assert vb.wait_console('deploy hold: firmware not started', timeout=10), vb.console_text()
        assert 'run make deploy again' in vb.console_text()
    finally:
        vb.stop()
    (root / 'deploy_hold').unlink()
    (root / 'startup.mpy').write_bytes(b'M\x06garbage')    # a half-written module
    vb = VirtualBoard(str(root)).start()
    try:
        assert vb.wait_console('FIRMWARE INCOMPLETE', timeout=10), vb.console_text()
        assert 'Traceback' not in vb.console_text()
    finally:
        vb.stop()


def test_boot_refuses_an_unknown_key_and_stale_ms_under_two_periods():
    """The same checks at boot as at deploy (a hand-edited site.json): a mistyped key would
    silently fall back to a default; stale_ms under two periods fails safe on one late poll."""
    import sitecfg
    site, _ = site_config.make('unix', {'IMPORT_LIMIT_W': 60000})
    assert sitecfg.check(site) == []
    bad = dict(site, perod_ms=500)
    assert any(e.startswith('perod_ms: unknown key') for e in sitecfg.check(bad)), sitecfg.check(bad)
    bad = dict(site, period_ms=1000, control=dict(site['control'], stale_ms=1500))
    assert any('STALE_MS=1500 is below 2 x PERIOD_MS=1000' in e for e in sitecfg.check(bad))
