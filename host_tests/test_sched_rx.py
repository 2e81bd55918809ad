"""firmware/sched_rx.py: checking a received schedule on the device, whatever fails part way
(issue 11; the review's reproducers). A MemoryError is injected at one executed line of the
loader / the schedule module / sched_rx at a time (sys.settrace), for several payloads. After
received(), always: either no schedule in force and the controller's plan fields cleared, or the
schedule in force reads exactly as the host's compile of the file at <path> and the controller's
fields are that schedule's -- never the arrays half-written, never one schedule's fields under
another's name."""
import json
import os
import random
import sys
import types

import pytest

from paths import ROOT

sys.path.insert(0, os.path.join(ROOT, 'firmware'))
import plan as pl  # noqa: E402
import plan_side  # noqa: E402
import sched_rx  # noqa: E402
import schedule as sc  # noqa: E402
import schedule_host as sh  # noqa: E402
import schedule_load as sl  # noqa: E402
from bess_core import NOT_SET  # noqa: E402
from oom_inject import call_with_oom_at  # noqa: E402

T0 = 1764300000
T = 10 * 900 + 5                    # in interval 10
PLAN_FIELDS = ('plan_reserve_bp', 'plan_soc_min_bp', 'plan_soc_max_bp', 'plan_import_w', 'plan_target_bp',
               'plan_power_w', 'plan_protect_import_w', 'plan_protect_phase_w')


class Ctl:
    """What the plan writes into bess_core.Controller."""

    def __init__(self):
        self.cfg = {}
        self.clear_plan()

    def clear_plan(self):
        for a in PLAN_FIELDS:
            setattr(self, a, NOT_SET)
        self.plan_obj = -1
        self.plan_firm = 0
        self.plan_export = -1
        self.plan_left_s = 0
        self.plan_src = 0
        self.plan_k = -1
        self.plan_version = 0

    def fields(self):
        return {k: v for k, v in vars(self).items() if k.startswith('plan_') and k != 'plan_left_s'}


class Clock:
    synced = valid = True
    base_epoch_s = T0


def payload(version, n, power0, fields=True, bad_at=None, trunc=None):
    ivs = []
    for k in range(n):
        iv = {'start': T0 + k * 900, 'duration_s': 900}
        if fields:
            iv.update({'objective': 'ss', 'reserve_soc_bp': 2000 + k, 'soc_min_bp': 1500, 'soc_max_bp': 9000,
                       'import_limit_w': 50000, 'power_w': power0 + k, 'firm': True, 'export': True,
                       'protect_import_w': 777, 'protect_phase_w': 888})
        if k == bad_at:
            iv['soc_max_bp'] = 20000
        ivs.append(iv)
    d = {'v': 1, 'id': 'site', 'version': version, 'created': T0, 'valid_until': T0 + 86400 * 2,
         'default': {'objective': 'gce', 'reserve_soc_bp': 1111} if fields else {}, 'intervals': ivs}
    b = json.dumps(d).encode()
    return b[:trunc] if trunc else b


def expected(path):
    """The controller's fields with the host's compile of the file at path in force."""
    c = Ctl()
    p = pl.Plan(c)
    p.load(sh.compile_(json.loads(open(path, 'rb').read())), 0, T0)
    p.tick(1, T)
    return c.fields(), p.s


def device(tmp_path, old):
    path = str(tmp_path / 's.json')
    open(path, 'wb').write(old)
    ctl = Ctl()
    p = pl.Plan(ctl)
    ps = plan_side.PlanSide(types.SimpleNamespace(ctl=ctl), p, Clock(), path)
    ps.store = sched_rx.store()
    s, msg = sched_rx.boot_load(path, ctl.cfg, ps.store)
    sched_rx.put(ps, s)
    p.tick(1, T)
    return ctl, p, ps, path


def consistent(ctl, p, path):
    if p.s is None:
        return ctl.fields() == Ctl().fields()
    want, ref = expected(path)
    ok = (p.s.n, p.s.version, p.s.base_s, p.s.valid_s) == (ref.n, ref.version, ref.base_s, ref.valid_s)
    ok = ok and list(p.s.start[:ref.n]) == list(ref.start) and list(p.s.end[:ref.n]) == list(ref.end)
    ok = ok and all(p.s.get(f, j) == ref.get(f, j) for f in sl.FIELDS for j in range(ref.n + 1))
    p.tick(1, T)
    return ok and ctl.fields() == want


def run(tmp_path, old, new, inject_at):
    ctl, p, ps, path = device(tmp_path, old)
    open(path + '.new', 'wb').write(new)
    _, _, n = call_with_oom_at({sl.__file__, sc.__file__, sched_rx.__file__}, inject_at, sched_rx.received, ps)
    return consistent(ctl, p, path), n, p


