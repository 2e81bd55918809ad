"""firmware/sched_boot.py: building the schedule side at start, out of memory at any point (the
review's finding: the link kept its schedule subscription and the ring its extra reserve for a
side that did not exist). A MemoryError is injected at one executed line at a time of sched_boot
and what it calls (sys.settrace). build() then either returns the side, wired, or raises
MemoryError with nothing of it left: the link not asked to subscribe, the ring's reserve as it
was, no plan or clock in the runtime, no schedule's fields in the controller, telemetry naming no
schedule, its modules unloaded."""
import os
import random
import sys
import types

from paths import ROOT

sys.path.insert(0, os.path.join(ROOT, 'firmware'))
import plan  # noqa: E402
import plan_side  # noqa: E402
import sched_boot  # noqa: E402
import sched_rx  # noqa: E402
import schedule  # noqa: E402
import schedule_load  # noqa: E402
from oom_inject import call_with_oom_at  # noqa: E402
from test_sched_rx import Ctl, payload  # noqa: E402

RESERVE = 24000
FILES = {m.__file__ for m in (sched_boot, plan_side, plan, sched_rx, schedule, schedule_load)}


def fakes(path):
    link = types.SimpleNamespace(cfg={'ring_reserve_bytes': RESERVE}, on_schedule=None, sch_id=None,
                                 sch_version=0)
    rt = types.SimpleNamespace(ctl=Ctl(), plan=None, clock=None)
    return rt, types.SimpleNamespace(link=link), {'sc': {}, 'path': path, 'key': None}


def build_with_oom_at(path, k):
    rt, rep, cfg = fakes(path)
    saved = dict(sys.modules)
    for m in sched_boot.SIDE + sched_boot.MODULES:      # as on the device: not loaded before build()
        sys.modules.pop(m, None)
    try:
        ps, err, n = call_with_oom_at(FILES, k, sched_boot.build, cfg, rt, rep)
    finally:
        loaded = set(sys.modules)
        sys.modules.clear()
        sys.modules.update(saved)       # the test's own imports stay the modules in use
    return ps, err, rt, rep.link, loaded, n


def test_out_of_memory_at_any_point_leaves_the_side_whole_or_absent(tmp_path):
    path = str(tmp_path / 's.json')
    with open(path, 'wb') as f:
        f.write(payload(3, 96, 1000))           # a persisted schedule: the longest path through build()
    ps, err, rt, link, _, total = build_with_oom_at(path, -1)
    assert err is None and ps is not None and rt.plan is not None and link.on_schedule == ps.rx
    assert link.cfg['ring_reserve_bytes'] == RESERVE + plan_side.CHECK_FREE_B and link.sch_version == 3
    rng = random.Random(7)
    # every line up to the loader, points in it, and the end (putting it in force, the wiring)
    points = sorted(set(list(range(1, 120)) + [rng.randint(1, total) for _ in range(40)]
                        + list(range(max(1, total - 150), total + 1))))
    for k in points:
        ps, err, rt, link, loaded, _ = build_with_oom_at(path, k)
        if err is None:                         # the failure was caught inside (e.g. the persisted file)
            assert ps is not None and link.on_schedule == ps.rx, k
            continue
        assert link.on_schedule is None and link.cfg['ring_reserve_bytes'] == RESERVE, k
        assert rt.plan is None and rt.clock is None, k
        assert link.sch_id is None and link.sch_version == 0, k
        assert rt.ctl.fields() == Ctl().fields(), k      # no schedule's fields (plan_version: telemetry's)
        gone = set(sched_boot.SIDE + sched_boot.MODULES)
        assert not loaded & gone, (k, loaded & gone)


def test_the_loop_does_not_keep_the_unloaded_start_modules(tmp_path, monkeypatch):
    """cycle.run_job's frame lives as long as the loop: a local still bound to sched_boot or
    boot_strip would keep the unloaded module, its code and globals, in the heap for good (on the
    device: 4.8 KB for a 60-function module, measured). While the loop runs, both are gone."""
    import gc
    import weakref
    if 'cycle' not in sys.modules:
        machine = types.ModuleType('machine')   # the board's; only WDT is used here
        machine.WDT = lambda timeout: None
        monkeypatch.setitem(sys.modules, 'machine', machine)
    import cycle
    path = str(tmp_path / 's.json')
    rt, rep, cfg = fakes(path)
    seen = {}
    strip = types.ModuleType('boot_strip')
    strip.strip = lambda: None
    log = types.ModuleType('cycle_log')
    log.summary = lambda rt: None

    def run(wdt, cycles, **kw):                 # the loop: what is still alive now
        gc.collect()
        seen['alive'] = [n for n, r in refs.items() if r() is not None]
    saved = dict(sys.modules)
    for m in sched_boot.SIDE + sched_boot.MODULES:
        sys.modules.pop(m, None)
    sys.modules['boot_strip'] = strip
    sys.modules['cycle_log'] = log
    import sched_boot as sb                     # loaded afresh, as on the device
    refs = {'sched_boot': weakref.ref(sb), 'boot_strip': weakref.ref(strip)}
    del sb, strip
    rt.run = run
    rep.start = lambda: None
    rep.after_cycle = lambda now: None
    job = types.SimpleNamespace(rt=rt, rep=rep, ps=cfg, wdt_ms=5000, hard=False, timer_id=0)
    monkeypatch.setattr(cycle.machine, 'WDT', lambda timeout: None)
    try:
        cycle.run_job(job, 1)
    finally:
        sys.modules.clear()
        sys.modules.update(saved)
    assert seen['alive'] == [], seen
