"""`make sim`: the control core in closed loop against a simulated EV-charging site for one day.

Prints one line per simulated hour. The site (tools/site_model.py): office base load, 90 kWp PV,
EV sessions from a seeded generator (single-phase 7.4 kW on L1, three-phase 11 / 22 kW) with an
evening peak that pushes the site over its 150 kW import limit; a 200 kWh / 100 kW battery.

usage: sim.py [--objective gce|ss|zfi] [--seed N] [--hours N]
"""
import argparse
import random
import sys

import paths  # noqa: E402,F401 (lib/ on sys.path)

import bess_core as bc          # noqa: E402
import site_model as sm         # noqa: E402

SITE_CFG = {
    'import_limit_w': 150000, 'phase_limit_w': 55000, 'ev_headroom_w': 20000,
    'min_soc_bp': 1000, 'reserve_soc_bp': 3000, 'max_soc_bp': 9500,
    'max_charge_w': 100000, 'max_discharge_w': 100000, 'ramp_w_per_s': 20000, 'deadband_w': 300,
}


def base_load_w(t_s):
    """Office-and-depot shape: 25 kW at night, 60 kW 08-18 h, shoulders in between."""
    h = (t_s // 60) % 1440      # minute of day
    if 480 <= h < 1080:
        return 60000
    if 360 <= h < 480:
        return 25000 + (h - 360) * 35000 // 120
    if 1080 <= h < 1260:
        return 60000 - (h - 1080) * 35000 // 180
    return 25000


def pv_w(t_s, peak_w=90000):
    """Clear-sky-like bell from 06:00 to 20:00 (integer parabola)."""
    m = (t_s // 60) % 1440
    if not 360 <= m <= 1200:
        return 0
    x = m - 780                 # minutes from solar noon
    return max(0, peak_w * (420 * 420 - x * x) // (420 * 420))


def ev_sessions(seed, n_day=14, n_evening=12):
    """(start s, end s, (l1, l2, l3) W): arrivals ~ uniform in a window, dwell 1-3 h."""
    rng = random.Random(seed)
    kinds = [(7400, 0, 0), (11000 // 3 + 1, 11000 // 3, 11000 // 3), (22000 // 3 + 1, 22000 // 3, 22000 // 3)]
    out = []
    for n, (a, b) in ((n_day, (8 * 3600, 15 * 3600)), (n_evening, (16 * 3600, 19 * 3600))):
        for _ in range(n):
            start = rng.randint(a, b)
            out.append((start, start + rng.randint(3600, 3 * 3600), rng.choice(kinds)))
    return out


def make_site(seed=1):
    sessions = ev_sessions(seed)

    def evs(t_s):
        l1 = l2 = l3 = 0
        for s, e, (p1, p2, p3) in sessions:
            if s <= t_s < e:
                l1 += p1
                l2 += p2
                l3 += p3
        return l1, l2, l3
    return sm.Site(base_load_w, pv_w, evs)


def make_battery():
    return sm.Battery(200000, soc_bp=5000, max_chg_w=100000, max_dis_w=100000, ramp_w_per_s=50000)


class HourlySummary:
    HEAD = ('hour  gcp_avg_kW  gcp_max_kW  over_limit_s  worst_phase_kW  bat_avg_kW  '
            'chg_kWh  dis_kWh  soc_end_%  main_state')

    def __init__(self, limit_w, out=sys.stdout):
        self.limit_w = limit_w
        self.out = out
        self.total_over_s = 0
        self.peak_w = 0
        self._reset()

    def _reset(self):
        self.n = self.gcp_sum = self.gcp_max = self.over = self.ph_max = self.bat_sum = 0
        self.chg_ws = self.dis_ws = 0
        self.states = {}

    def __call__(self, t_s, ctl, bat, phases):
        l1, l2, l3, tot = phases
        self.n += 1
        self.gcp_sum += tot
        self.gcp_max = max(self.gcp_max, tot)
        self.peak_w = max(self.peak_w, tot)
        self.ph_max = max(self.ph_max, l1, l2, l3)
        if tot > self.limit_w:
            self.over += 1
            self.total_over_s += 1
        p = bat.actual_w
        self.bat_sum += p
        if p > 0:
            self.dis_ws += p
        else:
            self.chg_ws -= p
        st = bc.STATE_NAMES[ctl.out.state]
        self.states[st] = self.states.get(st, 0) + 1
        if (t_s + 1) % 3600 == 0:
            main = max(self.states, key=self.states.get)
            self.out.write('%4d  %10.1f  %10.1f  %12d  %14.1f  %10.1f  %7.1f  %7.1f  %9.1f  %s\n' % (
                t_s // 3600, self.gcp_sum / self.n / 1000, self.gcp_max / 1000, self.over,
                self.ph_max / 1000, self.bat_sum / self.n / 1000, self.chg_ws / 3.6e6,
                self.dis_ws / 3.6e6, bat.soc_bp / 100, main))
            self._reset()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--objective', choices=('gce', 'ss', 'zfi'), default='gce')
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--hours', type=int, default=24)
    a = ap.parse_args(argv)
    cfg = dict(SITE_CFG, objective=a.objective)
    ctl = bc.Controller(cfg)
    site, bat = make_site(a.seed), make_battery()
    print('site: import limit %d kW, phase limit %d kW, EV headroom %d kW; battery 200 kWh / 100 kW; '
          'objective %s' % (cfg['import_limit_w'] // 1000, cfg['phase_limit_w'] // 1000,
                            cfg['ev_headroom_w'] // 1000, a.objective))
    summ = HourlySummary(cfg['import_limit_w'])
    print(summ.HEAD)
    sm.run(ctl, site, bat, a.hours * 3600, 1000, summ)
    # the same day without a battery, for comparison
    nobat = sm.Battery(1, soc_bp=0, max_chg_w=0, max_dis_w=0)
    over0 = peak0 = 0
    for t in range(a.hours * 3600):
        tot = site.phases(t, 0)[3]
        peak0 = max(peak0, tot)
        over0 += tot > cfg['import_limit_w']
    del nobat
    print('summary: peak import %.1f kW (without battery %.1f kW); %d s above the limit (without battery %d s)'
          % (summ.peak_w / 1000, peak0 / 1000, summ.total_over_s, over0))
    return 0


if __name__ == '__main__':
    sys.exit(main())
