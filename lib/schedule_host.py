# Schedule format v1 on the host: checking and compiling a dict parsed from JSON (the planner,
# the fleet service, tests), with every problem in full words. The device never loads this
# module: it checks the payload as it streams in (lib/schedule_load.py, short messages, the same
# decisions: host_tests/test_schedule_stream.py). The field table, the compiled codes and the
# columns are schedule_load's, so both compile to the same arrays.
from array import array

from bess_core import OBJECTIVES, is_int
from schedule import FORMAT, MAX_INTERVALS, MAX_HORIZON_S, ID_MAX, Schedule, ScheduleError
from schedule_load import (FIELDS, INTERVAL_ONLY, TOP, VERSION_MAX, CHUNK, MAX_ERRORS, code, column,
                           load_stream)

LIST_ERR = 'schedule: intervals must be a list of at most %d' % MAX_INTERVALS


def validate(d, commissioned=None, last_version=0):
    """Every problem of a schedule (a dict parsed from JSON), [] if it is valid. commissioned: the
    site's control config (min_soc_bp, max_soc_bp, import_limit_w); last_version: the highest
    version accepted so far (an older or equal one is rejected: the replay guard)."""
    if not isinstance(d, dict):
        return ['schedule: must be a JSON object']
    errs = []
    for k in d:
        if k not in TOP:
            errs.append('schedule: unknown key %r' % k)
    _head(errs, d, commissioned, last_version)
    iv = d.get('intervals')
    if not isinstance(iv, list) or len(iv) > MAX_INTERVALS:
        errs.append(LIST_ERR)
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


def _fields(errs, where, d, commissioned, allow=('start', 'duration_s')):
    for k in d:
        if k not in FIELDS and k not in allow:
            errs.append('%s: unknown key %r' % (where, k))
    for k, rng in FIELDS.items():
        if k not in d:
            continue
        v = d[k]
        if not allow and k in INTERVAL_ONLY:
            errs.append('%s.%s: only an interval may set it (it is bound to the interval\'s end; the default '
                        'block applies without end, also as the fallback)' % (where, k))
        if rng is None:
            if not isinstance(v, bool):
                errs.append('%s.%s: must be true or false, got %r' % (where, k, v))
        elif k == 'objective':
            if v not in OBJECTIVES:
                errs.append('%s.objective: %r is not one of %s' % (where, v, ', '.join(OBJECTIVES)))
        elif not is_int(v) or not rng[0] <= v <= rng[1]:
            errs.append('%s.%s: must be an integer %d..%d, got %r' % (where, k, rng[0], rng[1], v))
    # never outside what was commissioned: the schedule may narrow, not widen
    c = commissioned or {}
    lo = c.get('min_soc_bp', 0)
    if is_int(d.get('soc_min_bp')) and d['soc_min_bp'] < lo:
        errs.append('%s.soc_min_bp: %d is below the commissioned min_soc_bp %d' % (where, d['soc_min_bp'], lo))
    hi = c.get('max_soc_bp', 10000)
    if is_int(d.get('soc_max_bp')) and d['soc_max_bp'] > hi:
        errs.append('%s.soc_max_bp: %d is above the commissioned max_soc_bp %d' % (where, d['soc_max_bp'], hi))
    if is_int(d.get('import_limit_w')) and 'import_limit_w' in c and d['import_limit_w'] > c['import_limit_w']:
        errs.append('%s.import_limit_w: %d is above the commissioned import_limit_w %d'
                    % (where, d['import_limit_w'], c['import_limit_w']))
    lo, hi = d.get('soc_min_bp'), d.get('soc_max_bp')
    if is_int(lo) and is_int(hi) and lo >= hi:
        errs.append('%s: soc_min_bp %d must be below soc_max_bp %d' % (where, lo, hi))
    for k in ('reserve_soc_bp', 'target_soc_bp'):
        v = d.get(k)
        if is_int(v) and is_int(hi) and v > hi:
            errs.append('%s.%s: %d is above soc_max_bp %d' % (where, k, v, hi))
    if 'power_w' in d and 'target_soc_bp' in d:
        errs.append('%s: power_w and target_soc_bp exclude each other (one sets the power, the other derives it)' % where)


def _head(errs, d, commissioned, last_version):
    """The top-level members other than the intervals."""
    if d.get('v') != FORMAT:
        errs.append('schedule: v must be %d, got %r' % (FORMAT, d.get('v')))
    i = d.get('id')
    if not isinstance(i, str) or not 0 < len(i) <= ID_MAX:
        errs.append('schedule: id must be a string of 1..%d characters' % ID_MAX)
    ver = d.get('version')
    if not is_int(ver) or not 1 <= ver <= VERSION_MAX:
        errs.append('schedule: version must be an integer 1..%d (a small int on the device), got %r'
                    % (VERSION_MAX, ver))
    elif ver <= last_version:
        errs.append('schedule: version %d is not newer than the accepted %d' % (ver, last_version))
    cr, vu = d.get('created'), d.get('valid_until')
    if not _times(cr, vu):
        errs.append('schedule: created and valid_until must be unix seconds (integers)')
    elif not 0 < vu - cr <= MAX_HORIZON_S:
        errs.append('schedule: valid_until must be after created, at most %d s later' % MAX_HORIZON_S)
    rs = d.get('randomize_s', 0)
    if not is_int(rs) or not 0 <= rs <= 3600:
        errs.append('schedule: randomize_s must be an integer 0..3600')
    df = d.get('default')
    if not isinstance(df, dict):
        errs.append('schedule: default must be an object (what applies outside every interval)')
    else:
        _fields(errs, 'default', df, commissioned, allow=())


def _times(cr, vu):
    return is_int(cr) and is_int(vu) and cr > 0


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
            a = cols[k] = column(k, n + 1)
            for j in range(n):
                if k in iv[j]:
                    a[j] = code(k, iv[j][k])
            if k in df:
                a[n] = code(k, df[k])
    return Schedule(d['id'], d['version'], cr, d['valid_until'] - cr, d.get('randomize_s', 0),
                    array('i', [e['start'] - cr for e in iv]),
                    array('i', [e['start'] + e['duration_s'] - cr for e in iv]), cols)


def loads(payload, commissioned=None, last_version=0, mac=None, chunk=CHUNK, max_errors=MAX_ERRORS,
          store=None):
    """The device's streamed loader (schedule_load.load_stream) over bytes in memory, chunk bytes
    at a time (tests; a payload already held). store: a schedule_load.store() to compile into."""
    src = memoryview(payload)
    pos = [0]

    def read(buf):
        p = pos[0]
        k = min(len(buf), len(src) - p)
        buf[:k] = src[p:p + k]
        pos[0] = p + k
        return k
    return load_stream(read, commissioned, last_version, mac, bytearray(chunk), max_errors, store)


def sign_schedule(key, topic, body):
    """The payload to publish for a schedule (body: compact JSON object, bytes or str, without
    the mac member): command_mac.sign, the same scheme as the commands."""
    from command_mac import sign
    return sign(key, topic, body)
