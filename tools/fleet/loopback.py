"""A provisioned fleet on this machine (127.0.0.1 only), for `make fleet`, `make fleet-bench` and
the tests: the broker with the fleet's password and ACL files, device twins in their own
processes, real firmware instances (MicroPython unix port, each with its Modbus simulator on a
pty, tools/fil.py) with an NTP server for their clocks."""
import os
import subprocess
import sys
import tempfile

from fleetpath import HERE  # noqa: E402 (tools/ and lib/ on sys.path)

from broker import Broker  # noqa: E402


def raise_nofile(n):
    """This process's descriptor limit raised to n (at most the hard limit); the limit now."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(max(soft, n), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def broker(fleet_dir, workdir=None, extra=(), name='mosquitto'):
    """mosquitto with fleet_dir's passwd and bess.acl, use_username_as_clientid after its listener
    (docs/telemetry.md, "Security"); started."""
    br = Broker(workdir or tempfile.mkdtemp(prefix='fleet-broker-'), name=name,
                extra=['allow_anonymous false', 'password_file %s' % os.path.join(fleet_dir, 'passwd'),
                       'acl_file %s' % os.path.join(fleet_dir, 'bess.acl')] + list(extra))
    with open(br.conf) as f:
        lines = f.read().splitlines()
    i = [k for k, ln in enumerate(lines) if ln.startswith('listener')][0]
    lines.insert(i + 1, 'use_username_as_clientid true')
    with open(br.conf, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return br.start()


def twins(port, secrets_path, ids, *extra, wait=False):
    """A twin process for ids (tools/fleet/twin.py); wait: until it says it has started."""
    p = subprocess.Popen([sys.executable, os.path.join(HERE, 'twin.py'), '--port', str(port), '--secrets',
                          secrets_path, '--ids', ','.join(ids)] + list(extra),
                         stdout=subprocess.PIPE if wait else subprocess.DEVNULL, stderr=subprocess.STDOUT, text=True)
    if wait:
        line = p.stdout.readline()
        if not line.startswith('twin: '):
            raise RuntimeError('twin process: %s' % line)
    return p


def firmware(secrets, dev, port, ntp_port, telemetry_ms=10000, speed=1.0, scenario=None, ntp_period_s=60):
    """A real firmware instance for device dev, started: its credentials and key, MQTT to port,
    the wall clock from the NTP server on ntp_port (synced every ntp_period_s), a 20 kWh / 10 kW
    battery on its simulator. speed, scenario: the simulator's physics (battery energy, the site's
    load and PV from the scenario, modbus_sim.Scenario, its time 0 = now) run speed times real time:
    `make fleet`'s accelerated day, with an NTP server that serves the same accelerated clock."""
    from fil import Rig
    d = secrets['devices'][dev]
    r = Rig({'import_limit_w': 40000, 'max_charge_w': 10000, 'max_discharge_w': 10000},
            period_ms=1000, workdir=tempfile.mkdtemp(prefix='fleet-fw-'), speed=speed, scenario=scenario,
            battery_kw={'capacity_wh': 20000, 'soc_bp': 6000, 'max_chg_w': 10000, 'max_dis_w': 10000},
            mqtt={'client_id': dev, 'server': '127.0.0.1', 'port': port, 'user': dev, 'password': d['password'],
                  'hmac_key': d['hmac_key'], 'telemetry_ms': telemetry_ms})
    r.site['schedule'] = {'ntp_host': '127.0.0.1', 'ntp_port': ntp_port, 'ntp_period_s': ntp_period_s,
                          'ntp_retry_s': min(2, ntp_period_s),
                          'path': os.path.join(r.dir, 'schedule.json')}
    r.site['log_cycles'] = 0
    return r.start()
