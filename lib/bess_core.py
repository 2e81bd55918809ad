# The control core: one Controller, one step() per cycle.
#
# Pure integer logic, no I/O. step() reads ctl.inp (preallocated Inputs) and writes ctl.out
# (preallocated Outputs); it allocates nothing on MicroPython as long as every input is a small
# int (|x| < 2**30) -- host_tests/test_micropython.py proves that under heap_lock on the 63-bit
# unix port and on 32-bit MicroPython. Units and signs: docs/units.md. Decision order and state
# machine: docs/control.md.
#
# Signs: GCP power + = import; battery power + = discharge, - = charge; SoC in basis points.

try:
    from micropython import const
except ImportError:         # CPython
    def const(x):
        return x

# bess_config (validation) is imported by configure() only: on a board it is loaded for boot and
# for a command, not kept in the heap between them (docs/resources.md).

_PMAX = const(10000000)     # = bess_config.POWER_MAX_W; inputs beyond it are invalid data (fail-safe)
_SOC_FULL = const(10000)    # = bess_config.SOC_FULL_BP
_DT_MAX_MS = const(60000)   # longest supported cycle; larger elapsed times are clamped
COMMAND_MAX_MS = const(86400000)   # longest dispatch event or operator override: 24 h (commands.py too)
NOT_SET = const(-0x3FFFFFFF)    # a plan field the schedule leaves unset: a small int below every value
_LEFT_MAX_S = const(298000)     # charge-to-target horizon cap: keeps need_wh % left * 3600 < 2**30

OBJECTIVES = ('gce', 'ss', 'zfi')   # index = objective code (bess_config validates names)
_OBJ_GCE = const(0)
_OBJ_SS = const(1)
_OBJ_ZFI = const(2)

# Outputs.state
_ST_IDLE = const(0)
_ST_CHARGING = const(1)
_ST_DISCHARGING = const(2)
_ST_TAPERING = const(3)
_ST_MIN_SOC_LOCK = const(4)
_ST_MAX_SOC_LOCK = const(5)
_ST_FAILSAFE = const(6)
_ST_DISPATCH = const(7)
_ST_OVERRIDE = const(8)
STATE_NAMES = ('idle', 'charging', 'discharging', 'tapering', 'min_soc_lock', 'max_soc_lock',
               'failsafe', 'dispatch', 'override')

# Outputs.binding: what decided the setpoint this cycle (the last rule that changed it).
_B_NONE = const(0)           # the objective's own target, nothing clipped it
_B_IMPORT = const(1)         # total import limit (discharge needed, or charge capped)
_B_PHASE = const(2)          # per-phase import limit (3 x worst phase excess)
_B_HEADROOM = const(3)       # grid charging sized by spare capacity minus EV headroom
_B_CFG_DIS = const(4)        # configured max discharge
_B_CFG_CHG = const(5)        # configured max charge
_B_BMS_DIS = const(6)        # battery-reported allowed discharge
_B_BMS_CHG = const(7)        # battery-reported allowed charge
_B_TAPER = const(8)          # min-SoC taper
_B_MIN_SOC = const(9)        # min-SoC lock
_B_MAX_SOC = const(10)       # max-SoC lock
_B_RESERVE = const(11)       # reserve SoC stops self-sufficiency discharge
_B_FEED_IN = const(12)       # zero feed-in cap
_B_RAMP = const(13)          # rate limit on moves away from 0 W
_B_DEADBAND = const(14)      # change smaller than the deadband: kept the previous setpoint
_B_FAILSAFE = const(15)      # missing, stale or out-of-range data
_B_DISPATCH = const(16)      # dispatch event sets the target
_B_OVERRIDE = const(17)      # operator override sets the target
_B_SCHEDULE = const(18)      # the schedule's storage power target (firm obligation or economic)
_B_TARGET = const(19)        # charging at the pace that reaches the interval's target SoC by its end
BINDING_NAMES = ('none', 'import_limit', 'phase_limit', 'ev_headroom', 'max_discharge_cfg',
                 'max_charge_cfg', 'max_discharge_bms', 'max_charge_bms', 'taper', 'min_soc',
                 'max_soc', 'reserve_soc', 'feed_in', 'ramp', 'deadband', 'failsafe', 'dispatch',
                 'override', 'schedule', 'target_soc')

