"""KPI functions of the scenario benchmark (tools/bench) on tiny hand-made series.

The bench requirements (requirements-bench.txt) are installed by `make bench`, not by `make test`:
without numpy / scipy these tests skip.
"""
import pytest

np = pytest.importorskip('numpy')

from bench import kpi  # noqa: E402


class _Sc:
    """The few scenario fields the KPI and LP code read."""

    def __init__(self, limit=1000, plim=400, objective='gce', cap_wh=3600, soc_bp=5000, p_w=1000, n=4):
        self.name = 'tiny'
        self.objective = objective
        self.import_limit_w = limit
        self.phase_limit_w = plim
        self.cfg = {'import_limit_w': limit, 'phase_limit_w': plim, 'min_soc_bp': 1000, 'max_soc_bp': 9500,
                    'max_charge_w': p_w, 'max_discharge_w': p_w}
        self.battery = {'capacity_wh': cap_wh, 'soc_bp': soc_bp, 'max_chg_w': p_w, 'max_dis_w': p_w}
        self.base = [0] * n
        self.pv = [0] * n
        self.ev = [[0] * n, [0] * n, [0] * n]


def test_energy_and_minutes_above_limit():
    # 60 s samples: 2 minutes above a 1000 W limit by 500 W and 100 W; exactly at the limit is not above
    e, m = kpi.above([900, 1500, 1000, 1100], 1000, 60)
    assert e == pytest.approx((500 + 100) * 60 / 3600.0)
    assert m == 2.0
    # a tolerance hides excesses no meter sees for the minute count, not for the energy
    e2, m2 = kpi.above([1001, 1002], 1000, 60, tol_w=2)
    assert m2 == 0.0 and e2 == pytest.approx(3 * 60 / 3600.0)


def test_worst_phase_takes_the_worst_phase_per_sample():
    l1 = np.array([500, 0, 0])
    l2 = np.array([0, 450, 0])
    l3 = np.array([0, 0, 300])
    e, m = kpi.worst_phase_above(l1, l2, l3, 400, 3600)
    assert e == pytest.approx(100 + 50)
    assert m == 120.0


def test_reversals_ignore_idle_and_small_powers():
    # discharge, idle, discharge: no reversal; then charge (1), noise below threshold, discharge (2)
    p = [5000, 0, 4000, -3000, 50, -40, 2000]
    assert kpi.reversals(p, threshold_w=100) == 2
    assert kpi.reversals([0, 0, 0], threshold_w=100) == 0


def test_self_sufficiency_and_battery_caused_export():
    cons = [1000, 1000, 1000, 1000]
    gcp = [1000, 0, -500, 500]          # imports 1500 Wh of 4000 Wh consumed (1 h samples)
    assert kpi.self_sufficiency(cons, gcp, 3600) == pytest.approx(1 - 1500 / 4000.0)
    bat = [0, 1000, 800, 0]             # exporting 500 W while discharging 800 W: 500 W are the battery's
    assert kpi.battery_export_wh(gcp, bat, 3600) == pytest.approx(500)
    assert kpi.battery_export_wh([-500], [-2000], 3600) == 0    # charging never causes export


def test_cycles_min_soc_violations_and_soc_correction():
    assert kpi.full_cycles([1000, -1000], 2000, 3600) == pytest.approx(0.5)
    n, s = kpi.min_soc_violation([1500, 1000, 999, 998, 1200, 990], 1000, 1)
    assert (n, s) == (2, 3.0)
    # ending 10 % fuller on a 10 kWh battery: 1 kWh stored, worth 0.96 kWh of import later
    bat = {'capacity_wh': 10000, 'soc_bp': 5000, 'eta_dis_bp': 9600}
    assert kpi.import_soc_corrected_wh([1000, 1000], [5000, 6000], bat, 3600) == pytest.approx(2000 - 960)


def test_lp_optimum_shaves_a_peak_it_can_afford():
    pytest.importorskip('scipy')
    from bench import optimum
    sc = _Sc(limit=1000, plim=10000, n=4)
    sc.base = [600, 1500, 1500, 600]    # 1 s steps: 2 x 500 W above the limit
    series, info = optimum.solve(sc, step_s=1)
    assert np.max(series['gcp']) <= 1000 + 1e-6
    assert series['bat'][1] >= 500 - 1e-6 and series['bat'][2] >= 500 - 1e-6    # gce also lowers the peak
    assert np.min(series['soc']) >= 1000 - 1e-6
    k = kpi.compute(series, sc, 1)
    assert k['over_kwh'] == pytest.approx(0, abs=1e-9)
