"""firmware/wallclock.py (the wall clock: SNTP at boot and periodically) on MicroPython against
tools/ntp_server.py on 127.0.0.1. host_tests/mp/wallclock_mp.py runs the clock the way the loop
does (poll between cycles) and reports its state after each change; the server is told what to
answer. Behaviour only: no assertion on how long anything took, beyond the clock's own bounds
(max_age_s), which the clock measures itself."""
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import mp32fixed
from broker import wait_for
from ntp_server import NTP_DELTA_S, NtpServer
from paths import BIN, FIRMWARE, MICROPYPATH, ROOT

SCRIPT = os.path.join(ROOT, 'host_tests', 'mp', 'wallclock_mp.py')
RUNTIMES = ('unix', 'mp32fixed')
FAST = {'period_s': 1, 'retry_s': 1, 'max_age_s': 3, 'timeout_ms': 300}    # resync every second
ONCE = {'period_s': 60, 'retry_s': 1, 'max_age_s': 600, 'timeout_ms': 300}  # one sync per run


def exe_for(runtime):
    return os.path.join(BIN, 'micropython') if runtime == 'unix' else mp32fixed.build()


def run_clock(srv, runtime='unix', clock=None, until=None, run_ms=6000, alloc=False, created=None,
              path=MICROPYPATH):
    args = {'clock': dict({'host': '127.0.0.1', 'port': srv.port}, **(clock or {})), 'run_ms': run_ms}
    if until:
        args['until'] = until
    if alloc:
        args['alloc'] = 1
    if created is not None:
        args['created'] = created
    r = subprocess.run([exe_for(runtime), '-X', 'heapsize=200000', SCRIPT, json.dumps(args)],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ, MICROPYPATH=path))
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def srv():
    with NtpServer() as s:
        yield s


@pytest.mark.parametrize('runtime', RUNTIMES)
@pytest.mark.parametrize('offset_s', [0, 86400 * 3 + 0.75, -3600.4])
def test_the_first_sync_makes_the_clock_valid_with_the_servers_time(srv, runtime, offset_s):
    srv.offset_s = offset_s
    out = run_clock(srv, runtime, ONCE, until=['synced', 1])
    f = out['final']
    assert (f['valid'], f['synced'], f['fails'], f['rejected'], f['epoch_changed']) == (1, 1, 0, 0, 1), f
    assert out['events'][0]['rebase'] == 1                      # poll() said: rebase the plan
    # now_s() against the server's time at the same moment (the host's clock + the offset)
    assert abs(f['now_s'] - (f['host_s'] + offset_s)) < 2, f
    assert out['bits'] == (64 if runtime == 'unix' else 32)


RACE = """import time, wallclock
class Silent:                           # a socket the answer never reaches
    def readinto(self, b):
        return None
    def close(self):
        pass
c = wallclock.Clock('127.0.0.1', 9, period_s=1, retry_s=1, max_age_s=3, timeout_ms=300)
now = time.ticks_ms()
c.valid = 1
c.base_ticks_ms = time.ticks_add(now, -4000)        # the last sync: older than max_age_s
c.pending = 1                                       # a request out, past its timeout_ms
c.t_sent = time.ticks_add(now, -1000)
c.sock = Silent()
c.r = bytearray(48)
c.q = bytearray(48)
c.poll(time.ticks_ms())
print(c.valid, c.last_error, c.fails)
"""


def test_a_timeout_in_the_poll_the_sync_expires_in_still_says_expired(tmp_path):
    """The sync expires and the request out times out in the same poll (what the test below met
    once under load): the clock is invalid and says why, 'expired', with the failure counted."""
    script = tmp_path / 'race.py'
    script.write_text(RACE)
    r = subprocess.run([exe_for('unix'), str(script)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, MICROPYPATH=MICROPYPATH))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ['0', 'expired', '1'], r.stdout


def test_a_silent_server_leaves_the_clock_valid_until_max_age_then_invalid(srv):
    srv.plan = ['ok']
    srv.mode = 'silent'                 # after the first answer: nothing
    out = run_clock(srv, clock=FAST, until=['last_error', 'expired'], run_ms=15000)
    ev = out['events']
    assert ev[0]['valid'] == 1 and ev[0]['synced'] == 1
    i = next(k for k, e in enumerate(ev) if not e['valid'])
    assert all(e['valid'] for e in ev[:i])
    assert ev[i - 1]['fails'] >= 1 and ev[i - 1]['last_error'] == 'timeout'   # failed, still valid
    assert ev[i]['last_error'] == 'expired' and ev[i]['age_ms'] > FAST['max_age_s'] * 1000
    assert out['final']['synced'] == 1 and srv.requests >= 2


