"""Physical model of a site and its battery, for closed-loop runs on the host.

Integer arithmetic (W, ms, mWh) so runs are bit-reproducible. Signs as everywhere
(docs/units.md): GCP + import, battery + discharge. Used by the closed-loop tests, `make sim`,
the scenario benchmark and the Modbus site simulator.
"""


class Battery:
    """SoC integration with efficiency, BMS power limits, a response ramp and a revert timer."""

    def __init__(self, capacity_wh, soc_bp=5000, max_chg_w=100000, max_dis_w=100000,
                 eta_chg_bp=9600, eta_dis_bp=9600, ramp_w_per_s=50000, revert_ms=0):
        if capacity_wh <= 0:
            raise ValueError('capacity_wh must be > 0')
        self.capacity_mwh = capacity_wh * 1000
        self.energy_mwh = self.capacity_mwh * soc_bp // 10000
        self.max_chg_w = max_chg_w
        self.max_dis_w = max_dis_w
        self.eta_chg_bp = eta_chg_bp
        self.eta_dis_bp = eta_dis_bp
        self.ramp_w_per_s = ramp_w_per_s
        self.revert_ms = revert_ms          # 0 = no revert timer
        self.since_cmd_ms = 0
        self.setpoint_w = 0
        self.actual_w = 0
        self._rem = 0                       # sub-mWh remainder carried between steps

    @property
    def soc_bp(self):
        return self.energy_mwh * 10000 // self.capacity_mwh

    def bms_limits(self):
        """(allowed charge W, allowed discharge W): derated linearly above 90 % / below 5 % SoC."""
        soc = self.soc_bp
        chg = self.max_chg_w if soc <= 9000 else self.max_chg_w * max(0, 10000 - soc) // 1000
        dis = self.max_dis_w if soc >= 500 else self.max_dis_w * max(0, soc) // 500
        return chg, dis

    def command(self, setpoint_w):
        self.setpoint_w = setpoint_w
        self.since_cmd_ms = 0

    def step(self, dt_ms, real_ms=None):
        """Advance dt_ms: follow the setpoint within ramp and limits, integrate energy. real_ms: the
        real time that passed, when the simulation runs faster than real time (the revert timer is
        the battery's own watchdog on the controller: it counts real time)."""
        self.since_cmd_ms += dt_ms if real_ms is None else real_ms
        want = self.setpoint_w
        if self.revert_ms and self.since_cmd_ms > self.revert_ms:
            want = 0                        # controller went quiet: the battery reverts to idle
        chg, dis = self.bms_limits()
        want = max(-chg, min(dis, want))
        dmax = self.ramp_w_per_s * dt_ms // 1000
        p = self.actual_w
        p = want if abs(want - p) <= dmax else p + (dmax if want > p else -dmax)
        # energy change in W*ms (3600 W*ms = 1 mWh), integrated exactly with a remainder
        if p >= 0:
            e = p * dt_ms * 10000 // self.eta_dis_bp          # W*ms drawn from the cells
            e_num = -e
        else:
            e_num = -p * dt_ms * self.eta_chg_bp // 10000
        tot = e_num + self._rem
        d_mwh = tot // 3600 if tot >= 0 else -((-tot) // 3600)   # truncate toward 0
        self._rem = tot - d_mwh * 3600
        new = self.energy_mwh + d_mwh
        if new < 0:                         # cells empty: deliver only what was there
            p, new, self._rem = 0, 0, 0
        elif new > self.capacity_mwh:
            p, new, self._rem = 0, self.capacity_mwh, 0
        self.energy_mwh = new
        self.actual_w = p
        return p


class Site:
    """Per-phase consumption and PV from profile callables of time (s): each returns W.

    base(t) and pv(t) are split evenly on three phases; evs(t) returns (l1, l2, l3) W.
    """

    def __init__(self, base, pv, evs):
        self.base = base
        self.pv = pv
        self.evs = evs

    def phases(self, t_s, bat_w):
        """Per-phase GCP W and total, with the battery (symmetric) at bat_w."""
        b = self.base(t_s)
        p = self.pv(t_s)
        e1, e2, e3 = self.evs(t_s)
        share = b // 3 - p // 3 - bat_w // 3
        l1, l2, l3 = share + e1, share + e2, share + e3
        return l1, l2, l3, l1 + l2 + l3


def feed(ctl, site, bat, t_s, dt_ms, age_ms=0):
    """Copy what a meter and battery would report now into ctl.inp (the runtime's job)."""
    i = ctl.inp
    l1, l2, l3, tot = site.phases(t_s, bat.actual_w)
    i.gcp_w, i.gcp_l1_w, i.gcp_l2_w, i.gcp_l3_w = tot, l1, l2, l3
    i.phases_valid = i.meter_valid = i.bat_valid = 1
    i.meter_age_ms = i.bat_age_ms = age_ms
    i.bat_w = bat.actual_w
    i.soc_bp = bat.soc_bp
    i.bms_max_chg_w, i.bms_max_dis_w = bat.bms_limits()
    i.dt_ms = dt_ms


def run(ctl, site, bat, seconds, dt_ms=1000, on_step=None):
    """Closed loop: measure -> step -> command -> physics. on_step(t_s, ctl, bat, gcp_after) per cycle."""
    steps = seconds * 1000 // dt_ms
    for k in range(steps):
        t_s = k * dt_ms // 1000
        feed(ctl, site, bat, t_s, dt_ms)
        ctl.step()
        bat.command(ctl.out.setpoint_w)
        bat.step(dt_ms)
        if on_step is not None:
            on_step(t_s, ctl, bat, site.phases(t_s, bat.actual_w))
