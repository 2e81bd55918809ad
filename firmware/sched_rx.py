# Checking a received schedule (on demand: loaded by firmware/plan_side.py when one has arrived,
# and at boot for the persisted one; unloaded again with lib/schedule.py).
#
# The bytes are already on flash in <path>.new (streamed there as the link read them). Here:
#   1. the same bytes as <path> (the broker's retained copy of the schedule in force, delivered
#      again at every connect): nothing to do;
#   2. with a key, check the HMAC over "<topic>\n<payload without the mac member>" (the commands'
#      scheme, lib/command_mac.py; the version inside is the replay guard) in a pass of its own,
#      with only lib/schedule_mac.py loaded: a bad mac is the only problem reported, and the
#      check's peak of heap is the loader's alone, not the loader's plus the HMAC's;
#      then parse, validate and compile without building the JSON tree (schedule.load_stream);
#   3. rename <path>.new over <path>: a reset at any point leaves the old schedule or the new one
#      (on FAT, where rename does not replace, there is a window with neither: the broker's
#      retained copy brings it back at the next connect).
import gc
import os

import schedule
from ondemand import unload

MODULES = ('sched_rx', 'schedule_load')    # lib/schedule.py stays: the Schedule class in force
CHUNK = 256


def _same(a, b):
    try:
        fa = open(a, 'rb')
    except OSError:
        return False
    try:
        try:
            fb = open(b, 'rb')
        except OSError:
            return False
        try:
            ba = bytearray(CHUNK)
            bb = bytearray(CHUNK)
            while True:
                na = fa.readinto(ba)
                nb = fb.readinto(bb)
                if na != nb or ba[:na] != bb[:nb]:
                    return False
                if not na:
                    return True
        finally:
            fb.close()
    finally:
        fa.close()


def load_file(path, commissioned, last_version=0, topic=None, key=None, store=None):
    """Compiled schedule from a file, or ScheduleError / OSError. With a key the HMAC is checked
    first, in a pass of its own (_mac_why: a bad mac is then the only problem reported), and the
    file read again to compile it. Nothing may write the file between the two reads: it is
    <path>.new, written only by PlanSide.rx and closed before RX_DONE, and checked by
    after_cycle on the same thread (or a copy of the one in force, at boot). store: the schedule
    side's schedule_load.store(), compiled into in place."""
    if key is not None:
        why = _mac_why(path, topic, key)
        if why is not None:
            raise schedule.ScheduleError('schedule rejected:\n  ' + why)
    with open(path, 'rb') as f:
        return schedule.load_stream(f.readinto, commissioned, last_version, None, store=store)


def _mac_why(path, topic, key):
    """None when the file at path carries a valid mac for topic, else the reason. Only
    schedule_mac is loaded meanwhile, and it leaves sys.modules (and the heap) again: a module
    left there would stay resident for good on a signed site."""
    try:
        import schedule_mac             # (in the try: out of memory right after, it still leaves)
        m = schedule_mac.MacStream(key, topic, os.stat(path)[6])
        buf = bytearray(128)
        mv = memoryview(buf)
        # (persist.save's digest reads a file the same way: not shared, as the two modules load
        # apart and a helper both could import would stay in the heap for good)
        with open(path, 'rb') as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                m.update(mv[:n])
        return None if m.ok() else m.why
    finally:
        unload(('schedule_mac',))


def _ident(path):
    """(id, version) from a rejected file, best effort (for the status message)."""
    try:
        with open(path, 'rb') as f:
            head = f.read(160)
        import re
        m = re.search(b'"version": *([0-9]+)', head)
        v = int(m.group(1)) if m else 0
        m = re.search(b'"id": *"([^"]{1,64})"', head)
        return (m.group(1).decode() if m else None), v
    except Exception:
        return None, 0


def accept(path, topic, key, commissioned, last_version, current, store=None):
    """(status, reason, id, version, compiled) for <path>.new. current: (id, version) of the
    schedule in force, or None. status: 'same' (the one in force again), 'rejected' (reason says
    why; nothing changed) or 'accepted' (now in <path>)."""
    new = path + '.new'
    if current is not None and _same(new, path):
        _remove(new)
        return ('same', None, current[0], current[1], None)
    try:
        s = load_file(new, commissioned, last_version, topic, key, store)
    except (schedule.ScheduleError, ValueError, OSError) as e:
        sid, ver = _ident(new)
        _remove(new)
        return ('rejected', str(e), sid, ver, None)
    try:
        os.rename(new, path)
    except OSError:
        _remove(path)                   # FAT: rename does not replace
        try:
            os.rename(new, path)
        except OSError:                 # the old file is gone: in force from the heap only
            return ('accepted', None, s.id, s.version, s)
    return ('accepted', None, s.id, s.version, s)


def store():
    """The arrays every schedule is compiled into from now on (schedule_load.store()), made with
    the first one: later checks fill them in place instead of allocating a new set wherever the
    heap has room, which over days of schedules would leave the free heap in pieces."""
    import schedule_load
    return schedule_load.store()


def discard(path):
    _remove(path + '.new')


