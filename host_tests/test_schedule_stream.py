"""lib/schedule_load.py: the streamed schedule loader (issue 11) and lib/schedule_mac.py, the
streamed HMAC.

The reference is lib/schedule_host.py on json.loads(payload): load_stream must reach the same
decision, with the same compiled arrays when it accepts, for random and mutated payloads fed in
chunks of every size (property test below). Its messages are shorter than the host's, but they
name the same places: the same set of blocks (schedule, default, intervals[k]) has problems."""
import json
import os
import random
import re
import subprocess
import sys

import pytest

import commands
import command_mac
from bess_core import is_int
import schedule as sc
import schedule_host as sh
import schedule_load as sl
import schedule_mac as sm
from paths import ROOT

T0 = 1764300000
COMM = {'min_soc_bp': 1000, 'max_soc_bp': 9500, 'import_limit_w': 60000}
MP_SCRIPT = os.path.join(ROOT, 'host_tests', 'mp', 'schedule_mp.py')


# --- payload generator: JSON text with duplicates, key orders, escapes and junk -------------------
class Obj:
    """A JSON object as a list of (key, value) pairs: duplicates and order are the generator's."""

    def __init__(self, pairs):
        self.pairs = pairs


def _ws(r):
    return '' if r.random() < 0.85 else r.choice([' ', '\n', '\t', '\r\n  '])


def _key(r, k):
    if r.random() < 0.03:                           # the same key, spelled with escapes
        return '"' + ''.join('\\u%04x' % ord(ch) for ch in k) + '"'
    return json.dumps(k)


def dump(r, v):
    if isinstance(v, Obj):
        return '{' + _ws(r) + (',' + _ws(r)).join(
            _key(r, k) + _ws(r) + ':' + _ws(r) + dump(r, x) + _ws(r) for k, x in v.pairs) + '}'
    if isinstance(v, list):
        return '[' + _ws(r) + (',' + _ws(r)).join(dump(r, x) + _ws(r) for x in v) + ']'
    return json.dumps(v)


def _field_value(r, k):
    lo, hi = {'reserve_soc_bp': (0, 10000), 'soc_min_bp': (0, 10000), 'soc_max_bp': (0, 10000),
              'import_limit_w': (0, 10000000), 'target_soc_bp': (0, 10000),
              'power_w': (-10000000, 10000000), 'protect_import_w': (0, 10000000),
              'protect_phase_w': (0, 10000000)}.get(k, (0, 1))
    x = r.random()
    if x < 0.03:
        return r.choice([None, 1.5, 'x', [1], {'a': 1}, True, 2 ** 40, -1, hi + 1, -32768, 32767, 32768])
    if k == 'objective':
        return r.choice(['gce', 'ss', 'zfi', 'gce', 'ss', 'zfi', 'max'] if x < 0.1 else ['gce', 'ss', 'zfi'])
    if k in ('firm', 'export'):
        return r.choice([True, False]) if x > 0.05 else r.choice([0, 1])
    if k == 'soc_min_bp':
        return r.randint(900 if x < 0.1 else 1000, 5000)
    if k == 'soc_max_bp':
        return r.randint(5001, 9600 if x < 0.1 else 9500)
    if k in ('reserve_soc_bp', 'target_soc_bp'):
        return r.randint(lo, 9700 if x < 0.1 else 5000)
    if k == 'import_limit_w':
        return r.randint(0, 70000 if x < 0.1 else 60000)
    if k == 'power_w' and x < 0.2:
        return r.choice([-32768, -32769, 32767, 32768, -1, 0])          # around the 'h' limits
    return r.randint(lo, hi)


def _block(r, p_field, default=False):
    pairs = []
    for k in sl.FIELDS:
        if r.random() < p_field:
            pairs.append((k, _field_value(r, k)))
    if ('power_w' in dict(pairs)) and ('target_soc_bp' in dict(pairs)) and r.random() < 0.9:
        pairs = [(k, v) for k, v in pairs if k != 'target_soc_bp']
    if default and r.random() < 0.9:                     # mostly without the interval-bound fields
        pairs = [(k, v) for k, v in pairs if k not in sl.INTERVAL_ONLY]
    return pairs


