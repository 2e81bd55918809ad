#!/usr/bin/env python3
"""Build the device filesystem for one board: build/device/<board>/ is exactly what goes on the
board (tools/deploy.py copies it, minus what is already there).

    /main.py                 boot entry (source: a board runs main.py only as source)
    /cycle.mpy /bus.mpy ...  firmware/*.py compiled with mpy-cross
    /lib/*.mpy               lib/*.py (control core, config, profiles decoder, ...)
    /lib/machine.mpy         unix board only: the machine shim (firmware/unix/machine.py)
    /profiles/*.json         device profiles, and *.cpf.json: each compiled (validated here; the
                             device builds its model from it without the JSON validator)
    /boards/<board>.json     the board file (the firmware reads the one site.json names)
    /site.json               written by deploy from the site config, not by the build

mpy-cross emits bytecode; -march=<board build.march> is passed only for modules that use native
code (@micropython.native / viper / asm_*), none today. --frozen leaves the code out (it is frozen
into the image: manifest.py) and keeps main.py and the data.

    python tools/build.py BOARD [--frozen] [--quiet]
    python tools/build.py --packaging        # regenerate package.json (mip) and manifest.py
"""
import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
VENDOR = os.path.join(ROOT, 'build', 'vendor')
OUT = os.path.join(ROOT, 'build', 'device')
VERSION = '0.5.0'

# firmware modules that are not for the device filesystem
FIRMWARE_SKIP = ('main.py', 'bus_umodbus.py')   # bus_umodbus: host comparison only (docs/bus.md)
LIB_SKIP = ('schedule_host.py', 'reserve.py')    # host-only: a schedule as a parsed dict (planner, fleet, tests); the reserve with its arguments checked (planner)
# third-party device libraries from build/vendor (tools/fetch_vendor.py) bundled into the build as
# lib/<path>: none today. umodbus and umqtt.simple are fetched for host comparisons only
# (firmware/bus_umodbus.py; host_tests/test_mqtt_wire.py checks the MQTT link's bytes against
# umqtt.simple): the link encodes its few MQTT packets itself (firmware/mqtt_sock.py).
VENDOR_PKGS = ()
NATIVE_RE = re.compile(r'@micropython\.(native|viper|asm_\w+)')


class BuildError(Exception):
    pass


def boards():
    return sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, 'boards', '*.json')))


def load_board(name):
    path = os.path.join(ROOT, 'boards', '%s.json' % name)
    if not re.match(r'^[a-z0-9_]+$', name or '') or not os.path.exists(path):
        raise BuildError('unknown board %r: known boards are %s (boards/*.json)' % (name, ', '.join(boards())))
    with open(path) as f:
        return json.load(f)


def sources(board_name, frozen=False):
    """[(device path, source path, kind)] kind: 'mpy' (compile), 'profile' (compile a profile), 'copy'."""
    out = [('main.py', os.path.join(ROOT, 'firmware', 'main.py'), 'copy')]
    if not frozen:
        for p in sorted(glob.glob(os.path.join(ROOT, 'firmware', '*.py'))):
            n = os.path.basename(p)
            if n not in FIRMWARE_SKIP:
                out.append((n[:-3] + '.mpy', p, 'mpy'))
        for p in sorted(glob.glob(os.path.join(ROOT, 'lib', '*.py'))):
            if os.path.basename(p) not in LIB_SKIP:
                out.append(('lib/' + os.path.basename(p)[:-3] + '.mpy', p, 'mpy'))
        if board_name == 'unix':
            out.append(('lib/machine.mpy', os.path.join(ROOT, 'firmware', 'unix', 'machine.py'), 'mpy'))
        for pkg in VENDOR_PKGS:
            src = os.path.join(VENDOR, pkg)
            if not os.path.exists(src):
                raise BuildError('device library %s missing in build/vendor: run `make deps`' % pkg)
            files = [src] if src.endswith('.py') else sorted(glob.glob(os.path.join(src, '*.py')))
            for p in files:
                rel = os.path.relpath(p, VENDOR)
                out.append(('lib/' + rel[:-3] + '.mpy', p, 'mpy'))
    for p in sorted(glob.glob(os.path.join(ROOT, 'firmware', 'profiles', '*.json'))):
        out.append(('profiles/' + os.path.basename(p), p, 'copy'))
        out.append(('profiles/' + os.path.basename(p)[:-5] + '.cpf.json', p, 'profile'))
    out.append(('boards/%s.json' % board_name, os.path.join(ROOT, 'boards', '%s.json' % board_name), 'copy'))
    return out


