"""Broken site configs for tools/faults.py: each one booted by the real firmware (firmware/main.py on
the MicroPython unix port) with the site simulator on the line and the battery left at 20 kW by
someone else. Counted: configs answered with a clear message (the safe state or "MQTT
DISABLED" saying what is wrong) vs a traceback or nothing; and, where the battery section itself
is usable, whether the simulated battery really went to 0 W.

The list complements the deploy-time checks (host_tests/test_deploy.py, tools/site_config.py):
those stop a bad config before it reaches a board; these are what a board does when one gets
there anyway (edited by hand, half-written, an old firmware's config).
"""
import concurrent.futures
import json
import os
import shutil
import subprocess
import tempfile

import paths  # noqa: F401 (lib/ on sys.path)
from fil import MICROPYTHON, MICROPYPATH, ROOT
from modbus_sim import SiteSimulator

MESSAGES = ('SAFE STATE', 'MQTT DISABLED')   # a clear message: either says what to fix


def base(device):
    return {'board': 'unix', 'period_ms': 1000, 'log_cycles': 1,
            'bus': {'baud': 9600, 'parity': 'N', 'timeout_ms': 200, 'retries': 1, 'device': device},
            'meter': {'profile': 'eastron_sdm630', 'unit_id': 1},
            'battery': {'profile': 'sunspec_battery_802_124', 'unit_id': 2},
            'control': {'import_limit_w': 60000, 'max_charge_w': 10000, 'max_discharge_w': 10000,
                        'stale_ms': 2000}}


def _set(path, value):
    """A mutation: set (or with value DEL, remove) the key at dotted path."""
    def f(site):
        *head, last = path.split('.')
        d = site
        for k in head:
            d = d[k]
        if value is DEL:
            del d[last]
        else:
            d[last] = value
    return f


DEL = object()
BROKEN_METER_PROFILE = '{"format": 1, "name": "broken_meter", "kind": "meter", "blocks": ['

# (name, raw text or a mutation of base()); raw text replaces the whole file
CONFIGS = [
    ('empty file', ''),
    ('not JSON', '{"board": "unix",'),
    ('truncated JSON', None),                       # the first half of a valid file
    ('a JSON list', '[]'),
    ('a JSON string', '"site"'),
    ('no board', _set('board', DEL)),
    ('unknown board', _set('board', 'esp8266')),
    ('board name with a path', _set('board', '../unix')),
    ('bus device missing', _set('bus.device', '/dev/does-not-exist')),
    ('baud 9601', _set('bus.baud', 9601)),
    ('parity X', _set('bus.parity', 'X')),
    ('bus timeout 0', _set('bus.timeout_ms', 0)),
    ('bus retries -1', _set('bus.retries', -1)),
    ('unknown bus key', _set('bus.speed', 9600)),
    ('bus not an object', _set('bus', '9600 8N1')),
    ('no meter section', _set('meter', DEL)),
    ('meter profile unknown', _set('meter.profile', 'nosuch')),
    ('meter profile is a battery', _set('meter.profile', 'sunspec_battery_802_124')),
    ('meter profile file corrupt', _set('meter.profile', 'broken_meter')),
    ('battery profile is a meter', _set('battery.profile', 'eastron_sdm630')),
    ('battery unit id 0', _set('battery.unit_id', 0)),
    ('same unit ids', _set('battery.unit_id', 1)),
    ('unit id a string', _set('meter.unit_id', '1')),
    ('no control section', _set('control', DEL)),
    ('no import limit', _set('control.import_limit_w', DEL)),
    ('negative import limit', _set('control.import_limit_w', -60000)),
    ('min SoC above max SoC', _set('control.min_soc_bp', 9900)),
    ('stale_ms below 2 periods', _set('control.stale_ms', 1500)),
    ('control key mistyped', _set('control.import_limt_w', 60000)),
    ('objective unknown', _set('control.objective', 'peak')),
    ('power as a string', _set('control.max_charge_w', '10000')),
    ('period 50 ms', _set('period_ms', 50)),
    ('period the watchdog cannot survive', _set('period_ms', 12000)),
    ('bus timeouts the watchdog cannot survive', lambda s: s['bus'].update(timeout_ms=4000, retries=2)),
    ('mqtt not an object', _set('mqtt', 'yes')),
    ('mqtt without client id', _set('mqtt', {'server': '127.0.0.1', 'port': 1})),
    ('mqtt HMAC key not hex', _set('mqtt', {'server': '127.0.0.1', 'port': 1, 'client_id': 'x',
                                            'hmac_key': 'zz'})),
    ('unknown top-level key', _set('perod_ms', 1000)),
]


