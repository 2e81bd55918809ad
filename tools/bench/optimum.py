"""Perfect-foresight optimum of one scenario day as a linear program (scipy / HiGHS).

Time step: 60 s (1440 steps; the controllers run at 1 s). Inputs are the 1-minute means of the
same 1 s series. Per step t the decision variables are charge c_t >= 0 and discharge d_t >= 0
(AC, kW), SoC energy E_t (kWh, end of step), import imp_t >= 0, export (implied: imp_t - gcp_t),
excess over the import limit exc_t >= 0, excess of each phase over the phase limit pex_k,t >= 0;
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
from scipy import sparse
from scipy.optimize import linprog

STEP_S = 60


def minute_means(x, step_s=STEP_S):
    a = np.asarray(x, dtype=float)
    return a.reshape(-1, step_s).mean(axis=1)


def solve(sc, step_s=STEP_S):
    """Solve the LP for scenario sc. Returns (series dict at step_s, info dict)."""
    base = minute_means(sc.base, step_s) / 1000.0
    pv = minute_means(sc.pv, step_s) / 1000.0
    ev = [minute_means(e, step_s) / 1000.0 for e in sc.ev]
    net = base - pv + ev[0] + ev[1] + ev[2]
    ph0 = [base / 3.0 - pv / 3.0 + ev[k] for k in range(3)]     # phase load without the battery
    T = len(net)
    h = step_s / 3600.0
    cfg, bat = sc.cfg, sc.battery
    C = bat['capacity_wh'] / 1000.0
    pc = min(cfg.get('max_charge_w', 10**7), bat['max_chg_w']) / 1000.0
    pd_ = min(cfg.get('max_discharge_w', 10**7), bat['max_dis_w']) / 1000.0
    bms_c = bat['max_chg_w'] / 1000.0
    bms_d = bat['max_dis_w'] / 1000.0
    etac = bat.get('eta_chg_bp', 9600) / 10000.0
    etad = bat.get('eta_dis_bp', 9600) / 10000.0
    e0 = C * bat.get('soc_bp', 5000) / 10000.0
    emin = C * cfg.get('min_soc_bp', 1000) / 10000.0
    emax = C * cfg.get('max_soc_bp', 9500) / 10000.0
    lim = sc.import_limit_w / 1000.0
    plim = sc.phase_limit_w / 1000.0
    zfi = sc.objective == 'zfi'

    # variable offsets
    iC, iD, iE, iI, iX = 0, T, 2 * T, 3 * T, 4 * T
    iP = [5 * T, 6 * T, 7 * T]
    iPK = 8 * T
    n = 8 * T + 1
    idx = np.arange(T)

    rows, cols, vals, rhs = [], [], [], []
    r = [0]

    def add(cs, vs, b):
        # one block of T rows; cs/vs lists of (column index array, value array or scalar)
        for c, v in zip(cs, vs):
            rows.append(r[0] + idx)
            cols.append(np.broadcast_to(c, (T,)))
            vals.append(np.broadcast_to(np.asarray(v, dtype=float), (T,)))
        rhs.append(np.broadcast_to(np.asarray(b, dtype=float), (T,)))
        r[0] += T

    # import >= gcp = net + c - d
    add([iC + idx, iD + idx, iI + idx], [1, -1, -1], -net)
    # exc >= gcp - lim
    add([iC + idx, iD + idx, iX + idx], [1, -1, -1], lim - net)
    # phase excess: ph0_k + (c - d)/3 - plim <= pex_k
    for k in range(3):
        add([iC + idx, iD + idx, iP[k] + idx], [1 / 3.0, -1 / 3.0, -1], plim - ph0[k])
    # peak >= gcp
    add([iC + idx, iD + idx, np.full(T, iPK)], [1, -1, -1], -net)
    # BMS derating with the SoC at the start of the step (E_{t-1}; E_{-1} = e0 is a constant)
    prev = iE + idx - 1
    has_prev = idx > 0
    kc = bms_c / (0.1 * C)
    kd = bms_d / (0.05 * C)
    # c_t + kc*E_{t-1} <= 10*bms_c  (only binding above 90 %)
    rows.append(r[0] + idx); cols.append(iC + idx); vals.append(np.ones(T))
    rows.append(r[0] + idx[has_prev]); cols.append(prev[has_prev]); vals.append(np.full(T - 1, kc))
    rhs.append(np.where(has_prev, 10 * bms_c, 10 * bms_c - kc * e0)); r[0] += T
    # d_t - kd*E_{t-1} <= 0
    rows.append(r[0] + idx); cols.append(iD + idx); vals.append(np.ones(T))
    rows.append(r[0] + idx[has_prev]); cols.append(prev[has_prev]); vals.append(np.full(T - 1, -kd))
    rhs.append(np.where(has_prev, 0.0, kd * e0)); r[0] += T
    A_ub = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r[0], n))
    b_ub = np.concatenate(rhs)

    # SoC dynamics: E_t - E_{t-1} - h*etac*c_t + h/etad*d_t = (e0 if t == 0)
    er = [idx, idx[has_prev], idx, idx]
    ec = [iE + idx, prev[has_prev], iC + idx, iD + idx]
    ev_ = [np.ones(T), -np.ones(T - 1), np.full(T, -h * etac), np.full(T, h / etad)]
    A_eq = sparse.csr_matrix((np.concatenate(ev_), (np.concatenate(er), np.concatenate(ec))), shape=(T, n))
    b_eq = np.zeros(T)
    b_eq[0] = e0

    dmax = np.full(T, pd_)
    if zfi:
        dmax = np.minimum(dmax, np.clip(net, 0, None))
    bounds = np.zeros((n, 2))
    bounds[:, 1] = np.inf
    bounds[iC:iC + T, 1] = pc
    bounds[iD:iD + T, 1] = dmax
    bounds[iE:iE + T, 0] = emin
    bounds[iE:iE + T, 1] = emax
    bounds[iPK, 0] = -np.inf

    cost = np.zeros(n)
    cost[iX:iX + T] = 1000 * h
    for k in range(3):
        cost[iP[k]:iP[k] + T] = 1000 * h
    cost[iPK] = 10.0 if sc.objective == 'gce' else 0.01
    cost[iI:iI + T] = h
    cost[iC:iC + T] = 0.001 * h
    cost[iD:iD + T] = 0.001 * h

    res = linprog(cost, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method='highs')
    if res.status != 0:
        raise RuntimeError('LP failed for %s: %s' % (sc.name, res.message))
    x = res.x
    c, d, E = x[iC:iC + T], x[iD:iD + T], x[iE:iE + T]
    bat_kw = d - c
    gcp = net - bat_kw
    series = {
        'gcp': gcp * 1000.0,
        'l1': (ph0[0] - bat_kw / 3.0) * 1000.0,
        'l2': (ph0[1] - bat_kw / 3.0) * 1000.0,
        'l3': (ph0[2] - bat_kw / 3.0) * 1000.0,
        'bat': bat_kw * 1000.0,
        'soc': E / C * 10000.0,
        'cons': (base + ev[0] + ev[1] + ev[2]) * 1000.0,
    }
    simult = float(np.sum(np.minimum(c, d)) * h)
    return series, {'objective': float(res.fun), 'vars': n, 'rows': A_ub.shape[0] + T, 'simultaneous_kwh': simult}
