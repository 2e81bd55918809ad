# Schedule format v1 on the device: the payload checked and compiled as it streams in (issue 11;
# docs/schedule.md).
#
# Loaded on demand (D) when a schedule arrives, dropped afterwards; the result, a
# schedule.Schedule, needs only lib/schedule.py. json.load of a full schedule builds a ~22 KB tree
# (36 KB while parsing) on 32-bit MicroPython, and the device has a few KB for it. So a small
# scanner walks the top-level object and hands each member (each interval on its own) to
# json.loads, at most 510 bytes at a time; intervals are checked and compiled as they arrive, the
# tree never exists. A MacStream (lib/schedule_mac.py) checks the HMAC of a signed payload in the
# same pass.
#
# The decisions are lib/schedule_host.py's (validate(), the host's rules with its full messages:
# host_tests/test_schedule_stream.py checks both agree on random and damaged payloads). The
# messages here are short (they go into the status topic) but each says what is wrong and where,
# e.g. "intervals[3].soc_max_bp: 9800 above commissioned 9500". Every string and name here costs
# heap while a schedule loads (short ones for good: interned), so there are few of them.

import json
from array import array
try:
    from micropython import const
except ImportError:     # CPython
    const = int

from bess_core import OBJECTIVES, is_int
from schedule import (FORMAT, MAX_INTERVALS, MAX_HORIZON_S, ID_MAX, UNSET_NARROW, NOT_SET, Schedule,
                      ScheduleError)

# interval (and default block) fields: name -> (lo, hi) for ints, None for booleans, OBJECTIVES.
# Only the fields in W (names ending in _w) may be negative (schedule.UNSET_NARROW).
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
    'protect_import_w': (0, 10000000),
    'protect_phase_w': (0, 10000000),
}
VERSION_MAX = 0x3FFFFFFF    # 2**30 - 1: a small int on 32-bit boards (telemetry carries it)
INTERVAL_ONLY = ('power_w', 'target_soc_bp', 'firm')     # not in the default block (it has no end)
TOP = ('v', 'id', 'version', 'created', 'valid_until', 'randomize_s', 'default', 'intervals', 'ctr',
       'mac')

_CAP = const(512)           # capture buffer: a member or an interval may have 510 bytes
CHUNK = 64                  # read buffer load_stream allocates when the caller gives none
MAX_ERRORS = 16             # problems listed by load_stream (then "... and N more"): bounded heap
_FULL = const(511)          # n once what is captured does not fit
_DEPTH = const(8)           # nesting inside one value (a valid one nests 1 deep)
_LIM = const(0x1FFFFFFF)    # interval offsets are clamped to +-this (17 years): small ints
_BAD = object()             # what parse() returns for text that is not JSON


def _keys_ok(v):
    """Every object key in v is a string: MicroPython's json.loads also takes numbers as keys
    (and a missing comma between members), which JSON and the host refuse."""
    if type(v) is dict:
        for k in v:
            if type(k) is not str or not _keys_ok(v[k]):
                return False
    elif type(v) is list:
        for x in v:
            if not _keys_ok(x):
                return False
    return True


def code(name, v):
    """The compiled code of a valid field value."""
    return OBJECTIVES.index(v) if name == 'objective' else int(v)


def column(name, size, a=None, zeros=None):
    """A compiled column for field `name` (schedule.Schedule), every entry unset: 'i' for the
    fields in W, 'b' for codes and booleans, 'h' for the others (SoC in bp). a: a column of
    that field to reset and return instead of a new one (a store()'s). zeros: {bytes per value:
    size * that many zero bytes} to make it from (store(): no temporary between the arrays)."""
    r = FIELDS[name]
    b = 4 if name.endswith('_w') else 1 if r is None or r is OBJECTIVES else 2
    if a is None:
        a = array(' bh i'[b], bytes(size * b) if zeros is None else zeros[b])   # typecode of a b-byte int
    u = NOT_SET if b == 4 else UNSET_NARROW
    for k in range(size):
        a[k] = u
    return a


