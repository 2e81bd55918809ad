"""Issue 11: the schedule in the core's priority stack (lib/bess_core.py) and its per-cycle
evaluation (lib/plan.py): reserve floor, obligation, charge-to-target, arbitrage, fallback, and
the allocation-free proof of Plan.tick() + step() on 32-bit MicroPython."""
import os
import random
import subprocess

import pytest

import bess_core as bc
import plan as pl
import schedule as sc
import site_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = 1764300000
CFG = {'objective': 'ss', 'import_limit_w': 60000, 'ev_headroom_w': 5000, 'min_soc_bp': 1000,
       'reserve_soc_bp': 2000, 'max_soc_bp': 9500, 'taper_band_bp': 500, 'hysteresis_bp': 200,
       'max_charge_w': 50000, 'max_discharge_w': 50000, 'ramp_w_per_s': 10000000, 'usable_wh': 100000}
COMM = {'min_soc_bp': 1000, 'max_soc_bp': 9500, 'import_limit_w': 60000, 'usable_wh': 100000}


def ctl_with(**plan):
    c = bc.Controller(dict(CFG))
    for k, v in plan.items():
        setattr(c, 'plan_' + k, v)
    return c


def feed(c, net_w, soc_bp, bat_w=0, dt_ms=1000):
    i = c.inp
    i.gcp_w = net_w - bat_w
    i.bat_w = bat_w
    i.soc_bp = soc_bp
    i.meter_valid = i.bat_valid = 1
    i.meter_age_ms = i.bat_age_ms = 0
    i.dt_ms = dt_ms
    c.step()
    return c.out


def test_commitment_raises_the_reserve_by_the_seed_arithmetic():
    c = bc.Controller(dict(CFG, committed_w=40000, event_duration_s=3600, usable_wh=100000, derate_bp=2000,
                           availability_bp=9500))
    # 40 kWh over 100 kWh x 0.8 x 0.95 = 52.64 % above the 10 % floor
    assert c.commit_reserve_bp == 1000 + 5264 and c.reserve_soc_bp == 6264
    assert feed(c, 30000, 6000).setpoint_w == 0 and c.out.reserve_bp == 6264     # ss stops at it
    with pytest.raises(ValueError, match='committed_w'):
        bc.Controller(dict(CFG, committed_w=200000, usable_wh=100000))        # cannot be held
    with pytest.raises(ValueError, match='usable_wh'):
        bc.Controller(dict(CFG, committed_w=1000, usable_wh=0))


def test_reserve_floor_is_never_crossed_by_self_consumption_or_arbitrage():
    rng = random.Random(11)
    for _ in range(3000):
        reserve = rng.randint(2000, 9000)
        c = ctl_with(reserve_bp=reserve, obj=rng.choice([-1, 1, 2]),
                     power_w=rng.choice([bc.NOT_SET, rng.randint(1, 60000)]), firm=0)
        soc = rng.randint(1000, reserve)
        net = rng.randint(-30000, 59000)        # under the import limit: no protection needed
        o = feed(c, net, soc)
        assert o.setpoint_w <= 0, (reserve, soc, net, o.setpoint_w, bc.BINDING_NAMES[o.binding])
        assert o.reserve_bp == reserve and o.ev_limit_w == 60000


def test_import_protection_may_cross_the_reserve_unless_configured_not_to():
    c = ctl_with(reserve_bp=6000)
    assert feed(c, 70000, 5000).setpoint_w == 10000                 # breaker first
    c = bc.Controller(dict(CFG, protect_below_reserve=0))
    c.plan_reserve_bp = 6000
    o = feed(c, 70000, 5000)
    assert o.setpoint_w == 0 and o.binding == bc.B_RESERVE
    c = bc.Controller(dict(CFG, objective='gce', protect_below_reserve=0, reserve_soc_bp=6000))
    assert feed(c, 70000, 5000).setpoint_w == 0
    assert feed(c, 70000, 7000).setpoint_w == 10000


def test_obligation_discharge_holds_down_to_min_soc():
    c = ctl_with(power_w=40000, firm=1, reserve_bp=6000)
    for soc in (9000, 6000, 3000, 1600):
        o = feed(c, 10000, soc)
        assert o.setpoint_w == 40000 and o.binding == bc.B_SCHEDULE, soc
    o = feed(c, 10000, 1250)                    # the taper (min 10 % + 5 % band) still applies
    assert o.setpoint_w == 50000 * 250 // 500 and o.binding == bc.B_TAPER
    assert feed(c, 10000, 1000).setpoint_w == 0                     # min-SoC lock: safety first
    # import protection adds to an obligation, never takes from it
    c = ctl_with(power_w=5000, firm=1)
    assert feed(c, 75000, 5000).setpoint_w == 15000


