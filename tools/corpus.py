"""Deterministic corpus of control-core input vectors, for the cross-runtime equivalence proof.

One corpus = episodes; each episode = a valid config and a sequence of steps run through one
Controller (the core is stateful: locks, ramp, dispatch). Each step is VEC_FIELDS integers.
Values stay small ints (|x| < 2**30) -- the documented input contract -- but include every
extreme inside that: +-10 MW and beyond (range fail-safe), SoC outside 0..10000, stale and
negative ages, dt 0 and far above 60 s, BMS limits absent/zero/huge, dispatch and operator
override start/stop (dispatch_cmd 1/2 and 3/4).

Text format (read by host_tests/mp/corpus_runner.py on every runtime):
    E <config as JSON>
    <VEC_FIELDS space-separated ints>   (one line per step)
"""
import json
import random
import sys

from bess_config import validate, ConfigError, POWER_MAX_W

VEC_FIELDS = ('gcp_w', 'gcp_l1_w', 'gcp_l2_w', 'gcp_l3_w', 'phases_valid', 'meter_valid',
              'meter_age_ms', 'bat_w', 'soc_bp', 'bat_valid', 'bat_age_ms', 'bms_max_chg_w',
              'bms_max_dis_w', 'dt_ms', 'dispatch_cmd', 'dispatch_w', 'dispatch_ms',
              # the schedule's interval in force (lib/plan.py writes these; NOT_SET = unset)
              'plan_obj', 'plan_reserve_bp', 'plan_soc_min_bp', 'plan_soc_max_bp', 'plan_import_w',
              'plan_target_bp', 'plan_power_w', 'plan_firm', 'plan_export', 'plan_left_s',
              'plan_protect_import_w', 'plan_protect_phase_w')
NOT_SET = -0x3FFFFFFF
SMALL_MAX = 2 ** 30 - 1     # largest small int on 32-bit MicroPython
SMALL_MIN = -(2 ** 30)


