# Schedule format v1: checking and compiling (issue 11; docs/schedule.md).
#
# Loaded on demand (D) when a schedule arrives, dropped afterwards; the result, a
# schedule.Schedule, needs only lib/schedule.py. Two ways in, one set of rules and messages:
#   validate(d) / compile_(d)  a dict parsed from JSON (host: planner, fleet, tests): in
#                              lib/schedule_host.py, on these rules (not loaded on the device)
#   load_stream(read)          the payload as it streams in (device). json.load of a full schedule
#                              builds a ~22 KB tree (36 KB while parsing) on 32-bit MicroPython;
#                              the device has ~25 KB for transients. So a small tokenizer walks the
#                              top-level object and hands each member's value (each interval on its
#                              own) to json.loads, at most CAP bytes at a time; intervals are
#                              checked and compiled as they arrive, the tree never exists.
# MacStream checks the HMAC of a signed payload chunk by chunk (lib/commands.py's scheme).

import json
import hashlib
from array import array
try:
    import binascii
except ImportError:     # very old MicroPython
    import ubinascii as binascii
try:
    from micropython import const
except ImportError:
    def const(x):
        return x

from bess_core import OBJECTIVES, is_int
from schedule import (FORMAT, MAX_INTERVALS, MAX_HORIZON_S, ID_MAX, NOT_SET, Schedule,  # noqa: F401
                      ScheduleError)

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

CAP = 512                   # longest member value (one interval, the default block, id...) in bytes
CHUNK = 256                 # read buffer load_stream allocates when the caller gives none
MAX_ERRORS = 16             # problems listed by load_stream (then "... and N more"): bounded heap
MAX_DEPTH = const(8)        # nesting inside one value (a valid one nests 1 deep)
_CLAMP = 1 << 62           # while loading, interval offsets are stored clamped to +-this (see _Load)


# --- the rules, on parsed values ----------------------------------------------------------------
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
    """The top-level members other than the intervals (d: a dict holding them)."""
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


_BAD = object()         # a captured value that is not JSON
_LIST_ERR = 'schedule: intervals must be a list of at most %d' % MAX_INTERVALS


def _code(name, v):
    if name == 'objective':
        return OBJECTIVES.index(v)
    if isinstance(v, bool):
        return 1 if v else 0
    return v


def _column(size):
    a = array('i', bytes(4 * size))
    for k in range(size):
        a[k] = NOT_SET
    return a


# --- the payload as it streams in -----------------------------------------------------------------
# Byte classes for the tokenizer
_C_WS = const(1)
_C_CLOSE = const(2)     # } ]
_C_COMMA = const(3)
_CC = bytearray(256)
_CC[0x20] = _CC[0x09] = _CC[0x0A] = _CC[0x0D] = _C_WS      # the only whitespace JSON has
_CC[0x7D] = _CC[0x5D] = _C_CLOSE
_CC[0x2C] = _C_COMMA

# Tokenizer states: where in the top-level object the next byte is
_BEGIN = const(0)       # before '{'
_OPEN = const(1)        # after '{': a key or '}'
_KEY = const(2)         # after ',': a key
_COLON = const(3)
_VALUE = const(4)
_AFTER = const(5)       # after a member: ',' or '}'
_ARR_OPEN = const(6)    # after "intervals":[ : an element or ']'
_ARR_NEXT = const(7)    # after ',' in the intervals: an element
_ARR_AFTER = const(8)   # after an element: ',' or ']'
_END = const(9)         # after the closing '}': whitespace only
_SCAN = const(10)       # inside a key or a value (_Load.ctx says which)
# what the value being scanned is
_X_KEY = const(0)
_X_MEMBER = const(1)
_X_ELEMENT = const(2)


