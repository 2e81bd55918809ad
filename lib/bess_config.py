# Site configuration: schema, defaults and validation.
#
# Runs on CPython and MicroPython (boot, and every accepted command later), so it uses no
# f-string format specs, no typing, no dataclasses. Units are in the key names; signs and
# ranges are documented once in docs/units.md.

from bess_core import OBJECTIVES, is_int  # noqa: F401 (index = objective code; is_int for the other checks)

POWER_MAX_W = 10000000      # supported power range is +-10 MW (see docs/units.md)
SOC_FULL_BP = 10000         # 100.00 % in basis points
RAMP_MAX_W_PER_S = 10000000
STALE_MAX_MS = 600000
USABLE_MAX_WH = 1000000000  # 1 GWh: keeps the core's charge-to-target arithmetic below 2**30

OBJECTIVE_TITLES = ('grid capacity expansion', 'self-sufficiency', 'self-sufficiency, zero feed-in')

# key: (default, lo, hi). default None = required. 'objective' is the only non-integer key.
SCHEMA = {
    'import_limit_w': (None, 1, POWER_MAX_W),
    'phase_limit_w': (0, 0, POWER_MAX_W),          # 0 = no per-phase limit
    'ev_headroom_w': (0, 0, POWER_MAX_W),
    'min_import_w': (200, 0, POWER_MAX_W),         # zero feed-in: import the battery always leaves
    'min_soc_bp': (1000, 0, SOC_FULL_BP),
    'reserve_soc_bp': (None, 0, SOC_FULL_BP),      # default: min_soc_bp (no reserve)
    'max_soc_bp': (9500, 0, SOC_FULL_BP),
    'taper_band_bp': (500, 0, SOC_FULL_BP),
    'hysteresis_bp': (200, 0, SOC_FULL_BP),
    'max_charge_w': (POWER_MAX_W, 0, POWER_MAX_W),     # default: bounded by the battery's own limits
    'max_discharge_w': (POWER_MAX_W, 0, POWER_MAX_W),
    'ramp_w_per_s': (100000, 1, RAMP_MAX_W_PER_S),
    'deadband_w': (0, 0, POWER_MAX_W),
    'stale_ms': (2000, 1, STALE_MAX_MS),
    # import-limit protection may discharge below the reserve (a breaker trips otherwise); 0: it
    # stops at the reserve like every other discharge (docs/control.md)
    'protect_below_reserve': (1, 0, 1),
    # capacity commitment -> reserve SoC (reserve_bp below, docs/schedule.md): the battery keeps
    # what an event at committed_w for event_duration_s takes; 0 W = no commitment
    'committed_w': (0, 0, POWER_MAX_W),
    'event_duration_s': (3600, 1, 86400),
    'usable_wh': (0, 0, USABLE_MAX_WH),            # rated usable energy; 0 = not given
    'derate_bp': (0, 0, SOC_FULL_BP - 1),          # capacity lost to ageing
    'availability_bp': (SOC_FULL_BP, 1, SOC_FULL_BP),
}
OPTIONAL_DEFAULT_FROM = {'reserve_soc_bp': 'min_soc_bp'}


class ConfigError(ValueError):
    """Raised with every problem found, one per line, so an operator can fix all at once."""



def validate(cfg):
    """Return a complete, checked copy of cfg (a dict). Raise ConfigError listing every problem.

    Nothing is changed when it raises: callers keep their old config.
    """
    if not isinstance(cfg, dict):
        raise ConfigError('config: must be a mapping of names to values, got %s' % type(cfg).__name__)
    errs = []
    out = {}
    for k in cfg:
        if k != 'objective' and k not in SCHEMA:
            errs.append('%s: unknown setting' % k)
    obj = cfg.get('objective', 'gce')
    if obj not in OBJECTIVES:
        errs.append('objective: must be one of %s, got %r' % ('/'.join(OBJECTIVES), obj))
    out['objective'] = obj
    for k in SCHEMA:
        default, lo, hi = SCHEMA[k]
        if k in cfg:
            v = cfg[k]
        elif default is None and k in OPTIONAL_DEFAULT_FROM:
            continue    # filled in below from its source key
        elif default is None:
            errs.append('%s: required' % k)
            continue
        else:
            v = default
        if not is_int(v):
            errs.append('%s: must be an integer, got %r' % (k, v))
        elif v < lo or v > hi:
            errs.append('%s: must be in %d..%d, got %d' % (k, lo, hi, v))
        else:
            out[k] = v
    for k in OPTIONAL_DEFAULT_FROM:
        if k not in cfg and OPTIONAL_DEFAULT_FROM[k] in out:
            out[k] = out[OPTIONAL_DEFAULT_FROM[k]]
    if not errs:
        _check_consistency(out, errs)
    if errs:
        raise ConfigError('invalid config:\n  ' + '\n  '.join(errs))
    return out


