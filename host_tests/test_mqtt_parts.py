"""Unit tests of the MQTT link's portable parts: lib/commands.py and lib/command_mac.py (validation, HMAC, replay),
lib/telemetry.py (ring, schema), firmware/persist.py and firmware/cmd_handler.py; on CPython and
(host_tests/mp/mqtt_parts_mp.py) on the MicroPython unix port."""
import copy
import hashlib
import hmac
import json
import os
import subprocess

import pytest

import bess_core
import commands
import command_mac
from bess_config import validate
import telemetry
import telemetry_schema
from mqtt_fixtures import MICROPYPATH, ROOT, micropython_exe

import persist  # noqa: E402
import reporting  # noqa: E402
import settings  # noqa: E402

TOPIC = b'bess/d1/cmd/import_limit'


def base():
    return bess_core.Controller({'import_limit_w': 10000}).cfg


@pytest.mark.parametrize('klen', [0, 1, 16, 32, 63, 64, 65, 100, 200])
def test_hmac_matches_python_hmac(klen):
    key = bytes(range(klen % 256))[:klen] if klen < 256 else os.urandom(klen)
    for msg in (b'', b'a', TOPIC + b'\n{"value":1}', bytes(1000)):
        assert command_mac.hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()


def test_sign_format_and_check():
    key = b'k' * 32
    p = command_mac.sign(key, TOPIC, b'{"value":9000,"ctr":7,"id":"r1"}')
    obj = json.loads(p)
    assert list(obj)[-1] == 'mac' and len(obj['mac']) == 64
    assert obj['mac'] == hmac.new(key, TOPIC + b'\n{"value":9000,"ctr":7,"id":"r1"}', hashlib.sha256).hexdigest()
    cfg = base()
    cfg0 = copy.deepcopy(cfg)
    auth = commands.Auth(key, 6)
    c = commands.check('import_limit', p, cfg, auth, TOPIC)
    assert (c.kind, c.data['import_limit_w'], c.ctr, c.id) == ('config', 9000, 7, 'r1')
    assert cfg == cfg0 and auth.last_ctr == 6          # check() changes nothing
    with pytest.raises(commands.Rejected, match='replay'):
        commands.check('import_limit', p, cfg, commands.Auth(key, 7), TOPIC)
    with pytest.raises(commands.Rejected, match='bad mac'):
        commands.check('import_limit', p, cfg, auth, b'bess/d2/cmd/import_limit')
    with pytest.raises(commands.Rejected, match='mac required'):
        commands.check('import_limit', b'{"value":9000,"ctr":8}', cfg, auth, TOPIC)


def test_check_rules():
    cfg = base()
    a = commands.Auth()
    ok = lambda n, b: commands.check(n, json.dumps(b).encode(), cfg, a)   # noqa: E731
    assert ok('objective', {'value': 'ss'}).data['objective'] == 'ss'
    assert ok('min_soc', {'value': 500}).data['min_soc_bp'] == 500
    # a reserve equal to min SoC (the default: no reserve) follows min SoC up and down ...
    d = ok('min_soc', {'value': 2500}).data
    assert d['min_soc_bp'] == 2500 and d['reserve_soc_bp'] == 2500
    # ... an explicit reserve above it stays where it was set
    with_res = validate(dict(cfg, reserve_soc_bp=4000))
    d = commands.check('min_soc', b'{"value":1500}', with_res, a).data
    assert d['min_soc_bp'] == 1500 and d['reserve_soc_bp'] == 4000
    assert ok('dispatch', {'power_w': -3000, 'duration_ms': 1000}).data == (-3000, 1000)
    assert ok('dispatch', {'duration_ms': 0}).data == (0, 0)
    small = dict(cfg, max_discharge_w=2000, max_charge_w=1000)
    with pytest.raises(commands.Rejected, match='max_discharge_w'):
        commands.check('dispatch', b'{"power_w":2500,"duration_ms":10}', small, a)
    with pytest.raises(commands.Rejected, match='max_charge_w'):
        commands.check('override', b'{"power_w":-1500,"duration_ms":10}', small, a)
    for name, body in (('import_limit', b'{"value":1e3}'), ('import_limit', b'{"value":null}'),
                       ('import_limit', b'\xff\xfe'), ('import_limit', b'{"value":99999999999999999999}'),
                       ('min_soc', b'{"value":9600}'), ('import_limit', b'{"value":9000,"id":5}')):
        with pytest.raises(commands.Rejected):
            commands.check(name, body, cfg, a)