# Outputs.flags bits
_F_MIN_LOCK = const(1)
_F_MAX_LOCK = const(2)
_F_RESERVE_LOCK = const(4)
_F_TAPER = const(8)          # SoC inside the taper band
_F_METER_BAD = const(16)     # meter invalid or stale
_F_BAT_BAD = const(32)       # battery invalid or stale
_F_PHASE_BAD = const(64)     # per-phase limit configured but per-phase values missing
_F_RANGE = const(128)        # an input outside its documented range
_F_BMS_LIMITS = const(256)   # battery reported its own power limits this cycle
# 512 meter_frozen, 1024 battery_frozen (the device answers but its data does not move: profile
# 'freshness'; the runtime marks the data invalid, so meter_bad / battery_bad come with them) and
# 2048 sp_unsent (the previous setpoint write failed) are set by the runtime after step()
# (firmware/cycle.py), not by the core
_F_FAILSAFE_MASK = const(16 | 32 | 64 | 128 | 512 | 1024)
FLAG_NAMES = ('min_lock', 'max_lock', 'reserve_lock', 'taper', 'meter_bad', 'battery_bad',
              'phase_bad', 'range', 'bms_limits', 'meter_frozen', 'battery_frozen', 'sp_unsent')

# The codes above are private consts: on MicroPython they are folded into the bytecode, with no
# global and no name in the heap (42 names, ~0.9 KB of a 32-bit heap: docs/resources.md). Host
# tools and tests on CPython use them by their public names (ST_FAILSAFE, B_IMPORT, ...).
try:
    import micropython  # noqa: F401
except ImportError:
    globals().update([(k[1:], v) for k, v in globals().items() if k.startswith(('_ST_', '_B_', '_F_', '_OBJ_'))])


class Inputs:
    """One cycle's measurements. The runtime overwrites these fields in place every cycle."""

    def __init__(self):
        self.gcp_w = 0              # grid connection point, + import
        self.gcp_l1_w = 0           # per-phase GCP powers (used when phases_valid)
        self.gcp_l2_w = 0
        self.gcp_l3_w = 0
        self.phases_valid = 0
        self.meter_valid = 0
        self.meter_age_ms = 0       # age of the meter values, judged from the data itself
        self.bat_w = 0              # battery actual, + discharge
        self.soc_bp = 0
        self.bat_valid = 0
        self.bat_age_ms = 0
        self.bms_max_chg_w = -1     # battery-reported allowed charge power; -1 = not reported
        self.bms_max_dis_w = -1
        self.dt_ms = 0              # elapsed since the previous step


class Outputs:
    def __init__(self):
        self.setpoint_w = 0         # battery setpoint, + discharge
        self.state = _ST_FAILSAFE
        self.binding = _B_FAILSAFE
        self.flags = 0
        self.avail_chg_w = 0        # what the battery may charge right now (config, BMS, max-SoC lock)
        self.avail_dis_w = 0        # what it may discharge right now (config, BMS, taper, min-SoC lock)
        self.net_w = 0              # site load without the battery: GCP + battery
        self.req_w = 0              # discharge the import limits need (negative: spare capacity)
        self.phase_excess_w = 0     # worst phase's excess over the phase limit (0 if none)
        self.phase_cost_w = 0       # battery discharge that excess costs a symmetric battery: 3x
        self.target_w = 0           # objective target before deadband, ramp and limits
        self.dispatch_left_ms = 0
        self.override_left_ms = 0
        self.reserve_bp = 0         # reserve SoC in force (config, commitment, schedule)
        self.import_limit_w = 0     # import limit in force (config, narrowed by the schedule)
        self.objective = 0          # objective code in force (config, or the schedule's)
        self.ev_limit_w = 0         # DLM: import the site may draw now = limit in force + what the
        #                             battery may give (0 under the reserve floor or in fail-safe)


def _count_down(left_ms, dt_ms):
    if left_ms <= dt_ms:
        return 0
    return left_ms - dt_ms


def is_int(v):
    # bool is an int subclass on CPython; a True in a power field is a mistake, not 1 W.
    return isinstance(v, int) and not isinstance(v, bool)


def _check_command(what, power_w, duration_ms):
    if not is_int(power_w) or not -_PMAX <= power_w <= _PMAX:
        raise ValueError('%s power_w must be an integer in -%d..%d' % (what, _PMAX, _PMAX))
    if not is_int(duration_ms) or not 1 <= duration_ms <= COMMAND_MAX_MS:
        raise ValueError('%s duration_ms must be an integer in 1..%d' % (what, COMMAND_MAX_MS))