def test_economic_power_charges_only_within_the_headroom():
    c = ctl_with(power_w=-50000, firm=0)
    o = feed(c, 40000, 5000)                    # spare 20 kW less 5 kW headroom
    assert o.setpoint_w == -15000 and o.binding == bc.B_HEADROOM
    c = ctl_with(power_w=-50000, firm=1)        # a firm charge is bounded by the limit only
    assert feed(c, 40000, 5000).setpoint_w == -20000


def test_no_export_caps_discharge_at_site_demand():
    c = ctl_with(power_w=30000, firm=0, export=0)
    o = feed(c, 12000, 8000)
    assert o.setpoint_w == 12000 and o.binding == bc.B_FEED_IN


def test_schedule_narrows_never_widens():
    c = ctl_with(obj=bc.OBJ_GCE, import_w=40000, soc_max_bp=8000, soc_min_bp=3000)
    assert feed(c, 50000, 5000).setpoint_w == 10000                 # 40 kW limit in force
    assert c.out.ev_limit_w == 40000 + 50000
    c = ctl_with(obj=bc.OBJ_GCE, import_w=90000)                    # above commissioned: ignored
    assert feed(c, 70000, 5000).setpoint_w == 10000
    c = ctl_with(soc_max_bp=8000)
    assert feed(c, -20000, 8000).setpoint_w == 0                    # max lock at the plan's 80 %
    c = ctl_with(soc_min_bp=3000)
    assert feed(c, 20000, 3000).setpoint_w == 0                     # min lock at the plan's 30 %


def test_charge_to_target_reaches_it_by_the_interval_end():
    """Closed loop on the physics model: whenever power and import limit allow, the SoC is at the
    target when the interval ends (efficiency losses included)."""
    rng = random.Random(5)
    ran = 0
    for _ in range(40):
        dur = rng.choice([900, 1800, 3600, 7200])
        start = rng.randint(1500, 6000)
        target = min(9400, start + rng.randint(500, 3000))
        base = rng.randint(0, 40000)
        need_w = (target - start) * 100000 // 10000 * 3600 // dur * 100 // 96     # battery losses
        if need_w > 0.85 * min(50000, 55000 - base):
            continue                            # not possible within the limits: not asserted
        ran += 1
        c = bc.Controller(dict(CFG, objective=rng.choice(['ss', 'gce'])))
        c.plan_target_bp = target
        bat = site_model.Battery(100000, soc_bp=start, max_chg_w=50000, max_dis_w=50000)
        site = site_model.Site(lambda t: base, lambda t: 0, lambda t: (0, 0, 0))
        for t in range(dur):
            c.plan_left_s = dur - t
            site_model.feed(c, site, bat, t, 1000)
            c.step()
            bat.command(c.out.setpoint_w)
            bat.step(1000)
            gcp = site.phases(t, bat.actual_w)[3]
            assert gcp <= 60000 - 5000 + 50, (t, gcp)               # never past limit - headroom
        assert bat.soc_bp >= target, (dur, start, target, base, bat.soc_bp)
    assert ran >= 15


def _sched(**kw):
    d = {'v': 1, 'id': 's', 'version': 1, 'created': T0, 'valid_until': T0 + 7200,
         'default': {'objective': 'ss', 'reserve_soc_bp': 3000},
         'intervals': [{'start': T0 + 600, 'duration_s': 600, 'reserve_soc_bp': 5000, 'target_soc_bp': 6000},
                       {'start': T0 + 1800, 'duration_s': 600, 'power_w': 20000, 'firm': True}]}
    d.update(kw)
    return sc.compile_(d, COMM)