class _Load:
    """State of one streamed load: the tokenizer, the members seen so far (last wins, as in
    json.loads) and the intervals checked and compiled as they arrive.

    Interval times: the first valid start is the reference p (created may come later in the
    object, or twice: the last one counts); each interval's start and end are stored as offsets
    from p in array('q') (64 bit while loading, 'i' once compiled), clamped to +-_CLAMP, and
    checked against created .. valid_until at the end. The clamp never changes the decision (a
    valid schedule spans at most 7 days; a window that far from p puts interval 0 outside it or
    the horizon is too long) and the messages only for times 2**62 s apart."""

    def __init__(self, commissioned, last_version, max_errors):
        self.comm = commissioned
        self.last = last_version
        self.maxe = max_errors
        self.cap = bytearray(CAP)
        self.st = _BEGIN
        self.pos = 0            # bytes fed before the current chunk
        self.fatal = None       # a structural error: the rest is not parsed
        self.jerrs = []         # values that are not JSON or too long
        self.njerr = 0
        self.unknown = []       # unknown top-level keys, in order of first appearance
        self.nunk = 0
        self.top = {}           # the other known top-level members, parsed (last wins)
        self.key = None
        self.skip = False       # scanning the value of an unknown key: checked, not kept
        # the value being scanned
        self.ctx = _X_KEY
        self.cl = 0             # bytes captured
        self.long = False       # longer than CAP
        self.atom = False       # a number / true / false / null: ends at a delimiter
        self.depth = 0
        self.instr = False
        self.esc = False
        self._iv_reset(False, False)

    # --- intervals --------------------------------------------------------------------------
    def _iv_reset(self, seen, is_list):
        self.iv_seen = seen     # an intervals member was seen (the last one counts)
        self.iv_list = is_list
        self.n = 0
        self.over = False       # more than MAX_INTERVALS
        self.p = None           # reference time of the offsets: the first valid start (exact)
        self.prev_end = None    # exact end of the previous interval with valid times
        self.start = self.end = self.ok_t = None
        self.cols = {}          # field -> array('i') of MAX_INTERVALS + 1, while all is valid
        self.clean = True       # no interval problem so far: keep compiling
        self.ierrs = []         # (index, message), in order
        self.nierr = 0

    def _ierr(self, k, msg):
        self.nierr += 1
        self.clean = False
        self.cols = None
        if len(self.ierrs) < self.maxe:
            self.ierrs.append((k, msg))

    def _jerr(self, msg):
        self.njerr += 1
        if len(self.jerrs) < self.maxe:
            self.jerrs.append(msg)

    def _interval(self, e):
        k = self.n
        if k == MAX_INTERVALS:
            # validate() lists nothing about the intervals of an over-long list: neither do we
            self.over = True
            self.ierrs = []
            self.nierr = 0
            self.start = self.end = self.ok_t = self.cols = None
            return
        self.n = k + 1
        where = 'intervals[%d]' % k
        if self.long or e is _BAD:
            self._jerr(where + (': longer than %d bytes' % CAP if self.long else ': not valid JSON'))
            self.clean = False
            self.cols = None            # rejected: nothing more to compile
            return
        if not isinstance(e, dict):
            self._ierr(k, where + ': must be an object')
            return
        if self.start is None:
            self.start = array('q', bytes(8 * MAX_INTERVALS))
            self.end = array('q', bytes(8 * MAX_INTERVALS))
            self.ok_t = bytearray(MAX_INTERVALS)
        s, du = e.get('start'), e.get('duration_s')
        if not is_int(s) or not is_int(du) or du <= 0:
            self._ierr(k, where + ': start (unix s) and duration_s (> 0) are required integers')
        else:
            if self.p is None:
                self.p = s
            self.start[k] = _clamp(s - self.p)
            self.end[k] = _clamp(s + du - self.p)
            self.ok_t[k] = 1
            if self.prev_end is not None and s < self.prev_end:
                self._ierr(k, where + ': starts before the previous interval ends (sorted, no overlap)')
            self.prev_end = s + du
        errs = []
        _fields(errs, where, e, self.comm)
        for m in errs:
            self._ierr(k, m)
        if self.clean:
            cols = self.cols
            for f in e:
                if f in FIELDS:
                    a = cols.get(f)
                    if a is None:
                        a = cols[f] = _column(MAX_INTERVALS + 1)
                    a[k] = _code(f, e[f])

    # --- tokenizer --------------------------------------------------------------------------
    def feed(self, b, n):
        """Bytes b[0:n], the next chunk of the payload."""
        i = 0
        while i < n and self.fatal is None:
            st = self.st
            if st == _SCAN:
                i = self._scan(b, i, n)
                continue
            c = b[i]
            if _CC[c] == _C_WS:
                i += 1
                continue
            if st == _VALUE:
                if c == 0x5B and self.key == 'intervals':           # [ : streamed
                    self._iv_reset(True, True)
                    self.st = _ARR_OPEN
                    i += 1
                else:
                    self._begin(_X_MEMBER, c)
            elif st == _ARR_OPEN or st == _ARR_NEXT:
                if st == _ARR_OPEN and c == 0x5D:                    # ]
                    self.st = _AFTER
                    i += 1
                elif c == 0x5D:
                    self._syntax(i, 'a value after ","')
                else:
                    self._begin(_X_ELEMENT, c)
            elif st == _ARR_AFTER:
                if c == 0x2C:
                    self.st = _ARR_NEXT
                elif c == 0x5D:
                    self.st = _AFTER
                else:
                    self._syntax(i, '"," or "]"')
                i += 1
            elif st == _AFTER:
                if c == 0x2C:
                    self.st = _KEY
                elif c == 0x7D:                                      # }
                    self.st = _END
                else:
                    self._syntax(i, '"," or "}"')
                i += 1
            elif st == _OPEN or st == _KEY:
                if c == 0x22:                                        # "
                    self._begin(_X_KEY, c)
                elif c == 0x7D and st == _OPEN:
                    self.st = _END
                    i += 1
                else:
                    self._syntax(i, 'a key')
            elif st == _COLON:
                if c == 0x3A:
                    self.st = _VALUE
                else:
                    self._syntax(i, '":"')
                i += 1
            elif st == _BEGIN:
                if c != 0x7B:                                        # {
                    self.fatal = 'schedule: must be a JSON object'
                self.st = _OPEN
                i += 1
            else:
                self._syntax(i, 'nothing after the closing "}"')
        self.pos += n

    def _syntax(self, i, what):
        self.fatal = 'schedule: not JSON: expected %s at byte %d' % (what, self.pos + i)

    def _begin(self, ctx, c):
        """A key or value starts with byte c (not consumed: _scan reads it)."""
        self.ctx = ctx
        self.cl = 0
        self.long = ctx == _X_ELEMENT and self.over      # not kept: a surplus interval
        self.atom = c != 0x22 and c != 0x7B and c != 0x5B
        self.depth = 0
        self.instr = False
        self.esc = False
        self.st = _SCAN

    def _scan(self, b, i, n):
        """Scan the current key or value from b[i]; copy what belongs to it into cap. Returns
        where scanning stopped (the end of the chunk or just after the value)."""
        a = i
        depth = self.depth
        instr = self.instr
        esc = self.esc
        atom = self.atom
        done = False
        while i < n:
            c = b[i]
            if instr:
                if esc:
                    esc = False
                elif c == 0x5C:                                      # backslash
                    esc = True
                elif c == 0x22:
                    instr = False
                    if depth == 0:                                   # a string value closed
                        i += 1
                        done = True
                        break
            elif atom:
                t = _CC[c]
                if t:                                                # whitespace , } ]: not ours
                    done = True
                    break
            elif c == 0x22:
                instr = True
            elif c == 0x7B or c == 0x5B:
                depth += 1
                if depth > MAX_DEPTH:
                    self._syntax(i, 'at most %d levels of nesting' % MAX_DEPTH)
                    return n
            elif c == 0x7D or c == 0x5D:
                depth -= 1
                if depth == 0:
                    i += 1
                    done = True
                    break
            i += 1
        self.depth = depth
        self.instr = instr
        self.esc = esc
        k = i - a
        if k and not self.long and not (self.skip and self.ctx == _X_MEMBER):
            m = self.cl
            if m + k > CAP:
                self.long = True
            else:
                self.cap[m:m + k] = memoryview(b)[a:i]
                self.cl = m + k
        if done:
            self._done()
        return i

    def _value(self):
        """The captured text parsed, _BAD if it is too long or not JSON. Decoded first: bytes
        would let CPython's json.loads guess another encoding (a BOM, UTF-16) than the payload's."""
        if self.long:
            return _BAD
        try:
            return json.loads(str(memoryview(self.cap)[:self.cl], 'utf-8'))
        except Exception:
            return _BAD

    def _done(self):
        ctx = self.ctx
        if ctx == _X_KEY:
            key = self._value()
            if not isinstance(key, str):
                self.fatal = 'schedule: not JSON: a key that is not a string of at most %d bytes' % CAP
                return
            self.key = key
            self.skip = key not in _TOP
            if self.skip and key not in self.unknown:
                self.nunk += 1
                if len(self.unknown) < self.maxe:
                    self.unknown.append(key)
            self.st = _COLON
        elif ctx == _X_MEMBER:
            self.st = _AFTER
            if self.skip:
                return
            key = self.key
            v = self._value()
            if self.long:
                self._jerr('schedule: %s: longer than %d bytes' % (key, CAP))
            elif v is _BAD:
                self._jerr('schedule: %s: not valid JSON' % key)
            elif key == 'intervals':
                self._iv_reset(True, False)     # not a list (a list is streamed)
            elif key != 'ctr' and key != 'mac':
                self.top[key] = v
        else:
            self.st = _ARR_AFTER
            if self.over:
                return
            self._interval(self._value())

    def finish(self):
        """The compiled Schedule, or ScheduleError listing the problems."""
        if self.fatal is None and self.st != _END:
            self.fatal = 'schedule: not JSON: it ends early (%d bytes)' % self.pos
        errs = self.jerrs
        nerr = self.njerr
        if self.fatal is not None:
            errs.append(self.fatal)
            _raise(errs, nerr + 1)
        for k in self.unknown:
            errs.append('schedule: unknown key %r' % k)
        nerr += self.nunk
        top = self.top
        n0 = len(errs)
        _head(errs, top, self.comm, self.last)
        nerr += len(errs) - n0
        n = self.n
        if not self.iv_seen or not self.iv_list or self.over:
            errs.append(_LIST_ERR)
            nerr += 1
            n = 0
        cr, vu = top.get('created'), top.get('valid_until')
        times = _times(cr, vu) and n > 0 and self.p is not None
        if times:
            crp = cr - self.p
            vup = vu - self.p
        j = 0
        ierrs = self.ierrs
        start = self.start
        end = self.end
        for k in range(n):
            if times and self.ok_t[k] and (start[k] < crp or end[k] > vup):
                nerr += 1
                if len(errs) < self.maxe:
                    errs.append('intervals[%d]: outside created .. valid_until' % k)
            while j < len(ierrs) and ierrs[j][0] == k:
                if len(errs) < self.maxe:
                    errs.append(ierrs[j][1])
                j += 1
        nerr += self.nierr
        if nerr:
            _raise(errs, nerr)
        # valid: offsets from created (< 7 days: small ints), n of them; each 64-bit array is
        # dropped as soon as its 32-bit copy exists (a lower peak)
        self.cap = self.ok_t = None
        d = cr - self.p if n else 0
        s0 = array('i', bytes(4 * n))
        for k in range(n):
            s0[k] = start[k] - d
        self.start = start = None
        e0 = array('i', bytes(4 * n))
        for k in range(n):
            e0[k] = end[k] - d
        self.end = end = None
        cols = self.cols
        df = top['default']
        for f in FIELDS:
            a = cols.get(f)
            if a is None:
                if f not in df:
                    continue
                a = _column(n + 1)
            elif n < MAX_INTERVALS:
                a = a[:n + 1]
            if f in df:
                a[n] = _code(f, df[f])
            cols[f] = a
        return Schedule(top['id'], top['version'], cr, vu - cr, top.get('randomize_s', 0), s0, e0, cols)


