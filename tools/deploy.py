#!/usr/bin/env python3
"""Deploy the firmware to a board over its serial port with mpremote (`make deploy`, `make logs`).

    python tools/deploy.py deploy --board esp32 --port /dev/ttyUSB0 [--values site.env] [--site site.json]
                                  [--frozen] [--log-seconds 8] [NAME=VALUE ...]
    python tools/deploy.py logs --port /dev/ttyUSB0 [--seconds N]

deploy, in this order:
  1. checks, before touching the board: the board is known (boards/<board>.json), the port exists,
     the site config fills and validates (tools/site_config.py); any problem -> exit 2, nothing sent;
  2. builds build/device/<board>/ (tools/build.py);
  3. connects with mpremote's serial transport, interrupts the running firmware, writes the
     `deploy_hold` file and resets the board: main.py then stays off, so neither the firmware nor
     its watchdog (which a soft reset does not stop on ESP32 / RP2040) runs while files are copied;
     the hold is removed only once every file is in place (an interrupted deploy stays held);
  4. asks the board for the sha256 of every file it should have (one exec), and copies only the
     files that differ or are missing, site.json included; removes files an earlier deploy put
     there that are no longer part of the build, and a stale X.py next to a deployed X.mpy (a .py
     would shadow the .mpy on import); records the file list in /deploy.json;
  5. soft-resets (friendly REPL, Ctrl-D: main.py runs) and prints the boot log for a few seconds,
     then lets go of the port; the firmware keeps running.
Paths are relative to the working directory, which is the filesystem root on a board after a reset
('/') and on the unix port (the virtual board's root, tools/vboard.py).
"""
import argparse
import hashlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

import build as fwbuild  # noqa: E402
import site_config  # noqa: E402

HOLD = 'deploy_hold'
MANIFEST = 'deploy.json'
_touched = False        # set once the board was contacted

HASH_SCRIPT = '''import os, hashlib, binascii
def _h(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return '-'
    d = hashlib.sha256()
    b = bytearray(512)
    m = memoryview(b)
    while True:
        n = f.readinto(b)
        if not n:
            break
        d.update(m[:n])
    f.close()
    return binascii.hexlify(d.digest()).decode()
def _e(p):
    try:
        os.stat(p)
        return 1
    except OSError:
        return 0
for p in %r:
    print('F', p, _h(p))
for p in %r:
    print('D', p, _e(p))
for p in %r:
    print('S', p, _e(p))
'''


class DeployError(Exception):
    pass


def say(msg):
    print(msg, flush=True)


def check_port(port):
    if not port:
        raise DeployError('PORT missing: give the board\'s serial port, e.g. PORT=/dev/ttyUSB0 (ESP32 USB-UART), '
                          'PORT=/dev/ttyACM0 (Pico W); `.venv/bin/mpremote devs` lists them')
    if '://' not in port and not os.path.exists(port):
        raise DeployError('port %s does not exist (board unplugged? `.venv/bin/mpremote devs` lists ports)' % port)


def connect(port, tries=1, wait_s=0.0):
    from mpremote.transport_serial import SerialTransport
    from mpremote.transport import TransportError
    last = None
    end = time.monotonic() + wait_s
    while True:
        try:
            if '://' in port or os.path.exists(port):
                return SerialTransport(port, baudrate=115200)
        except TransportError as e:
            last = e
        if time.monotonic() >= end:
            raise DeployError('cannot open %s: %s' % (port, last or 'no such port'))
        time.sleep(0.2)


def raw_repl(t, attempts=5):
    from mpremote.transport import TransportError
    for i in range(attempts):
        try:
            t.enter_raw_repl(soft_reset=False, timeout_overall=3)
            return
        except TransportError:
            if i == attempts - 1:
                raise DeployError('the board does not answer on its REPL (is it running MicroPython?)')


def hold_and_reset(port):
    """Interrupt the firmware, arm the hold (removed after the copy), reset; return a raw-REPL transport."""
    t = connect(port)
    raw_repl(t)
    t.exec("open(%r, 'w').close()" % HOLD)
    t.exec_raw_no_follow('import machine\nmachine.reset()')
    time.sleep(0.3)
    t.close()
    time.sleep(0.5)
    t = connect(port, wait_s=15)         # a USB CDC port (Pico W) disappears during the reset
    raw_repl(t)
    return t


def device_state(t, files, dirs, shadows):
    out = t.exec(HASH_SCRIPT % (list(files), list(dirs), list(shadows))).decode()
    hashes, have_dirs, have_shadows = {}, set(), set()
    for line in out.splitlines():
        kind, p, v = line.split(' ', 2)
        if kind == 'F':
            hashes[p] = None if v == '-' else v
        elif kind == 'D' and v == '1':
            have_dirs.add(p)
        elif kind == 'S' and v == '1':
            have_shadows.add(p)
    return hashes, have_dirs, have_shadows


def read_boot_log(t, seconds, echo=True):
    """Soft reset from the friendly REPL (main.py runs) and collect output for `seconds`."""
    t.exit_raw_repl()
    time.sleep(0.1)
    t.serial.write(b'\x04')
    end = time.monotonic() + seconds
    buf = b''
    booted = False                      # skip the friendly REPL banner before "soft reboot"
    lines = []
    while time.monotonic() < end:
        n = t.serial.in_waiting
        if n:
            chunk = t.serial.read(n)
            buf += chunk
            while b'\n' in buf:
                line, buf = buf.split(b'\n', 1)
                line = line.rstrip(b'\r').decode('utf-8', 'replace')
                booted = booted or 'soft reboot' in line
                if booted:
                    lines.append(line)
                    if echo:
                        say('  | ' + line)
        else:
            time.sleep(0.02)
    if buf and booted and echo:
        say('  | ' + buf.decode('utf-8', 'replace'))
    return lines


