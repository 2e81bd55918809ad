# Schedule format v1 on the host: checking and compiling a dict parsed from JSON (the planner,
# the fleet service, tests). The rules and messages are lib/schedule_load.py's (the device's
# streamed loader); this half is kept out of it so the device never loads it (docs/resources.md).
from array import array

from bess_core import is_int
from schedule import MAX_INTERVALS, Schedule, ScheduleError
from schedule_load import FIELDS, _TOP, _LIST_ERR, _head, _fields, _times, _code, _column


def validate(d, commissioned=None, last_version=0):
    """Every problem of a schedule (a dict parsed from JSON), [] if it is valid. commissioned: the
    site's control config (min_soc_bp, max_soc_bp, import_limit_w); last_version: the highest
    version accepted so far (an older or equal one is rejected: the replay guard)."""
    if not isinstance(d, dict):
        return ['schedule: must be a JSON object']
    errs = []
    for k in d:
        if k not in _TOP:
            errs.append('schedule: unknown key %r' % k)
    _head(errs, d, commissioned, last_version)
    iv = d.get('intervals')
    if not isinstance(iv, list) or len(iv) > MAX_INTERVALS:
        errs.append(_LIST_ERR)
        iv = []
    cr, vu = d.get('created'), d.get('valid_until')
    times = _times(cr, vu)
    end = None
    for n in range(len(iv)):
        e = iv[n]
        where = 'intervals[%d]' % n
        if not isinstance(e, dict):
            errs.append(where + ': must be an object')
            continue
        s, du = e.get('start'), e.get('duration_s')
        if not is_int(s) or not is_int(du) or du <= 0:
            errs.append(where + ': start (unix s) and duration_s (> 0) are required integers')
        else:
            if times and (s < cr or s + du > vu):
                errs.append(where + ': outside created .. valid_until')
            if end is not None and s < end:
                errs.append(where + ': starts before the previous interval ends (sorted, no overlap)')
            end = s + du
        _fields(errs, where, e, commissioned)
    return errs


def compile_(d, commissioned=None, last_version=0):
    """Schedule from a parsed JSON object, or ScheduleError listing every problem."""
    errs = validate(d, commissioned, last_version)
    if errs:
        raise ScheduleError('schedule rejected:\n  ' + '\n  '.join(errs))
    cr = d['created']
    iv = d['intervals']
    df = d['default']
    n = len(iv)
    cols = {}
    for k in FIELDS:
        if k in df or any(k in e for e in iv):
            a = cols[k] = _column(n + 1)
            for j in range(n):
                if k in iv[j]:
                    a[j] = _code(k, iv[j][k])
            if k in df:
                a[n] = _code(k, df[k])
    return Schedule(d['id'], d['version'], cr, d['valid_until'] - cr, d.get('randomize_s', 0),
                    array('i', [e['start'] - cr for e in iv]),
                    array('i', [e['start'] + e['duration_s'] - cr for e in iv]), cols)
