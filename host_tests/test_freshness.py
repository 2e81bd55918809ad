"""Frozen-data detection (profile key 'freshness', lib/profile_model.Freshness; issue 10 #2).

The rules are driven here with register images from the simulator's devices, at the cadence the
runtime reads them (firmware/cycle.Poller marks a block fresh when this poll read it), so the
bounds below are the ones docs/profiles.md states. The end-to-end runs (firmware on the unix port,
the simulator's frozen mode, 0 W on the wire) are in host_tests/test_faults.py.
"""
import copy
import json
import os
import subprocess

import pytest

import devprofile
import modbus_sim
import site_model
from paths import ROOT

PERIOD_MS = 1000


def _load(name):
    return modbus_sim.load_profile(name)


def _into(dev, prof):
    for b in prof.blocks:
        for k in range(b.count):
            b.buf[k] = dev.regs[b.fc].get(b.start + k, 0)


def _drive(prof, dev, update, seconds, period_ms=PERIOD_MS):
    """Poll like the runtime: every period, blocks that are due are read (fresh), then judge.
    update(t_ms) moves the device's image. Returns the times (ms) judge() said frozen."""
    f = prof.freshness
    due = {id(b): 0 for b in prof.blocks}
    frozen_at = []
    for t in range(0, seconds * 1000 + 1, period_ms):
        update(t)
        for b in prof.blocks:
            b.fresh = 0
            if t >= due[id(b)]:
                for k in range(b.count):
                    b.buf[k] = dev.regs[b.fc].get(b.start + k, 0)
                b.ok = b.fresh = 1
                due[id(b)] = t + b.every_ms
        if not f.judge(period_ms):
            frozen_at.append(t)
    return frozen_at


def _meter(prof, start_wh=0):
    m = modbus_sim.MeterDevice(prof, 1)
    m.imp_wms = m.exp_wms = start_wh * 3600000
    return m


