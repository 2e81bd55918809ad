"""Helpers for the fleet tests: a provisioned fleet (tools/fleet/provision.py) on a real mosquitto
on 127.0.0.1 with the generated password and ACL files, device twins (tools/fleet/twin.py) in
their own processes, and simple valid schedules."""
import json
import os
import subprocess
import sys
import time

from mqtt_fixtures import ROOT

FLEET = os.path.join(ROOT, 'tools', 'fleet')
if FLEET not in sys.path:
    sys.path.insert(0, FLEET)
import loopback  # noqa: E402
import provision  # noqa: E402


def sites_csv(ids, committed_w=0):
    return 'id,capacity_kwh,power_kw,import_limit_w,committed_w\n' + ''.join(
        '%s,10,5,20000,%d\n' % (i, committed_w) for i in ids)


def provisioned_broker(tmp_path, ids):
    """(broker, secrets, fleet folder): mosquitto with the fleet's passwd + ACL, running."""
    (tmp_path / 'sites.csv').write_text(sites_csv(ids))
    out = str(tmp_path / 'fleet')
    sec = provision.provision(str(tmp_path / 'sites.csv'), out, '127.0.0.1')
    return loopback.broker(out, str(tmp_path)), sec, out


def twins(port, secrets_path, ids, *extra):
    """A twin process for ids; returns the Popen once it has started."""
    return loopback.twins(port, secrets_path, ids, *extra, wait=True)


class Stopper:
    """Something a test started (a process, a server), for the procs fixture: stop()."""

    def __init__(self, thing):
        self.thing = thing

    def stop(self):
        t = self.thing
        if hasattr(t, 'terminate'):
            t.terminate()
            try:
                t.wait(5)
            except subprocess.TimeoutExpired:
                t.kill()
        else:
            t.shutdown()


def simple_schedule(dev_id, version, now=None):
    now = int(time.time() if now is None else now)
    return {'v': 1, 'id': '%s/day' % dev_id, 'version': version, 'created': now - 60, 'valid_until': now + 86400,
            'default': {'objective': 'ss'},
            'intervals': [{'start': now - 60, 'duration_s': 3600, 'reserve_soc_bp': 3000}]}


def write_plan(folder, ids, version):
    d = os.path.join(str(folder), 'schedules')
    os.makedirs(d, exist_ok=True)
    for i in ids:
        with open(os.path.join(d, i + '.json'), 'w') as f:
            json.dump(simple_schedule(i, version), f, separators=(',', ':'))
    return str(folder)


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (the Debian package's binaries): initdb into a
    fresh folder, trust authentication on loopback only, a free port; stop() stops it and removes
    the folder. As root the server runs as the package's user 'postgres' (it
    refuses to run as root)."""

    def __init__(self, tmp_path):
        import glob
        import pwd
        import shutil
        from mqtt_fixtures import free_port
        bins = sorted(glob.glob('/usr/lib/postgresql/*/bin/initdb'))
        if not bins:
            raise RuntimeError('PostgreSQL missing: apt-get install postgresql (make test installs it as root)')
        self.bin = os.path.dirname(bins[-1])
        import tempfile
        # not under pytest's tmp_path: its parents are private to the user running the tests,
        # and as root the server runs as 'postgres'
        self.dir = tempfile.mkdtemp(prefix='fleet-pg-')
        self.port = free_port()
        self.pre = []
        if os.getuid() == 0:
            pw = pwd.getpwnam('postgres')
            shutil.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.pre = ['runuser', '-u', 'postgres', '--']
        self._run([os.path.join(self.bin, 'initdb'), '-D', self.dir, '-A', 'trust', '-U', 'fleet', '--no-sync'])
        self._run([os.path.join(self.bin, 'pg_ctl'), '-D', self.dir, '-w', '-l', os.path.join(self.dir, 'log'),
                   '-o', '-h 127.0.0.1 -p %d -k %s -F' % (self.port, self.dir), 'start'])
        self.url = 'postgresql://fleet@127.0.0.1:%d/postgres' % self.port

    def _run(self, cmd):
        r = subprocess.run(self.pre + cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError('%s: %s' % (' '.join(cmd), r.stdout + r.stderr))

    def stop(self):
        import shutil
        subprocess.run(self.pre + [os.path.join(self.bin, 'pg_ctl'), '-D', self.dir, '-m', 'immediate', 'stop'],
                       capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