def test_apply_to_controller():
    ctl = bess_core.Controller({'import_limit_w': 10000})
    a = commands.Auth()
    commands.apply(ctl, commands.check('import_limit', b'{"value":8000}', ctl.cfg, a))
    assert ctl.import_limit_w == 8000
    commands.apply(ctl, commands.check('dispatch', b'{"power_w":100,"duration_ms":50}', ctl.cfg, a))
    assert ctl.dispatch_left_ms == 50
    commands.apply(ctl, commands.check('dispatch', b'{"duration_ms":0}', ctl.cfg, a))
    assert ctl.dispatch_left_ms == 0


def _ctl():
    ctl = bess_core.Controller({'import_limit_w': 10000})
    i = ctl.inp
    i.meter_valid = i.bat_valid = 1
    i.gcp_w, i.soc_bp, i.dt_ms = 12000, 5000, 100
    ctl.step()
    return ctl


def seqs(r):
    return [r.value(k, telemetry.F_SEQ) for k in range(len(r))]


@pytest.mark.parametrize('cap', [5, 16, 37])
def test_ring_overflow_drops_oldest_and_counts(cap):
    r = telemetry.Ring(cap)
    ctl, st = _ctl(), telemetry.Stats()
    sizes = [len(c) for c in r.chunks]
    assert r.cap == cap and sum(sizes) == cap * telemetry.NFIELDS
    for k in range(cap + 3):
        r.capture(ctl, 1700000000 + k, 0, st)
    assert [len(c) for c in r.chunks] == sizes and len(r) == cap and r.dropped == 3
    assert seqs(r) == list(range(3, cap + 3))
    rec = r.record_dict(cap - 1)
    assert set(rec) == set(telemetry_schema.SCHEMA_V2) and rec['err']['ring_dropped'] == 3
    assert rec['ts_ms'] == (1700000000 + cap + 2) * 1000 and rec['state'] == 'discharging'
    assert r.record_dict(cap - 1, epoch_s=1000)['ts_ms'] == rec['ts_ms'] + 1000000
    # the wall clock at uptime 0 to the millisecond (a sync's remainder, firmware/reporting.py)
    assert r.record_dict(cap - 1, epoch_s=1000, rem_ms=700)['ts_ms'] == rec['ts_ms'] + 1000700


def test_ring_stops_at_the_reserve(monkeypatch):
    from array import array
    free = [100000]

    def alloc(tc, init):                            # a chunk costs its bytes out of the heap
        a = array(tc, init)
        free[0] -= len(a) * 4
        return a
    monkeypatch.setattr(telemetry, 'heap_free', lambda: free[0])
    monkeypatch.setattr(telemetry, 'array', alloc)
    r = telemetry.Ring(1000, reserve=10 ** 12)      # nothing can be kept free: one chunk only
    assert r.cap == telemetry.Ring.CHUNK and len(r.chunks) == 1
    # 100000 B free, 60000 B to keep: 40000 B of records, whole chunks (16 x 108 B)
    free[0] = 100000
    r = telemetry.Ring(1000, reserve=60000)
    assert r.cap == 40000 // (16 * telemetry.RECORD_BYTES) * 16 and free[0] >= 60000