def boot_load(path, commissioned, store=None):
    """The persisted schedule at boot: (compiled or None, message or None). It is applied only
    while valid and with a valid clock (lib/plan.py falls back otherwise); its version stays the
    replay guard even once it has expired."""
    try:
        os.stat(path)
    except OSError:
        return None, None
    try:
        return load_file(path, commissioned, 0, store=store), None
    except (schedule.ScheduleError, ValueError, OSError) as e:
        return None, 'persisted schedule %s unusable (%s): none in force' % (path, e)


def _remove(p):
    try:
        os.remove(p)
    except OSError:
        pass


# --- the schedule side's one-off work (firmware/plan_side.py calls these, then unloads us) -------
def received(ps):
    """A schedule has arrived in <path>.new: check it, put it in force or say why not.

    The schedule in force is dropped while the new one is checked (the check compiles into the
    same arrays, ps.store) and read back from <path> if the new one is refused. No cycle runs in
    between: the core keeps the fields it was given."""
    p = ps.plan
    old = p.s
    if old is not None and _same(ps.path + '.new', ps.path):
        _remove(ps.path + '.new')       # the broker's retained copy of the one in force
        return
    old_idv = (old.id, old.version) if old is not None else None
    old = None
    try:
        p.s = None
        _check(ps, p, old_idv)
    except BaseException:
        if p.s is None:                 # whatever failed: nothing half in force
            p.load(None)
        raise


def _check(ps, p, old_idv):
    gc.collect()
    cfg = ps.commissioned or ps.rt.ctl.cfg
    try:
        if ps.store is None:
            ps.store = store()
        status, why, sid, ver, sched = accept(ps.path, ps.link.t_sched if ps.link else b'', ps.key,
                                              cfg, ps.last_version, old_idv, ps.store)
    except Exception as e:              # memory, storage, a bug: the one in force is read back
        discard(ps.path)
        what = 'out of memory' if isinstance(e, MemoryError) else 'cannot check or store it'
        status, why, sid, ver, sched = 'rejected', '%s (%r)' % (what, e), None, 0, None
    if status != 'accepted' and old_idv is not None:
        status, why, sched = _read_back(ps, p, old_idv, status, why, sched)
    if status == 'same':
        return                          # the retained copy of the one in force (a reconnect)
    if status == 'rejected':
        rejected(ps, why, sid, ver)
        return
    ps.superseded = old_idv
    ps.last_version = sched.version
    try:
        put(ps, sched)
    except Exception as e:              # nothing half in force: the commissioned config
        p.load(None)
        rejected(ps, 'accepted but not put in force (%r): none in force' % (e,), sched.id, sched.version)
        return
    ps.rej_key = None


def _read_back(ps, p, old_idv, status, why, sched):
    """The schedule in force again after a refusal (_check(), apart: a function's bytecode is one
    block of heap; docs/resources.md). Read back without the commissioned bounds: it was
    accepted under them, and a config changed since is enforced by the core every step (it only
    ever narrows). Returns (status, why, sched) as they stand after it."""
    for _ in (0, 1):
        try:
            p.s = load_file(ps.path, None, 0, store=ps.store)
            break
        except MemoryError as e:
            gc.collect()
            err = e
        except Exception as e:
            err = e
            break
    if p.s is None:                     # the config alone is safe; say so in the status
        print('schedule: the one in force could not be read back (%r): none in force' % (err,))
        p.load(None)
        why = '%s; and the schedule in force could not be read back (%r): none in force' % (why, err)
    elif (p.s.id, p.s.version) != old_idv:
        # the failure came after the new one was renamed into place: it is the one in force
        status, why, sched = 'accepted', None, p.s
    # (the same one read back: the plan's interval and the controller's fields are its own)
    return status, why, sched


def put(ps, sched):
    """Put a compiled schedule in force (boot: the persisted one; later: a received one)."""
    import random
    rs = sched.randomize_s
    rand = random.getrandbits(12) % (rs + 1) if rs else 0
    c = ps.clock
    ps.plan.load(sched, rand, c.base_epoch_s if c is not None and c.synced else None)
    if sched.version > ps.last_version:
        ps.last_version = sched.version
    lk = ps.link
    if lk is not None:
        lk.sch_id = sched.id
        lk.sch_version = sched.version


def rejected(ps, why, sid, ver):
    ps.rejected += 1
    ps.rej = {'reason': why or 'rejected', 'id': sid, 'version': ver}
    ps.rej_key = (ps.plan.src, ps.plan.k)     # 'rejected' is the status until what is in force changes
    print('schedule rejected: %s' % ps.rej['reason'])
    ps._sent = None                     # publish it even if nothing else changed


def status_payload(ps, status, reason):
    """The retained <prefix>/<id>/schedule/status message (docs/schedule.md, "Status")."""
    import json
    from plan import SOURCE_NAMES
    p = ps.plan
    s = p.s
    d = {'status': status, 'source': SOURCE_NAMES[p.src], 'interval': p.k if s is not None and p.k < s.n else -1,
         'next_change_s': p.next_s}
    if s is not None:
        d['id'] = s.id
        d['version'] = s.version
        c = ps.clock
        if c is not None and c.valid:
            d['ts'] = c.now_s()
    if reason:
        d['reason'] = reason
    if ps.rej is not None:
        d['last_rejected'] = ps.rej
    if ps.superseded is not None:
        d['superseded'] = {'id': ps.superseded[0], 'version': ps.superseded[1]}
    d['received'] = ps.received
    d['rejected_count'] = ps.rejected
    return json.dumps(d).encode()