def _write_if_changed(path, data):
    try:
        with open(path, 'rb') as f:
            if f.read() == data:
                return False
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)
    return True


def compile_mpy(src, dev_path, march):
    exe = os.path.join(BIN, 'mpy-cross')
    if not os.path.exists(exe):
        exe = shutil.which('mpy-cross')
    if not exe:
        raise BuildError('mpy-cross missing: run `make deps`')
    with open(src) as f:
        native = bool(NATIVE_RE.search(f.read()))
    tmp = os.path.join(OUT, '.tmp.mpy')
    os.makedirs(OUT, exist_ok=True)
    # the source name a traceback shows: the module's own name, a qstr the import interns anyway
    # (a path such as 'lib/x.py' would be one more qstr per module, never freed: docs/resources.md)
    cmd = [exe, '-o', tmp, '-s', dev_path[:-4].rsplit('/', 1)[-1]]
    if not os.path.abspath(src).startswith(VENDOR + os.sep):
        # -O3: no line-number tables (about a fifth of the bytecode a module brings into the heap,
        # docs/resources.md) and no asserts (our code has none; a vendored library's may be
        # protocol checks, so it keeps the default). Tracebacks then say "line 1".
        cmd.append('-O3')
    if native:
        if not march:
            raise BuildError('%s uses native code but the board file has no build.march' % src)
        cmd.append('-march=' + march)
    cmd.append(src)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError('mpy-cross %s: %s' % (src, r.stderr.strip()))
    with open(tmp, 'rb') as f:
        data = f.read()
    os.remove(tmp)
    return data, native


def compile_profile(src):
    """Validate a device profile here, on the host, and return its compiled form (JSON bytes):
    the device builds its model from that without the parser and validator (docs/resources.md)."""
    import paths  # noqa: F401 (lib/ on sys.path)
    import devprofile
    try:
        p = devprofile.load(src)
    except devprofile.ProfileError as e:
        raise BuildError(str(e))
    with open(src, 'rb') as f:
        sha = devprofile.source_hash(f.read())
    return (json.dumps(devprofile.compiled(p, sha), separators=(',', ':')) + '\n').encode()


def build(board_name, frozen=False, out_root=OUT):
    """Build build/device/<board>[-frozen]/. Returns {'dir', 'files': {path: (size, sha256)}, ...}."""
    board = load_board(board_name)
    march = (board.get('build') or {}).get('march')
    dest = os.path.join(out_root, board_name + ('-frozen' if frozen else ''))
    files = {}
    native = []
    for dev_path, src, kind in sources(board_name, frozen):
        if kind == 'mpy':
            data, nat = compile_mpy(src, dev_path, march)
            if nat:
                native.append(dev_path)
        elif kind == 'profile':
            data = compile_profile(src)
        else:
            with open(src, 'rb') as f:
                data = f.read()
        _write_if_changed(os.path.join(dest, dev_path), data)
        files[dev_path] = (len(data), hashlib.sha256(data).hexdigest())
    for d, _, fs in os.walk(dest, topdown=False):      # stale files from an earlier build
        for f in fs:
            rel = os.path.relpath(os.path.join(d, f), dest).replace(os.sep, '/')
            if rel not in files:
                os.remove(os.path.join(d, f))
        if d != dest and not os.listdir(d):
            os.rmdir(d)
    return {'board': board_name, 'dir': dest, 'files': files, 'native': native,
            'fs_bytes': (board.get('build') or {}).get('fs_bytes')}


def group(path):
    for pkg in VENDOR_PKGS:         # a vendored package (a folder) or module (a file)
        top = pkg.split('/')[0]
        if path.startswith('lib/%s/' % top) or (top == pkg and path == 'lib/%s.mpy' % top[:-3]):
            return 'vendor ' + top
    if path.startswith('lib/'):
        return 'lib'
    if '/' in path:
        return path.split('/')[0]
    return 'firmware'


