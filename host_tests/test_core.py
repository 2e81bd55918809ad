"""Unit tests: one rule of the control core each (docs/control.md lists the rules)."""
import os

import pytest

import bess_core as bc
from bess_config import ConfigError, validate

BASE = {'import_limit_w': 100000, 'max_charge_w': 50000, 'max_discharge_w': 50000,
        'ramp_w_per_s': 10000000, 'min_soc_bp': 1000, 'max_soc_bp': 9500}


def mk(**over):
    cfg = dict(BASE)
    cfg.update(over)
    return bc.Controller(cfg)


def run(c, gcp=None, bat=None, soc=5000, dt=1000, phases=None, bms=(-1, -1), meter_ok=1, bat_ok=1,
        meter_age=0, bat_age=0, net=None):
    """One step. bat=None: the battery followed the last setpoint. net= gives the site load
    without the battery instead of the GCP reading (gcp = net - bat)."""
    i = c.inp
    i.bat_w = c.out.setpoint_w if bat is None else bat
    i.gcp_w = net - i.bat_w if net is not None else gcp
    i.soc_bp = soc
    i.dt_ms = dt
    i.meter_valid, i.bat_valid = meter_ok, bat_ok
    i.meter_age_ms, i.bat_age_ms = meter_age, bat_age
    i.bms_max_chg_w, i.bms_max_dis_w = bms
    if phases is None:
        i.phases_valid = 0
    else:
        i.phases_valid = 1
        i.gcp_l1_w, i.gcp_l2_w, i.gcp_l3_w = phases
    c.step()
    return c.out


# --- config ------------------------------------------------------------------------------------

def test_config_defaults_and_reserve_defaults_to_min():
    c = validate({'import_limit_w': 1000})
    assert c['objective'] == 'gce' and c['reserve_soc_bp'] == c['min_soc_bp'] == 1000
    assert c['taper_band_bp'] == 500 and c['hysteresis_bp'] == 200 and c['max_soc_bp'] == 9500


@pytest.mark.parametrize('cfg, msg', [
    ({}, 'import_limit_w: required'),
    ({'import_limit_w': True}, 'import_limit_w: must be an integer'),
    ({'import_limit_w': 1.5}, 'import_limit_w: must be an integer'),
    ({'import_limit_w': '100'}, 'import_limit_w: must be an integer'),
    ({'import_limit_w': 0}, 'import_limit_w: must be in 1..10000000, got 0'),
    ({'import_limit_w': 10000001}, 'must be in 1..10000000'),
    ({'import_limit_w': 1000, 'bogus': 1}, 'bogus: unknown setting'),
    ({'import_limit_w': 1000, 'objective': 'peak'}, 'objective: must be one of gce/ss/zfi'),
    ({'import_limit_w': 1000, 'min_soc_bp': 3000, 'reserve_soc_bp': 2000}, 'min_soc_bp <= reserve_soc_bp'),
    ({'import_limit_w': 1000, 'reserve_soc_bp': 9500}, 'reserve_soc_bp < max_soc_bp'),
    ({'import_limit_w': 1000, 'min_soc_bp': 5000, 'max_soc_bp': 5300}, 'SoC locks overlap'),
    ({'import_limit_w': 1000, 'ev_headroom_w': 1000}, 'ev_headroom_w: must be below import_limit_w'),
    ({'import_limit_w': 1000, 'min_import_w': 1000}, 'min_import_w: must be below import_limit_w'),
    ({'import_limit_w': 1000, 'min_soc_bp': 5000, 'max_soc_bp': 9000, 'taper_band_bp': 4500}, 'taper_band_bp'),
    ({'import_limit_w': 1000, 'reserve_soc_bp': 9400, 'max_soc_bp': 9500}, 'reserve lock can release'),
])
def test_config_rejects_with_clear_message(cfg, msg):
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert msg in str(e.value)


def test_config_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as e:
        validate({'import_limit_w': -1, 'deadband_w': 'x', 'nope': 0})
    s = str(e.value)
    assert 'import_limit_w' in s and 'deadband_w' in s and 'nope' in s
    with pytest.raises(ConfigError):
        validate([('import_limit_w', 1)])