def test_ring_confirmation_cursor():
    r = telemetry.Ring(4)
    ctl, st = _ctl(), telemetry.Stats()
    for _ in range(3):
        r.capture(ctl, 0, 0, st)
    sent = []
    while r.next_unsent() >= 0:
        sent.append(r.value(r.next_unsent(), telemetry.F_SEQ))
        r.mark_sent()
    r.set_mark()
    r.capture(ctl, 0, 0, st)                 # seq 3, after the mark
    r.confirm_mark()
    assert sent == [0, 1, 2] and len(r) == 1 and r.value(r.next_unsent(), telemetry.F_SEQ) == 3
    r.mark_sent()
    r.rewind()                               # connection lost before confirmation
    assert r.value(r.next_unsent(), telemetry.F_SEQ) == 3
    # overflow while records await confirmation: the mark shrinks with them
    r.mark_sent()
    r.set_mark()
    for _ in range(4):
        r.capture(ctl, 0, 0, st)
    assert r.mark == 0 and r.sent == 0 and r.dropped == 1
    r.confirm_mark()
    assert seqs(r) == [4, 5, 6, 7]


def test_persist_roundtrip_and_damage(tmp_path):
    p = str(tmp_path / 's.json')
    assert persist.load(p) == (None, '%s: missing' % p)
    persist.save(p, {'a': 1})
    persist.save(p, {'a': 2})
    assert persist.load(p) == ({'a': 2}, None) and not os.path.exists(p + '.tmp')
    raw = open(p, 'rb').read()
    open(p, 'wb').write(raw[:5])
    assert 'truncated' in persist.load(p)[1]
    open(p, 'wb').write(raw.replace(b'2', b'3', 1))
    assert 'checksum' in persist.load(p)[1]
    # FAT-style interruption: old file removed, complete .tmp left behind -> recovered
    os.remove(p)
    open(p + '.tmp', 'wb').write(raw)
    assert persist.load(p) == ({'a': 2}, None) and os.path.exists(p)


def test_load_state_and_handler(tmp_path):
    p = str(tmp_path / 'state.json')
    cfg, ctr, msg = settings.load_state(p, validate({'import_limit_w': 10000}))
    assert cfg['import_limit_w'] == 10000 and ctr == 0 and 'no saved settings' in msg
    ctl = bess_core.Controller(cfg)
    st = telemetry.Stats()
    base = validate({'import_limit_w': 10000})
    h = reporting.CommandHandler(ctl, p, b'k' * 32, 0, st, base=base)
    good = command_mac.sign(b'k' * 32, TOPIC, b'{"value":9000,"ctr":4}')
    assert h('import_limit', TOPIC, good, False)['ok']
    assert not h('import_limit', TOPIC, good, False)['ok'] and st.cmd_rejected == 1
    assert not h('import_limit', TOPIC, command_mac.sign(b'k' * 32, TOPIC, b'{"value":9100,"ctr":5}'), True)['ok']
    cfg, ctr, msg = settings.load_state(p, validate({'import_limit_w': 10000}))
    assert (cfg['import_limit_w'], ctr, msg) == (9000, 4, None)
    # a redeployed (changed) commissioned config wins over the saved settings; the counter stays
    cfg, ctr, msg = settings.load_state(p, validate({'import_limit_w': 8000, 'phase_limit_w': 2000}))
    assert (cfg['import_limit_w'], cfg['phase_limit_w'], ctr) == (8000, 2000, 4) and 'discarded' in msg
    # ... for good: going back to the earlier commissioned config does not revive them
    cfg, ctr, msg = settings.load_state(p, validate({'import_limit_w': 10000}))
    assert cfg['import_limit_w'] == 10000 and ctr == 4 and 'discarded' in msg
    # storage failure: rejected, nothing changed
    h.path = str(tmp_path / 'no_such_dir' / 'state.json')
    a = h('import_limit', TOPIC, command_mac.sign(b'k' * 32, TOPIC, b'{"value":8000,"ctr":9}'), False)
    assert not a['ok'] and 'storage' in a['reason'] and ctl.import_limit_w == 9000 and h.last_ctr == 4
    # valid file, invalid content -> commissioned config with a message
    persist.save(p, {'v': 1, 'config': {'import_limit_w': -5}, 'ctr': 4})
    cfg, ctr, msg = settings.load_state(p, validate({'import_limit_w': 10000}))
    assert cfg['import_limit_w'] == 10000 and ctr == 0 and 'INVALID' in msg