def report(res, verbose=True):
    files = res['files']
    total = sum(s for s, _ in files.values())
    groups = {}
    for p, (s, _) in files.items():
        groups[group(p)] = groups.get(group(p), 0) + s
    lines = []
    if verbose:
        for p in sorted(files):
            lines.append('  %7d  %s' % (files[p][0], p))
    lines.append('build/device/%s: %d files, %d bytes (%s)' % (
        os.path.basename(res['dir']), len(files), total,
        ', '.join('%s %d' % (g, groups[g]) for g in sorted(groups))))
    if res['fs_bytes']:
        lines.append('  = %.1f %% of the board filesystem (%d bytes)' % (100.0 * total / res['fs_bytes'], res['fs_bytes']))
    lines.append('  native code (-march): %s' % (', '.join(res['native']) or 'none'))
    return '\n'.join(lines)


# --- packaging: mip package.json and the freeze manifest ------------------------------------------

def mip_urls():
    """mip installs with target='/': the same layout as the build (modules as .py)."""
    urls = [['main.py', 'firmware/main.py']]
    for p in sorted(glob.glob(os.path.join(ROOT, 'firmware', '*.py'))):
        n = os.path.basename(p)
        if n not in FIRMWARE_SKIP:
            urls.append([n, 'firmware/' + n])
    for p in sorted(glob.glob(os.path.join(ROOT, 'lib', '*.py'))):
        if os.path.basename(p) not in LIB_SKIP:
            urls.append(['lib/' + os.path.basename(p), 'lib/' + os.path.basename(p)])
    for p in sorted(glob.glob(os.path.join(ROOT, 'firmware', 'profiles', '*.json'))):
        urls.append(['profiles/' + os.path.basename(p), 'firmware/profiles/' + os.path.basename(p)])
    for b in boards():
        if b != 'unix':
            urls.append(['boards/%s.json' % b, 'boards/%s.json' % b])
    return urls


def package_json():
    return json.dumps({'urls': mip_urls(), 'version': VERSION}, indent=1) + '\n'


def manifest_py():
    fw = [os.path.basename(p) for p in sorted(glob.glob(os.path.join(ROOT, 'firmware', '*.py')))
          if os.path.basename(p) not in FIRMWARE_SKIP]
    lib = [os.path.basename(p) for p in sorted(glob.glob(os.path.join(ROOT, 'lib', '*.py')))
           if os.path.basename(p) not in LIB_SKIP]
    out = ['# Freeze the BESS firmware into a custom MicroPython image (generated by tools/build.py --packaging).',
           '#',
           '# In a MicroPython checkout:',
           '#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/this/repo/manifest.py',
           '#   make -C ports/rp2 BOARD=RPI_PICO_W FROZEN_MANIFEST=/path/to/this/repo/manifest.py',
           '# flash the image, then `make deploy BOARD=... PORT=... FROZEN=1`: it copies only main.py and the',
           '# data (profiles, board file, site config). Frozen code runs from flash: no .mpy on the filesystem,',
           '# less RAM for the module bytecode. Paths below are relative to this file.',
           'include("$(PORT_DIR)/boards/manifest.py")']
    out += ['module("%s", base_path="firmware")' % n for n in fw]
    out += ['module("%s", base_path="lib")' % n for n in lib]
    return '\n'.join(out) + '\n'


def write_packaging():
    changed = []
    for name, text in (('package.json', package_json()), ('manifest.py', manifest_py())):
        if _write_if_changed(os.path.join(ROOT, name), text.encode()):
            changed.append(name)
    return changed


def main():
    ap = argparse.ArgumentParser(description='build the device filesystem for a board')
    ap.add_argument('board', nargs='?')
    ap.add_argument('--frozen', action='store_true', help='code frozen into the image: main.py and data only')
    ap.add_argument('--quiet', action='store_true', help='totals only')
    ap.add_argument('--packaging', action='store_true', help='regenerate package.json and manifest.py')
    a = ap.parse_args()
    try:
        if a.packaging:
            print('packaging: %s' % (', '.join(write_packaging()) or 'up to date'))
            if not a.board:
                return 0
        if not a.board:
            raise BuildError('BOARD missing: one of %s' % ', '.join(boards()))
        print(report(build(a.board, a.frozen), not a.quiet))
    except BuildError as e:
        print('build: error: %s' % e, file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