def _clamp(v):
    return _CLAMP if v > _CLAMP else -_CLAMP if v < -_CLAMP else v


def _raise(errs, nerr):
    if nerr > len(errs):
        errs.append('... and %d more' % (nerr - len(errs)))
    raise ScheduleError('schedule rejected:\n  ' + '\n  '.join(errs))


def load_stream(read, commissioned=None, last_version=0, mac=None, buf=None, max_errors=MAX_ERRORS):
    """Check and compile a schedule as its payload arrives: read(buf) fills the bytearray buf
    (CHUNK bytes when None; a file's readinto) and returns the count, 0 at the end. mac: a
    MacStream when the topic is signed (it sees every byte; a bad mac is the only problem then
    reported). Returns a schedule.Schedule or raises ScheduleError listing the problems (the
    first max_errors): the same decision and messages as compile_(json.loads(payload)), except
    that one member or interval longer than CAP bytes is a problem of its own. Always reads to
    the end, so the stream stays in step."""
    if buf is None:
        buf = bytearray(CHUNK)
    mv = memoryview(buf)
    ld = _Load(commissioned, last_version, max_errors)
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


def loads(payload, commissioned=None, last_version=0, mac=None, chunk=CHUNK, max_errors=MAX_ERRORS):
    """load_stream over bytes in memory, chunk bytes at a time (tests; a payload already held)."""
    src = memoryview(payload)
    pos = [0]

    def read(buf):
        p = pos[0]
        k = min(len(buf), len(src) - p)
        buf[:k] = src[p:p + k]
        pos[0] = p + k
        return k
    return load_stream(read, commissioned, last_version, mac, bytearray(chunk), max_errors)