def store():
    """The arrays of one compiled schedule at the format's limit: (starts, ends, {field:
    column}), allocated once and filled in place by every load given them. The device makes
    them with the first schedule it checks (at boot when one is persisted) and keeps them: later
    checks no longer allocate a new set wherever the heap has room, which over days of schedules
    cut the free heap into pieces the command path cannot use (docs/resources.md; making them
    before the telemetry ring was measured no better). A schedule loaded into a store has a
    column for every field (the unused ones read NOT_SET) and shares the arrays with the next
    load: the caller drops the one in force before loading another (firmware/sched_rx.py). A
    tuple of arrays, not an object of a class here: that would keep this module's code in the
    heap."""
    # Made back to back: every temporary first (the zero bytes the arrays are made from, the
    # dict's growing tables), then the 13 arrays. Made from a bytes(n) each, every array had a
    # freed block of its own size beside it: the store lay across ~10 KB of heap in ~400-byte
    # pieces with ~400-byte holes between them (tools/heapmap.py).
    n = MAX_INTERVALS + 1
    cols = {}
    for f in FIELDS:
        cols[f] = None
    z = {1: bytes(n), 2: bytes(2 * n), 4: bytes(4 * n)}
    ts = array('i', z[4])               # n long (one more than MAX_INTERVALS): Schedule.n counts
    te = array('i', z[4])
    for f in FIELDS:
        cols[f] = column(f, n, None, z)
    return ts, te, cols