def test_plan_walks_the_intervals_and_falls_back_within_one_cycle():
    c = bc.Controller(dict(CFG))
    p = pl.Plan(c)
    p.load(_sched(), base_epoch_s=T0 - 100)
    seen = []
    for e in range(0, 7400, 50):
        p.tick(1, e)
        seen.append((e - 100, p.src, p.k))
        if p.src == pl.SRC_SCHEDULE and p.k == 1:
            assert c.plan_power_w == 20000 and c.plan_firm == 1 and c.plan_reserve_bp == bc.NOT_SET
        if p.src == pl.SRC_DEFAULT:
            assert c.plan_reserve_bp == 3000 and c.plan_power_w == bc.NOT_SET and c.plan_obj == 1
    srcs = {t: (s, k) for t, s, k in seen}
    assert srcs[-100] == (pl.SRC_DEFAULT, 2) and srcs[600] == (pl.SRC_SCHEDULE, 0)
    assert srcs[1150] == (pl.SRC_SCHEDULE, 0) and srcs[1200] == (pl.SRC_DEFAULT, 2)
    assert srcs[1800] == (pl.SRC_SCHEDULE, 1) and srcs[2400] == (pl.SRC_DEFAULT, 2)
    assert srcs[7150] == (pl.SRC_DEFAULT, 2) and srcs[7200] == (pl.SRC_FALLBACK, 2) and p.reason == pl.R_EXPIRED
    # expiry is seen on the first tick past valid_until: one cycle
    p.load(_sched(), base_epoch_s=T0)
    p.tick(1, 7199)
    assert p.src == pl.SRC_DEFAULT
    p.tick(1, 7200)
    assert p.src == pl.SRC_FALLBACK and c.plan_reserve_bp == 3000
    # a schedule arriving late applies from its current interval
    p.load(_sched(), base_epoch_s=T0 + 1900)
    p.tick(1, 0)
    assert (p.src, p.k, c.plan_left_s) == (pl.SRC_SCHEDULE, 1, 500)


def test_clock_loss_and_clock_before_created_fall_back_to_the_default_block():
    c = bc.Controller(dict(CFG))
    p = pl.Plan(c)
    p.load(_sched(), base_epoch_s=T0)
    p.tick(1, 700)
    assert p.src == pl.SRC_SCHEDULE and c.plan_target_bp == 6000
    p.tick(0, 701)
    assert (p.src, p.reason, c.plan_target_bp, c.plan_reserve_bp) == (pl.SRC_FALLBACK, pl.R_NO_CLOCK, bc.NOT_SET, 3000)
    p.tick(1, 702)
    assert p.src == pl.SRC_SCHEDULE and c.plan_target_bp == 6000
    p.rebase(T0 - 3600)                         # the clock now reads an hour before created
    p.tick(1, 0)
    assert (p.src, p.reason) == (pl.SRC_FALLBACK, pl.R_EARLY)
    p.rebase(T0 - 300)                          # within the allowed skew: the default block
    p.tick(1, 0)
    assert (p.src, p.reason) == (pl.SRC_DEFAULT, pl.R_NONE)
    p.load(None)
    p.tick(1, 0)
    assert p.src == pl.SRC_CONFIG and c.plan_reserve_bp == bc.NOT_SET and c.plan_obj == -1


def test_a_clock_step_back_rescans():
    c = bc.Controller(dict(CFG))
    p = pl.Plan(c)
    p.load(_sched(), base_epoch_s=T0)
    p.tick(1, 1900)
    assert p.k == 1
    p.rebase(T0 - 1200)
    p.tick(1, 1900)                             # t = 700: back in the first interval
    assert (p.src, p.k) == (pl.SRC_SCHEDULE, 0)


MP_SCRIPT = r'''
import sys
sys.path.insert(0, sys.argv[1])
import micropython, gc
import bess_core, plan, schedule
T0 = 1764300000
iv = []
for k in range(96):
    e = {'start': T0 + k * 900, 'duration_s': 900, 'reserve_soc_bp': 3000 + k, 'objective': 'ss',
         'import_limit_w': 50000 + k, 'export': k % 2 == 0}
    if k % 3 == 0:
        e['target_soc_bp'] = 6000
    elif k % 3 == 1:
        e['power_w'] = 1000 * k
        e['firm'] = k % 2 == 1
    iv.append(e)
d = {'v': 1, 'id': 'full', 'version': 1, 'created': T0, 'valid_until': T0 + 96 * 900 + 3600,
     'default': {'objective': 'ss', 'reserve_soc_bp': 2500}, 'intervals': iv}
cfg = {'objective': 'ss', 'import_limit_w': 60000, 'usable_wh': 100000, 'reserve_soc_bp': 2000}
s = schedule.compile_(d, {'min_soc_bp': 1000, 'max_soc_bp': 9500, 'import_limit_w': 60000})
del d, iv
c = bess_core.Controller(cfg)
p = plan.Plan(c)
p.load(s, base_epoch_s=T0 - 60)
i = c.inp
i.meter_valid = i.bat_valid = 1
i.dt_ms = 1000
tick = p.tick
step = c.step
srcs = [0, 0, 0, 0]
e = 0
gc.collect()
micropython.heap_lock()
try:
    while e < 96 * 900 + 3800:
        i.gcp_w = 20000 + (e % 7) * 1000
        i.soc_bp = 2000 + (e % 5000)
        tick(1 if e % 1000 else 0, e)
        step()
        srcs[p.src] += 1
        e += 7
finally:
    micropython.heap_unlock()
print('OK', srcs[1], srcs[2], srcs[3])
'''