def test_rejected_reconfigure_changes_nothing():
    c = mk()
    with pytest.raises(ConfigError):
        c.configure(dict(BASE, import_limit_w=-5))
    assert c.import_limit_w == 100000 and c.cfg['import_limit_w'] == 100000


def test_reconfigure_updates_the_config_dict_in_place():
    """A command's config lands in the dict already in force (no new long-lived dict made while
    the command path's code is loaded: docs/resources.md), every value the new one's."""
    c = mk()
    d = c.cfg
    got = c.configure(dict(BASE, import_limit_w=90000, objective='ss'))
    assert got is d and c.cfg is d and d['import_limit_w'] == 90000 and d['objective'] == 'ss'
    assert c.import_limit_w == 90000 and c.objective == bc.OBJ_SS
    assert d == validate(dict(BASE, import_limit_w=90000, objective='ss'))


# --- grid capacity expansion -------------------------------------------------------------------

def test_gce_discharges_exactly_the_excess_immediately():
    c = mk(ramp_w_per_s=1)      # ramp must not delay import-limit protection
    o = run(c, 130000, bat=0)
    assert o.setpoint_w == 30000 and o.binding == bc.B_IMPORT and o.state == bc.ST_DISCHARGING
    assert o.req_w == 30000 and o.net_w == 130000


def test_gce_charges_from_spare_capacity_leaving_ev_headroom():
    c = mk(ev_headroom_w=20000)
    o = run(c, 50000, bat=0)
    assert o.setpoint_w == -30000 and o.binding == bc.B_HEADROOM and o.state == bc.ST_CHARGING
    o = run(c, 85000, bat=0)     # inside the headroom band: idle
    assert o.setpoint_w == 0 and o.state == bc.ST_IDLE


def test_gce_charging_never_pushes_gcp_over_the_limit():
    c = mk(ev_headroom_w=0, ramp_w_per_s=10000000)
    run(c, 40000, bat=0)
    assert c.out.setpoint_w == -50000
    # an EV arrives: net rises, the charge must shrink at once (toward safety), not ramp
    o = run(c, 140000, bat=-50000)          # net = 90 kW
    assert o.setpoint_w == -10000


# --- self-sufficiency and zero feed-in ---------------------------------------------------------

def test_ss_stores_surplus_and_covers_demand_without_grid_charging():
    c = mk(objective='ss')
    assert run(c, -20000, bat=0).setpoint_w == -20000       # PV surplus -> charge it
    assert run(c, 30000, bat=0).setpoint_w == 30000         # demand -> cover it
    assert run(c, 0, bat=0).setpoint_w == 0


def test_ss_demand_beyond_battery_comes_from_grid():
    c = mk(objective='ss')
    o = run(c, 80000, bat=0)
    assert o.setpoint_w == 50000 and o.binding == bc.B_CFG_DIS


def test_reserve_soc_stops_self_sufficiency_but_not_import_protection():
    c = mk(objective='ss', reserve_soc_bp=4000)
    o = run(c, 30000, bat=0, soc=3900)
    assert o.setpoint_w == 0 and o.binding == bc.B_RESERVE and o.flags & bc.F_RESERVE_LOCK
    o = run(c, 130000, bat=0, soc=3900)
    assert o.setpoint_w == 30000 and o.binding == bc.B_IMPORT
    # hysteresis: still locked just above reserve, free from reserve + 2 %
    assert run(c, 30000, bat=0, soc=4100).setpoint_w == 0
    assert run(c, 30000, bat=0, soc=4200).setpoint_w == 30000


def test_zero_feed_in_keeps_min_import_and_never_exports():
    c = mk(objective='zfi', min_import_w=300)
    assert run(c, 10000, bat=0).setpoint_w == 9700
    o = run(c, net=10000, bat=9700)         # already discharging 9.7 kW: hold
    assert o.setpoint_w == 9700
    o = run(c, net=700, bat=9700)           # load dropped to 700 W: cut at once
    assert o.setpoint_w == 400 and o.binding in (bc.B_NONE, bc.B_FEED_IN)
    o = run(c, -5000, bat=0)                # (curtailed) PV surplus is stored
    assert o.setpoint_w == -5300


