"""Property tests: the core's safety invariants hold for any valid config and any input sequence."""
from hypothesis import given, settings, assume, strategies as st, HealthCheck

import bess_core as bc
from bess_config import validate, ConfigError, POWER_MAX_W

P = POWER_MAX_W
power = st.one_of(st.integers(-P, P), st.sampled_from([0, 1, -1, P, -P]))


@st.composite
def configs(draw):
    mn = draw(st.integers(0, 5000))
    cfg = {
        'objective': draw(st.sampled_from(['gce', 'ss', 'zfi'])),
        'import_limit_w': draw(st.integers(1, P)),
        'min_soc_bp': mn,
        'reserve_soc_bp': draw(st.integers(mn, mn + 2000)),
        'max_soc_bp': draw(st.integers(mn + 2500, 10000)),
        'taper_band_bp': draw(st.integers(0, 2000)),
        'hysteresis_bp': draw(st.integers(0, 600)),
        'max_charge_w': draw(st.integers(0, P)),
        'max_discharge_w': draw(st.integers(0, P)),
        'ramp_w_per_s': draw(st.integers(1, P)),
        'deadband_w': draw(st.sampled_from([0, 0, 100, 5000])),
        'phase_limit_w': draw(st.sampled_from([0, 0, 1, 32000, P])),
    }
    cfg['ev_headroom_w'] = draw(st.integers(0, cfg['import_limit_w'] - 1))
    cfg['min_import_w'] = draw(st.integers(0, cfg['import_limit_w'] - 1))
    try:
        return validate(cfg)
    except ConfigError:
        assume(False)


@st.composite
def cycles(draw):
    return {
        'gcp': draw(power), 'bat': draw(power), 'soc': draw(st.integers(0, 10000)),
        'ph': (draw(power), draw(power), draw(power)),
        'bms_c': draw(st.sampled_from([-1, 0, 5000, P])), 'bms_d': draw(st.sampled_from([-1, 0, 5000, P])),
        'dt': draw(st.sampled_from([1, 100, 1000, 60000])),
        'ok': draw(st.booleans()) or draw(st.booleans()),       # mostly valid data
        'dispatch': draw(st.sampled_from([None, None, None, None, (P, 5000), (-P, 1), (2000, 3000)])),
        'override': draw(st.sampled_from([None, None, None, None, None, (0, 4000), (-P, 2000)])),
    }


def expected_taper_cap(c, soc, full):
    """full = what the battery may discharge before the taper: min(config, battery-reported)."""
    if soc <= c.min_soc_bp:
        return 0
    if soc >= c.min_soc_bp + c.taper_band_bp:
        return full
    return bc.muldiv(full, soc - c.min_soc_bp, c.taper_band_bp)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(configs(), st.lists(cycles(), min_size=1, max_size=40))
def test_safety_invariants(cfg, seq):
    c = bc.Controller(cfg)
    i, o = c.inp, c.out
    for cy in seq:
        prev = c.prev_w
        i.gcp_w, i.bat_w, i.soc_bp = cy['gcp'], cy['bat'], cy['soc']
        i.gcp_l1_w, i.gcp_l2_w, i.gcp_l3_w = cy['ph']
        i.phases_valid = i.meter_valid = i.bat_valid = 1 if cy['ok'] else 0
        i.meter_age_ms = i.bat_age_ms = 0
        i.bms_max_chg_w, i.bms_max_dis_w = cy['bms_c'], cy['bms_d']
        i.dt_ms = cy['dt']
        if cy['dispatch']:
            c.start_dispatch(*cy['dispatch'])
        if cy['override']:
            c.start_override(*cy['override'])
        c.step()
        sp, soc, fl = o.setpoint_w, cy['soc'], o.flags

        if o.state == bc.ST_FAILSAFE:
            assert sp == 0
            continue
        net = cy['gcp'] + cy['bat']
        # |setpoint| <= min(config, battery-reported limits)
        dis_lim = min(c.max_discharge_w, cy['bms_d']) if cy['bms_d'] >= 0 else c.max_discharge_w
        chg_lim = min(c.max_charge_w, cy['bms_c']) if cy['bms_c'] >= 0 else c.max_charge_w
        assert -chg_lim <= sp <= dis_lim
        # no discharge in min-SoC lock; discharge never above the taper cap
        if fl & bc.F_MIN_LOCK:
            assert sp <= 0
        assert sp <= expected_taper_cap(c, soc, dis_lim)
        # no charging in the max-SoC lock (at or above max SoC, and inside its hysteresis band)
        if soc >= c.max_soc_bp:
            assert fl & bc.F_MAX_LOCK
        if fl & bc.F_MAX_LOCK:
            assert sp >= 0
        # zero feed-in: the battery never creates export, and keeps the minimum import
        if c.objective == bc.OBJ_ZFI and sp > 0:
            assert net - sp >= c.min_import_w
        # import-limit protection: at least the required discharge whenever limits allow it
        external = o.state in (bc.ST_DISPATCH, bc.ST_OVERRIDE)
        if external:
            # a command may leave an excess it did not cause, but never charges over the limit
            assert sp >= min(o.req_w, 0)
        if not external:
            cap = o.avail_dis_w
            if c.objective == bc.OBJ_ZFI:
                cap = min(cap, max(0, net - c.min_import_w))
            assert sp >= min(o.req_w, cap)
            # below reserve only import-limit protection may discharge
            if fl & bc.F_RESERVE_LOCK and sp > 0:
                assert sp <= max(o.req_w, 0)
        # moves away from 0 are rate-limited unless the import limit needs them
        r = c.ramp_w_per_s
        dt = min(max(cy['dt'], 0), 60000)
        step = (r // 1000) * dt + ((r % 1000) * dt) // 1000
        if sp > max(prev, 0) + step:
            assert not external and sp <= o.req_w
        assert sp >= min(prev, 0) - step
        # the per-phase cost is 3x the worst phase excess
        assert o.phase_cost_w == 3 * o.phase_excess_w


@settings(max_examples=200, deadline=None)
@given(configs(), st.integers(0, 10000))
def test_hysteresis_min_lock_needs_min_plus_hysteresis_to_release(cfg, soc_up):
    c = bc.Controller(cfg)
    i = c.inp
    i.meter_valid = i.bat_valid = i.phases_valid = 1
    i.dt_ms = 1000
    i.soc_bp = c.min_soc_bp           # enter the lock
    c.step()
    assert c.min_lock == 1
    i.soc_bp = soc_up
    c.step()
    held = soc_up <= c.min_soc_bp or soc_up < c.min_soc_bp + c.hysteresis_bp
    assert c.min_lock == (1 if held else 0)