def _root():
    """A filesystem root like a board's: boards/ and profiles/ (plus a corrupt profile)."""
    d = tempfile.mkdtemp(prefix='faults-boot-')
    shutil.copytree(os.path.join(ROOT, 'boards'), os.path.join(d, 'boards'))
    shutil.copytree(os.path.join(ROOT, 'firmware', 'profiles'), os.path.join(d, 'profiles'))
    with open(os.path.join(d, 'profiles', 'broken_meter.json'), 'w') as f:
        f.write(BROKEN_METER_PROFILE)
    return d


def run_one(i, name, spec, root, cycles=2):
    """Boot the firmware on one broken config. Returns a dict: verdict 'clear' / 'traceback' /
    'ran' (started as if nothing were wrong) / 'other', the first message line, battery."""
    sim = SiteSimulator().start()
    try:
        with sim.lock:
            sim.bat.setpoint_w = 20000          # left discharging by someone else
        site = base(sim.paths[0])
        if spec is None:
            text = json.dumps(site)[:len(json.dumps(site)) // 2]
        elif isinstance(spec, str):
            text = spec
        else:
            spec(site)
            text = json.dumps(site)
        cfg = os.path.join(root, 'site-%02d.json' % i)
        with open(cfg, 'w') as f:
            f.write(text)
        try:
            p = subprocess.run([MICROPYTHON, os.path.join(ROOT, 'firmware', 'main.py'), cfg, root, str(cycles)],
                               capture_output=True, text=True, timeout=60,
                               env=dict(os.environ, MICROPYPATH=MICROPYPATH))
            out, rc = p.stdout + p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:    # held longer than `cycles` safe-state rounds
            out, rc = e.stdout or '', 'timeout'
            if isinstance(out, bytes):
                out = out.decode(errors='replace')
        sp = sim.bat.setpoint_w
    finally:
        sim.stop()
    msg = next((ln for ln in out.splitlines() if any(m in ln for m in MESSAGES)), '')
    if 'Traceback' in out or rc != 0:
        verdict = 'traceback'
    elif msg:
        verdict = 'clear'
    elif 'cyc ' in out:
        verdict = 'ran'
    else:
        verdict = 'other'
    held = 'battery held at 0 W' in out
    return {'config': name, 'verdict': verdict, 'rc': rc, 'message': msg[:300],
            'says_held': held, 'battery_sp_w': sp, 'held_confirmed': held and sp == 0,
            'tail': out.splitlines()[-4:] if verdict != 'clear' else []}


def run_all(workers=4):
    root = _root()
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as ex:
            return list(ex.map(lambda c: run_one(c[0], c[1][0], c[1][1], root), enumerate(CONFIGS)))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def case_broken_configs(tries=None):
    """Row for the table: every config in CONFIGS (tries is ignored: the list is the tries)."""
    from faults_modbus import row
    res = run_all()
    n = len(res)
    clear = [r for r in res if r['verdict'] == 'clear']
    tb = [r for r in res if r['verdict'] == 'traceback']
    ran = [r for r in res if r['verdict'] == 'ran']
    held = [r for r in res if r['says_held']]
    conf = [r for r in held if r['held_confirmed']]
    note = '%d of %d with a clear message, %d tracebacks, %d started as if valid%s; battery held at 0 W ' \
           '(confirmed on the simulated battery) in %d of the %d that say so' % (
               len(clear), n, len(tb), len(ran),
               (' (%s)' % ', '.join(r['config'] for r in ran)) if ran else '', len(conf), len(held))
    if tb:
        note += '; tracebacks: ' + ', '.join(r['config'] for r in tb)
    return row('broken site configs', n, None, None, note, configs=res,
               met=not tb and len(conf) == len(held))