def test_a_failed_first_request_is_retried_after_retry_s(srv):
    srv.plan = ['silent']
    out = run_clock(srv, clock=ONCE, until=['synced', 1])
    f = out['final']
    assert (f['valid'], f['synced'], f['fails']) == (1, 1, 1)
    first_fail = next(e for e in out['events'] if e['fails'])
    assert (first_fail['last_error'], first_fail['valid'], first_fail['synced']) == ('timeout', 0, 0)


@pytest.mark.parametrize('runtime', RUNTIMES)
@pytest.mark.parametrize('mode, why, offset_s', [
    ('garbage', 'origin', 0),           # 48 random bytes: not an answer to our request
    ('short', 'short', 0),
    ('bad_origin', 'origin', 0),
    ('wrong_mode', 'mode', 0),
    ('kod', 'kod RATE', 0),             # stratum 0
    ('stratum16', 'stratum', 0),
    ('unsync', 'unsync', 0),            # leap indicator 3
    ('ok', 'early', -10 * 365 * 86400),  # before min_epoch_s
])
def test_a_bad_answer_is_not_accepted_and_is_counted(srv, runtime, mode, why, offset_s):
    srv.mode = mode
    srv.offset_s = offset_s
    out = run_clock(srv, runtime, ONCE, until=['fails', 1])
    f = out['final']
    assert (f['valid'], f['synced'], f['epoch_changed'], f['fails']) == (0, 0, 0, 1), f
    assert why in [e['last_error'] for e in out['events']], out['events']
    if why in ('origin', 'short'):      # not ours: discarded, the request waits on to its timeout
        assert f['rejected'] >= 1 and f['last_error'] == 'timeout'
    else:                               # the server's own answer, unusable: the attempt fails
        assert f['rejected'] == 0 and f['last_error'] == why


def test_a_late_answer_within_the_timeout_is_used_one_past_it_is_not(srv):
    """The server's hold time (receive -> transmit timestamps) is not counted into the path; an
    answer that comes after the timeout is a stray by then (its originate is an old nonce)."""
    srv.late_ms = 150
    f = run_clock(srv, clock=ONCE, until=['synced', 1])['final']
    assert (f['valid'], f['fails']) == (1, 0) and abs(f['now_s'] - f['host_s']) < 2
    srv.late_ms = 600                   # timeout_ms 300
    out = run_clock(srv, clock=ONCE, until=['fails', 2], run_ms=8000)
    f = out['final']
    assert (f['valid'], f['synced'], f['fails']) == (0, 0, 2) and f['rejected'] >= 1, f
    assert 'origin' in [e['last_error'] for e in out['events']]


def test_a_kiss_of_death_defers_the_next_request_to_the_period(srv):
    """retry_s after an ordinary failure, period_s after a kiss-o'-death (RFC 4330: back off)."""
    srv.mode = 'kod'
    run_clock(srv, clock=ONCE, run_ms=2500)
    assert srv.requests == 1
    with NtpServer(mode='wrong_mode') as other:
        run_clock(other, clock=ONCE, run_ms=2500)
        assert other.requests >= 2


@pytest.mark.parametrize('runtime', RUNTIMES)
def test_each_periodic_resync_sets_a_new_base_and_bumps_epoch_changed(srv, runtime):
    out = run_clock(srv, runtime, dict(FAST, max_age_s=5), until=['synced', 3])
    f = out['final']
    assert (f['valid'], f['synced'], f['epoch_changed'], f['fails'], f['steps']) == (1, 3, 3, 0, 0), f
    rebases = [e for e in out['events'] if e['rebase']]
    assert [e['epoch_changed'] for e in rebases] == [1, 2, 3]
    assert abs(f['last_step_ms']) < 1000                    # the same clock: no step


def test_a_server_that_steps_is_followed_and_the_step_counted(srv):
    def step_after_first_answer():
        wait_for(lambda: srv.answered >= 1, 10)
        srv.offset_s += 30
    t = threading.Thread(target=step_after_first_answer)
    t.start()
    out = run_clock(srv, clock=FAST, until=['synced', 2])
    t.join()
    f = out['final']
    assert (f['valid'], f['synced'], f['steps']) == (1, 2, 1), f
    assert abs(f['last_step_ms'] - 30000) < 2000
    assert abs(f['now_s'] - (f['host_s'] + 30)) < 2


def test_check_created_distrusts_a_clock_behind_the_schedules_author(srv):
    out = run_clock(srv, clock=ONCE, until=['synced', 1], created=[700, 500, -86400])
    assert out['created'] == [0, 1, 1]              # created 700 s ahead of us: beyond the 600 s skew
    assert out['created_invalid'] == 0              # never synced: nothing to trust


