# Schedule format v1: the compiled form a device keeps while a schedule is in force (issue 11;
# docs/schedule.md).
#
# Resident (R) while a schedule is loaded: a Schedule's methods keep this module's globals alive,
# so it holds only the compiled form and the format's constants. Checking and compiling (validate,
# compile_ from a dict; load_stream from the payload as it streams in) live in lib/schedule_load.py,
# loaded on demand when a schedule arrives and dropped afterwards; the functions at the end are
# thin entry points to it for the host and the tests.
#
# The compiled form keeps interval times as offsets in seconds from `created` (small ints on
# 32-bit boards, where epoch seconds are heap ints) in preallocated arrays, so evaluating it per
# cycle (lib/plan.py) is allocation-free. Only the fields the schedule uses get a column, of as
# few bytes a value as its values need: 1 for codes and booleans, 2 for SoC in bp, 4 for the
# fields in W (names ending in _w, docs/units.md).
# Units: W, s, SoC in basis points; + discharge for battery power, as everywhere (docs/units.md).

from bess_core import NOT_SET, OBJECTIVES  # noqa: F401 (part of this module's interface)

FORMAT = 1
MAX_INTERVALS = 96
MAX_HORIZON_S = 7 * 86400       # valid_until - created
ID_MAX = 64
UNSET_NARROW = -1               # NOT_SET in a 1- or 2-byte column (no value of those fields is < 0)


class ScheduleError(ValueError):
    """Raised with every problem found, one per line."""


class Schedule:
    """A validated schedule, compiled.

    start, end: array('i') of n interval bounds, s from `created` (base_s, epoch s).
    fields: field name -> array of n + 1 codes (index n = the default block), only for the fields
    some interval or the default sets; a field without a column reads NOT_SET everywhere. Codes:
    the value in its unit; objective = index in OBJECTIVES; firm / export = 1 or 0. Columns of
    the fields in W (their names end in _w) are array('i') holding NOT_SET where unset, the
    others array('b') (objective, firm, export) or array('h') holding UNSET_NARROW: read them
    with get()."""

    def __init__(self, id_, version, base_s, valid_s, randomize_s, start, end, fields, n=-1):
        self.id = id_
        self.version = version
        self.base_s = base_s
        self.valid_s = valid_s
        self.randomize_s = randomize_s
        self.n = len(start) if n < 0 else n     # n: the arrays are a store()'s (longer)
        self.start = start
        self.end = end
        self.fields = fields

    def at(self, t_s):
        """Index of the interval in force t_s seconds after created, n for the default block, -1
        once the schedule has expired. (A linear scan for the host; lib/plan.py evaluates per
        cycle.)"""
        if t_s < 0 or t_s >= self.valid_s:
            return -1
        for k in range(self.n):
            if self.start[k] <= t_s < self.end[k]:
                return k
        return self.n

    def get(self, name, k):
        """Field `name` of interval k (n: the default block); NOT_SET if the schedule leaves it.
        Allocation-free (a dict lookup, an array read, small ints)."""
        a = self.fields.get(name)
        if a is None:
            return NOT_SET
        v = a[k]
        if v < 0 and not name.endswith('_w'):
            return NOT_SET
        return v


# --- entry points to lib/schedule_load.py (loaded on demand) -----------------------------------
def validate(d, commissioned=None, last_version=0):
    """Every problem of a schedule (a dict parsed from JSON), [] if it is valid
    (schedule_host.validate)."""
    from schedule_host import validate
    return validate(d, commissioned, last_version)


def compile_(d, commissioned=None, last_version=0):
    """Schedule from a parsed JSON object, or ScheduleError listing every problem."""
    from schedule_host import compile_
    return compile_(d, commissioned, last_version)


def load_stream(read, commissioned=None, last_version=0, mac=None, buf=None, store=None):
    """Schedule from the payload as it arrives, never holding its JSON tree
    (schedule_load.load_stream; store: a schedule_load.store() to fill in place)."""
    from schedule_load import load_stream
    return load_stream(read, commissioned, last_version, mac, buf, store=store)