def energy_wh(committed_w, event_duration_s):
    """Energy an event at the committed power for its full duration takes, Wh (rounded up)."""
    return -(-committed_w * event_duration_s // 3600)


def reserve_bp(committed_w, event_duration_s, capacity_wh, derate_bp, availability_bp, min_soc_bp):
    """The reserve arithmetic (docs/schedule.md, "Reserve"; lib/reserve.py checks the arguments
    and says what it means, for the host tools): SoC in bp of the rated capacity, rounded up,
    above SOC_FULL_BP when the commitment cannot be held. Integers in their ranges, capacity_wh
    > 0. Here, not in lib/reserve.py, so that a command on a site with a commitment does not
    load a module more (docs/resources.md)."""
    e = energy_wh(committed_w, event_duration_s)
    # share of the rated capacity the event needs, counting only what ageing and availability
    # leave: e / (capacity * (1 - derate) * availability), in bp, rounded up
    return min_soc_bp + -(-e * SOC_FULL_BP ** 3 // (capacity_wh * (SOC_FULL_BP - derate_bp) * availability_bp))


def commitment_reserve_bp(c):
    """Reserve SoC a validated config's capacity commitment needs (min_soc_bp without one; above
    SOC_FULL_BP when it cannot be held: _check_consistency refuses it). Raises ValueError
    without usable_wh."""
    if not c['committed_w']:
        return c['min_soc_bp']
    if not c['usable_wh']:
        raise ValueError('committed_w needs usable_wh (the battery\'s usable energy, Wh)')
    return reserve_bp(c['committed_w'], c['event_duration_s'], c['usable_wh'], c['derate_bp'],
                      c['availability_bp'], c['min_soc_bp'])


def _check_consistency(c, errs):
    mn, rs, mx, hy = c['min_soc_bp'], c['reserve_soc_bp'], c['max_soc_bp'], c['hysteresis_bp']
    try:
        cr = commitment_reserve_bp(c)
        # (above SOC_FULL_BP, a commitment the battery cannot hold at all, this says so with
        # the figures: no message more in this module, which loads for every command;
        # lib/reserve.py words it for the host tools)
        if cr + hy >= mx:
            errs.append('committed_w: the commitment needs a reserve of %d bp; with hysteresis_bp %d it must '
                        'stay below max_soc_bp %d' % (cr, hy, mx))
    except ValueError as e:
        errs.append('committed_w: %s' % e)
    if not mn <= rs < mx:
        errs.append('reserve_soc_bp: must satisfy min_soc_bp <= reserve_soc_bp < max_soc_bp, got %d <= %d < %d'
                    % (mn, rs, mx))
    if mn + hy >= mx - hy:
        errs.append('hysteresis_bp: min_soc_bp + hysteresis_bp must stay below max_soc_bp - hysteresis_bp '
                    '(%d + %d >= %d - %d), or the two SoC locks overlap' % (mn, hy, mx, hy))
    if rs + hy >= mx:
        errs.append('reserve_soc_bp: reserve_soc_bp + hysteresis_bp must stay below max_soc_bp (%d + %d >= %d), '
                    'or charging stops before the reserve lock can release' % (rs, hy, mx))
    if mn + c['taper_band_bp'] > mx:
        errs.append('taper_band_bp: min_soc_bp + taper_band_bp must not exceed max_soc_bp (%d + %d > %d)'
                    % (mn, c['taper_band_bp'], mx))
    lim = c['import_limit_w']
    if c['ev_headroom_w'] >= lim:
        errs.append('ev_headroom_w: must be below import_limit_w (%d >= %d)' % (c['ev_headroom_w'], lim))
    if c['min_import_w'] >= lim:
        errs.append('min_import_w: must be below import_limit_w (%d >= %d)' % (c['min_import_w'], lim))


def objective_code(name):
    return OBJECTIVES.index(name)
