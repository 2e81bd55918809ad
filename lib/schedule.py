# Schedule format v1: validation and compilation (issue 11 groundwork; docs/schedule.md).
#
# On demand on the device (when a schedule arrives) and on the host (planner, fleet): a JSON
# object in, every problem listed or a compiled Schedule out. The compiled form keeps interval
# times as offsets in seconds from `created` (small ints on 32-bit boards, where epoch seconds are
# heap ints) in preallocated arrays, so evaluating it per cycle can be allocation-free.
# Units: W, s, SoC in basis points; + discharge for battery power, as everywhere (docs/units.md).

from array import array

from bess_core import OBJECTIVES, is_int     # index = the objective code the core uses

FORMAT = 1
MAX_INTERVALS = 96
MAX_HORIZON_S = 7 * 86400       # valid_until - created
ID_MAX = 64
NOT_SET = -0x3FFFFFFF           # a field the schedule leaves unset (below every value, a small int)
# interval (and default block) fields: name -> (lo, hi) for ints, None for booleans
FIELDS = {
    'objective': OBJECTIVES,
    'reserve_soc_bp': (0, 10000),
    'soc_min_bp': (0, 10000),
    'soc_max_bp': (0, 10000),
    'import_limit_w': (0, 10000000),
    'target_soc_bp': (0, 10000),
    'power_w': (-10000000, 10000000),
    'firm': None,
    'export': None,
}
_TOP = ('v', 'id', 'version', 'created', 'valid_until', 'randomize_s', 'default', 'intervals', 'ctr', 'mac')


class ScheduleError(ValueError):
    """Raised with every problem found, one per line."""


def _fields(errs, where, d, commissioned, allow=('start', 'duration_s')):
    for k in d:
        if k not in FIELDS and k not in allow:
            errs.append('%s: unknown key %r' % (where, k))
    for k, rng in FIELDS.items():
        if k not in d:
            continue
        v = d[k]
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
    if is_int(d.get('soc_min_bp')) and d['soc_min_bp'] < c.get('min_soc_bp', 0):
        errs.append('%s.soc_min_bp: %d is below the commissioned min_soc_bp %d' % (where, d['soc_min_bp'], c['min_soc_bp']))
    if is_int(d.get('soc_max_bp')) and d['soc_max_bp'] > c.get('max_soc_bp', 10000):
        errs.append('%s.soc_max_bp: %d is above the commissioned max_soc_bp %d' % (where, d['soc_max_bp'], c['max_soc_bp']))
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
    if d.get('v') != FORMAT:
        errs.append('schedule: v must be %d, got %r' % (FORMAT, d.get('v')))
    i = d.get('id')
    if not isinstance(i, str) or not 0 < len(i) <= ID_MAX:
        errs.append('schedule: id must be a string of 1..%d characters' % ID_MAX)
    ver = d.get('version')
    if not is_int(ver) or ver < 1:
        errs.append('schedule: version must be an integer >= 1, got %r' % (ver,))
    elif ver <= last_version:
        errs.append('schedule: version %d is not newer than the accepted %d' % (ver, last_version))
    cr, vu = d.get('created'), d.get('valid_until')
    times = is_int(cr) and is_int(vu) and cr > 0
    if not times:
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
    iv = d.get('intervals')
    if not isinstance(iv, list) or len(iv) > MAX_INTERVALS:
        errs.append('schedule: intervals must be a list of at most %d' % MAX_INTERVALS)
        iv = []
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


class Schedule:
    """A validated schedule, compiled: times as seconds from `created` (base_s)."""

    def __init__(self, d):
        self.id = d['id']
        self.version = d['version']
        self.base_s = d['created']
        self.valid_s = d['valid_until'] - d['created']
        self.randomize_s = d.get('randomize_s', 0)
        iv = d['intervals']
        n = len(iv)
        self.n = n
        self.start = array('l', [e['start'] - self.base_s for e in iv])
        self.end = array('l', [e['start'] + e['duration_s'] - self.base_s for e in iv])
        self.fields = {}
        for k in FIELDS:
            self.fields[k] = array('l', [_code(k, e.get(k, NOT_SET)) for e in iv] + [_code(k, d['default'].get(k, NOT_SET))])

    def at(self, t_s):
        """Index of the interval in force t_s seconds after created, n for the default block, -1
        once the schedule has expired. (A linear scan for the host; the device's per-cycle
        evaluation is not written yet.)"""
        if t_s < 0 or t_s >= self.valid_s:
            return -1
        for k in range(self.n):
            if self.start[k] <= t_s < self.end[k]:
                return k
        return self.n

    def get(self, name, k):
        """Field `name` of interval k (n: the default block); NOT_SET if the schedule leaves it."""
        return self.fields[name][k]


def _code(name, v):
    if v is None or (not isinstance(v, str) and v == NOT_SET):
        return NOT_SET
    if name == 'objective':
        return OBJECTIVES.index(v)
    if isinstance(v, bool):
        return 1 if v else 0
    return v


def compile_(d, commissioned=None, last_version=0):
    """Schedule from a parsed JSON object, or ScheduleError listing every problem."""
    errs = validate(d, commissioned, last_version)
    if errs:
        raise ScheduleError('schedule rejected:\n  ' + '\n  '.join(errs))
    return Schedule(d)