# --- HMAC of a signed schedule, as it streams in --------------------------------------------------
# The scheme of lib/commands.py (Auth.verify / sign): HMAC-SHA256 with the device key over
# "<topic>\n<payload without the mac member>", the mac being the payload's last member
# ,"mac":"<64 hex>"}. Importing commands here would bring it and bess_config into the heap
# (~9 KB on 32-bit) while a schedule loads, so the few lines are repeated here;
# host_tests/test_schedule_stream.py checks both agree.
_MAC_HEAD = b',"mac":"'
_MAC_LEN = const(64)
_MAC_TAIL_LEN = const(74)       # len(_MAC_HEAD) + _MAC_LEN + 2: ,"mac":"<64 hex>"}


def equal_ct(a, b):
    """Constant-time comparison of two byte strings (as commands.equal_ct)."""
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0


class MacStream:
    """HMAC-SHA256 of a signed payload fed chunk by chunk: update(chunk) with every byte in
    order, then ok(). total_len (the payload's length, known before it arrives: the MQTT
    packet's remaining length) says where the mac member starts: bytes before it are hashed as
    they come, the 74-byte tail is kept. why: the reason when ok() is False."""

    def __init__(self, key, topic, total_len):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key + bytes(64 - len(key))
        self._outer = hashlib.sha256(bytes([b ^ 0x5C for b in key]))
        self._inner = hashlib.sha256(bytes([b ^ 0x36 for b in key]))
        if isinstance(topic, str):
            topic = topic.encode()
        self._inner.update(topic)
        self._inner.update(b'\n')
        self._total = total_len
        self._body = total_len - _MAC_TAIL_LEN      # bytes covered by the mac, less the closing }
        self._tail = bytearray(_MAC_TAIL_LEN)
        self._pos = 0
        self.why = None

    def update(self, chunk):
        p = self._pos
        n = len(chunk)
        body = self._body
        if p < body:
            self._inner.update(chunk if p + n <= body else chunk[:body - p])
        lo = max(p, body, 0)
        hi = min(p + n, self._total)
        if hi > lo:
            self._tail[lo - body:hi - body] = chunk[lo - p:hi - p]
        self._pos = p + n

    def ok(self):
        """True when the payload carried a valid mac. Call once, after the last update()."""
        t = self._tail
        if self._pos != self._total or self._body < 2 or t[:len(_MAC_HEAD)] != _MAC_HEAD \
                or t[_MAC_TAIL_LEN - 2:] != b'"}':
            self.why = 'unauthorized: mac required as the last member ,"mac":"<64 hex>"}'
            return False
        try:
            mac = binascii.unhexlify(t[len(_MAC_HEAD):_MAC_TAIL_LEN - 2])
        except Exception:
            self.why = 'unauthorized: mac is not hex'
            return False
        self._inner.update(b'}')
        self._outer.update(self._inner.digest())
        if not equal_ct(self._outer.digest(), mac):
            self.why = 'unauthorized: bad mac'
            return False
        return True


def sign_schedule(key, topic, body):
    """Host side: the payload to publish for a schedule (body: compact JSON object, bytes or
    str, without the mac member): commands.sign, the same scheme as the commands."""
    from commands import sign
    return sign(key, topic, body)