def test_parts_on_micropython(tmp_path):
    triples = []
    for k, m in ((b'', b''), (b'k' * 16, b'abc'), (b'x' * 64, TOPIC), (b'y' * 65, b'z' * 300)):
        triples.append('%s:%s:%s' % (k.hex(), m.hex(), hmac.new(k, m, hashlib.sha256).hexdigest()))
    (tmp_path / 'hmac.txt').write_text('\n'.join(triples) + '\n')
    r = subprocess.run([micropython_exe(), os.path.join(ROOT, 'host_tests', 'mp', 'mqtt_parts_mp.py'),
                        str(tmp_path)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, MICROPYPATH=MICROPYPATH))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res['hmac_ok'] == len(triples)
    assert res['check'] == ['config', 9000, 3] and 'bad mac' in res['tamper']
    assert res['capture_heap_locked'] == 'ok'
    assert res['ring'] == [4, 6, 6, 9]
    assert res['load'] == {'a': 2} and 'checksum' in res['corrupt'] and 'missing' in res['missing']


def test_mqtt_keepalive_is_checked_as_the_16_bit_field_connect_carries():
    """Outside 0..65535 CONNECT would wrap it while the link pings on the full value."""
    import sitecfg
    for ka, ok in ((0, True), (60, True), (65535, True), (65536, False), (-1, False)):
        errs = []
        sitecfg.check_mqtt({'mqtt': {'server': '127.0.0.1', 'client_id': 'd1', 'keepalive': ka}}, errs)
        assert (not any('keepalive' in e for e in errs)) == ok, (ka, errs)


def _verify_reference(key, topic, p):
    """What commands.Auth.verify must return or raise for payload p, from Python's hmac module:
    the scheme written out whole (docs/telemetry.md, "Security")."""
    import binascii
    head = b',"mac":"'
    if len(p) < 76 or p[-74:-66] != head or p[-2:] != b'"}':
        raise commands.Rejected('unauthorized: mac required as the last member ,"mac":"<64 hex>"}')
    try:
        mac = binascii.unhexlify(p[-66:-2])
    except (ValueError, binascii.Error):
        raise commands.Rejected('unauthorized: mac is not hex')
    body = p[:-74] + b'}'
    if not hmac.compare_digest(hmac.new(key, topic + b'\n' + body, hashlib.sha256).digest(), mac):
        raise commands.Rejected('unauthorized: bad mac')
    return body, True


def test_the_device_s_streamed_mac_check_agrees_with_the_reference():
    """commands.Auth.verify (schedule_mac.MacStream, hashed in place on the device) and the
    whole-message reference above accept the same payloads with the same body and refuse the
    others with the same reason."""
    key = b'k' * 32
    good = command_mac.sign(key, TOPIC, b'{"value":9000,"ctr":7,"id":"r1"}')
    n = len(good)
    cases = [good, command_mac.sign(b'x' * 32, TOPIC, b'{"value":9000,"ctr":7}'),
             good.replace(b'9000', b'9001'), good[:-2] + b'x}', good[:n - 5] + b'zz"}',
             b'{"value":9000,"ctr":7}', b'{}', b'', good[:40], good + b' ']
    for k in range(0, n, 7):                      # every byte flipped somewhere
        cases.append(good[:k] + bytes([good[k] ^ 1]) + good[k + 1:])
    for p in cases:
        got = want = None
        try:
            got = commands.Auth(key).verify(TOPIC, p)
        except commands.Rejected as e:
            got = str(e)
        try:
            want = _verify_reference(key, TOPIC, p)
        except commands.Rejected as e:
            want = str(e)
        assert got == want, (p, got, want)
    assert commands.Auth(key).verify(TOPIC, good) == (b'{"value":9000,"ctr":7,"id":"r1"}', True)