def muldiv(a, b, c):
    """floor(a * b / c) for 0 <= a, 0 <= b, 0 < c without forming a * b.

    Intermediates: (a // c) * b and (a % c) * b < c * b. Callers keep both below 2**30.
    """
    return (a // c) * b + ((a % c) * b) // c


class Controller:
    def __init__(self, cfg):
        self.inp = Inputs()
        self.out = Outputs()
        self.prev_w = 0
        self.min_lock = 0
        self.max_lock = 0
        self.reserve_lock = 0
        self.rsv_lock = 0           # the reserve alone (reserve_lock also counts a target floor)
        self.dispatch_w = 0
        self.dispatch_left_ms = 0
        self.override_w = 0
        self.override_left_ms = 0
        self.cfg = None
        self.clear_plan()
        self.configure(cfg)

    def clear_plan(self):
        """No schedule in force: the commissioned config alone. lib/plan.py writes these fields
        when the interval in force changes (plan_left_s every cycle); all are small ints."""
        self.plan_obj = -1              # -1: the configured objective, else its code
        self.plan_reserve_bp = NOT_SET  # raises the reserve (never lowers it)
        self.plan_soc_min_bp = NOT_SET  # narrows the SoC window (never widens it)
        self.plan_soc_max_bp = NOT_SET
        self.plan_import_w = NOT_SET    # lowers the import limit (never raises it)
        self.plan_target_bp = NOT_SET   # reach by the interval's end; also a discharge floor
        self.plan_power_w = NOT_SET     # storage power target, + discharge
        self.plan_firm = 0              # 1: power_w is an obligation, 0: economic (arbitrage)
        self.plan_export = -1           # 0: the battery may not export, 1 / -1: it may
        # import protection while the SoC is at or below the reserve floor holds these levels
        # instead of the limits (the plan keeps energy for a later, larger excess); never below them
        self.plan_protect_import_w = NOT_SET
        self.plan_protect_phase_w = NOT_SET
        self.plan_left_s = 0            # seconds to the end of the interval in force
        # what is in force, for telemetry (lib/plan.py): source, interval index, schedule version
        self.plan_src = 0
        self.plan_k = -1
        self.plan_version = 0

    def configure(self, cfg):
        """Validate and apply a config dict (raises ConfigError, changing nothing, if invalid)."""
        from bess_config import validate, objective_code
        c = validate(cfg)
        # Copied into plain attributes so step() does one lookup per value.
        self.objective = objective_code(c['objective'])
        self.import_limit_w = c['import_limit_w']
        self.phase_limit_w = c['phase_limit_w']
        self.ev_headroom_w = c['ev_headroom_w']
        self.min_import_w = c['min_import_w']
        self.min_soc_bp = c['min_soc_bp']
        self.reserve_soc_bp = c['reserve_soc_bp']
        self.max_soc_bp = c['max_soc_bp']
        self.taper_band_bp = c['taper_band_bp']
        self.hysteresis_bp = c['hysteresis_bp']
        self.max_charge_w = c['max_charge_w']
        self.max_discharge_w = c['max_discharge_w']
        self.ramp_w_per_s = c['ramp_w_per_s']
        self.deadband_w = c['deadband_w']
        self.stale_ms = c['stale_ms']
        self.protect_below_reserve = c['protect_below_reserve']
        self.usable_wh = c['usable_wh']
        from bess_config import commitment_reserve_bp
        self.commit_reserve_bp = commitment_reserve_bp(c)
        if self.commit_reserve_bp > self.reserve_soc_bp:
            self.reserve_soc_bp = self.commit_reserve_bp
        o = self.cfg
        if o is not None and len(o) == len(c) and all(k in o for k in c):
            # in place: a command's new config dict would be made while the command path's code
            # is loaded and, kept, stay among it once that is dropped (docs/resources.md)
            for k in c:
                o[k] = c[k]
            return o
        self.cfg = c
        return c

    def start_dispatch(self, power_w, duration_ms):
        """Dispatch event: hold power_w (+ discharge) for duration_ms, then expire by itself."""
        _check_command('dispatch', power_w, duration_ms)
        self.dispatch_w = power_w
        self.dispatch_left_ms = duration_ms

    def stop_dispatch(self):
        self.dispatch_left_ms = 0

    def start_override(self, power_w, duration_ms):
        """Operator override: like a dispatch event, ranked above it; expires by itself."""
        _check_command('override', power_w, duration_ms)
        self.override_w = power_w
        self.override_left_ms = duration_ms

    def stop_override(self):
        self.override_left_ms = 0

    def step(self):
        """One control cycle. Allocation-free: only small-int arithmetic and attribute stores."""
        i = self.inp
        o = self.out
        dt = i.dt_ms
        if dt < 0:
            dt = 0
        elif dt > _DT_MAX_MS:
            dt = _DT_MAX_MS
        left = _count_down(self.dispatch_left_ms, dt)
        self.dispatch_left_ms = left
        o.dispatch_left_ms = left
        oleft = _count_down(self.override_left_ms, dt)
        self.override_left_ms = oleft
        o.override_left_ms = oleft

        # --- 0. the limits in force: the schedule may narrow the commissioned ones, never widen
        lim = self.import_limit_w
        v = self.plan_import_w
        if v != NOT_SET and v < lim:
            lim = v
        rsv = self.reserve_soc_bp
        v = self.plan_reserve_bp
        if v > rsv:                         # NOT_SET is below every value
            rsv = v
            # never so high that the reserve lock could not release below max SoC (a schedule
            # accepted before a config change narrowed the window)
            v = self.max_soc_bp - self.hysteresis_bp - 1
            if rsv > v:
                rsv = v if v > self.reserve_soc_bp else self.reserve_soc_bp
        o.reserve_bp = rsv
        o.import_limit_w = lim
        obj = self.objective
        if self.plan_obj >= 0:
            obj = self.plan_obj
        o.objective = obj
        floor_bp = rsv                      # discharge floor: the reserve, or the interval's target
        v = self.plan_target_bp
        if v > floor_bp:
            floor_bp = v if v <= self.max_soc_bp else self.max_soc_bp

        # --- 1. data validity: anything missing, stale or out of range -> 0 W ----------------
        flags = 0
        stale = self.stale_ms
        if not i.meter_valid or i.meter_age_ms > stale or i.meter_age_ms < 0:
            flags |= _F_METER_BAD
        if not i.bat_valid or i.bat_age_ms > stale or i.bat_age_ms < 0:
            flags |= _F_BAT_BAD
        gcp = i.gcp_w
        bat = i.bat_w
        soc = i.soc_bp
        if gcp > _PMAX or gcp < -_PMAX or bat > _PMAX or bat < -_PMAX or soc < 0 or soc > _SOC_FULL:
            flags |= _F_RANGE
        plim = self.phase_limit_w
        if plim > 0:
            if not i.phases_valid:
                flags |= _F_PHASE_BAD
            else:
                l1 = i.gcp_l1_w
                l2 = i.gcp_l2_w
                l3 = i.gcp_l3_w
                if (l1 > _PMAX or l1 < -_PMAX or l2 > _PMAX or l2 < -_PMAX
                        or l3 > _PMAX or l3 < -_PMAX):
                    flags |= _F_RANGE
        if flags:
            self.prev_w = 0
            o.setpoint_w = 0
            o.state = _ST_FAILSAFE
            o.binding = _B_FAILSAFE
            o.flags = (flags | (self.min_lock * _F_MIN_LOCK) | (self.max_lock * _F_MAX_LOCK)
                       | (self.reserve_lock * _F_RESERVE_LOCK))
            o.avail_chg_w = 0
            o.avail_dis_w = 0
            o.net_w = 0
            o.req_w = 0
            o.phase_excess_w = 0
            o.phase_cost_w = 0
            o.target_w = 0
            o.ev_limit_w = lim
            return

        # --- 2. SoC locks with hysteresis ----------------------------------------------------
        mn = self.min_soc_bp
        v = self.plan_soc_min_bp
        if v > mn:
            mn = v
        mx = self.max_soc_bp
        v = self.plan_soc_max_bp
        if v != NOT_SET and v < mx:
            mx = v
        hy = self.hysteresis_bp
        if soc <= mn:
            self.min_lock = 1
        elif soc >= mn + hy:
            self.min_lock = 0
        if soc >= mx:
            self.max_lock = 1
        elif soc <= mx - hy:
            self.max_lock = 0
        if soc <= floor_bp:
            self.reserve_lock = 1
        elif soc >= floor_bp + hy:
            self.reserve_lock = 0
        if soc <= rsv:
            self.rsv_lock = 1
        elif soc >= rsv + hy:
            self.rsv_lock = 0
        flags = self.min_lock * _F_MIN_LOCK + self.max_lock * _F_MAX_LOCK + self.reserve_lock * _F_RESERVE_LOCK

        # --- 3. what the battery may do right now (hard bounds, safety first) -----------------
        dis_cap = self.max_discharge_w
        dis_bind = _B_CFG_DIS
        b = i.bms_max_dis_w
        if b >= 0:
            flags |= _F_BMS_LIMITS
            if b < dis_cap:
                dis_cap = b
                dis_bind = _B_BMS_DIS
        band = self.taper_band_bp
        if soc < mn + band:
            flags |= _F_TAPER
            num = soc - mn
            # scales what the battery may discharge now (config and BMS), not a nominal rating
            taper = muldiv(dis_cap, num, band) if num > 0 else 0
            if taper < dis_cap:
                dis_cap = taper
                dis_bind = _B_TAPER
        if self.min_lock:
            dis_cap = 0
            dis_bind = _B_MIN_SOC
        chg_cap = self.max_charge_w
        chg_bind = _B_CFG_CHG
        b = i.bms_max_chg_w
        if b >= 0:
            flags |= _F_BMS_LIMITS
            if b < chg_cap:
                chg_cap = b
                chg_bind = _B_BMS_CHG
        if self.max_lock:
            chg_cap = 0
            chg_bind = _B_MAX_SOC
        o.avail_dis_w = dis_cap
        o.avail_chg_w = chg_cap

        # --- 4. what the import limits require ------------------------------------------------
        net = gcp + bat                     # GCP power if the battery were at 0 W
        req = net - lim                     # > 0: discharge needed; < 0: spare import capacity
        req_bind = _B_IMPORT
        o.phase_excess_w = 0
        o.phase_cost_w = 0
        if plim > 0:
            # A symmetric battery moves each phase by a third of its power, so holding the worst
            # phase at its limit costs 3x that phase's excess (seed: 1 kW may cost 3 kW).
            b3 = bat // 3
            m = l1
            if l2 > m:
                m = l2
            if l3 > m:
                m = l3
            ex = m + b3 - plim
            pr = 3 * ex
            if ex > 0:
                o.phase_excess_w = ex
                o.phase_cost_w = pr
            if pr > req:
                req = pr
                req_bind = _B_PHASE
        # what protection requires now. At or below the reserve (not a target floor) the battery
        # protects only the physical limits -- the commissioned ones, not a limit the schedule
        # lowered -- or the plan's higher levels (it spends the battery where the excess costs
        # most); above the reserve, every limit in force
        reqp = req
        if self.rsv_lock:
            v = self.plan_protect_import_w
            if v < self.import_limit_w:
                v = self.import_limit_w
            reqp = net - v
            if plim > 0:
                pp = self.plan_protect_phase_w
                if pp < plim:
                    pp = plim
                v = 3 * (m + b3 - pp)
                if v > reqp:
                    reqp = v
        o.net_w = net
        o.req_w = req

        # --- 5. the target: command > schedule power > objective; then charge-to-target -------
        # an external command (override > dispatch) replaces the objective and import protection
        command = oleft > 0 or left > 0
        rlock = self.reserve_lock
        # the lowest setpoint grid charging may reach: import stays under limit - EV headroom
        chg_floor = req + self.ev_headroom_w
        if oleft > 0:
            tgt = self.override_w
            bind = _B_OVERRIDE
        elif left > 0:
            tgt = self.dispatch_w
            bind = _B_DISPATCH
        elif self.plan_power_w != NOT_SET:
            tgt = self.plan_power_w
            bind = _B_SCHEDULE
            if not self.plan_firm:
                # arbitrage: discharges only above the reserve, charges only within the headroom
                if tgt > 0 and rlock:
                    tgt = 0
                    bind = _B_RESERVE
                elif tgt < 0 and tgt < chg_floor:
                    tgt = chg_floor if chg_floor < 0 else 0
                    bind = _B_HEADROOM
        elif obj == _OBJ_GCE:
            if req > 0:
                tgt = reqp if reqp > 0 else 0
                bind = req_bind
                if self.rsv_lock and not self.protect_below_reserve:
                    tgt = 0
                    bind = _B_RESERVE
            else:
                # spare capacity (total or 3x worst phase) less the headroom kept for EVs
                spare = -req - self.ev_headroom_w
                if spare > 0:
                    tgt = -spare
                    bind = _B_HEADROOM
                else:
                    tgt = 0
                    bind = _B_NONE
        else:
            tgt = net
            if obj == _OBJ_ZFI:
                tgt = net - self.min_import_w
            bind = _B_NONE
            if tgt > 0 and rlock:
                tgt = 0
                bind = _B_RESERVE
        tb = self.plan_target_bp
        if not command and soc < tb:
            # charge at the pace that reaches the target by the interval's end (aiming 5 min early
            # on long intervals, at half the time left on short ones); more if the objective wants
            wh = self.usable_wh
            t_left = self.plan_left_s
            if t_left > 600:
                t_left -= 300
            else:
                t_left = t_left // 2
            if t_left < 1:
                t_left = 1
            elif t_left > _LEFT_MAX_S:
                t_left = _LEFT_MAX_S
            if wh > 0:
                need_wh = muldiv(wh, tb - soc, _SOC_FULL)
                need_wh += need_wh >> 4      # ~6 % for charging losses (feedback corrects the rest)
                q = need_wh // t_left
                pace = _PMAX if q > _PMAX // 3600 else q * 3600 + ((need_wh % t_left) * 3600) // t_left
            else:
                pace = _PMAX        # energy unknown: as fast as the limits allow
            c = -pace
            cb = _B_TARGET
            if c < chg_floor:
                c = chg_floor
                cb = _B_HEADROOM
            if c < 0 and c < tgt:
                tgt = c
                bind = cb
        o.target_w = tgt

        # --- 6. deadband and ramp: moves toward 0 W are immediate, away from it rate-limited ----
        prev = self.prev_w
        sp = tgt
        if sp != 0:
            d = sp - prev
            if d < 0:
                d = -d
            if 0 < d < self.deadband_w:     # d == 0: the target is met, nothing held it
                sp = prev
                bind = _B_DEADBAND
            r = self.ramp_w_per_s
            # (r // 1000) * dt <= 10000 * 60000 and (r % 1000) * dt < 1000 * 60000: both < 2**30
            rstep = (r // 1000) * dt + ((r % 1000) * dt) // 1000
            if sp > 0:
                base = prev if prev > 0 else 0
                if sp > base + rstep:
                    sp = base + rstep
                    bind = _B_RAMP
            elif sp < 0:
                base = prev if prev < 0 else 0
                if sp < base - rstep:
                    sp = base - rstep
                    bind = _B_RAMP

        # --- 7. import-limit protection (immediate), then hard bounds (immediate) -------------
        # An override or dispatch event may leave an import excess the battery did not cause, but
        # the battery itself never charges the site over its limit: floor min(req, 0).
        if req > 0:
            floor = 0 if command or reqp < 0 else reqp
        else:
            floor = req                 # spare capacity: caps grid charging
        if floor > 0 and self.rsv_lock and not self.protect_below_reserve:
            floor = 0
        if sp < floor:
            sp = floor
            bind = req_bind
        # what the battery may give a load manager now: 0 under the reserve floor, less what a
        # firm schedule power already owes the grid (before the feed-in caps: EVs are site demand)
        give = 0 if rlock else dis_cap
        if self.plan_firm and self.plan_power_w > 0:
            give -= self.plan_power_w
            if give < 0:
                give = 0
        o.ev_limit_w = lim + give
        fcap = dis_cap
        if obj == _OBJ_ZFI:
            # zero feed-in: the battery never discharges below the site's own demand + min import
            fcap = net - self.min_import_w
        elif self.plan_export == 0:
            fcap = net              # the schedule forbids export: never more than site demand
        if fcap < dis_cap:
            if fcap < 0:
                fcap = 0
            dis_cap = fcap
            dis_bind = _B_FEED_IN
        if sp > dis_cap:
            sp = dis_cap
            bind = dis_bind
        elif sp < -chg_cap:
            sp = -chg_cap
            bind = chg_bind
        self.prev_w = sp

        # --- 8. report -----------------------------------------------------------------------
        if oleft > 0:
            st = _ST_OVERRIDE
        elif left > 0:
            st = _ST_DISPATCH
        elif sp > 0:
            st = _ST_TAPERING if flags & _F_TAPER else _ST_DISCHARGING
        elif sp < 0:
            st = _ST_CHARGING
        elif self.min_lock:
            st = _ST_MIN_SOC_LOCK
        elif self.max_lock:
            st = _ST_MAX_SOC_LOCK
        else:
            st = _ST_IDLE
        o.setpoint_w = sp
        o.state = st
        o.binding = bind
        o.flags = flags
