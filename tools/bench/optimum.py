"""Perfect-foresight optimum of one scenario day as a linear program (scipy / HiGHS): the
planner's LP (tools/planner.py solve_lp) without the core's own rules (taper, EV headroom).

Time step: 60 s (1440 steps; the controllers run at 1 s). Inputs are the 1-minute means of the
same 1 s series. Per step t the decision variables are charge c_t >= 0 and discharge d_t >= 0
(AC, kW), SoC energy E_t (kWh, end of step), import imp_t >= 0 and export exp_t >= 0, excess over the import limit exc_t >= 0, excess of each phase over the phase limit pex_k,t >= 0;
plus one peak variable.

Constraints are those of site_model.Battery and of the controller config, on the same terms:
- E_t = E_{t-1} + h*(eta_chg*c_t - d_t/eta_dis), E_0 = the scenario's initial SoC;
- min_soc <= E_t <= max_soc (the controller's configured window);
- c_t <= min(max_charge_w, battery max), d_t <= min(max_discharge_w, battery max);
- the battery's BMS derating: c_t <= Pc*(C - E_{t-1})/(0.1 C) above 90 %, d_t <= Pd*E_{t-1}/(0.05 C);
- zero feed-in objective: d_t <= max(0, net_t) (the battery never causes export).
The end-of-day SoC is free (>= min SoC), so the optimum is a bound for every controller: it may
spend stored energy the others also could have spent.

Objective (lexicographic by weights): 1000 x energy above the limits (total + each phase),
then the peak (weight 10 per kW for gce, 0.01 for ss/zfi), then import energy (1 per kWh), then
0.001 x battery throughput (ties: no needless cycling, no simultaneous charge and discharge).
Because a 1-minute mean never exceeds the 1 s maximum and the LP may charge and discharge
freely within a minute, the LP is a relaxation of the 1 s problem: a lower bound, not a schedule.
"""
import numpy as np

STEP_S = 60


def minute_means(x, step_s=STEP_S):
    a = np.asarray(x, dtype=float)
    return a.reshape(-1, step_s).mean(axis=1)


def problem(sc, step_s=STEP_S):
    """The scenario as a planner.Problem: the minute means of its series, the battery and the
    controller config, the BMS derating; none of the core's own rules (taper, EV headroom)."""
    import planner
    cfg, bat = sc.cfg, sc.battery
    p = planner.Problem(step_s, minute_means(sc.base, step_s), minute_means(sc.pv, step_s),
                        [minute_means(e, step_s) for e in sc.ev], sc.import_limit_w, sc.phase_limit_w,
                        bat['capacity_wh'], bat.get('soc_bp', 5000), cfg.get('min_soc_bp', 1000),
                        cfg.get('max_soc_bp', 9500), min(cfg.get('max_charge_w', 10**7), bat['max_chg_w']),
                        min(cfg.get('max_discharge_w', 10**7), bat['max_dis_w']),
                        bat.get('eta_chg_bp', 9600), bat.get('eta_dis_bp', 9600))
    p.bms = (bat['max_chg_w'], bat['max_dis_w'])
    if sc.objective == 'zfi':
        p.zfi_min_import_w = 0      # the battery never causes export (the core also keeps min_import_w)
    p.w_excess = 1000.0
    p.w_peak = 10.0 if sc.objective == 'gce' else 0.01
    p.w_import = 1.0
    return p


def series(sol, sc, step_s=STEP_S):
    """The KPI series (tools/bench/kpi.py) of a planner.solve_lp solution."""
    cons = minute_means(sc.base, step_s) + sum(minute_means(e, step_s) for e in sc.ev)
    ph = sol['phase_w']
    return {'gcp': sol['gcp_w'], 'l1': ph[0], 'l2': ph[1], 'l3': ph[2], 'bat': sol['bat_w'], 'soc': sol['soc_bp'],
            'cons': cons}


def solve(sc, step_s=STEP_S):
    """Solve the LP for scenario sc. Returns (series dict at step_s, info dict)."""
    import planner
    sol = planner.solve_lp(problem(sc, step_s))
    return series(sol, sc, step_s), sol['info']