def test_a_save_whose_last_rename_fails_on_fat_is_saved(tmp_path, monkeypatch):
    """FAT: rename cannot replace, so save() removes the old file first. If the rename after that
    fails, the complete new file is <path>.tmp, which load() takes: save() must not raise (the
    command would be refused, "nothing changed", yet apply after a reset). If the removal fails,
    the old file stays and save() raises. Either way the caller's view and the file agree."""
    import os as real_os
    p = str(tmp_path / 's.json')

    class FatOS:
        fail = None                     # 'remove' or 'rename2'

        def __init__(self):
            self.renames = 0

        def rename(self, a, b):
            self.renames += 1
            if real_os.path.exists(b):
                raise OSError(17)       # FAT: the target exists
            if self.fail == 'rename2' and self.renames == 2:
                raise OSError(5)
            real_os.rename(a, b)

        def remove(self, f):
            if self.fail == 'remove':
                raise OSError(5)
            real_os.remove(f)

        def stat(self, f):
            return real_os.stat(f)

    for fail, raises, want in (('rename2', False, 2), ('remove', True, 1), (None, False, 2)):
        for f in (p, p + '.tmp'):
            if real_os.path.exists(f):
                real_os.remove(f)
        persist.save(p, {'ctr': 1})
        fat = FatOS()
        fat.fail = fail
        monkeypatch.setattr(persist, 'os', fat)
        try:
            persist.save(p, {'ctr': 2})
            raised = False
        except OSError:
            raised = True
        monkeypatch.setattr(persist, 'os', real_os)
        assert raised == raises, fail
        assert persist.load(p) == ({'ctr': want}, None), fail


def test_the_command_path_leaves_nothing_loaded_once_idle(tmp_path, monkeypatch):
    """After a signed setting on a site with a capacity commitment (bess_config computes its
    reserve without lib/reserve.py; the handler checks the mac with schedule_mac before the rest
    loads) and IDLE_MS
    without a command, none of the command path's modules is left in sys.modules: each left behind
    stays in the heap for good. schedule_mac has left already when the command path loads."""
    import sys
    import types
    monkeypatch.setattr(reporting, 'time', types.SimpleNamespace(ticks_diff=lambda a, b: a - b))
    cfg = validate({'import_limit_w': 10000, 'committed_w': 2000, 'usable_wh': 50000})
    ctl = bess_core.Controller(cfg)
    h = reporting.CommandHandler(ctl, str(tmp_path / 'state.json'), b'k' * 32, 0, None, base=cfg)
    names = reporting.CommandHandler.MODULES + ('reserve', 'schedule_mac')   # (what they load, listed or not)
    before = {m: sys.modules[m] for m in names if m in sys.modules}
    try:
        for m in names:
            sys.modules.pop(m, None)
        a = h('import_limit', TOPIC, command_mac.sign(b'k' * 32, TOPIC, b'{"value":9000,"ctr":1}'), False)
        assert a['ok'] and ctl.import_limit_w == 9000, a
        assert {'cmd_handler', 'commands', 'bess_config'} <= set(sys.modules)
        assert 'schedule_mac' not in sys.modules and 'reserve' not in sys.modules
        h.idle(0)
        h.idle(reporting.CommandHandler.IDLE_MS + 1)
        assert not [m for m in names if m in sys.modules]
    finally:
        sys.modules.update(before)      # the other tests' module objects (their exception classes)


