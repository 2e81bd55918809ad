# Building the schedule side at start (on demand, once: firmware/cycle.py run_job loads it after
# boot's code has left the heap, then unloads it with what it imported for the persisted schedule).
import os

from ondemand import unload

MODULES = ('sched_boot', 'sched_rx', 'schedule_load')
# what the schedule side keeps resident (dropped again, with MODULES, when building it runs out of memory)
SIDE = ('plan_side', 'plan', 'wallclock', 'ntp_exchange', 'schedule')


def build(cfg, rt, rep):
    """The schedule side from startup.plan_cfg() (in the loop, after boot's code has left the
    heap): the wall clock, the plan, the persisted schedule, the link's schedule topic. A broken
    clock setting costs the clock (schedules run their default block), never battery control.
    Out of memory part way: nothing of it stays wired or loaded (the link does not subscribe to
    schedules, the ring is sized without their reserve, the controller and telemetry carry no
    schedule) and the MemoryError goes on to the caller, which says so (firmware/cycle.py)."""
    lk = rep.link if rep is not None else None
    reserve = lk.cfg['ring_reserve_bytes'] if lk is not None else 0
    try:
        return _build(cfg, rt, rep)
    except MemoryError:
        rt.plan = None
        rt.clock = None
        rt.ctl.clear_plan()             # a persisted schedule may have been put in force already
        if lk is not None:
            lk.on_schedule = None
            lk.cfg['ring_reserve_bytes'] = reserve
            lk.sch_id = None
            lk.sch_version = 0
        unload(SIDE)
        unload(MODULES)                 # this module too: the caller's frame keeps it until it returns
        raise


def _build(cfg, rt, rep):
    from plan import Plan
    from plan_side import PlanSide
    sc = cfg['sc']
    clock = None
    if sc.get('ntp_host'):
        try:
            from wallclock import Clock
            clock = Clock(sc['ntp_host'], sc.get('ntp_port', 123), sc.get('ntp_period_s', 3600),
                          sc.get('ntp_retry_s', 60), sc.get('clock_max_age_s', 2 * 86400))
        except (ValueError, OSError) as e:
            print('schedule: NO WALL CLOCK (%s): schedules run their default block' % e)
    else:
        print('schedule: no ntp_host: no wall clock, schedules run their default block')
    p = Plan(rt.ctl)
    ps = PlanSide(rt, p, clock, cfg['path'], cfg['key'], None, sc.get('max_bytes', 24576),
                  sc.get('dlm_every_s', 60), sc.get('dlm_deadband_w', 1000))
    if rep is not None:
        ps.link = rep.link
        rep.link.on_schedule = ps.rx
        # the ring (allocated next, from what is left) keeps room for checking a schedule too
        from plan_side import CHECK_FREE_B
        rep.link.cfg['ring_reserve_bytes'] += CHECK_FREE_B
    try:
        os.stat(cfg['path'])
        have = 1
    except OSError:
        have = 0                        # nothing persisted: the loader is not needed now
    sched = msg = None
    if have:
        import sched_rx
        ps.store = sched_rx.store()
        sched, msg = sched_rx.boot_load(cfg['path'], rt.ctl.cfg, ps.store)
        if sched is not None:
            sched_rx.put(ps, sched)
        unload(sched_rx.MODULES)
    if msg:
        print('schedule: ' + msg)
    if sched is not None:
        print('schedule: %s version %d loaded from %s' % (sched.id, sched.version, cfg['path']))
    rt.plan = p
    rt.clock = clock
    return ps