@pytest.mark.parametrize('power_w', [0, 300, 1000, 5000, 80000, -30000, 10000000])
@pytest.mark.parametrize('start_mwh', [0, 100, 250, 600, 1100, 2200])
def test_counters_on_a_steady_site_never_trip(power_w, start_mwh):
    """SDM630 (float32 kWh: the step doubles with the value, 125 Wh above 1 048 MWh) and SunSpec
    203: a constant power, counters read every 2 s (SDM630) or every cycle, 10 minutes: never
    judged frozen."""
    for name in ('eastron_sdm630', 'sunspec_meter_203'):
        prof = _load(name)
        m = _meter(prof, start_mwh * 1000000 if name == 'eastron_sdm630' else 0)
        last = [0]

        def update(t):
            m.update(power_w // 3, power_w // 3, power_w - 2 * (power_w // 3), power_w, t - last[0])
            last[0] = t
        assert _drive(prof, m, update, 600) == [], (name, power_w, start_mwh)


@pytest.mark.parametrize('start_mwh', [530, 1100, 2200])
def test_counters_with_the_sign_flipping_never_trip(start_mwh):
    """Import and export both large (float32 steps of 31-125 Wh), the power flipping between
    +-20 and +-40 kW every 3-10 s: the energy is shared, so twice the sum of the steps must show."""
    import random
    prof = _load('eastron_sdm630')
    m = _meter(prof, start_mwh * 1000000)
    rng = random.Random(start_mwh)
    st = {'t': 0, 'p': 30000, 'next': 0}

    def update(t):
        if t >= st['next']:
            st['p'] = rng.choice((1, -1)) * rng.randint(20000, 40000)
            st['next'] = t + rng.randint(3, 10) * 1000
        p = st['p']
        m.update(p // 3, p // 3, p - 2 * (p // 3), p, t - st['t'])
        st['t'] = t
    assert _drive(prof, m, update, 900) == []


@pytest.mark.parametrize('power_w, bound_s', [(80000, 6), (-80000, 6), (40000, 10), (20000, 17)])
def test_frozen_meter_is_found_within_the_documented_bound(power_w, bound_s):
    """Everything freezes (the simulator's frozen mode keeps the last image) at t = 60 s. Bound
    (docs/profiles.md): max(within_ms, max_wh * 3600 / |P|) + the counter cadence (2 s) + a period."""
    prof = _load('eastron_sdm630')
    m = _meter(prof, 100000)
    last = [0]

    def update(t):
        if t <= 60000:
            m.update(power_w // 3, power_w // 3, power_w - 2 * (power_w // 3), power_w, t - last[0])
            last[0] = t
    frozen = _drive(prof, m, update, 120)
    assert frozen and frozen[0] > 60000, frozen[:3]
    assert frozen[0] - 60000 <= bound_s * 1000, frozen[0]
    assert frozen == list(range(frozen[0], 120001, PERIOD_MS))      # stays frozen


def test_a_meter_frozen_near_0_w_is_not_detectable_and_not_tripped():
    """Stated limit: counters have nothing to show when the (frozen) power says nothing flows."""
    prof = _load('eastron_sdm630')
    m = _meter(prof)
    m.update(0, 0, 0, 200, 1000)
    assert _drive(prof, m, lambda t: None, 600) == []


def _battery(prof):
    return modbus_sim.BatteryDevice(prof, 2, site_model.Battery(100000, max_chg_w=40000))


def test_battery_heartbeat_steady_never_trips_and_frozen_is_found_in_4_s():
    prof = _load('sunspec_battery_802_124')
    dev = _battery(prof)
    dev.update()

    def update(t):
        if t <= 300000:
            dev.heartbeat(t)
    frozen = _drive(prof, dev, update, 320)
    assert frozen and frozen[0] > 300000
    assert frozen[0] - 300000 <= 4000, frozen[0]
    # comes back: fresh again at the first change
    f = prof.freshness
    dev.heartbeat(400000)
    _into(dev, prof)
    assert f.judge(PERIOD_MS) == 1 and f.frozen == 0


@pytest.mark.parametrize('name', ['carlo_gavazzi_em24', 'huawei_luna2000', 'sungrow_sh'])
def test_unchanged_rule_judges_only_while_power_flows(name):
    """'unchanged': bit-identical registers for within_ms while |P| >= min_w = frozen; below min_w
    nothing is expected to move (not judged); measurement noise keeps it fresh."""
    prof = _load(name)
    f = prof.freshness
    pw = f.power.name
    if prof.kind == 'meter':
        dev = modbus_sim.MeterDevice(prof, 1)

        def put(w):
            dev.update(w // 3, w // 3, w - 2 * (w // 3), w, 1000)
    else:
        dev = _battery(prof)

        def put(w):
            dev.set_values({pw: w, 'soc_bp': 5000})
    put(f.min_w // 2)
    assert _drive(prof, dev, lambda t: None, 120) == []                 # below min_w
    put(5000)
    assert _drive(prof, dev, lambda t: put(5000 + (t // 1000) % 7), 120) == []   # noisy: fresh
    frozen = _drive(prof, dev, lambda t: None, 30)
    assert frozen and frozen[0] <= f.within_ms + PERIOD_MS


BASE = json.load(open(os.path.join(modbus_sim.PROFILE_DIR, 'eastron_sdm630.json')))


@pytest.mark.parametrize('fresh, needle', [
    (None, "'freshness' missing"),
    ({'rule': 'sometimes'}, 'rule'),
    ({'rule': 'none'}, "needs a 'doc'"),
    ({'rule': 'none', 'doc': 'x', 'within_ms': 1000}, "takes no 'within_ms'"),
    ({'rule': 'heartbeat', 'watch': ['nope'], 'within_ms': 3000}, "'nope' is not a point"),
    ({'rule': 'heartbeat', 'watch': [{'fc': 4, 'addr': 9000}], 'within_ms': 3000}, 'not inside a read block'),
    ({'rule': 'heartbeat', 'watch': [], 'within_ms': 3000}, 'non-empty list'),
    ({'rule': 'heartbeat', 'watch': ['total_w'], 'within_ms': 10}, 'within_ms'),
    ({'rule': 'counter', 'watch': ['import_wh'], 'power': 'import_wh', 'max_wh': 80, 'within_ms': 3000},
     'must name a power point'),
    ({'rule': 'counter', 'watch': ['import_wh'], 'power': 'total_w', 'within_ms': 3000}, 'max_wh'),
    ({'rule': 'heartbeat', 'watch': ['total_w'], 'within_ms': 3000, 'min_w': 5}, "takes no 'min_w'"),
])
def test_freshness_section_errors(fresh, needle):
    d = copy.deepcopy(BASE)
    if fresh is None:
        del d['freshness']
    else:
        d['freshness'] = fresh
    with pytest.raises(devprofile.ProfileError) as e:
        devprofile.from_dict(d)
    assert needle in str(e.value), str(e.value)


def test_rule_none_is_accepted_with_a_reason():
    d = copy.deepcopy(BASE)
    d['freshness'] = {'rule': 'none', 'doc': 'this meter has no counter in its map'}
    assert devprofile.from_dict(d).freshness is None


MP_SCRIPT = r'''
import sys
sys.path.insert(0, LIB)
import micropython
import devprofile
out = []
for name in NAMES:
    p = devprofile.load(PROFILES + '/' + name + '.json')
    f = p.freshness
    for b in p.blocks:
        b.ok = 1
        b.fresh = 1
    res = [0, 0]
    def run(steps, move):
        micropython.heap_lock()
        try:
            for k in range(steps):
                if move:
                    for w in f.watch:
                        w[0].buf[w[1]] = (w[0].buf[w[1]] + 1) & 0xFFFF
                if not f.judge(1000):
                    res[0] += 1
        finally:
            micropython.heap_unlock()
    # power points: above every min_w, and enough for any max_wh within the 30 frozen steps
    for q in p.points.values():
        if q.unit == 'W':
            devprofile.encode_point(q, 20000, q.block.buf, q.off)
    run(30, 1)
    a = res[0]
    run(30, 0)
    out.append('%s %d %d %d' % (name, a, res[0] - a, f.frozen))
print(';'.join(out))
'''


def test_judge_allocates_nothing_on_32bit_micropython(tmp_path):
    """Every rule, moving and frozen, under heap_lock on the 32-bit MicroPython (WebAssembly)."""
    names = ['eastron_sdm630', 'sunspec_meter_203', 'sunspec_battery_802_124', 'carlo_gavazzi_em24',
             'huawei_luna2000', 'sungrow_sh']
    script = tmp_path / 'fresh.py'
    script.write_text("LIB = '/lib'\nPROFILES = '/profiles'\nNAMES = %r\n" % names + MP_SCRIPT)
    cmd = ['node', os.path.join(ROOT, 'tools', 'mp32', 'run.mjs'), '--put', os.path.join(ROOT, 'lib') + ':/lib',
           '--put', modbus_sim.PROFILE_DIR + ':/profiles', str(script)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = dict((x.split()[0], [int(v) for v in x.split()[1:]]) for x in r.stdout.strip().split(';'))
    for name in names:
        moving, frozen, still = rows[name]
        assert moving == 0, (name, rows[name])          # registers moving: never frozen
        assert frozen > 0 and still == 1, (name, rows[name])