def test_elapsed_s_is_allocation_free_on_32_bit(srv):
    """What a control cycle reads (valid, elapsed_s()) and a poll() with nothing due allocate
    nothing under heap_lock on the 32-bit fixed-heap build, where epoch seconds are heap ints."""
    out = run_clock(srv, 'mp32fixed', ONCE, until=['synced', 1], alloc=True)
    assert out['bits'] == 32 and out['final']['valid'] == 1
    assert out['alloc']['elapsed_s'] == 'free', out['alloc']
    assert out['alloc']['cycle_reads'] == 'free', out['alloc']
    assert out['alloc']['idle_poll'] == 'free', out['alloc']


IMPORT_COST = """
import gc, sys
sys.path.insert(0, sys.argv[1])
import socket, select, time, os       # built in, and resident anyway (the MQTT link)
import ondemand                       # resident anyway (every on-demand load)
gc.collect()
a = gc.mem_alloc()
import wallclock
gc.collect()
b = gc.mem_alloc()
c = wallclock.Clock('127.0.0.1')
gc.collect()
print(b - a, gc.mem_alloc() - b)
"""


def test_import_cost_on_32_bit_from_py_and_mpy(tmp_path):
    """The resident cost of `import wallclock` (gc.mem_alloc delta on the 32-bit build, in a bare
    interpreter: no qstr of the module interned before), from source and from the .mpy that
    tools/build.py makes (mpy-cross -O3), and of one Clock before its socket is opened."""
    exe = mp32fixed.build()
    src = tmp_path / 'py'
    src.mkdir()
    for m in ('wallclock', 'ondemand'):
        (src / (m + '.py')).write_text(open(os.path.join(FIRMWARE, m + '.py')).read())
        subprocess.check_call([os.path.join(BIN, 'mpy-cross'), '-O3', '-o', str(tmp_path / (m + '.mpy')),
                               '-s', m + '.py', str(src / (m + '.py'))])
    sizes = {}
    for kind, d in (('py', src), ('mpy', tmp_path)):
        r = subprocess.run([exe, '-X', 'heapsize=200000', '-c', IMPORT_COST, str(d)], capture_output=True,
                           text=True, timeout=30, env=dict(os.environ, MICROPYPATH='.frozen'))
        assert r.returncode == 0, r.stdout + r.stderr
        sizes[kind], sizes['instance'] = map(int, r.stdout.split())
    sizes['mpy_file'] = os.path.getsize(tmp_path / 'wallclock.mpy')
    print('wallclock on 32-bit, bytes: %s' % sizes)
    assert sizes['mpy'] < sizes['py'] and sizes['mpy'] < 5000, sizes


@pytest.mark.parametrize('runtime', RUNTIMES)
def test_the_exchange_is_loaded_only_while_a_request_is_out(srv, runtime):
    """firmware/ntp_exchange.py is imported by poll() when a request is due and leaves
    sys.modules when the attempt ends (a timeout here, then three syncs): no poll that leaves
    no request out leaves it loaded. On 32-bit, elapsed_s() and a poll with nothing due stay
    allocation-free after the module came and went."""
    srv.plan = ['silent']               # the first request stays out until timeout_ms
    alloc = runtime == 'mp32fixed'
    out = run_clock(srv, runtime, dict(FAST, period_s=2, max_age_s=5), until=['synced', 3], run_ms=12000,
                    alloc=alloc)
    f, loaded = out['final'], out['exchange_loaded']
    assert (f['valid'], f['synced'], f['fails']) == (1, 3, 1), out['events']
    assert loaded['idle'] == 0, loaded
    assert loaded['pending'] >= 1, loaded          # it was there while the first request waited
    if alloc:
        assert out['alloc']['elapsed_s'] == 'free', out['alloc']
        assert out['alloc']['idle_poll'] == 'free', out['alloc']


SYNC_COST = """
import gc, sys, time
sys.path.insert(0, sys.argv[1])
import socket, select, os             # built in, and resident anyway (the MQTT link)
import ondemand                       # resident anyway (every on-demand load)
def alloc():
    gc.collect()
    return gc.mem_alloc()
a = alloc()
import wallclock
b = alloc()
c = wallclock.Clock('127.0.0.1', int(sys.argv[2]), 2, 1, 10, wait_ms=0, timeout_ms=300)
i = alloc()
c.poll(time.ticks_ms())               # wait_ms 0: the request is out, its answer not read yet
out = alloc()
loaded = 'ntp_exchange' in sys.modules
while c.synced < 2:
    time.sleep_ms(5)
    c.poll(time.ticks_ms())
print(b - a, i - b, out - a, alloc() - a, int(loaded), int('ntp_exchange' in sys.modules))
"""