def deploy(board, port, values=None, site_path=None, frozen=False, log_seconds=6.0):
    t0 = time.monotonic()
    try:
        fwbuild.load_board(board)
    except fwbuild.BuildError as e:
        raise DeployError(str(e))
    check_port(port)
    try:
        site, warns = site_config.make(board, values, site_path)
    except site_config.SiteError as e:
        raise DeployError(str(e))
    for w in warns:
        say('deploy: warning: %s' % w)
    try:
        res = fwbuild.build(board, frozen)
    except fwbuild.BuildError as e:
        raise DeployError(str(e))
    say(fwbuild.report(res, verbose=False))

    want = {}                                   # device path -> bytes
    for p in res['files']:
        with open(os.path.join(res['dir'], p), 'rb') as f:
            want[p] = f.read()
    want['site.json'] = (json.dumps(site, indent=1, sort_keys=True) + '\n').encode()
    dirs = sorted({p.rsplit('/', 1)[0] for p in want if '/' in p} |
                  {p.rsplit('/', 1)[0].rsplit('/', 1)[0] for p in want if p.count('/') > 1}, key=len)
    shadows = [p[:-4] + '.py' for p in want if p.endswith('.mpy')]

    global _touched
    _touched = True
    say('deploy: %s -> %s: interrupting the firmware, holding it off, resetting' % (board, port))
    t = hold_and_reset(port)
    try:
        old_manifest = []
        hashes, have_dirs, have_shadows = device_state(t, list(want) + [MANIFEST], dirs, shadows)
        if hashes.get(MANIFEST):
            try:
                old_manifest = json.loads(t.fs_readfile(MANIFEST).decode()).get('files', [])
            except (ValueError, OSError):
                old_manifest = []
        for d in dirs:
            if d not in have_dirs:
                t.fs_mkdir(d)
        copied, nbytes, same = [], 0, 0
        for p in sorted(want, key=lambda p: (p == 'site.json', p)):    # site.json last
            data = want[p]
            if hashes.get(p) == hashlib.sha256(data).hexdigest():
                same += 1
                continue
            t.fs_writefile(p, data)
            copied.append(p)
            nbytes += len(data)
        removed = []
        for p in sorted(have_shadows) + sorted(set(old_manifest) - set(want)):
            try:
                t.fs_rmfile(p)
                removed.append(p)
            except Exception:
                pass
        manifest = (json.dumps({'board': board, 'files': sorted(want)}, sort_keys=True) + '\n').encode()
        if hashes.get(MANIFEST) != hashlib.sha256(manifest).hexdigest():
            t.fs_writefile(MANIFEST, manifest)
        for p in copied:
            say('  copied %s (%d bytes)' % (p, len(want[p])))
        for p in removed:
            say('  removed %s' % p)
        dt = time.monotonic() - t0
        say('deploy: %d files copied (%d bytes), %d up to date, %d removed, %.1f s'
            % (len(copied), nbytes, same, len(removed), dt))
        t.exec("import os\ntry:\n os.remove(%r)\nexcept OSError:\n pass" % HOLD)   # every file in place: release
        say('deploy: soft reset; boot log (%g s):' % log_seconds)
        read_boot_log(t, log_seconds)
    finally:
        try:
            t.close()
        except Exception:
            pass
    return {'copied': copied, 'same': same, 'removed': removed, 'bytes': nbytes, 'seconds': dt}


def logs(port, seconds=0.0):
    """Print what the board writes, without interrupting it. seconds=0: until Ctrl-C."""
    import serial
    check_port(port)
    s = serial.serial_for_url(port, baudrate=115200, timeout=0.2)
    s.reset_input_buffer()
    end = time.monotonic() + seconds if seconds else None
    try:
        while end is None or time.monotonic() < end:
            data = s.read(256)
            if data:
                sys.stdout.write(data.decode('utf-8', 'replace').replace('\r\n', '\n'))
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        s.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description='deploy the firmware with mpremote')
    sub = ap.add_subparsers(dest='cmd', required=True)
    d = sub.add_parser('deploy')
    d.add_argument('--board', default='')
    d.add_argument('--port', default='')
    d.add_argument('--values', help='file of NAME=VALUE lines for tools/site.template.json')
    d.add_argument('--site', help='a complete site config (JSON) instead of the template')
    d.add_argument('--frozen', action='store_true', help='the code is frozen into the image: copy main.py and data')
    d.add_argument('--log-seconds', type=float, default=6.0)
    d.add_argument('assign', nargs='*', help='NAME=VALUE for the site config template')
    g = sub.add_parser('logs')
    g.add_argument('--port', default='')
    g.add_argument('--seconds', type=float, default=0.0)
    a = ap.parse_args(argv)
    try:
        if a.cmd == 'logs':
            logs(a.port, a.seconds)
            return 0
        if not a.board:
            raise DeployError('BOARD missing: one of %s' % ', '.join(fwbuild.boards()))
        vals = site_config.read_values(a.values) if a.values else {}
        for s in a.assign:
            k, sep, v = s.partition('=')
            if not sep:
                raise DeployError('expected NAME=VALUE, got %r' % s)
            vals[k] = v
        deploy(a.board, a.port, vals, a.site, a.frozen, a.log_seconds)
    except (DeployError, site_config.SiteError) as e:
        print('deploy: error: %s' % e, file=sys.stderr)
        if not _touched:
            print('deploy: nothing was sent to the board', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
