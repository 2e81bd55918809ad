"""A MemoryError injected at one executed line (sys.settrace): what the device's out-of-memory
handling is tested with on CPython (test_sched_rx, test_sched_boot)."""
import sys


def call_with_oom_at(files, k, fn, *args):
    """fn(*args) with MemoryError raised at the k-th line executed in one of files (a set of
    paths); k < 1: never. Returns (result or None, the MemoryError or None, lines executed)."""
    cnt = [0]

    def tr(frame, ev, arg):
        if frame.f_code.co_filename not in files:
            return None
        if ev == 'line':
            cnt[0] += 1
            if cnt[0] == k:
                raise MemoryError('injected at %d' % k)
        return tr
    sys.settrace(tr)
    try:
        return fn(*args), None, cnt[0]
    except MemoryError as e:
        return None, e, cnt[0]
    finally:
        sys.settrace(None)