# --- SoC safety ---------------------------------------------------------------------------------

def test_taper_is_linear_from_min_plus_band_to_min():
    c = mk(min_soc_bp=1000, taper_band_bp=500, max_discharge_w=50000)
    for soc, cap in ((1500, 50000), (1250, 25000), (1100, 10000), (1001, 100)):
        o = run(c, 200000, bat=0, soc=soc)
        assert o.setpoint_w == cap and o.avail_dis_w == cap
        if soc < 1500:
            assert o.state == bc.ST_TAPERING and o.binding == bc.B_TAPER


def test_min_soc_lock_with_hysteresis():
    c = mk(min_soc_bp=1000, hysteresis_bp=200)
    o = run(c, 200000, bat=0, soc=1000)
    assert o.setpoint_w == 0 and o.flags & bc.F_MIN_LOCK and o.binding == bc.B_MIN_SOC
    assert run(c, 150000, bat=0, soc=1199).setpoint_w == 0          # still locked
    assert run(c, 150000, bat=0, soc=1200).setpoint_w > 0           # released at min + 2 %
    assert run(c, 150000, bat=0, soc=1100).setpoint_w > 0           # stays released above min
    o = run(c, 20000, bat=0, soc=1000)      # locked, but charging from spare capacity is fine
    assert o.setpoint_w < 0 and o.state == bc.ST_CHARGING


def test_min_soc_lock_state_when_idle():
    c = mk(objective='ss')
    o = run(c, 5000, bat=0, soc=900)
    assert o.setpoint_w == 0 and o.state == bc.ST_MIN_SOC_LOCK


def test_max_soc_lock_with_hysteresis():
    c = mk(objective='ss', max_soc_bp=9500, hysteresis_bp=200)
    o = run(c, -20000, bat=0, soc=9500)
    assert o.setpoint_w == 0 and o.state == bc.ST_MAX_SOC_LOCK and o.binding == bc.B_MAX_SOC
    assert run(c, -20000, bat=0, soc=9301).setpoint_w == 0
    assert run(c, -20000, bat=0, soc=9300).setpoint_w == -20000


def test_power_bounded_by_config_and_battery_reported_limits():
    c = mk(objective='ss')
    o = run(c, 90000, bat=0, bms=(40000, 30000))
    assert o.setpoint_w == 30000 and o.binding == bc.B_BMS_DIS and o.avail_dis_w == 30000
    o = run(c, -90000, bat=0, bms=(40000, 30000))
    assert o.setpoint_w == -40000 and o.binding == bc.B_BMS_CHG and o.avail_chg_w == 40000
    o = run(c, -90000, bat=0, bms=(90000, 90000))
    assert o.setpoint_w == -50000 and o.binding == bc.B_CFG_CHG


# --- deadband and ramp -------------------------------------------------------------------------

def test_deadband_keeps_setpoint_for_small_changes_but_zero_is_immediate():
    c = mk(objective='ss', deadband_w=500)
    assert run(c, 10000, bat=0).setpoint_w == 10000
    o = run(c, net=10300, bat=10000)        # target 10.3 kW: inside the deadband
    assert o.setpoint_w == 10000 and o.binding == bc.B_DEADBAND
    assert run(c, net=10600, bat=10000).setpoint_w == 10600
    assert run(c, 0, bat=0).setpoint_w == 0


def test_ramp_limits_moves_away_from_zero_only():
    c = mk(objective='ss', ramp_w_per_s=1000)
    o = run(c, 20000, bat=0, dt=1000)
    assert o.setpoint_w == 1000 and o.binding == bc.B_RAMP
    assert run(c, net=20000, bat=1000, dt=500).setpoint_w == 1500
    o = run(c, net=200, bat=1500)           # toward 0: immediate
    assert o.setpoint_w == 200
    o = run(c, net=-20000, bat=200, dt=2000)    # reversal: from 0, then at most ramp * dt
    assert o.setpoint_w == -2000