class _Load:
    """One streamed load. The scanner tracks the nesting depth d outside strings (1: inside the
    top-level object) and captures into cap the text between the delimiters , } ] at its level
    (runs of whitespace as one space): each member "key": value of the top-level object, parsed
    as a one-member object, and each element of the intervals array (an interval). json.loads
    checks each; the rest of JSON's syntax (braces, commas, brackets) is checked here. Members
    may repeat: the last one counts, as with json.loads. A '[' at depth 1 after "intervals":
    starts the streamed array, element by element.

    Interval times: the first valid start is the reference p (created may come later in the
    object); starts and ends are stored as offsets from p in the arrays that become the
    compiled ones, checked against created .. valid_until at the end. They are clamped to
    +-_LIM: an offset beyond means an invalid schedule (intervals 17 years apart, in a window
    of at most 7 days), and the check still finds the interval at p or another outside the
    window; which other ones it names may then differ from the host's list."""

    def __init__(self, comm, last, maxe, store=None):
        self.store = store
        self.comm = comm or {}
        self.last = last
        self.maxe = maxe
        self.cap = bytearray(_CAP)   # cap[0] = '{': a member is parsed as {"key": value}
        self.cap[0] = 0x7B
        self.n = 0              # bytes captured in cap[1:], _FULL: more than fit
        self.d = 0              # depth outside strings, -1 after the closing }
        self.q = 0              # 1 inside a string, 2 just after a backslash in one
        self.arr = 0            # 1 inside the streamed intervals array, 2 just after it
        self.pos = 0            # bytes fed before the current chunk
        self.fatal = None       # a syntax error: the rest is not parsed
        self.errs = []          # problems other than the intervals'
        self.nerr = 0
        self.top = {}           # the members, parsed (last wins)
        self.iv(0)

    def iv(self, size):
        """A new intervals member (the last one counts): forget the previous one."""
        self.ni = 0             # elements seen (more than MAX_INTERVALS: a problem)
        self.ierrs = []         # the intervals' problems
        self.nierr = 0
        self.p = None           # reference of the offsets (see above)
        self.prev = None        # end of the previous interval with valid times (exact)
        st = self.store
        if st is None:
            self.ts = array('i', bytes(4 * size))   # starts and ends, offsets from p
            self.te = array('i', bytes(4 * size))
        else:                   # (written only for k < MAX_INTERVALS: the store's size)
            self.ts = a = st[0]
            self.te = b = st[1]
            for k in range(MAX_INTERVALS):
                a[k] = 0        # as new: 0, 0 = no valid times (finish() skips those)
                b[k] = 0
        self.cols = {}          # field -> compiled column, while every interval is valid

    def err(self, k, f, what):
        """A problem with field f ('': the block itself) of interval k, or of the default block
        (k = -1) or the schedule's top level (k = -2)."""
        m = ('intervals[%d]' % k if k >= 0 else 'default' if k == -1 else 'schedule') + (f and '.' + f) + \
            ': ' + what
        if k >= 0:
            self.nierr += 1
            self.cols = None    # rejected: nothing more to compile
            e = self.ierrs
        else:
            self.nerr += 1
            e = self.errs
        if len(e) < self.maxe:
            e.append(m)

    def rng(self, k, f, v, lo, hi):
        """True if v is an integer lo..hi, else a problem."""
        if is_int(v) and lo <= v <= hi:
            return True
        self.err(k, f, '%.20r not %s' % (v, '%d..%d' % (lo, hi)))

    def parse(self, a, b):
        """cap[a:b] parsed, _BAD if it is not JSON. Decoded first: bytes would let CPython's
        json.loads guess another encoding (a BOM, UTF-16) than the payload's."""
        try:
            v = json.loads(str(memoryview(self.cap)[a:b], 'utf-8'))
        except MemoryError:     # not the payload's fault: the check says "out of memory" (sched_rx)
            raise
        except Exception:
            return _BAD
        return v if _keys_ok(v) else _BAD

    # --- the scanner ------------------------------------------------------------------------
    def feed(self, b, m):
        """Bytes b[0:m], the next chunk of the payload."""
        cap = self.cap
        n = self.n
        d = self.d
        q = self.q
        lv = self.arr % 2 + 1   # the depth of the delimiters that end what is captured
        w = None                # what is wrong, at byte i
        for i in range(m):
            c = b[i]
            if q:
                q = 1 if q == 2 else 2 if c == 0x5C else 0 if c == 0x22 else 1
            elif d < 1:                                              # before { or after }
                if c == 0x7B and d == 0:
                    d = 1
                elif c not in b' \t\n\r':
                    w = 'bad JSON'
                    break
                continue
            elif c == 0x22:
                q = 1
            elif d == lv and (c == 0x2C or c == 0x7D or c == 0x5D):                  # , } ]
                self.n = n
                self.d = d
                w = self.end(c)
                if w:
                    break
                n = 0
                d = self.d
                lv = self.arr % 2 + 1
                continue
            elif c == 0x7B or c == 0x5B:                             # { [
                if c == 0x5B and d == 1 and n < _FULL - 2:
                    cap[n + 1] = 0x30                                # {"key": 0}
                    cap[n + 2] = 0x7D
                    v = self.parse(0, n + 3)
                    if type(v) is dict and 'intervals' in v:
                        self.iv(MAX_INTERVALS)
                        self.top['intervals'] = self            # streamed: no JSON value is self
                        self.arr = 1
                        n = 0
                        d = lv = 2
                        continue
                d += 1
                if d > _DEPTH:
                    w = 'nesting'
                    break
            elif c == 0x7D or c == 0x5D:
                d -= 1
            elif c in b' \t\n\r':
                if not n or cap[n] == 0x20:
                    continue
                c = 0x20
            if n < _FULL - 1:
                n += 1
                cap[n] = c
            else:
                n = _FULL
        self.pos += m
        if w:
            self.fatal = 'schedule: byte %d: %s' % (self.pos - m + i, w)
        self.n = n
        self.d = d
        self.q = q

    def end(self, c):
        """A member or an interval ends with byte c (, } ]): None, or what is wrong."""
        n = self.n
        v = _BAD
        if self.arr == 1:                                            # an interval
            if n or c == 0x2C or self.ni:                            # (none only in "[]")
                if 0 < n < _FULL:
                    v = self.parse(1, n + 1)
                if v is _BAD:
                    return 'too long' if n == _FULL else 'bad JSON'
                k = self.ni
                self.ni = k + 1
                if k < MAX_INTERVALS:
                    if type(v) is dict:
                        self.block(k, v)
                    else:
                        self.err(k, '', '%.20r not %s' % (v, 'an object'))
            if c == 0x7D:
                return 'bad JSON'
            if c == 0x5D:
                self.arr = 2
                self.d = 1
            return
        if self.arr:                                                 # after the array
            self.arr = 0
            if n:
                return 'bad JSON'
        elif n:
            if n < _FULL:
                self.cap[n + 1] = 0x7D
                v = self.parse(0, n + 2)
            if v is _BAD or len(v) != 1:        # (MicroPython's json takes {"a":1 "b":2})
                return 'too long' if n == _FULL else 'bad JSON'
            for k in v:
                if k == 'intervals':
                    self.iv(0)
                if k != 'mac' and k != 'ctr':           # known, not needed: not kept
                    self.top[k] = v[k]
        elif c != 0x7D or self.top:
            return 'bad JSON'
        if c == 0x5D:
            return 'bad JSON'
        if c == 0x7D:
            self.d = -1                                              # the end

    # --- the rules --------------------------------------------------------------------------
    def block(self, k, d):
        """Interval k (its times, fields and compiled codes) or, k = -1, the default block. (In
        parts: a function's bytecode is one block of heap, and a schedule is checked in a
        fragmented heap; docs/resources.md.)"""
        if k >= 0:
            self._times(k, d)
        self._fields(k, d)
        self._bounds(k, d)
        cols = self.cols
        if k >= 0 and cols is not None:
            for f in d:
                if f in FIELDS:
                    a = cols.get(f)
                    if a is None:
                        st = self.store
                        a = cols[f] = column(f, MAX_INTERVALS + 1, st and st[2][f])
                    a[k] = code(f, d[f])

    def _times(self, k, d):
        """Interval k's start and duration_s: offsets from p into ts / te."""
        s = d.get('start')
        du = d.get('duration_s')
        ok = is_int(s)
        if not ok:
            self.err(k, 'start', '%.20r not %s' % (s, 'unix s'))
        if not is_int(du) or du <= 0:
            ok = False
            self.err(k, 'duration_s', '%.20r not %s' % (du, '> 0'))
        if ok:
            if self.p is None:
                self.p = s
            a = s - self.p
            b = a + du
            self.ts[k] = max(-_LIM, min(a, _LIM - 1))   # clamped (see above), end > start
            self.te[k] = max(1 - _LIM, min(b, _LIM))
            if self.prev is not None and s < self.prev:
                self.err(k, 'start', 'overlaps previous')
            self.prev = s + du

    def _fields(self, k, d):
        """Every field of block k known and in its range."""
        for f in d:
            v = d[f]
            r = FIELDS.get(f, 0)
            if r == 0:
                if k < 0 or f != 'start' and f != 'duration_s':
                    self.err(k, f[:24], 'unknown')
                continue
            if k < 0 and f in INTERVAL_ONLY:
                self.err(k, f, 'only in intervals')
            if r is None:
                if v is not True and v is not False:
                    self.err(k, f, '%.20r not %s' % (v, 'true/false'))
            elif r is OBJECTIVES:
                if v not in r:
                    self.err(k, f, '%.20r not %s' % (v, '/'.join(r)))
            else:
                self.rng(k, f, v, r[0], r[1])

    def _bounds(self, k, d):
        """Block k never outside what was commissioned: the schedule may narrow, not widen."""
        c = self.comm
        lo = d.get('soc_min_bp')
        hi = d.get('soc_max_bp')
        if is_int(lo):
            v = c.get('min_soc_bp', 0)
            if lo < v:
                self.err(k, 'soc_min_bp', '%d %s %s %d' % (lo, 'below', 'commissioned', v))
            if is_int(hi) and lo >= hi:
                self.err(k, 'soc_min_bp', '%d %s %s %d' % (lo, 'not below', 'soc_max_bp', hi))
        for f, v, lim, whose in (('soc_max_bp', hi, c.get('max_soc_bp', 10000), 'commissioned'),
                                 ('import_limit_w', d.get('import_limit_w'), c.get('import_limit_w'), 'commissioned'),
                                 ('reserve_soc_bp', d.get('reserve_soc_bp'), hi, 'soc_max_bp'),
                                 ('target_soc_bp', d.get('target_soc_bp'), hi, 'soc_max_bp')):
            if is_int(v) and is_int(lim) and v > lim:
                self.err(k, f, '%d %s %s %d' % (v, 'above', whose, lim))
        if 'power_w' in d and 'target_soc_bp' in d:
            self.err(k, 'power_w', 'and target_soc_bp')

    def finish(self):
        """The compiled Schedule, or ScheduleError listing the problems. (In four functions, not
        one: a function's bytecode is one block of heap, and a schedule is checked in a
        fragmented heap; docs/resources.md.)"""
        g = self.top.get
        cr = g('created')
        vu = g('valid_until')
        times = is_int(cr) and cr > 0 and is_int(vu)
        if self.fatal is None and self.d != -1:
            self.fatal = 'schedule: byte %d: %s' % (self.pos, 'ends early')
        if self.fatal:
            self.errs.insert(0, self.fatal)
            self.nerr += 1
        else:
            self._members(g, cr, vu, times)
            self._parts(g, cr, vu, times)
        n = self.nerr + self.nierr
        if n:
            e = (self.errs + self.ierrs)[:self.maxe]
            if n > len(e):
                e.append('... and %d more' % (n - len(e)))
            raise ScheduleError('schedule rejected:\n  ' + '\n  '.join(e))
        return self._compiled(g, cr, vu)

    def _members(self, g, cr, vu, times):
        """The top-level members but the default block and the intervals."""
        for f in self.top:
            if f not in TOP:
                self.err(-2, f[:24], 'unknown')
        v = g('v')
        if v != FORMAT:
            self.err(-2, 'v', '%.20r not %s' % (v, FORMAT))
        v = g('id')
        if type(v) is not str or not 0 < len(v) <= ID_MAX:
            self.err(-2, 'id', '%.20r not %s' % (v, 'str 1..%d' % ID_MAX))
        v = g('version')
        if self.rng(-2, 'version', v, 1, VERSION_MAX) and v <= self.last:
            self.err(-2, 'version', '%d %s %s %d' % (v, 'not newer', 'than', self.last))
        if not is_int(cr) or cr <= 0:
            self.err(-2, 'created', '%.20r not %s' % (cr, 'unix s'))
        if not is_int(vu):
            self.err(-2, 'valid_until', '%.20r not %s' % (vu, 'unix s'))
        if times:
            self.rng(-2, 'valid_until-created', vu - cr, 1, MAX_HORIZON_S)
        self.rng(-2, 'randomize_s', g('randomize_s', 0), 0, 3600)

    def _parts(self, g, cr, vu, times):
        """The default block, the intervals' count and their times against created..valid_until."""
        df = g('default')
        if type(df) is dict:
            self.block(-1, df)
        else:
            self.err(-2, 'default', '%.20r not %s' % (df, 'an object'))
        v = g('intervals')
        if v is not self:
            self.err(-2, 'intervals', '%.20r not %s' % (v, 'a list'))
            self.iv(0)
        elif not self.rng(-2, 'intervals', self.ni, 0, MAX_INTERVALS):
            self.iv(0)
        if times and self.p is not None:
            ts = self.ts
            te = self.te
            c = cr - self.p
            v = vu - self.p
            for k in range(self.ni):
                if te[k] > ts[k] and (ts[k] < c or te[k] > v):     # (te = ts = 0: no valid times)
                    self.err(k, '', 'outside created..valid_until')

    def _compiled(self, g, cr, vu):
        """A valid schedule compiled: offsets from created (at most 7 days: small ints), the
        default block at [n]."""
        df = g('default')
        self.cap = None
        n = self.ni
        ts = self.ts
        te = self.te
        c = cr - self.p if n else 0
        for k in range(n):
            ts[k] -= c
            te[k] -= c
        if n < MAX_INTERVALS and self.store is None:
            ts = ts[:n]
            te = te[:n]
        cols = self.cols
        st = self.store
        for f in FIELDS:
            a = cols.get(f)
            if st is not None:
                if a is None:                   # unused: reads NOT_SET (the last load's values go)
                    a = column(f, MAX_INTERVALS + 1, st[2][f])
            elif a is None and f in df:
                a = column(f, n + 1)
            if a is not None:
                if n < MAX_INTERVALS and st is None:
                    a = a[:n + 1]
                if f in df:
                    a[n] = code(f, df[f])
                cols[f] = a
        if st is not None:
            return Schedule(g('id'), g('version'), cr, vu - cr, g('randomize_s', 0), ts, te, st[2], n)
        return Schedule(g('id'), g('version'), cr, vu - cr, g('randomize_s', 0), ts, te, cols)