CASES = {
    'valid, fewer fields': payload(2, 30, 5000, fields=False),
    'valid, full': payload(2, 96, 7000),
    'invalid at 50': payload(2, 96, 7000, bad_at=50),
    'truncated': payload(2, 96, 7000, trunc=3000),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_a_failure_at_any_point_leaves_one_whole_schedule_or_none(tmp_path, name):
    old, new = payload(1, 96, 1000), CASES[name]
    (tmp_path / 'ref').mkdir()
    ok, total, _ = run(tmp_path / 'ref', old, new, -1)
    assert ok
    rng = random.Random(5)
    # the start, the end (the rename, the read-back, putting in force) and points in between
    points = sorted(set(list(range(1, 30)) + [rng.randint(1, total) for _ in range(20)]
                        + list(range(max(1, total - 60), total + 1))))
    for k in points:
        d = tmp_path / str(k)
        d.mkdir()
        ok, _, p = run(d, old, new, k)
        assert ok, (name, k, p.s and p.s.version)


def test_a_failure_after_the_rename_puts_the_new_one_in_force_and_says_so(tmp_path, monkeypatch):
    ctl, p, ps, path = device(tmp_path, payload(1, 96, 1000))
    real = os.rename

    def rename_then_oom(a, b):
        real(a, b)
        raise MemoryError('after rename')
    monkeypatch.setattr(sched_rx.os, 'rename', rename_then_oom)
    open(path + '.new', 'wb').write(payload(2, 96, 7000))
    sched_rx.received(ps)
    p.tick(1, T)
    assert p.s.version == 2 and ps.last_version == 2 and ps.rej is None and ps.superseded == ('site', 1)
    assert ctl.plan_power_w == 7010 == p.s.get('power_w', p.k)


def test_a_failure_while_putting_it_in_force_leaves_none_in_force_and_the_fields_cleared(tmp_path, monkeypatch):
    ctl, p, ps, path = device(tmp_path, payload(1, 96, 1000))
    monkeypatch.setattr(sched_rx, 'put', lambda ps_, s: (_ for _ in ()).throw(MemoryError('in put')))
    open(path + '.new', 'wb').write(payload(2, 96, 7000))
    sched_rx.received(ps)
    assert p.s is None and ctl.fields() == Ctl().fields()
    assert 'not put in force' in ps.rej['reason']


def test_a_signed_check_leaves_no_mac_code_loaded(tmp_path):
    """sched_rx.load_file with a key checks the HMAC with schedule_mac, which must leave
    sys.modules with the check: once it stayed, ~1.1 KB resident for good on a signed site
    (docs/resources.md)."""
    key, topic = bytes(range(32)), b'bess/d/schedule'
    path = str(tmp_path / 's.json')
    open(path, 'wb').write(sh.sign_schedule(key, topic, payload(3, 4, 1000)))
    sys.modules.pop('schedule_mac', None)
    s = sched_rx.load_file(path, {}, 0, topic, key, store=sched_rx.store())
    assert s.version == 3 and 'schedule_mac' not in sys.modules
    with pytest.raises(sc.ScheduleError, match='bad mac'):
        sched_rx.load_file(path, {}, 0, b'bess/other/schedule', key, store=sched_rx.store())
    assert 'schedule_mac' not in sys.modules


@pytest.mark.parametrize('mac', ['good', 'bad'])
def test_a_failure_at_any_point_of_a_signed_check_leaves_one_whole_schedule_and_no_mac_code(tmp_path, mac):
    """As above for a signed site (the mac checked in a pass of its own, schedule_mac loaded for it
    only): whatever fails, one whole schedule in force, and schedule_mac never left in sys.modules
    (it would stay in the heap for good). The review's setup: an injection right after its import
    once left it there."""
    import schedule_mac
    key, topic = bytes(range(32)), b'bess/d/schedule'
    old = payload(1, 12, 1000)
    new = sh.sign_schedule(key, topic if mac == 'good' else b'bess/other/schedule', payload(2, 12, 7000))

    def one(d, k):
        d.mkdir()
        ctl, p, ps, path = device(d, old)
        ps.key, ps.link = key, types.SimpleNamespace(t_sched=topic)
        open(path + '.new', 'wb').write(new)
        sys.modules.pop('schedule_mac', None)
        _, _, n = call_with_oom_at({sl.__file__, sc.__file__, sched_rx.__file__, schedule_mac.__file__}, k,
                                   sched_rx.received, ps)
        assert 'schedule_mac' not in sys.modules, k
        assert consistent(ctl, p, path), k
        if mac == 'bad':                # never the forged one (none: the read-back failed too)
            assert p.s is None or p.s.version == 1, k
        return n

    total = one(tmp_path / 'ref', -1)
    # every point of the start (the mac's pass comes first), then points up to the end
    for k in sorted(set(list(range(1, 400)) + list(range(400, total + 1, max(1, total // 150))))):
        one(tmp_path / str(k), k)