def gen(r, n_max=8):
    """A schedule payload (bytes): mostly valid, often wrong in one or a few ways."""
    cr = T0 + r.randint(-10 ** 6, 10 ** 6)
    horizon = r.choice([86400, 86400, 7 * 86400, 7 * 86400 + 1, 0, -5, 3600])
    vu = cr + horizon
    n = r.choice([0, 1, 2, 3, r.randint(0, n_max), r.randint(0, n_max)])
    if r.random() < 0.02:
        n = r.choice([96, 97])
    p_field = r.choice([0.0, 0.2, 0.5, 1.0])
    t = cr + r.choice([0, 0, 60, -60])
    ivs = []
    for _ in range(n):
        du = r.choice([900, 3600, 1]) if r.random() > 0.03 else r.choice([0, -5, 1.5, None, '900'])
        t += r.choice([0, 0, 0, 300, -100]) if r.random() < 0.2 else 0
        s = t
        if r.random() < 0.02:
            s = r.choice([0, -3, 10 ** 12, -(10 ** 12), 2 ** 31, 'x', None, True, cr + 10 ** 10, cr - 2 ** 31])
        pairs = [('start', s), ('duration_s', du)] + _block(r, p_field)
        r.shuffle(pairs)
        if r.random() < 0.02:
            pairs.append((r.choice(['colour', 'start', 'firm']), r.choice([1, True, 'red'])))
        if r.random() < 0.02:
            pairs = [p for p in pairs if p[0] != r.choice(['start', 'duration_s'])]
        e = Obj(pairs)
        if r.random() < 0.01:
            e = r.choice([None, 1, 'x', [], [1, 2]])
        ivs.append(e)
        if isinstance(du, int) and not isinstance(du, bool):
            t += du
    members = [('v', 1 if r.random() > 0.02 else r.choice([2, '1', None, True])),
               ('id', 'site-%d' % r.randint(0, 999) if r.random() > 0.02 else r.choice(['', 'x' * 65, 5, 'é' * 64])),
               ('version', r.randint(1, 9) if r.random() > 0.03 else r.choice([0, True, 1.0, '3', 2 ** 30 - 1, 2 ** 30])),
               ('created', cr if r.random() > 0.02 else r.choice([0, -1, str(cr), float(cr)])),
               ('valid_until', vu if r.random() > 0.02 else r.choice([None, str(vu)])),
               ('default', Obj(_block(r, p_field, True)) if r.random() > 0.02 else r.choice([None, [], 1])),
               ('intervals', ivs if r.random() > 0.02 else r.choice([None, {}, 'x', 3]))]
    if r.random() < 0.3:
        members.append(('randomize_s', r.randint(0, 3600) if r.random() > 0.1 else r.choice([-1, 3601, 'x'])))
    if r.random() < 0.1:
        members.append(('ctr', r.randint(1, 100)))
    if r.random() < 0.03:
        members.append(('junk', r.choice([1, {'a': [1, {'b': 'c'}]}, 'x' * 1000, [[[]]]])))
    if r.random() < 0.05:
        members.pop(r.randrange(len(members)))
    r.shuffle(members) if r.random() < 0.3 else None
    if r.random() < 0.05:                            # a duplicate member: the last one counts
        k, v = r.choice(members)
        members.append((k, v if r.random() < 0.5 else r.choice([0, 'x', ivs[:1], T0])))
    text = dump(r, Obj(members)).encode()
    return _mutate(r, text) if r.random() < 0.15 else text


def _mutate(r, b):
    """Byte-level damage: truncation, a byte removed / replaced / inserted, trailing junk."""
    b = bytearray(b)
    kind = r.randrange(5)
    if kind == 0:
        return bytes(b[:r.randrange(len(b))])
    i = r.randrange(len(b))
    if kind == 1:
        del b[i]
    elif kind == 2:
        b[i] = r.choice(b'{}[],:"\\ x0\x00\xff')
    elif kind == 3:
        b[i:i] = r.choice([b',', b'{', b']', b'"', b'\\', b' ', b'\xef\xbb\xbf', b'1'])
    else:
        b += r.choice([b'x', b' ', b'{}', b'\n'])
    return bytes(b)


# --- the reference and the comparison -----------------------------------------------------------
def reference(payload, comm, last):
    """('ok', Schedule) | ('json', None) | ('invalid', [problems])."""
    try:
        d = json.loads(payload.decode('utf-8'))
    except (ValueError, RecursionError):
        return 'json', None
    errs = sh.validate(d, comm, last)
    if errs:
        return 'invalid', errs
    return 'ok', sh.compile_(d, comm, last)


def compiled(s):
    return (s.id, s.version, s.base_s, s.valid_s, s.randomize_s, s.n, list(s.start), list(s.end),
            {k: list(a) for k, a in s.fields.items()})


def streamed(payload, comm, last, chunk, store=None):
    try:
        return 'ok', sh.loads(payload, comm, last, chunk=chunk, max_errors=10 ** 6, store=store)
    except sc.ScheduleError as e:
        return 'rejected', str(e).split('\n  ')[1:]