def test_the_heap_a_sync_costs_on_32_bit_from_mpy(tmp_path, srv):
    """gc.mem_alloc deltas on the 32-bit build, both modules as the .mpy tools/build.py makes:
    the resident import, while a request is out (the exchange loaded: the transient cost of a
    sync) and after two syncs (what stays: the Clock, its socket, the names the exchange
    interned). The exchange's code must be gone again: well over 1 KB freed when it ends."""
    exe = mp32fixed.build()
    for name in ('wallclock', 'ntp_exchange', 'ondemand'):
        subprocess.check_call([os.path.join(BIN, 'mpy-cross'), '-O3', '-o', str(tmp_path / (name + '.mpy')),
                               '-s', name + '.py', os.path.join(FIRMWARE, name + '.py')])
    r = subprocess.run([exe, '-X', 'heapsize=200000', '-c', SYNC_COST, str(tmp_path), str(srv.port)],
                       capture_output=True, text=True, timeout=30, env=dict(os.environ, MICROPYPATH='.frozen'))
    assert r.returncode == 0, r.stdout + r.stderr
    v = list(map(int, r.stdout.split()))
    sizes = dict(zip(('import', 'instance', 'request_out', 'after_syncs'), v))
    print('wallclock + ntp_exchange on 32-bit, bytes: %s' % sizes)
    assert v[4:] == [1, 0]                          # loaded while the request was out, gone after
    assert sizes['import'] < 2200, sizes            # 4 096 when the exchange was resident (this script)
    assert sizes['request_out'] - sizes['after_syncs'] > 1200, sizes


# --- the server itself (CPython), as a reference client would see it ---------------------------

def sntp_query(port, nonce=b'12345678', version=4):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(bytes([version << 3 | 3]) + bytes(39) + nonce, ('127.0.0.1', port))
    try:
        return s.recv(512)
    except socket.timeout:
        return None
    finally:
        s.close()


def test_the_server_answers_a_plain_sntp_request():
    with NtpServer(offset_s=1234.5) as s:
        t0 = time.time()
        data = sntp_query(s.port)
        t1 = time.time()
    assert len(data) == 48
    li, vn, mode = data[0] >> 6, data[0] >> 3 & 7, data[0] & 7
    assert (li, vn, mode, data[1]) == (0, 4, 4, 2)
    assert data[24:32] == b'12345678'                        # originate = our transmit
    sec, frac = struct.unpack('!II', data[40:48])
    t = sec - NTP_DELTA_S + frac / 2 ** 32
    assert t0 + 1234.5 <= t <= t1 + 1234.5


def test_the_servers_plan_and_settings():
    with NtpServer() as s:
        s.plan = ['silent', 'kod']
        s.configure(kod_code='DENY', late_ms=100)
        assert sntp_query(s.port) is None
        k = sntp_query(s.port)
        assert k[1] == 0 and k[12:16] == b'DENY'
        assert sntp_query(s.port)[1] == 2                   # the plan is used up: mode 'ok'
        with pytest.raises(ValueError):
            s.configure(mode='nonsense')
        assert s.requests == 3 and wait_for(lambda: s.answered == 2, 2)    # counted after sending


def test_the_cli_serves_and_follows_its_control_file():
    with tempfile.TemporaryDirectory() as d:
        ctl = os.path.join(d, 'ntp.json')
        p = subprocess.Popen([sys.executable, os.path.join(ROOT, 'tools', 'ntp_server.py'), '--offset', '60',
                              '--control', ctl], stdout=subprocess.PIPE, text=True)
        try:
            port = int(p.stdout.readline().split()[1].split(':')[1])
            data = sntp_query(port)
            assert abs(struct.unpack('!I', data[40:44])[0] - NTP_DELTA_S - 60 - time.time()) < 2
            with open(ctl, 'w') as f:
                json.dump({'mode': 'silent'}, f)
            assert 'mode=' in p.stdout.readline()
            assert sntp_query(port) is None
        finally:
            p.terminate()
            p.wait(5)


def test_the_constructor_refuses_a_max_age_beyond_the_ticks_window():
    """ticks_diff is valid to 2**29 ms (6.2 days) on the boards: a base is never used longer."""
    import wallclock
    assert wallclock.MAX_AGE_S * 1000 < 2 ** 29
    with pytest.raises(ValueError):
        wallclock.Clock('127.0.0.1', max_age_s=7 * 86400)
    with pytest.raises(ValueError):
        wallclock.Clock('127.0.0.1', period_s=3600, max_age_s=3600)     # would lapse between syncs
    with pytest.raises(ValueError):
        wallclock.Clock('127.0.0.1', wait_ms=200)
