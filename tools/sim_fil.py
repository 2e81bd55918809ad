"""`make sim`: the firmware on the MicroPython unix port controls a simulated site over Modbus RTU.

The site simulator (tools/modbus_sim.py: Eastron SDM630 meter, SunSpec 802/124 battery on one
pty) plays tools/scenarios/ev_arrival.csv: EVs arrive and push the site over its 60 kW import
limit and one phase over 25 kW. The firmware polls, steps the core and writes the setpoint;
one line per cycle, then a summary. Ends by itself.

The firmware also publishes its telemetry over MQTT (client id sim1, every second): to a mosquitto
of its own on 127.0.0.1 (a free port; it stops with the run), or with --mqtt HOST:PORT
(`make sim MQTT=127.0.0.1:1883`) to a broker that outlives the run. Watch it with
tools/mqtt_consumer.py (the exact command lines are printed at the start and the end).
"""
import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

from fil import Rig  # noqa: E402
from broker import Broker  # noqa: E402

CONTROL = {'import_limit_w': 60000, 'phase_limit_w': 25000, 'ev_headroom_w': 10000,
           'max_charge_w': 40000, 'max_discharge_w': 40000, 'ramp_w_per_s': 20000, 'deadband_w': 200}
DEVICE = 'sim1'
HEAD = '%5s %8s %8s %8s %8s | %8s %8s %6s | %-12s %-14s' % (
    'cycle', 'gcp_kW', 'L1_kW', 'L2_kW', 'L3_kW', 'sp_kW', 'bat_kW', 'soc_%', 'state', 'binding')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seconds', type=int, default=60)
    ap.add_argument('--scenario', default=os.path.join(HERE, 'scenarios', 'ev_arrival.csv'))
    ap.add_argument('--mqtt', metavar='HOST:PORT',
                    help='publish telemetry to this broker (default: a mosquitto of our own on 127.0.0.1)')
    a = ap.parse_args(argv)
    own = None
    if a.mqtt:
        host, port = parse_hostport(a.mqtt, ap)
    else:
        own = Broker(tempfile.mkdtemp(prefix='sim-mqtt-'), name='sim-mosquitto')
        try:
            own.start()
        except RuntimeError as e:       # mosquitto missing: the sim runs, without MQTT
            print('mqtt: no broker of our own (%s); running without MQTT' % e)
            shutil.rmtree(own.dir, ignore_errors=True)
            own = None
        host, port = '127.0.0.1', own.port if own else None
    try:
        return run(a, host, port, own)
    finally:
        if own:
            own.stop()
            shutil.rmtree(own.dir, ignore_errors=True)


def parse_hostport(text, ap):
    host, sep, port = text.rpartition(':')
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        ap.error('--mqtt / MQTT=: expected HOST:PORT, e.g. 127.0.0.1:1883, got %r' % text)
    return host, int(port)


def watch_cmds(host, port, indent='  '):
    """tools/mqtt_consumer.py command lines for sim1 at host:port (paths relative to the cwd, as make runs it)."""
    py = os.path.relpath(sys.executable)
    py = sys.executable if py.startswith('..') else py
    tool = os.path.relpath(os.path.join(HERE, 'mqtt_consumer.py'))
    base = '%s %s --host %s --port %d --device %s' % (py, tool, host, port, DEVICE)
    return ['%slive table: %s' % (indent, base),
            '%splot:       %s --no-table --csv sim.csv --plot sim.png' % (indent, base),
            '%s            (Ctrl-C or --duration SECONDS ends it and writes sim.png; from the log later: '
            '%s %s --from-csv sim.csv --plot sim.png)' % (indent, py, tool)]


def watch_start(host, port, own):
    if own:
        head = ('mqtt: make sim\'s own mosquitto on 127.0.0.1:%d (it stops with the run); the firmware publishes '
                'bess/%s/telemetry every 1 s' % (port, DEVICE))
    else:
        head = 'mqtt: the firmware publishes bess/%s/telemetry every 1 s to %s:%d (MQTT=)' % (DEVICE, host, port)
    return '\n'.join([head, 'watch it in another terminal while this runs:'] + watch_cmds(host, port))


def watch_end(host, port, own):
    if not own:
        return '\n'.join(['watch (the broker at %s:%d lives on; run again with make sim MQTT=%s:%d):'
                          % (host, port, host, port)] + watch_cmds(host, port))
    return '\n'.join(['watch: the broker 127.0.0.1:%d stops with this run (each run picks a free port and prints '
                      'the commands at its start).' % port,
                      'For a broker that lives on, start your own mosquitto (e.g. `mosquitto -p 1883`, loopback '
                      'only in mosquitto 2) and run',
                      '    make sim MQTT=127.0.0.1:1883',
                      'then watch it with'] + watch_cmds('127.0.0.1', 1883, '    '))


class TelemetryCount:
    """Counts what reaches the broker on <prefix>/sim1/telemetry (proof the watch commands will see it)."""

    def __init__(self, host, port):
        self.n = 0
        self.err = None
        self.c = None
        try:
            import paho.mqtt.client as mqtt
            self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            self.c.on_connect = lambda cl, u, f, rc, p=None: cl.subscribe('bess/%s/telemetry' % DEVICE)
            self.c.on_message = self._count
            self.c.connect_timeout = 3.0
            self.c.connect(host, port, keepalive=30)
            self.c.loop_start()
        except Exception as e:          # noqa: BLE001 (a missing broker is reported, never fatal)
            self.err = '%s: %s' % (type(e).__name__, e)
            self.c = None

    def _count(self, cl, u, m):
        self.n += 1

    def close(self):
        if self.c:
            self.c.loop_stop()
            self.c.disconnect()


def run(a, host, port, own):
    print('site: import limit 60 kW, phase limit 25 kW; battery 100 kWh / 40 kW (SunSpec over Modbus RTU);')
    print('meter: Eastron SDM630 on the same RS-485 line (a pty). GCP and phases below are what the meter')
    print('reads after the battery acted (simulator truth).')
    mqtt = None
    if port:
        mqtt = {'client_id': DEVICE, 'server': host, 'port': port, 'telemetry_ms': 1000, 'keepalive': 10,
                'backoff_min_ms': 500, 'backoff_max_ms': 5000, 'ha_discovery': False}
        print(watch_start(host, port, own))
    print(HEAD)
    rows = []
    count = TelemetryCount(host, port) if port else None

    def show(line):
        if not line.startswith('cyc ') and not line.startswith('done:'):
            print('   firmware: ' + line)

    rig = Rig(CONTROL, scenario=a.scenario, battery_kw={'capacity_wh': 100000, 'soc_bp': 6000,
                                                        'max_chg_w': 40000, 'max_dis_w': 40000},
              cycles=a.seconds, echo=show, mqtt=mqtt)
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
    if count:
        count.close()               # (its network thread is a daemon: an exception above cannot hang on it)
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
    if count:
        if count.err:
            print('mqtt: no broker reachable at %s:%d (%s): is one running there? (control ran without it)'
                  % (host, port, count.err))
        else:
            print('mqtt: %d telemetry records reached %s:%d on bess/%s/telemetry%s' % (
                count.n, host, port, DEVICE, '' if count.n else ' -- is a broker listening there?'))
        print(watch_end(host, port, own))
    return 0


if __name__ == '__main__':
    sys.exit(main())