def test_sign_reversal_passes_through_zero_without_overshoot():
    c = mk(objective='ss', ramp_w_per_s=3000)
    for _ in range(20):
        run(c, net=30000)
    assert c.out.setpoint_w == 30000
    o = run(c, net=0, dt=1000)              # demand gone -> exactly 0, at once
    assert o.setpoint_w == 0
    o = run(c, net=-20000, dt=1000)         # 20 kW surplus: charge ramps from 0
    assert o.setpoint_w == -3000


def test_dt_is_clamped_to_supported_period():
    c = mk(objective='ss', ramp_w_per_s=1)
    assert run(c, 50000, bat=0, dt=10 ** 9).setpoint_w == 60      # 60 s max * 1 W/s
    assert run(c, 50000, bat=60, dt=-5).setpoint_w == 60          # negative -> 0 ms


# --- per-phase ----------------------------------------------------------------------------------

def test_phase_asymmetry_costs_three_times_the_excess():
    c = mk(phase_limit_w=32000, import_limit_w=200000)
    o = run(c, 40000, bat=0, phases=(33000, 3500, 3500))
    assert o.phase_excess_w == 1000 and o.phase_cost_w == 3000
    assert o.setpoint_w == 3000 and o.binding == bc.B_PHASE


def test_phase_values_ignored_without_phase_limit_and_required_with_it():
    c = mk()
    assert run(c, 50000, bat=0).state != bc.ST_FAILSAFE
    c = mk(phase_limit_w=32000)
    o = run(c, 50000, bat=0)
    assert o.state == bc.ST_FAILSAFE and o.flags & bc.F_PHASE_BAD and o.setpoint_w == 0


def test_phase_limit_caps_grid_charging_too():
    c = mk(phase_limit_w=20000, import_limit_w=200000)
    o = run(c, 30000, bat=0, phases=(18000, 6000, 6000))
    assert o.setpoint_w == -6000        # 2 kW spare on L1 -> 6 kW symmetric charge


# --- fail-safe ---------------------------------------------------------------------------------

@pytest.mark.parametrize('kw, flag', [
    ({'meter_ok': 0}, bc.F_METER_BAD),
    ({'meter_age': 2001}, bc.F_METER_BAD),
    ({'meter_age': -1}, bc.F_METER_BAD),
    ({'bat_ok': 0}, bc.F_BAT_BAD),
    ({'bat_age': 2001}, bc.F_BAT_BAD),
    ({'soc': 10001}, bc.F_RANGE),
    ({'soc': -1}, bc.F_RANGE),
    ({'gcp': 10000001}, bc.F_RANGE),
    ({'bat': -10000001}, bc.F_RANGE),
])
def test_missing_or_stale_data_means_zero_watts_at_once(kw, flag):
    c = mk(ramp_w_per_s=1)
    run(c, 150000, bat=0)
    assert c.out.setpoint_w == 50000
    args = dict(gcp=150000, bat=50000)
    args.update(kw)
    o = run(c, **args)
    assert o.setpoint_w == 0 and o.state == bc.ST_FAILSAFE and o.binding == bc.B_FAILSAFE
    assert o.flags & flag and o.avail_dis_w == 0 and o.avail_chg_w == 0
    # recovery: import protection comes back at once, the rest ramps from 0
    o = run(c, 150000, bat=0)
    assert o.setpoint_w == 50000 and o.state == bc.ST_DISCHARGING


def test_boot_state_is_failsafe_zero():
    c = mk()
    assert c.out.setpoint_w == 0 and c.out.state == bc.ST_FAILSAFE


# --- dispatch ------------------------------------------------------------------------------------

