"""Comparator controllers with the core's interface (ctl.inp, ctl.step(), ctl.out.setpoint_w), so
site_model.run() drives them exactly like bess_core.Controller: same site, battery, meter and cycle.

All of them get the same SoC window as the core (discharge only above min SoC, charge only below
max SoC, each with the core's hysteresis) and respect the battery's reported limits and the
configured max charge/discharge power. None has a taper: that is a feature of the core.
"""
from bess_core import Inputs, Outputs


class _SocWindow:
    """Min/max SoC locks with hysteresis (the same rule as the core's step 2), no taper."""

    def __init__(self, cfg):
        self.mn = cfg.get('min_soc_bp', 1000)
        self.mx = cfg.get('max_soc_bp', 9500)
        self.hy = cfg.get('hysteresis_bp', 200)
        self.pmax_chg = cfg.get('max_charge_w', 10000000)
        self.pmax_dis = cfg.get('max_discharge_w', 10000000)
        self.min_lock = 0
        self.max_lock = 0

    def clamp(self, i, sp):
        soc = i.soc_bp
        if soc <= self.mn:
            self.min_lock = 1
        elif soc >= self.mn + self.hy:
            self.min_lock = 0
        if soc >= self.mx:
            self.max_lock = 1
        elif soc <= self.mx - self.hy:
            self.max_lock = 0
        dis = 0 if self.min_lock else min(self.pmax_dis, i.bms_max_dis_w if i.bms_max_dis_w >= 0 else self.pmax_dis)
        chg = 0 if self.max_lock else min(self.pmax_chg, i.bms_max_chg_w if i.bms_max_chg_w >= 0 else self.pmax_chg)
        return dis, chg, max(-chg, min(dis, sp))


class NoBattery:
    name = 'no_battery'

    def __init__(self, cfg):
        self.inp = Inputs()
        self.out = Outputs()

    def step(self):
        self.out.setpoint_w = 0


class PidFilter:
    """The PID filter OpenEMS applies to every ESS setpoint (P 0.3, I 0.3, D 0.1, error sum limited
    to 10x the larger power limit); output = P*error + I*sum(previous errors) - D*(input change)."""

    def __init__(self, p=0.3, i=0.3, d=0.1, sum_factor=10):
        self.p, self.i, self.d, self.sum_factor = p, i, d, sum_factor
        self.first = True
        self.last_input = 0
        self.err_sum = 0.0

    def apply(self, inp, target, lo, hi):
        target = max(lo, min(hi, target))
        err = target - inp
        if err == 0:
            return target
        if self.first:
            self.last_input = inp
            self.first = False
        out = self.p * err + self.i * self.err_sum - self.d * (inp - self.last_input)
        self.last_input = inp
        lim = max(abs(lo), abs(hi)) * self.sum_factor
        self.err_sum = max(-lim, min(lim, self.err_sum + err))
        return max(lo, min(hi, int(round(out))))


class PeakShaving:
    """OpenEMS-style peak shaving: grid = meter + ess; grid >= peak -> discharge grid - peak;
    grid <= recharge -> charge (grid - recharge); else 0; then the PID filter. With a per-phase
    limit configured it uses the asymmetric variant: grid = 3 x max(L1, L2, L3) + ess against
    3 x the phase limit, and the larger of both demands wins.
    Thresholds: peak = import limit, recharge = import limit - EV headroom (the core's own numbers).
    """
    name = 'peak_shaving'

    def __init__(self, cfg):
        self.inp = Inputs()
        self.out = Outputs()
        self.peak = cfg['import_limit_w']
        self.recharge = cfg['import_limit_w'] - cfg.get('ev_headroom_w', 0)
        self.plim = cfg.get('phase_limit_w', 0)
        self.win = _SocWindow(cfg)
        self.pid = PidFilter()

    def _target(self, grid, peak, recharge):
        if grid >= peak:
            return grid - peak
        if grid <= recharge:
            return grid - recharge
        return 0

    def step(self):
        i = self.inp
        ess = i.bat_w
        tgt = self._target(i.gcp_w + ess, self.peak, self.recharge)
        if self.plim > 0 and i.phases_valid:
            g3 = 3 * max(i.gcp_l1_w, i.gcp_l2_w, i.gcp_l3_w) + ess
            t3 = self._target(g3, 3 * self.plim, 3 * self.plim - (self.peak - self.recharge))
            tgt = max(tgt, t3)
        dis, chg, _ = self.win.clamp(i, tgt)
        self.out.setpoint_w = self.pid.apply(ess, tgt, -chg, dis)


class BangBang:
    """Bang-bang self-consumption: a three-level relay (charge / off / discharge at one fixed step
    power) on the site's net load (GCP + battery), with a switching band.

    Discharge switches on when the deficit is at least step + band and off when it falls below the
    step (so it does not push power into the grid for longer than one cycle); charging likewise on
    the surplus. Step = 1/4 of the battery's rated power. No import-limit logic, no proportional
    part: the classic on/off scheme of simple self-consumption add-ons.
    """
    name = 'bang_bang'

    def __init__(self, cfg, band_w=1000):
        self.inp = Inputs()
        self.out = Outputs()
        self.win = _SocWindow(cfg)
        self.step_w = min(cfg.get('max_charge_w', 10000000), cfg.get('max_discharge_w', 10000000)) // 4
        self.band = band_w
        self.mode = 0

    def step(self):
        i = self.inp
        net = i.gcp_w + i.bat_w
        p = self.step_w
        if self.mode == 0:
            if net >= p + self.band:
                self.mode = 1
            elif net <= -p - self.band:
                self.mode = -1
        elif self.mode > 0 and net < p:
            self.mode = 0
        elif self.mode < 0 and net > -p:
            self.mode = 0
        dis, chg, _ = self.win.clamp(i, 0)
        self.out.setpoint_w = min(p, dis) if self.mode > 0 else (-min(p, chg) if self.mode < 0 else 0)