def load_stream(read, commissioned=None, last_version=0, mac=None, buf=None, max_errors=MAX_ERRORS,
                store=None):
    """Check and compile a schedule as its payload arrives: read(buf) fills the bytearray buf
    (CHUNK bytes when None; a file's readinto) and returns the count, 0 at the end. mac: a
    MacStream when the topic is signed (it sees every byte; a bad mac is the only problem then
    reported). store: a schedule_load.store() to compile into (its previous content is overwritten, even when
    the payload is refused). Returns a schedule.Schedule or raises ScheduleError listing the problems (the
    first max_errors): the same decision as schedule_host.validate(json.loads(payload)), except
    that one member or interval longer than 510 bytes (a run of whitespace counting as one) is
    refused. Always reads to the end, so the stream stays in step."""
    if buf is None:
        buf = bytearray(CHUNK)
    mv = memoryview(buf)
    ld = _Load(commissioned, last_version, max_errors, store)
    while True:
        n = read(buf)
        if not n:
            break
        if mac is not None:
            mac.update(mv[:n])
        if ld.fatal is None:
            ld.feed(buf, n)
    if mac is not None and not mac.ok():
        raise ScheduleError('schedule rejected:\n  ' + mac.why)
    return ld.finish()


def MacStream(key, topic, total_len):
    """schedule_mac.MacStream, for a signed topic. That module is kept out of sys.modules, so
    it leaves the heap with the last MacStream (only a signed topic needs its code)."""
    import sys
    import schedule_mac
    del sys.modules[schedule_mac.__name__]
    return schedule_mac.MacStream(key, topic, total_len)