def test_dispatch_overrides_objective_then_expires_by_itself():
    c = mk(objective='ss', reserve_soc_bp=6000)
    c.start_dispatch(40000, 2500)
    o = run(c, 0, bat=0, soc=5000)          # below reserve: dispatch may still discharge
    assert o.setpoint_w == 40000 and o.state == bc.ST_DISPATCH and o.dispatch_left_ms == 1500
    assert run(c, 0, bat=40000, soc=5000).dispatch_left_ms == 500
    o = run(c, 0, bat=40000, soc=5000)
    assert o.dispatch_left_ms == 0 and o.state != bc.ST_DISPATCH and o.setpoint_w == 0


def test_dispatch_charging_never_pushes_the_site_over_the_limit():
    c = mk()
    c.start_dispatch(-50000, 600000)
    o = run(c, 90000, bat=0)                # 10 kW spare: charge only that
    assert o.setpoint_w == -10000 and o.binding == bc.B_IMPORT
    o = run(c, 130000, bat=0)               # over the limit: no charging at all...
    assert o.setpoint_w == 0
    c.start_dispatch(10000, 600000)         # ...but a discharge dispatch stands as commanded
    assert run(c, 130000, bat=0).setpoint_w == 10000


def test_dispatch_stays_inside_soc_and_power_limits():
    c = mk()
    c.start_dispatch(90000, 60000)
    assert run(c, 0, bat=0).setpoint_w == 50000
    assert run(c, 0, bat=0, soc=1000).setpoint_w == 0          # min-SoC lock wins
    c.start_dispatch(-90000, 60000)
    assert run(c, 0, bat=0, soc=9600).setpoint_w == 0          # max-SoC lock wins
    c.stop_dispatch()
    assert run(c, 0, bat=0, soc=5000).state != bc.ST_DISPATCH


@pytest.mark.parametrize('p, d', [(10000001, 1000), (1000, 0), (1000, 86400001), (1.0, 1000), (1000, '5')])
def test_dispatch_rejects_bad_arguments(p, d):
    c = mk()
    with pytest.raises(ValueError):
        c.start_dispatch(p, d)
    assert c.dispatch_left_ms == 0


def test_operator_override_ranks_above_dispatch_and_expires():
    c = mk()
    c.start_dispatch(40000, 10000)
    c.start_override(0, 2000)               # e.g. hold the battery for maintenance
    o = run(c, 150000, bat=0)               # not even import protection moves it
    assert o.setpoint_w == 0 and o.state == bc.ST_OVERRIDE and o.binding == bc.B_OVERRIDE
    assert o.override_left_ms == 1000 and o.dispatch_left_ms == 9000
    o = run(c, 150000, bat=0)               # override expired: the dispatch event is back
    assert o.override_left_ms == 0 and o.state == bc.ST_DISPATCH and o.setpoint_w == 40000
    c.start_override(-90000, 5000)
    assert run(c, 0, bat=0).setpoint_w == -50000       # still inside the power limits
    assert run(c, 0, bat=0, soc=9600).setpoint_w == 0  # and the SoC locks
    c.stop_override()
    assert run(c, 0, bat=0).state == bc.ST_DISPATCH
    with pytest.raises(ValueError):
        c.start_override(True, 1000)


def test_muldiv_is_exact_and_stays_small():
    for a, b, cc in ((10000000, 10000, 10000), (10000000, 1, 10000), (9999999, 9999, 10000), (7, 3, 2)):
        assert bc.muldiv(a, b, cc) == a * b // cc
        assert (a // cc) * b < 2 ** 30 and (a % cc) * b < 2 ** 30


def test_the_runtime_s_copy_of_the_failsafe_state_code_matches_the_core():
    """firmware/cycle.py keeps its own private const of ST_FAILSAFE: bess_core's codes are private
    consts on a board (no global to read there, docs/resources.md)."""
    import ast
    src = open(os.path.join(os.path.dirname(__file__), '..', 'firmware', 'cycle.py')).read()
    consts = {n.targets[0].id: n.value.args[0].value for n in ast.parse(src).body
              if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
              and getattr(n.value.func, 'id', '') == 'const'}
    assert consts['_ST_FAILSAFE'] == bc.ST_FAILSAFE