def _pick_config(rng):
    while True:
        lim = rng.choice([1, 2, 1000, 50000, 100000, 400000, POWER_MAX_W, rng.randint(1, POWER_MAX_W)])
        mn = rng.choice([0, 500, 1000, 2000, rng.randint(0, 4000)])
        cfg = {
            'objective': rng.choice(['gce', 'ss', 'zfi']),
            'import_limit_w': lim,
            'phase_limit_w': rng.choice([0, 0, lim // 3 + 1, rng.randint(1, POWER_MAX_W)]),
            'ev_headroom_w': rng.choice([0, lim // 10, rng.randint(0, max(0, lim - 1))]),
            'min_import_w': rng.choice([0, 200, rng.randint(0, max(0, lim - 1))]),
            'min_soc_bp': mn,
            'reserve_soc_bp': rng.choice([mn, mn + 1000, mn + rng.randint(0, 3000)]),
            'max_soc_bp': rng.choice([9500, 10000, rng.randint(6000, 10000)]),
            'taper_band_bp': rng.choice([0, 1, 500, rng.randint(0, 2000)]),
            'hysteresis_bp': rng.choice([0, 200, rng.randint(0, 800)]),
            'max_charge_w': rng.choice([0, 1, 50000, POWER_MAX_W, rng.randint(0, POWER_MAX_W)]),
            'max_discharge_w': rng.choice([0, 1, 50000, POWER_MAX_W, rng.randint(0, POWER_MAX_W)]),
            'ramp_w_per_s': rng.choice([1, 1000, 100000, POWER_MAX_W, rng.randint(1, POWER_MAX_W)]),
            'deadband_w': rng.choice([0, 0, 100, rng.randint(0, 100000)]),
            'stale_ms': rng.choice([1, 2000, 2000, 600000, rng.randint(1, 600000)]),
        }
        try:
            return validate(cfg)
        except ConfigError:
            continue


def _power(rng, scale):
    r = rng.random()
    if r < 0.01:
        return rng.choice([POWER_MAX_W, -POWER_MAX_W, POWER_MAX_W + 1, -POWER_MAX_W - 1, SMALL_MAX, SMALL_MIN])
    if r < 0.06:
        return rng.randint(-POWER_MAX_W, POWER_MAX_W)
    return rng.randint(-scale, scale)


def _step(rng, cfg, state, calm):
    """One input vector; state carries a slowly moving site so locks and ramps get exercised."""
    lim = cfg['import_limit_w']
    scale = max(10, min(POWER_MAX_W, 2 * lim))
    state['soc'] = max(0, min(10000, state['soc'] + rng.randint(-120, 120)))
    if rng.random() < 0.05:
        state['soc'] = rng.choice([0, 10000, -1, 10001, SMALL_MAX, SMALL_MIN, 0, 10000, cfg['min_soc_bp'],
                                   cfg['min_soc_bp'] + cfg['hysteresis_bp'], cfg['max_soc_bp'],
                                   cfg['max_soc_bp'] - cfg['hysteresis_bp'], cfg['reserve_soc_bp'],
                                   cfg['min_soc_bp'] + cfg['taper_band_bp'], rng.randint(0, 10000)])
    div = 400 if calm else 8
    state['net'] += rng.randint(-scale // div, scale // div)
    state['net'] = max(-POWER_MAX_W, min(POWER_MAX_W, state['net']))
    bat = state['sp'] if rng.random() < 0.8 else _power(rng, scale)
    gcp = state['net'] - bat if rng.random() < 0.9 else _power(rng, scale)
    gcp = max(SMALL_MIN, min(SMALL_MAX, gcp))
    share = gcp // 3
    skew = rng.randint(-scale // 4, scale // 4)
    l1, l2, l3 = share + skew, share - skew // 2, gcp - 2 * share - skew + skew // 2
    if rng.random() < 0.03:
        l1 = _power(rng, scale)
    stale = cfg['stale_ms']
    def age():
        if rng.random() < 0.93:
            return rng.randint(0, min(stale, 1000))
        return rng.choice([stale, stale + 1, -1, SMALL_MAX])
    def bms():
        return rng.choice([-1, -1, 0, rng.randint(0, scale), rng.randint(0, scale), POWER_MAX_W, SMALL_MAX, -SMALL_MAX])
    cmd, dw, dms = 0, 0, 0
    r = rng.random()
    if r < 0.01:
        cmd, dw, dms = 1, rng.randint(-POWER_MAX_W, POWER_MAX_W), rng.choice([1, 1000, 30000, 86400000])
    elif r < 0.015:
        cmd = 2
    elif r < 0.022:
        cmd, dw, dms = 3, rng.randint(-POWER_MAX_W, POWER_MAX_W), rng.choice([1, 1000, 20000, 86400000])
    elif r < 0.026:
        cmd = 4
    plan = state['plan']
    if plan is not None and rng.random() < 0.04:
        state['plan'] = plan = _pick_plan(rng, cfg, calm)
    if plan is not None:
        plan[9] = max(0, plan[9] - 1) if rng.random() < 0.95 else rng.choice([0, 1, 600, 601, 86400, 604800])
    return [gcp, l1, l2, l3,
            1 if rng.random() < 0.97 else 0,
            1 if rng.random() < 0.98 else 0, age(),
            bat, state['soc'],
            1 if rng.random() < 0.98 else 0, age(),
            bms(), bms(),
            rng.choice([1000, 1000, 1000, 1, 250, 60000, 0, -5, 60001, SMALL_MAX]),
            cmd, dw, dms] + (plan if plan is not None else [-1] + [NOT_SET] * 6 + [0, -1, 0, NOT_SET, NOT_SET])


def _pick_plan(rng, cfg, calm=False):
    """An interval's fields as lib/plan.py hands them to the core: within what the schedule
    validator allows (never wider than commissioned), each field often unset."""
    mn, mx, lim = cfg['min_soc_bp'], cfg['max_soc_bp'], cfg['import_limit_w']
    def opt(v):
        return v if rng.random() < 0.5 else NOT_SET
    lo = opt(rng.randint(mn, max(mn, mx - 1)))
    hi = opt(rng.randint(max(mn, lo if lo != NOT_SET else mn) + 1, max(mn + 1, mx)))
    top = hi if hi != NOT_SET else mx
    power = target = NOT_SET
    r = rng.random()
    if calm and r < 0.5:
        r = 0.5                         # calm episodes: a charge-to-target interval half the time
    if r < 0.35:
        power = rng.choice([rng.randint(-lim, lim), rng.randint(-POWER_MAX_W, POWER_MAX_W), 0, -1, 1])
    elif r < 0.7:
        target = rng.randint(0, top)
    return [rng.choice([-1, -1, 0, 1, 2]), opt(rng.randint(0, top)), lo, hi,
            opt(rng.choice([0, 1, lim // 2, rng.randint(0, lim)])), target, power,
            rng.randint(0, 1), rng.choice([-1, 0, 1]), rng.choice([0, 1, 300, 900, 3600, 86400, 604800, 604800]),
            opt(rng.choice([lim, lim + rng.randint(0, lim), POWER_MAX_W])),
            opt(rng.choice([0, cfg['phase_limit_w'], cfg['phase_limit_w'] * 2, rng.randint(0, POWER_MAX_W)]))]


def generate(seed=20261123, episodes=40, steps=256):
    """Yield (config dict, [vector, ...]) episodes; total vectors = episodes * steps."""
    rng = random.Random(seed)
    for e in range(episodes):
        cfg = _pick_config(rng)
        if e % 3 == 1:
            # a commitment raises the reserve (when the battery can hold it) and sets usable_wh,
            # which the charge-to-target pace needs
            wh = rng.choice([1000, 50000, 200000, rng.randint(1, 10 ** 9)])
            for cw in (rng.randint(0, 2 * cfg['import_limit_w']), 0):
                try:
                    cfg = validate(dict(cfg, committed_w=cw, usable_wh=wh, derate_bp=rng.choice([0, 2000]),
                                        event_duration_s=rng.choice([900, 3600]),
                                        protect_below_reserve=rng.randint(0, 1)))
                    break
                except ConfigError:
                    continue
        if e % 4 == 3:
            # calm episode: a slowly moving site and no deadband/ramp in the way, so steady-state
            # targets (EV headroom charging, exact import-limit holding) get exercised too
            cfg = validate(dict(cfg, deadband_w=0, ramp_w_per_s=POWER_MAX_W, stale_ms=600000, max_charge_w=POWER_MAX_W,
                                usable_wh=cfg['usable_wh'] or rng.choice([2000, 20000])))
        state = {'soc': rng.randint(0, 10000), 'net': rng.randint(-cfg['import_limit_w'], 2 * cfg['import_limit_w']),
                 'sp': 0, 'plan': _pick_plan(rng, cfg, e % 4 == 3) if e % 2 else None}
        vecs = []
        for _ in range(steps):
            v = _step(rng, cfg, state, e % 4 == 3)
            state['sp'] = rng.randint(-abs(state['net']), abs(state['net'])) // 2
            vecs.append(v)
        yield cfg, vecs


def write(path, **kw):
    n = 0
    with open(path, 'w') as f:
        for cfg, vecs in generate(**kw):
            f.write('E ' + json.dumps(cfg, sort_keys=True) + '\n')
            for v in vecs:
                assert len(v) == len(VEC_FIELDS) and all(SMALL_MIN <= x <= SMALL_MAX for x in v)
                f.write(' '.join(str(x) for x in v) + '\n')
                n += 1
    return n


if __name__ == '__main__':
    print(write(sys.argv[1] if len(sys.argv) > 1 else 'corpus.txt'), 'vectors')
