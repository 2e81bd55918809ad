"""`make sim`: the firmware on the MicroPython unix port controls a simulated site over Modbus RTU.

The site simulator (tools/modbus_sim.py: Eastron SDM630 meter, SunSpec 802/124 battery on one
pty) plays tools/scenarios/ev_arrival.csv: EVs arrive and push the site over its 60 kW import
limit and one phase over 25 kW. The firmware polls, steps the core and writes the setpoint;
one line per cycle, then a summary. Ends by itself.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fil import Rig  # noqa: E402

CONTROL = {'import_limit_w': 60000, 'phase_limit_w': 25000, 'ev_headroom_w': 10000,
           'max_charge_w': 40000, 'max_discharge_w': 40000, 'ramp_w_per_s': 20000, 'deadband_w': 200}
HEAD = '%5s %8s %8s %8s %8s | %8s %8s %6s | %-12s %-14s' % (
    'cycle', 'gcp_kW', 'L1_kW', 'L2_kW', 'L3_kW', 'sp_kW', 'bat_kW', 'soc_%', 'state', 'binding')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seconds', type=int, default=60)
    ap.add_argument('--scenario', default=os.path.join(HERE, 'scenarios', 'ev_arrival.csv'))
    a = ap.parse_args(argv)
    print('site: import limit 60 kW, phase limit 25 kW; battery 100 kWh / 40 kW (SunSpec over Modbus RTU);')
    print('meter: Eastron SDM630 on the same RS-485 line (a pty). GCP and phases below are what the meter')
    print('reads after the battery acted (simulator truth).')
    print(HEAD)
    rows = []

    def show(line):
        if not line.startswith('cyc ') and not line.startswith('done:'):
            print('   firmware: ' + line)

    rig = Rig(CONTROL, scenario=a.scenario, battery_kw={'capacity_wh': 100000, 'soc_bp': 6000,
                                                        'max_chg_w': 40000, 'max_dis_w': 40000},
              cycles=a.seconds, echo=show)
    with rig:
        n = 0
        while n < a.seconds:
            for c in rig.wait_cycles(1, timeout=30):
                n += 1
                s = c['sim']
                g = s['gcp_w']
                b = s['battery']
                rows.append((g, b, c))
                print('%5d %8.1f %8.1f %8.1f %8.1f | %8.1f %8.1f %6.1f | %-12s %-14s' % (
                    n, g['total'] / 1e3, g['l1'] / 1e3, g['l2'] / 1e3, g['l3'] / 1e3, c['sp'] / 1e3,
                    b['actual_w'] / 1e3, b['soc_bp'] / 100, c['state'], c['bind']), flush=True)
        rig.wait_exit(30)
    over = sum(1 for g, b, c in rows if g['total'] > CONTROL['import_limit_w'])
    over_ph = sum(1 for g, b, c in rows if max(g['l1'], g['l2'], g['l3']) > CONTROL['phase_limit_w'])
    print('summary: %d cycles; peak GCP %.1f kW (limit 60); worst phase %.1f kW (limit 25); '
          '%d cycles above the total limit, %d above the phase limit; SoC %.1f%% -> %.1f%%'
          % (len(rows), max(g['total'] for g, b, c in rows) / 1e3,
             max(max(g['l1'], g['l2'], g['l3']) for g, b, c in rows) / 1e3, over, over_ph,
             rows[0][1]['soc_bp'] / 100, rows[-1][1]['soc_bp'] / 100))
    for line in rig.lines:
        if line.startswith('done:') or line.startswith('bus:'):
            print('firmware ' + line)
    return 0


if __name__ == '__main__':
    sys.exit(main())
