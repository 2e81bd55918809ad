#!/usr/bin/env python3
"""Fetch third-party MicroPython packages (sdist only on PyPI) into build/vendor/. Never committed.

Host comparisons only, neither goes into the device build (tools/build.py VENDOR_PKGS): umodbus
for firmware/bus_umodbus.py (docs/bus.md), umqtt.simple as the reference the MQTT link's bytes on
the wire are checked against (host_tests/test_mqtt_wire.py).

The sdists of these packages carry no setup.py/pyproject.toml, so `pip install` cannot install them.
We let pip resolve and download the sdist by name and version from the configured registry
(`pip download --no-deps --no-binary :all: NAME==VER`), verify its sha256 against the pin below
(same digest as the registry's simple index), and unpack only the importable part.

pip prepares metadata after the download and fails on these sdists ("does not appear to be a
Python project"); by then it has printed the URL it resolved, so in that case the file is fetched
from that URL (https: or file:, whatever index pip was configured with) and checked the same way.

Idempotent: a package whose marker matches name, version and digest is left alone.
Usage: python tools/fetch_vendor.py [--dest DIR] [--force]
"""
import argparse
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (PyPI name, version, path inside the sdist to install (dir or file), sha256 of the sdist)
VENDOR = (
    ('micropython-modbus', '2.3.7', 'umodbus',
     'b9351a66af0ff29dd585900e53827a989dedcb02ec63b1041358165089652271'),
    ('micropython-umqtt.simple', '1.3.4', 'umqtt/simple.py',
     'b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f'),
)


def _marker(dest, name):
    return os.path.join(dest, '.%s.installed' % name)


def _is_current(dest, name, ver, sha, imp):
    try:
        with open(_marker(dest, name)) as f:
            ok = f.read().split() == [name, ver, sha]
    except OSError:
        return False
    return ok and os.path.exists(os.path.join(dest, imp))


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def download(name, ver, tmp):
    """Return the sdist bytes, downloaded through pip (and, if pip stops after downloading, from
    the URL pip resolved)."""
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:',
           '--disable-pip-version-check', '%s==%s' % (name, ver), '-d', tmp]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for fn in os.listdir(tmp):
        if fn.endswith(('.tar.gz', '.zip')):
            with open(os.path.join(tmp, fn), 'rb') as f:
                return f.read()
    urls = re.findall(r'(?:https?|file)://\S+?\.(?:tar\.gz|zip)', p.stdout)
    if not urls:
        sys.stderr.write(p.stdout)
        raise SystemExit('fetch_vendor: pip could not resolve %s==%s' % (name, ver))
    with urllib.request.urlopen(urls[-1], timeout=120) as r:
        return r.read()


def unpack(data, imp, dest):
    """Extract <top>/<imp> (a directory or a single file) from the sdist into dest/<imp>."""
    with tarfile.open(fileobj=io.BytesIO(data), mode='r:gz') as tf:
        members = []
        for m in tf.getmembers():
            parts = m.name.split('/', 1)
            if len(parts) != 2:
                continue
            rel = parts[1]
            if not (rel == imp or rel.startswith(imp.rstrip('/') + '/')):
                continue
            if not m.isfile() or rel.startswith('/') or '..' in rel.split('/'):
                continue
            members.append((rel, m))
        if not members:
            raise SystemExit('fetch_vendor: %s not found in sdist' % imp)
        target = os.path.join(dest, imp)
        if os.path.isdir(target):
            shutil.rmtree(target)
        elif os.path.exists(target):
            os.remove(target)
        for rel, m in members:
            out = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with tf.extractfile(m) as src, open(out, 'wb') as dst:
                dst.write(src.read())
    return len(members)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--dest', default=os.path.join(ROOT, 'build', 'vendor'))
    ap.add_argument('--force', action='store_true')
    a = ap.parse_args(argv)
    os.makedirs(a.dest, exist_ok=True)
    for name, ver, imp, sha in VENDOR:
        if not a.force and _is_current(a.dest, name, ver, sha, imp):
            print('fetch_vendor: %s %s up to date' % (name, ver))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            data = download(name, ver, tmp)
        got = _sha256(data)
        if got != sha:
            raise SystemExit('fetch_vendor: %s %s sha256 %s != pinned %s' % (name, ver, got, sha))
        n = unpack(data, imp, a.dest)
        with open(_marker(a.dest, name), 'w') as f:
            f.write('%s %s %s\n' % (name, ver, sha))
        print('fetch_vendor: %s %s -> %s (%d files)' % (name, ver, os.path.join(a.dest, imp), n))
    return 0


if __name__ == '__main__':
    sys.exit(main())
