"""One PNG per scenario: GCP vs limit, battery power, SoC, PV, EV load per phase."""
import os

import numpy as np

COLORS = {'no_battery': '0.6', 'peak_shaving': 'tab:orange', 'bang_bang': 'tab:green', 'ours': 'tab:blue',
          'optimum': 'tab:red', 'planned': 'tab:purple', 'planned_fc': 'tab:pink', 'plan_lp': 'tab:brown',
          'planned_ew': 'tab:olive', 'plan_lp_ew': 'tab:cyan'}
LABELS = {'no_battery': 'no battery', 'peak_shaving': 'OpenEMS-style peak shaving',
          'bang_bang': 'bang-bang self-consumption', 'ours': 'core controller (ours)',
          'optimum': 'LP optimum (1 min)', 'planned': 'core + planner', 'planned_fc': 'core + planner, forecast',
          'plan_lp': "planner's LP (1 min)", 'planned_ew': 'core + planner, window ends with the event',
          'plan_lp_ew': "planner's LP, window ends with the event"}
LP_KINDS = ('optimum', 'plan_lp', 'plan_lp_ew')      # 60 s series
EVERY = 5       # plot every 5th second: 17280 points per line


def plot(sc, runs, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(5, 1, figsize=(13, 15), sharex=True,
                           gridspec_kw={'height_ratios': [3, 2, 2, 1, 1.3]})
    t1 = np.arange(0, len(sc.base), EVERY) / 3600.0
    for kind, s in runs.items():
        if kind in LP_KINDS:
            t = (np.arange(len(s['gcp'])) + 0.5) / 60.0
            sl = slice(None)
            kw = {'drawstyle': 'steps-mid', 'lw': 1.0}
        else:
            t = t1
            sl = slice(None, None, EVERY)
            kw = {'lw': 1.3 if kind == 'ours' else 0.8}
        c = COLORS[kind]
        ax[0].plot(t, np.asarray(s['gcp'])[sl] / 1000.0, color=c, label=LABELS[kind], **kw)
        if kind != 'no_battery':
            ax[1].plot(t, np.asarray(s['bat'])[sl] / 1000.0, color=c, label=LABELS[kind], **kw)
            ax[2].plot(t, np.asarray(s['soc'])[sl] / 100.0, color=c, label=LABELS[kind], **kw)
    ours = runs.get('ours')
    if ours is not None:
        worst = np.maximum(np.maximum(ours['l1'], ours['l2']), ours['l3'])[::EVERY]
        ax[0].plot(t1, 3 * worst / 1000.0, color='tab:purple', lw=0.6, alpha=0.7,
                   label='3 x worst phase (ours)')
    ax[0].axhline(sc.import_limit_w / 1000.0, color='k', ls='--', lw=1, label='import limit')
    if sc.cfg.get('phase_limit_w'):
        ax[0].axhline(3 * sc.phase_limit_w / 1000.0, color='tab:purple', ls=':', lw=1, label='3 x phase limit')
    ax[0].axhline(0, color='k', lw=0.5)
    ax[0].set_ylabel('GCP power [kW]\n+ import')
    ax[0].legend(loc='upper left', fontsize=8, ncol=2)
    ax[0].set_title('%s: %s (%s, objective %s)' % (sc.name, sc.title, sc.date, sc.objective))
    ax[1].axhline(0, color='k', lw=0.5)
    ax[1].set_ylabel('battery [kW]\n+ discharge')
    ax[1].legend(loc='upper left', fontsize=8)
    mn, mx = sc.cfg.get('min_soc_bp', 1000) / 100.0, sc.cfg.get('max_soc_bp', 9500) / 100.0
    ax[2].axhline(mn, color='k', ls='--', lw=0.8)
    ax[2].axhline(mx, color='k', ls='--', lw=0.8)
    ax[2].set_ylabel('SoC [%]')
    ax[2].set_ylim(0, 100)
    ax[3].plot(t1, np.asarray(sc.pv)[::EVERY] / 1000.0, color='goldenrod')
    ax[3].plot(t1, np.asarray(sc.base)[::EVERY] / 1000.0, color='0.4', lw=0.8)
    ax[3].set_ylabel('PV (yellow),\nbuilding [kW]')
    for k, c in enumerate(('tab:brown', 'k', '0.6')):
        ax[4].plot(t1, np.asarray(sc.ev[k])[::EVERY] / 1000.0, color=c, lw=0.9, label='EV L%d' % (k + 1))
    ax[4].set_ylabel('EV load [kW]')
    ax[4].legend(loc='upper left', fontsize=8)
    ax[4].set_xlabel('hour of day (local standard time)')
    ax[4].set_xlim(0, 24)
    ax[4].set_xticks(range(0, 25, 2))
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