def same_schedule(res, ref):
    """res (compiled into a store: every field has a column, longer arrays) reads as ref."""
    assert (res.id, res.version, res.base_s, res.valid_s, res.randomize_s, res.n) == \
        (ref.id, ref.version, ref.base_s, ref.valid_s, ref.randomize_s, ref.n)
    assert list(res.start[:res.n]) == list(ref.start) and list(res.end[:res.n]) == list(ref.end)
    for k in sl.FIELDS:
        for j in range(ref.n + 1):
            assert res.get(k, j) == ref.get(k, j), (k, j)
    for t in range(-5, ref.valid_s + 5, max(1, ref.valid_s // 50)):
        assert res.at(t) == ref.at(t)


def blocks(problems):
    """Where the problems are: schedule, default or intervals[k] (each message starts with it)."""
    return {re.match(r'(schedule|default|intervals\[\d+\])[.:]', m).group(1) for m in problems}


def _far_apart(payload):
    """Interval times more than 2**29 s (17 years) from the first valid start: the device clamps
    them (schedule_load._LIM), still rejects, but may name other outside intervals."""
    d = json.loads(payload.decode('utf-8'))
    iv = d.get('intervals') if isinstance(d, dict) else None
    p = None
    for e in iv if isinstance(iv, list) else ():
        s, du = (e.get('start'), e.get('duration_s')) if isinstance(e, dict) else (None, None)
        if is_int(s) and is_int(du) and du > 0:
            p = s if p is None else p
            if max(abs(s - p), abs(s + du - p)) >= 2 ** 29 - 2:
                return True
    return False


def check_same(payload, comm, last, chunk, store=None):
    """store: a schedule_load.store() shared by every payload of a test (the device's): each
    load into it must read exactly as the host's compiled form, whatever loads came before."""
    want, ref = reference(payload, comm, last)
    got, res = streamed(payload, comm, last, chunk)
    if store is not None:
        got_st, res_st = streamed(payload, comm, last, chunk, store)
        assert got_st == got, (got_st, res_st, payload)
        if got == 'ok':
            same_schedule(res_st, ref)
        else:
            assert res_st == res
    if want == 'ok':
        assert got == 'ok', (payload, res)
        assert compiled(res) == compiled(ref)
        for k in sl.FIELDS:                              # unused fields read NOT_SET
            for j in range(ref.n + 1):
                assert res.get(k, j) == ref.get(k, j)
        return want
    assert got == 'rejected', (want, ref, payload)
    assert res and all(len(m) < 120 for m in res), res   # short, for the status topic
    if want == 'invalid' and not any(m.endswith(': too long') for m in res) and not _far_apart(payload):
        assert blocks(res) == blocks(ref), (res, ref, payload)      # the same places
    return want


@pytest.mark.parametrize('seed', range(8))
def test_streamed_same_decision_and_places_as_the_host(seed):
    r = random.Random(seed)
    seen = {'ok': 0, 'invalid': 0, 'json': 0}
    store = sl.store()                     # one for all, as on the device
    for _ in range(400):
        payload = gen(r)
        comm = COMM if r.random() < 0.7 else r.choice([None, {}, {'min_soc_bp': 0, 'max_soc_bp': 10000}])
        last = r.choice([0, 0, 2, 5])
        seen[check_same(payload, comm, last, r.choice([1, 2, 7, 64, 256, 512, 4096]), store)] += 1
    assert min(seen.values()) > 20, seen                 # the generator reaches every outcome


def full(n=96, fields='all', created_first=True):
    """A full schedule: n 15-minute intervals with every field of the format before the protection
    levels ('all': the reference for the heap figures, 9 columns), those and protect_import_w,
    protect_phase_w ('every', 11), or start, duration_s and 3 ('three')."""
    ivs = []
    for k in range(n):
        e = {'start': T0 + 600 + k * 900, 'duration_s': 900}
        if fields in ('all', 'every'):
            e.update(objective=sc.OBJECTIVES[k % 3], reserve_soc_bp=3000 + k, soc_min_bp=1000 + k,
                     soc_max_bp=9000 + k, import_limit_w=50000 + k, firm=k % 2 == 0, export=k % 3 == 0)
            if k % 2:
                e['target_soc_bp'] = 6000 + k
            else:
                e['power_w'] = -20000 + 100 * k
            if fields == 'every':
                e.update(protect_import_w=70000 + k, protect_phase_w=30000 - k)
        else:
            e.update(reserve_soc_bp=3000 + k, power_w=1000 * k - 40000, export=k % 2 == 1)
        ivs.append(e)
    d = {'v': 1, 'id': 'depot-7/2026-11-28', 'version': 3, 'created': T0, 'valid_until': T0 + 2 * 86400,
         'randomize_s': 300, 'default': {'objective': 'ss', 'reserve_soc_bp': 2500}, 'intervals': ivs}
    if fields == 'every':
        d['default'].update(protect_import_w=65000, protect_phase_w=28000, export=True)
    if not created_first:                                # Go's encoding/json sorts keys: intervals first here
        d = dict(sorted(d.items(), key=lambda kv: kv[0] in ('created', 'valid_until')))
    return d


@pytest.mark.parametrize('fields', ['all', 'every', 'three'])
@pytest.mark.parametrize('created_first', [True, False])
def test_a_full_schedule_streams_to_the_compiled_form(fields, created_first):
    d = full(fields=fields, created_first=created_first)
    payload = json.dumps(d, separators=(',', ':')).encode()
    for chunk in (1, 256, 512, len(payload)):
        assert check_same(payload, COMM, 2, chunk) == 'ok'
    s = sh.loads(payload, COMM, 2)
    assert s.n == 96 and s.start[0] == 600 and s.end[95] == 600 + 96 * 900 and s.valid_s == 2 * 86400
    if fields == 'three':                                # sparse: columns only for what is used
        assert sorted(s.fields) == ['export', 'objective', 'power_w', 'reserve_soc_bp']
        assert s.get('target_soc_bp', 5) == sc.NOT_SET and s.get('objective', 5) == sc.NOT_SET
        assert s.get('objective', 96) == sc.OBJECTIVES.index('ss')
    if fields == 'every':
        assert s.get('protect_import_w', 3) == 70003 and s.get('protect_phase_w', 96) == 28000
    # as few bytes a value as the values need: 1 for codes and booleans, 4 for the fields in W
    assert {k: a.itemsize for k, a in s.fields.items()} == {
        k: 4 if k.endswith('_w') else 1 if k in ('objective', 'firm', 'export') else 2 for k in s.fields}
    assert s.start.itemsize == s.end.itemsize == 4


def test_pretty_printed_json_streams_too():
    """Runs of whitespace count as one byte against the 510-byte limit of a member or interval."""
    d = full(96, fields='every')
    payload = json.dumps(d, indent=8).encode()
    assert compiled(sh.loads(payload, COMM, 2)) == compiled(sh.compile_(d, COMM, 2))


# --- rejects ------------------------------------------------------------------------------------
def _payload(d):
    return json.dumps(d, separators=(',', ':')).encode()


def _reason(payload, **kw):
    with pytest.raises(sc.ScheduleError) as e:
        sh.loads(payload, COMM, 2, **kw)
    return str(e.value)


GOOD = _payload(full(4))


def _iv(k, **kw):
    d = full(4)
    d['intervals'][k].update(kw)
    return _payload(d)


@pytest.mark.parametrize('payload, needle', [
    (GOOD[:-1], 'schedule: byte %d: ends early' % (len(GOOD) - 1)),
    (GOOD[:len(GOOD) // 2], 'ends early'),
    (b'', 'schedule: byte 0: ends early'),
    (b'[1,2]', 'schedule: byte 0: bad JSON'),
    (GOOD + b'{}', 'schedule: byte %d: bad JSON' % len(GOOD)),
    (GOOD.replace(b'"v":1', b'"v":1,,'), 'schedule: byte 7: bad JSON'),
    (GOOD.replace(b'"v":1', b'"v" 1'), 'schedule: byte 6: bad JSON'),     # where the member ends
    (GOOD.replace(b'"v":1', b'"v":[[[[[[[[[1]]]]]]]]]'), 'schedule: byte 12: nesting'),
    (GOOD.replace(b'"v":1', b'"v":1,"junk":{"a":[{"b":[1,{"c":"}]"}]}]}'), 'schedule.junk: unknown'),
    (GOOD.replace(b'"v":1', b'"v":1,"junk":"' + b'x' * 5000 + b'"'), ': too long'),
    (GOOD.replace(b'"id":"depot-7/2026-11-28"', b'"id":"' + b'x' * 600 + b'"'), ': too long'),
    (GOOD.replace(b'"export":true', b'"export":true,"pad":"' + b'x' * 600 + b'"', 1), ': too long'),
    (GOOD.replace(b'"version":3', b'"version":tru'), 'bad JSON'),
    (GOOD.replace(b'}]}', b']]}'), 'bad JSON'),
    (GOOD.replace(b'}]}', b'}}}'), 'bad JSON'),
    (GOOD.replace(b'[{', b'[,{'), 'bad JSON'),
    (GOOD.replace(b'}]}', b'},]}'), 'bad JSON'),
    (_payload(dict(full(4), intervals=full(4)['intervals'] * 25)), 'schedule.intervals: 100 not 0..96'),
    (_iv(1, start=T0 + 1000), 'intervals[1].start: overlaps previous'),
    (_payload(dict(full(4), intervals=None)), 'schedule.intervals: None not a list'),
    (_payload(dict(full(4), intervals=[1])), 'intervals[0]: 1 not an object'),
    (_payload(dict(full(4), created=T0 + 700)), 'intervals[0]: outside created..valid_until'),
    (_payload(dict(full(4), valid_until=T0 + 8 * 86400)), 'schedule.valid_until-created: 691200 not 1..604800'),
    (_payload(dict(full(4), version=2)), 'schedule.version: 2 not newer than 2'),
    (_payload(dict(full(4), version=2 ** 30)), 'schedule.version: 1073741824 not 1..1073741823'),
    (_payload(dict(full(4), v=2)), 'schedule.v: 2 not 1'),
    (_payload(dict(full(4), id='')), "schedule.id: '' not str 1..64"),
    (_payload(dict(full(4), randomize_s=-1)), 'schedule.randomize_s: -1 not 0..3600'),
    (_payload(dict(full(4), created='x')), "schedule.created: 'x' not unix s"),
    (_payload(dict(full(4), default=[])), 'schedule.default: [] not an object'),
    (_payload(dict(full(4), default={'power_w': 5})), 'default.power_w: only in intervals'),
    (_payload(dict(full(4), default={'firm': True})), 'default.firm: only in intervals'),
    (_payload(dict(full(4), default={'target_soc_bp': 5000})), 'default.target_soc_bp: only in intervals'),
    (_payload(dict(full(4), default={'start': T0})), 'default.start: unknown'),
    (_iv(3, colour='red'), 'intervals[3].colour: unknown'),
    (_iv(3, soc_max_bp=9800), 'intervals[3].soc_max_bp: 9800 above commissioned 9500'),
    (_iv(3, soc_min_bp=500), 'intervals[3].soc_min_bp: 500 below commissioned 1000'),
    (_iv(3, soc_min_bp=5000, soc_max_bp=5000), 'intervals[3].soc_min_bp: 5000 not below soc_max_bp 5000'),
    (_iv(3, import_limit_w=60001), 'intervals[3].import_limit_w: 60001 above commissioned 60000'),
    (_iv(3, reserve_soc_bp=9200, soc_max_bp=9100), 'intervals[3].reserve_soc_bp: 9200 above soc_max_bp 9100'),
    (_iv(2, target_soc_bp=5000), 'intervals[2].power_w: and target_soc_bp'),
    (_iv(3, objective='max'), "intervals[3].objective: 'max' not gce/ss/zfi"),
    (_iv(3, firm=1), 'intervals[3].firm: 1 not true/false'),
    (_iv(3, power_w=10000001), 'intervals[3].power_w: 10000001 not -10000000..10000000'),
    (_iv(3, protect_import_w=-1), 'intervals[3].protect_import_w: -1 not 0..10000000'),
    (_iv(3, protect_phase_w='x'), "intervals[3].protect_phase_w: 'x' not 0..10000000"),
    (_iv(3, start=None), 'intervals[3].start: None not unix s'),
    (_iv(3, duration_s=0), 'intervals[3].duration_s: 0 not > 0'),
    (_iv(3, reserve_soc_bp='x' * 40), "intervals[3].reserve_soc_bp: 'xxxxxxxxxxxxxxxxxxx not 0..10000"),
])
def test_a_bad_payload_is_rejected_and_says_what_and_where(payload, needle):
    assert needle in _reason(payload), _reason(payload)


def test_the_stream_is_read_to_its_end_even_after_a_syntax_error():
    """The link hands over a payload of known length: the loader leaves the stream in step."""
    payload = b'{"v":1,,' + b' ' * 3000 + b'}'
    seen = [0]

    def read(buf):
        k = min(len(buf), len(payload) - seen[0])
        buf[:k] = payload[seen[0]:seen[0] + k]
        seen[0] += k
        return k
    with pytest.raises(sc.ScheduleError) as e:
        sc.load_stream(read, COMM, 2, buf=bytearray(100))
    assert seen[0] == len(payload) and 'schedule: byte 7: bad JSON' in str(e.value)


def test_problems_are_bounded_on_the_device():
    ivs = [{'start': 'x', 'colour': k} for k in range(96)]      # 3 problems each
    text = _reason(_payload(dict(full(1), intervals=ivs)))
    lines = text.split('\n  ')[1:]
    assert len(lines) == sl.MAX_ERRORS + 1 and lines[-1] == '... and %d more' % (3 * 96 - sl.MAX_ERRORS)


def test_a_later_intervals_member_replaces_an_earlier_one():
    """As with json.loads, the last member counts: problems of an earlier one do not."""
    bad = _payload(dict(full(2), intervals=[{'start': 'x'}]))[:-1]
    good = _payload(full(2))
    payload = bad + b',' + good[1:]
    assert compiled(sh.loads(payload, COMM, 2)) == compiled(sh.compile_(full(2), COMM, 2))
    assert 'schedule.intervals: 5 not a list' in _reason(good[:-1] + b',"intervals":5}')


def test_unused_fields_read_not_set_without_a_column():
    d = full(2, fields='three')
    d['default'] = {}
    s = sh.loads(_payload(d), COMM, 2)
    assert 'objective' not in s.fields and s.get('objective', 2) == sc.NOT_SET
    assert s.get('power_w', 2) == sc.NOT_SET and s.get('power_w', 1) == -39000


def test_values_at_the_limits_of_the_narrow_columns_read_back():
    """1- and 2-byte columns hold UNSET_NARROW where unset; -32768 W in an 'i' column stays a
    value."""
    d = full(3, fields='three')
    d['intervals'][0].update(power_w=-32768, reserve_soc_bp=0)
    d['intervals'][1].update(power_w=32768, reserve_soc_bp=10000)
    del d['intervals'][2]['reserve_soc_bp']
    s = sh.loads(_payload(d), COMM, 2)
    assert [s.get('power_w', k) for k in range(3)] == [-32768, 32768, -38000]
    assert [s.get('reserve_soc_bp', k) for k in range(4)] == [0, 10000, sc.NOT_SET, 2500]
    assert s.fields['reserve_soc_bp'][2] == sc.UNSET_NARROW


# --- streamed HMAC ------------------------------------------------------------------------------
KEY = bytes(range(32))
TOPIC = b'bess/dev-1/schedule'


def test_macstream_agrees_with_commands_for_every_split():
    assert sm._MAC_HEAD == command_mac._MAC_HEAD and sm._MAC_TAIL_LEN == len(command_mac._MAC_HEAD) + 64 + 2
    r = random.Random(1)
    body = _payload(full(3))
    for key in (KEY, b'k' * 16, b'long' * 20):
        signed = sh.sign_schedule(key, TOPIC, body)
        assert signed == command_mac.sign(key, TOPIC, body)
        assert commands.Auth(key).verify(TOPIC, signed)[0] == body
        for chunk in (1, 7, 73, 74, 75, 256, len(signed)):
            m = sm.MacStream(key, TOPIC, len(signed))
            for i in range(0, len(signed), chunk):
                m.update(memoryview(signed)[i:i + chunk])
            assert m.ok(), (chunk, m.why)
        for _ in range(30):                              # any one byte changed: refused
            bad = bytearray(signed)
            i = r.randrange(len(bad))
            bad[i] ^= 1 << r.randrange(8)
            m = sm.MacStream(key, TOPIC, len(bad))
            m.update(bytes(bad))
            assert not m.ok()
            with pytest.raises(commands.Rejected):
                commands.Auth(key).verify(TOPIC, bytes(bad))


def test_a_signed_schedule_loads_and_a_bad_mac_is_the_only_problem_reported():
    body = _payload(full(4))
    signed = sh.sign_schedule(KEY, TOPIC, body)
    s = sh.loads(signed, COMM, 2, mac=sl.MacStream(KEY, TOPIC, len(signed)))
    assert compiled(s) == compiled(sc.compile_(json.loads(body), COMM, 2))
    other = sh.sign_schedule(KEY, b'bess/dev-2/schedule', body)
    assert 'bad mac' in _reason(other, mac=sl.MacStream(KEY, TOPIC, len(other)))
    assert 'mac required' in _reason(body, mac=sl.MacStream(KEY, TOPIC, len(body)))
    assert 'mac required' in _reason(signed, mac=sl.MacStream(KEY, TOPIC, len(signed) + 1))   # short
    garbled = signed[:-10] + b'zz' + signed[-8:]
    assert 'mac is not hex' in _reason(garbled, mac=sl.MacStream(KEY, TOPIC, len(garbled)))
    junk = sh.sign_schedule(KEY, TOPIC, body.replace(b'"v":1', b'"v":[[[[[[[[[['))
    assert _reason(junk + b'x', mac=sl.MacStream(KEY, TOPIC, len(junk) + 1)) == \
        'schedule rejected:\n  unauthorized: mac required as the last member ,"mac":"<64 hex>"}'


def test_the_mac_code_leaves_with_the_last_macstream():
    """schedule_load.MacStream imports schedule_mac for a signed topic without keeping it in
    sys.modules: the loader's unloading (firmware/sched_rx.py) needs not know about it."""
    import sys
    sys.modules.pop('schedule_mac', None)
    m = sl.MacStream(KEY, TOPIC, 100)
    assert 'schedule_mac' not in sys.modules and type(m).__name__ == 'MacStream'
    sys.modules['schedule_mac'] = sm


# --- MicroPython -----------------------------------------------------------------------------------
@pytest.mark.parametrize('runtime', ['unix', '32bit'])
def test_the_streamed_loader_runs_on_micropython(runtime, tmp_path):
    """A full 96-interval schedule, every field set, signed, from a file in 256-byte chunks, on
    the unix port and the 32-bit fixed-heap build: the same compiled arrays as CPython."""
    from test_profiles import MPY
    import mp32fixed
    d = full(96, fields='every')
    body = _payload(d)
    signed = sh.sign_schedule(KEY, TOPIC, body)
    path = tmp_path / 'sched.json'
    path.write_bytes(signed)
    exe = [MPY] if runtime == 'unix' else [mp32fixed.exe(), '-X', 'heapsize=96000']
    r = subprocess.run(exe + [MP_SCRIPT, os.path.join(ROOT, 'lib'), 'load', str(path), KEY.hex(), TOPIC.decode()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    want = compiled(sc.compile_(d, COMM, 2))
    lines = r.stdout.split('\n')
    got = json.loads(lines[2])
    assert [got[0], got[1], got[2], got[3], got[4], got[5]] == list(want[:6])
    assert got[6] == want[6] and got[7] == want[7] and got[8] == want[8]
    assert lines[3] == 'bad mac rejected'


LOADER_IMPORT_MAX = 5888     # the loader's budget: its code in the heap while a schedule is checked (5.1 K before store(): +200 B of code, the compiled arrays no longer allocated per check; +100 B: string keys only; +350 B: finish() and block() in 7 functions, no block of bytecode over 430 B, for a fragmented heap)


def test_heap_of_a_streamed_full_schedule_on_32_bit(tmp_path):
    """The budget on 32-bit MicroPython with a fixed heap, modules as the build deploys them
    (.mpy, -O3), a full signed schedule (96 intervals, every field but the protection levels:
    9 columns) streamed in 256-byte chunks: importing the loader (its names already interned),
    the data it needs beyond the compiled form while loading, the compiled form; the mac code
    apart (only a signed topic loads it) and the module that stays while a schedule is in force.
    The figures are printed (pytest -s) for docs/schedule.md."""
    import mp32fixed
    from paths import BIN
    lib = tmp_path / 'lib'
    lib.mkdir()
    for m in ('bess_core', 'schedule', 'schedule_load', 'schedule_mac'):
        subprocess.run([os.path.join(BIN, 'mpy-cross'), '-O3', '-o', str(lib / (m + '.mpy')),
                        os.path.join(ROOT, 'lib', m + '.py')], check=True)
    path = tmp_path / 'sched.json'
    figures = {}
    for fields in ('all', 'every', 'three'):
        path.write_bytes(sh.sign_schedule(KEY, TOPIC, _payload(full(96, fields=fields))))
        for mode in ('preloaded', 'on_demand'):
            r = subprocess.run([mp32fixed.exe(), '-X', 'heapsize=96000', MP_SCRIPT, str(lib), 'measure', str(path),
                                KEY.hex(), TOPIC.decode(), mode], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stdout + r.stderr
            figures[fields, mode] = m = json.loads(r.stdout)
            print(fields, mode, len(path.read_bytes()), 'bytes:', m)
    full_, every, three = figures['all', 'preloaded'], figures['every', 'preloaded'], figures['three', 'preloaded']
    assert full_['n'] == three['n'] == 96 and full_['columns'] == 9 and every['columns'] == 11 and three['columns'] == 4
    assert full_['loader_import_bytes'] <= LOADER_IMPORT_MAX and full_['mac_import_bytes'] <= 1200
    assert max(f['peak_beyond_compiled_bytes'] for f in (full_, every, three)) <= 2048
    assert full_['compiled_bytes'] <= 3686 and three['compiled_bytes'] < full_['compiled_bytes'] < every['compiled_bytes']
    assert full_['left_after_unload_bytes'] == 0
    assert full_['schedule_module_bytes'] < 1536
    on_demand = figures['all', 'on_demand']
    assert on_demand['peak_beyond_compiled_bytes'] <= LOADER_IMPORT_MAX + full_['mac_import_bytes'] + 2048



# --- MicroPython's json is more lenient than JSON (found in review) -------------------------------
LENIENT = {
    # a missing comma between top-level members: one member with two keys -> refused as bad JSON
    b'{"v":1 "id":"a","version":2,"created":1764300000,"valid_until":1764303600,"default":{},'
    b'"intervals":[{"start":1764300000,"duration_s":60,"power_w":5}]}': 'bad JSON',
    # a number as a key: refused as bad JSON, not a TypeError half-way
    b'{"v":1,3:4,"id":"a","version":2,"created":1764300000,"valid_until":1764303600,"default":{},'
    b'"intervals":[{"start":1764300000,"duration_s":60,"power_w":5}]}': 'bad JSON',
    b'{"v":1,"id":"a","version":2,"created":1764300000,"valid_until":1764303600,"default":{"1":2,"x":{"3":4}},'
    b'"intervals":[{"start":1764300000,"duration_s":60,"power_w":5,"k":{"a":{"1":2}}}]}': 'unknown',
}


def test_the_device_refuses_what_micropythons_json_would_take_but_json_does_not(tmp_path):
    """On the unix port (MicroPython's own json), as on CPython: the cases above are refused for
    the reason given. Known and accepted: a missing or trailing comma inside one interval or the
    default block is still taken by MicroPython's json (every value then passes the same checks;
    docs/schedule.md)."""
    from mqtt_fixtures import micropython_exe
    script = tmp_path / 'dec.py'
    script.write_text('''import sys, json
import schedule_load as sl
class R:
    def __init__(s, p): s.p = p; s.i = 0
    def __call__(s, buf):
        k = min(len(buf), len(s.p) - s.i)
        buf[:k] = s.p[s.i:s.i + k]; s.i += k
        return k
for line in open(sys.argv[1]):
    p = bytes.fromhex(line.strip())
    try:
        sl.load_stream(R(p), None, 0, None, bytearray(64), 16, sl.store())
        print('ACCEPTED')
    except ValueError as e:
        print('rejected ' + str(e).split('\\n')[1])
    except Exception as e:
        print('raised ' + repr(e))
''')
    data = tmp_path / 'p.txt'
    data.write_text('\n'.join(p.hex() for p in LENIENT) + '\n')
    r = subprocess.run([micropython_exe(), str(script), str(data)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, MICROPYPATH=os.path.join(ROOT, 'lib')))
    out = r.stdout.splitlines()
    assert len(out) == len(LENIENT), r.stdout + r.stderr
    for (p, why), line in zip(LENIENT.items(), out):
        assert line.startswith('rejected') and why in line, (p, line)
        with pytest.raises(sc.ScheduleError, match=why):       # and the same on CPython
            sh.loads(p)


STORE_SCRIPT = """import gc, sys, micropython
sys.path.insert(0, sys.argv[1])
import schedule_load as sl
gc.collect()
micropython.mem_info()
s = sl.store()
gc.collect()
micropython.mem_info()
"""


def test_the_schedule_store_does_not_cut_the_free_heap_on_32_bit(tmp_path):
    """sl.store() (made once, kept for good) leaves no freed temporary among its 13 arrays on
    32-bit MicroPython: the largest free block shrinks by at most what the store holds. Made
    from a bytes(n) each, every array had a hole of its own size beside it: the largest free
    block lost 6.4 KB for a 4.3 KB store (docs/resources.md)."""
    import mp32fixed
    from paths import BIN
    lib = tmp_path / 'lib'
    lib.mkdir()
    for m in ('bess_core', 'schedule', 'schedule_load'):
        subprocess.run([os.path.join(BIN, 'mpy-cross'), '-O3', '-o', str(lib / (m + '.mpy')),
                        os.path.join(ROOT, 'lib', m + '.py')], check=True)
    script = tmp_path / 'store.py'
    script.write_text(STORE_SCRIPT)
    r = subprocess.run([mp32fixed.exe(), '-X', 'heapsize=64000', str(script), str(lib)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    used = [int(x) for x in re.findall(r'used: (\d+)', r.stdout)]
    big = [16 * int(x) for x in re.findall(r'max free sz: (\d+)', r.stdout)]
    assert len(used) == len(big) == 2, r.stdout
    held = used[1] - used[0]
    assert 3000 < held < 4500 and big[0] - big[1] <= held, (held, big)
    # firmware/plan_side.py asks STORE_B less free heap of a check once the store exists
    sys.path.insert(0, os.path.join(ROOT, 'firmware'))
    import plan_side
    assert held <= plan_side.STORE_B + 64, (held, plan_side.STORE_B)


def test_out_of_memory_is_never_reported_as_a_bad_payload(monkeypatch):
    """A MemoryError while a member is parsed, or while the mac is decoded, is not the payload's
    fault: it propagates (the check then says "out of memory" and reads the schedule in force
    back: firmware/sched_rx.py), never "bad JSON" or "mac is not hex". (Seen on the 32-bit
    build: a signed schedule at the budget was refused as "byte 513: bad JSON".)"""
    import types
    payload = _payload(full(96))
    n = [0]

    def loads(s):
        n[0] += 1
        if n[0] == 5:
            raise MemoryError('memory allocation failed')
        return json.loads(s)
    monkeypatch.setattr(sl, 'json', types.SimpleNamespace(loads=loads))
    with pytest.raises(MemoryError):
        sh.loads(payload, COMM, 0)
    monkeypatch.undo()
    sh.loads(payload, COMM, 0)                  # and without it, the payload is fine

    def unhexlify(s):
        raise MemoryError('memory allocation failed')
    signed = sh.sign_schedule(KEY, TOPIC, payload)
    m = sm.MacStream(KEY, TOPIC, len(signed))
    m.update(signed)
    monkeypatch.setattr(sm, 'binascii', types.SimpleNamespace(unhexlify=unhexlify))
    with pytest.raises(MemoryError):
        m.ok()