@pytest.mark.parametrize('runtime', ['unix', '32bit'])
def test_plan_tick_and_step_are_allocation_free_with_a_full_schedule(tmp_path, runtime):
    script = tmp_path / 'plan_alloc.py'
    script.write_text(MP_SCRIPT)
    lib = os.path.join(ROOT, 'lib')
    if runtime == 'unix':
        exe = os.path.join(ROOT, '.venv', 'bin', 'micropython')
    else:
        exe = os.path.join(ROOT, 'build', 'mp32fixed', 'micropython')
    assert os.path.exists(exe), exe + ' missing: run `make deps`'
    args = [exe] + (['-X', 'heapsize=400000'] if runtime == '32bit' else []) + [str(script), lib]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    ok, n_sched, n_default, n_fallback = r.stdout.split()
    assert ok == 'OK' and int(n_sched) > 10000 and int(n_default) > 0 and int(n_fallback) > 0


def test_protection_levels_apply_only_at_or_below_the_reserve():
    """The plan may hold import protection at a level above the limit while the SoC is at or
    below the reserve floor (energy kept for a larger excess later); never below the limit, never
    for grid charging, and above the reserve the limits hold in full."""
    for obj in (bc.OBJ_GCE, bc.OBJ_SS):
        c = ctl_with(obj=obj, reserve_bp=5000, protect_import_w=70000)
        o = feed(c, 75000, 4000)                    # 15 kW over the limit, 5 kW over the level
        assert o.setpoint_w == 5000 and o.req_w == 15000, (obj, o.setpoint_w)
        o = feed(c, 75000, 6000)                    # above the reserve floor (+ hysteresis)
        assert o.setpoint_w == (15000 if obj == bc.OBJ_GCE else 50000)     # ss covers the site
    c = ctl_with(obj=bc.OBJ_GCE, reserve_bp=5000, protect_import_w=40000)     # below the limit
    assert feed(c, 75000, 4000).setpoint_w == 15000
    c = ctl_with(obj=bc.OBJ_GCE, reserve_bp=5000, protect_import_w=90000)
    o = feed(c, 50000, 4000)                        # spare capacity: charging by the real limit
    assert o.setpoint_w == -5000 and o.binding == bc.B_HEADROOM
    # per phase: a symmetric battery covers 3 W per W of the worst phase's excess over the level
    c = bc.Controller(dict(CFG, objective='gce', phase_limit_w=20000))
    c.plan_reserve_bp = 5000
    c.plan_protect_phase_w = 22000
    i = c.inp
    i.gcp_l1_w, i.gcp_l2_w, i.gcp_l3_w, i.phases_valid = 25000, 10000, 10000, 1
    o = feed(c, 45000, 4000)
    assert o.phase_excess_w == 5000 and o.setpoint_w == 3 * 3000
    o = feed(c, 45000, 6000)
    assert o.setpoint_w == 3 * 5000                 # above the reserve: the phase limit in full


def test_review_a_lowered_limit_never_spends_the_reserve():
    """Review finding: at or below the reserve, protection covers the commissioned (physical) limit
    only, not a limit the schedule lowered (an economic one)."""
    c = ctl_with(obj=bc.OBJ_GCE, reserve_bp=5000, import_w=20000)
    assert feed(c, 40000, 5000).setpoint_w == 0                     # under the physical 60 kW
    assert feed(c, 70000, 5000).setpoint_w == 10000                 # over it: protected
    c = ctl_with(obj=bc.OBJ_GCE, reserve_bp=5000, import_w=20000)
    assert feed(c, 40000, 6000).setpoint_w == 20000                 # above the reserve: 20 kW holds


def test_review_c_a_target_floor_does_not_relax_protection():
    """Review finding: protection levels act at or below the reserve, not below a charge target."""
    c = ctl_with(obj=bc.OBJ_GCE, target_bp=9000, protect_import_w=10000000, left_s=3000)
    assert feed(c, 90000, 8000).setpoint_w == 30000
    c = ctl_with(obj=bc.OBJ_SS, reserve_bp=9400)
    o = feed(c, -20000, 9350)           # a reserve above max - hysteresis is capped (9299):
    assert o.reserve_bp == 9500 - 200 - 1 and o.setpoint_w < 0     # the lock can release below max
