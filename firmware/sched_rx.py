# Checking a received schedule (on demand: loaded by firmware/plan_side.py when one has arrived,
# and at boot for the persisted one; unloaded again with lib/schedule.py).
#
# The bytes are already on flash in <path>.new (streamed there as the link read them). Here:
#   1. the same bytes as <path> (the broker's retained copy of the schedule in force, delivered
#      again at every connect): nothing to do;
#   2. parse, validate and compile without building the JSON tree (schedule.load_stream), with a
#      key checking the HMAC over "<topic>\n<payload without the mac member>" in the same pass
#      (lib/commands.py's scheme; the version inside is the replay guard);
#   3. rename <path>.new over <path>: a reset at any point leaves the old schedule or the new one
#      (on FAT, where rename does not replace, there is a window with neither: the broker's
#      retained copy brings it back at the next connect).
import os

import schedule

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


def load_file(path, commissioned, last_version=0, topic=None, key=None):
    """Compiled schedule from a file, or ScheduleError / OSError. With a key the HMAC is checked
    in the same pass (schedule_load.MacStream: a bad mac is then the only problem reported)."""
    mac = None
    if key is not None:
        from schedule_load import MacStream
        mac = MacStream(key, topic, os.stat(path)[6])
    with open(path, 'rb') as f:
        return schedule.load_stream(f.readinto, commissioned, last_version, mac)


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


def accept(path, topic, key, commissioned, last_version, current):
    """(status, reason, id, version, compiled) for <path>.new. status: 'same' (the one in force
    again), 'rejected' (reason says why; nothing changed) or 'accepted' (now in <path>)."""
    new = path + '.new'
    if current is not None and _same(new, path):
        _remove(new)
        return ('same', None, current.id, current.version, None)
    try:
        s = load_file(new, commissioned, last_version, topic, key)
    except (schedule.ScheduleError, ValueError, OSError) as e:
        sid, ver = _ident(new)
        _remove(new)
        return ('rejected', str(e), sid, ver, None)
    try:
        os.rename(new, path)
    except OSError:
        _remove(path)                   # FAT: rename does not replace
        os.rename(new, path)
    return ('accepted', None, s.id, s.version, s)


def boot_load(path, commissioned):
    """The persisted schedule at boot: (compiled or None, message or None). It is applied only
    while valid and with a valid clock (lib/plan.py falls back otherwise); its version stays the
    replay guard even once it has expired."""
    try:
        os.stat(path)
    except OSError:
        return None, None
    try:
        return load_file(path, commissioned, 0), None
    except (schedule.ScheduleError, ValueError, OSError) as e:
        return None, 'persisted schedule %s unusable (%s): none in force' % (path, e)


def _remove(p):
    try:
        os.remove(p)
    except OSError:
        pass