def test_a_signed_site_checks_the_mac_before_the_command_path_loads(tmp_path, monkeypatch):
    """reporting.CommandHandler checks a signed command's mac with only schedule_mac loaded, and
    drops it before cmd_handler loads: the two are never in the heap together. The verdict it
    hands on decides: a forged or unsigned command is refused with the reason, a good one
    applies."""
    import sys
    import types
    monkeypatch.setattr(reporting, 'time', types.SimpleNamespace(ticks_diff=lambda a, b: a - b))
    cfg = validate({'import_limit_w': 10000})
    ctl = bess_core.Controller(cfg)
    key = b'k' * 32
    h = reporting.CommandHandler(ctl, str(tmp_path / 'state.json'), key, 0, None, base=cfg)
    seen = []
    real_load = reporting.load

    def load(name):
        seen.append((name, 'schedule_mac' in sys.modules))
        return real_load(name)
    monkeypatch.setattr(reporting, 'load', load)
    before = {m: sys.modules[m] for m in reporting.CommandHandler.MODULES if m in sys.modules}
    try:
        for m in reporting.CommandHandler.MODULES:
            sys.modules.pop(m, None)
        good = command_mac.sign(key, TOPIC, b'{"value":9000,"ctr":1}')
        forged = command_mac.sign(b'x' * 32, TOPIC, b'{"value":8000,"ctr":2}')
        a = h('import_limit', TOPIC, forged, False)
        assert not a['ok'] and a['reason'] == 'unauthorized: bad mac' and ctl.import_limit_w == 10000, a
        a = h('import_limit', TOPIC, b'{"value":8000,"ctr":2}', False)
        assert not a['ok'] and a['reason'].startswith('unauthorized: mac required'), a
        a = h('import_limit', TOPIC, good, False)
        assert a['ok'] and a['ctr'] == 1 and ctl.import_limit_w == 9000, a
        assert seen[:2] == [('schedule_mac', False), ('cmd_handler', False)], seen
        # a verdict is for its own payload object only: another one (here forged, of the same
        # length) is checked afresh
        assert len(forged) == len(good)
        auth = commands.Auth(key, 0, (good, len(good) - 74))
        with pytest.raises(commands.Rejected, match='bad mac'):
            auth.verify(TOPIC, forged)
        # within a burst (the path loaded) schedule_mac stays beside it until idle() drops both
        h.idle(0)
        h.idle(reporting.CommandHandler.IDLE_MS + 1)
        assert not [m for m in reporting.CommandHandler.MODULES if m in sys.modules]
        # retained: refused without a mac check; out of memory in the check: the path checks the
        # mac itself, after its cheap refusals
        del seen[:]
        a = h('import_limit', TOPIC, command_mac.sign(key, TOPIC, b'{"value":7000,"ctr":3}'), True)
        assert a['reason'] == 'rejected: retained commands are not accepted' and seen == [('cmd_handler', False)], (a, seen)
        h.idle(0)
        h.idle(reporting.CommandHandler.IDLE_MS + 1)

        def oom_mac(name):
            if name == 'schedule_mac':
                raise MemoryError('test')
            return real_load(name)
        monkeypatch.setattr(reporting, 'load', oom_mac)
        a = h('import_limit', TOPIC, command_mac.sign(key, TOPIC, b'{"value":7000,"ctr":3}'), False)
        assert a['ok'] and ctl.import_limit_w == 7000, a
        a = h('import_limit', TOPIC, command_mac.sign(b'x' * 32, TOPIC, b'{"value":6000,"ctr":4}'), False)
        assert a['reason'] == 'unauthorized: bad mac' and ctl.import_limit_w == 7000, a
    finally:
        sys.modules.update(before)


def test_out_of_memory_is_never_reported_as_a_corrupt_file_or_a_bad_key(tmp_path, monkeypatch):
    """A MemoryError while the settings file is parsed, or the HMAC key decoded, propagates (boot
    says OUT OF MEMORY) instead of dropping the saved settings as corrupt or disabling MQTT for
    a "bad" key. A command's JSON is the exception: a payload of at most 512 bytes that
    exhausts the parser (deep nesting) is malformed, and refused and counted as such."""
    import types

    def loads(s):
        raise MemoryError('memory allocation failed')

    def unhexlify(s):
        raise MemoryError('memory allocation failed')
    cfg = validate({'import_limit_w': 10000})
    p = str(tmp_path / 's.json')
    persist.save(p, {'a': 1})
    monkeypatch.setattr(commands, 'json', types.SimpleNamespace(loads=loads))
    monkeypatch.setattr(persist, 'json', types.SimpleNamespace(loads=loads))
    monkeypatch.setattr(command_mac, 'binascii', types.SimpleNamespace(unhexlify=unhexlify))
    with pytest.raises(commands.Rejected, match='malformed: payload is not JSON'):
        commands.check('import_limit', b'{"value":9000}', cfg, commands.Auth())
    with pytest.raises(MemoryError):
        persist.load(p)
    with pytest.raises(MemoryError):
        command_mac.parse_key('00' * 32)
    monkeypatch.undo()
    assert commands.check('import_limit', b'{"value":9000}', cfg, commands.Auth()).data['import_limit_w'] == 9000
    assert persist.load(p) == ({'a': 1}, None)
    assert command_mac.parse_key('00' * 32) == bytes(32)
