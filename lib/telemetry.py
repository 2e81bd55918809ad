# Telemetry records: capture into a preallocated ring (store-and-forward), encode to JSON.
#
# Runs on CPython and MicroPython. capture() copies one record of integers out of a
# bess_core.Controller and a Stats object into a fixed array: no allocation as long as every
# value is a small int (the array never grows; when it is full the oldest record is dropped and
# counted). record_dict() allocates and belongs outside the control step, in the link.
#
# Delivery bookkeeping (three cursors, all counts from the oldest record held):
#   [oldest .. sent)  published on the current connection, not yet confirmed
#   [sent .. end)     not published yet
# confirm(n) frees the n oldest records (the link calls it when the broker has answered a
# PINGREQ sent after them: MQTT keeps order on one connection, so they were processed);
# rewind() (on disconnect) makes unconfirmed records unsent again. So a record is published at
# least once; it is published twice only if the connection dies between the publish and the
# broker's confirmation. Every record carries seq, so a consumer can drop such repeats.
# Schema: docs/telemetry.md.

from array import array

try:
    from micropython import const
except ImportError:             # CPython
    def const(x):
        return x

SCHEMA_VERSION = 2         # 2: the schedule in force, reserve, DLM limit (docs/telemetry.md)

# field order inside one ring slot
F_SEQ = const(0)
_F_TS_S = const(1)          # uptime, seconds: a small int (epoch seconds are heap ints on 32-bit boards);
                    # record_dict adds the wall clock at uptime 0 (epoch_s)
_F_TS_MS = const(2)         # milliseconds part 0..999
_F_GCP = const(3)
_F_L1 = const(4)
_F_L2 = const(5)
_F_L3 = const(6)
_F_PHASES = const(7)        # per-phase values valid
_F_LIMIT = const(8)         # import_limit_w in force
_F_SP = const(9)            # battery setpoint, + discharge
_F_BAT = const(10)          # battery actual, + discharge
_F_SOC = const(11)
_F_OBJ = const(12)          # objective code (bess_config.OBJECTIVES)
_F_STATE = const(13)        # bess_core.STATE_NAMES index
_F_BIND = const(14)         # bess_core.BINDING_NAMES index
_F_FLAGS = const(15)
_F_AV_CHG = const(16)
_F_AV_DIS = const(17)
_F_E_METER = const(18)      # error counters (cumulative since boot)
_F_E_BAT = const(19)
_F_E_CMD = const(20)        # rejected commands
_F_E_MQTT = const(21)       # MQTT connection losses
_F_E_DROP = const(22)       # telemetry records dropped by ring overflow
_F_HEAP = const(23)         # free heap, bytes
_F_CYC_MAX = const(24)      # longest cycle since the previous record, us
_F_DISP_LEFT = const(25)
_F_OVR_LEFT = const(26)
_F_RESERVE = const(27)      # reserve SoC in force, bp
_F_EV_LIM = const(28)       # DLM: import the site may draw now (bess_core Outputs.ev_limit_w)
_F_SCH_VER = const(29)      # schedule version in force (0: none)
_F_SCH_K = const(30)        # its interval index (-1: default block / none)
_F_SCH_SRC = const(31)      # plan source (lib/plan.py SOURCE_NAMES)
NFIELDS = 32
RECORD_BYTES = NFIELDS * 4     # one ring slot ('l' = 32 bit on ESP32 / RP2040)


class Stats:
    """Counters the runtime keeps (plain attributes; it increments them in place)."""

    def __init__(self):
        self.meter_err = 0
        self.bat_err = 0
        self.cmd_rejected = 0
        self.mqtt_lost = 0
        self.heap_free = 0
        self.cycle_max_us = 0       # capture() resets it: each record has the max since the last


def heap_free():
    """Free heap after a collection (MicroPython); CPython has no fixed heap: unlimited."""
    import gc
    gc.collect()
    f = getattr(gc, 'mem_free', None)
    return f() if f is not None else 1 << 30


class Ring:
    """Fixed-capacity ring of telemetry records (NFIELDS ints each, 'l' = 32 bit on ESP32/RP2040).

    The storage is a list of chunks of CHUNK records, allocated once: a fixed heap rarely has one
    contiguous block of tens of KB after boot, but has many of 1.7 KB. Ring(capacity) allocates
    them all; Ring(capacity, reserve) stops early (at least 1 chunk) when the heap would keep less
    than reserve bytes free or an allocation fails: cap then says how many records it holds."""

    CHUNK = 16

    def __init__(self, capacity, reserve=-1):
        if capacity < 1:
            raise ValueError('ring capacity must be >= 1')
        per = self.CHUNK
        self.chunks = []
        want = (capacity + per - 1) // per
        while len(self.chunks) < want:
            n = per if len(self.chunks) < want - 1 else capacity - per * (want - 1)
            if reserve >= 0 and self.chunks and heap_free() - n * RECORD_BYTES < reserve:
                break
            try:
                self.chunks.append(array('l', range(n * NFIELDS)))     # allocated once, never grows
            except MemoryError:
                if not self.chunks:
                    raise
                break
        self.cap = per * (len(self.chunks) - 1) + len(self.chunks[-1]) // NFIELDS
        self.head = 0           # slot of the oldest record
        self.count = 0          # records held
        self.sent = 0           # of those, published and awaiting confirmation
        self.seq = 0            # seq of the next record captured
        self.dropped = 0        # overflow count (oldest dropped)
        self.mark = 0           # records covered by the outstanding confirmation (set_mark)

    def __len__(self):
        return self.count

    def pending(self):
        """Records not published yet."""
        return self.count - self.sent

    def capture(self, ctl, ts_s, ts_ms, st):
        """Copy one record from controller ctl (its inp / out / config) and Stats st. Returns its seq.
        Allocation-free for small-int values."""
        cap = self.cap
        if self.count == cap:
            # full: drop the oldest (even if it was sent and awaits confirmation)
            self.head += 1
            if self.head == cap:
                self.head = 0
            self.count -= 1
            if self.sent > 0:
                self.sent -= 1
            if self.mark > 0:
                self.mark -= 1
            self.dropped += 1
        slot = self.head + self.count
        if slot >= cap:
            slot -= cap
        b = self.chunks[slot // self.CHUNK]
        o = (slot % self.CHUNK) * NFIELDS
        i = ctl.inp
        out = ctl.out
        b[o] = self.seq
        b[o + _F_TS_S] = ts_s
        b[o + _F_TS_MS] = ts_ms
        b[o + _F_GCP] = i.gcp_w
        b[o + _F_L1] = i.gcp_l1_w
        b[o + _F_L2] = i.gcp_l2_w
        b[o + _F_L3] = i.gcp_l3_w
        b[o + _F_PHASES] = 1 if i.phases_valid else 0
        b[o + _F_LIMIT] = out.import_limit_w
        b[o + _F_SP] = out.setpoint_w
        b[o + _F_BAT] = i.bat_w
        b[o + _F_SOC] = i.soc_bp
        b[o + _F_OBJ] = out.objective
        b[o + _F_STATE] = out.state
        b[o + _F_BIND] = out.binding
        b[o + _F_FLAGS] = out.flags
        b[o + _F_AV_CHG] = out.avail_chg_w
        b[o + _F_AV_DIS] = out.avail_dis_w
        b[o + _F_E_METER] = st.meter_err
        b[o + _F_E_BAT] = st.bat_err
        b[o + _F_E_CMD] = st.cmd_rejected
        b[o + _F_E_MQTT] = st.mqtt_lost
        b[o + _F_E_DROP] = self.dropped
        b[o + _F_HEAP] = st.heap_free
        b[o + _F_CYC_MAX] = st.cycle_max_us
        st.cycle_max_us = 0         # the next record reports the longest cycle after this one
        b[o + _F_DISP_LEFT] = out.dispatch_left_ms
        b[o + _F_OVR_LEFT] = out.override_left_ms
        b[o + _F_RESERVE] = out.reserve_bp
        b[o + _F_EV_LIM] = out.ev_limit_w
        b[o + _F_SCH_VER] = ctl.plan_version
        b[o + _F_SCH_K] = ctl.plan_k
        b[o + _F_SCH_SRC] = ctl.plan_src
        self.count += 1
        self.seq += 1
        return self.seq - 1

    def slot(self, k):
        """(chunk array, offset) of the k-th record held (0 = oldest). Allocates a tuple."""
        slot = self.head + k
        if slot >= self.cap:
            slot -= self.cap
        return self.chunks[slot // self.CHUNK], (slot % self.CHUNK) * NFIELDS

    def value(self, k, field):
        """One field (F_*) of the k-th record held."""
        b, o = self.slot(k)
        return b[o + field]

    def record_dict(self, k, epoch_s=0, sch_id=None, sch_version=0, rem_ms=0):
        b, o = self.slot(k)
        return record_dict(b, o, epoch_s, sch_id, sch_version, rem_ms)

    def next_unsent(self):
        """Index (from the oldest held) of the oldest unpublished record, or -1."""
        if self.sent >= self.count:
            return -1
        return self.sent

    def mark_sent(self):
        self.sent += 1

    def confirm(self, n):
        """The n oldest records are delivered: free them."""
        if n > self.sent:
            n = self.sent
        self.head += n
        if self.head >= self.cap:
            self.head -= self.cap
        self.count -= n
        self.sent -= n

    def set_mark(self):
        """A confirmation request (PINGREQ) goes out now: it covers every record sent so far."""
        self.mark = self.sent

    def confirm_mark(self):
        """Its answer arrived: free the records it covers."""
        self.confirm(self.mark)
        self.mark = 0

    def rewind(self):
        """Connection lost: unconfirmed records will be published again."""
        self.sent = 0
        self.mark = 0


def _names():
    # imported lazily so this module does not need the core for Ring alone
    from bess_core import STATE_NAMES, BINDING_NAMES, OBJECTIVES
    return STATE_NAMES, BINDING_NAMES, OBJECTIVES


def _name(names, i):
    return names[i] if 0 <= i < len(names) else str(i)


SOURCE_NAMES = ('config', 'schedule', 'default', 'fallback')     # = plan.SOURCE_NAMES


def record_dict(buf, o, epoch_s=0, sch_id=None, sch_version=0, rem_ms=0):
    """The schema-v2 record (a dict) at offset o of a ring buffer; epoch_s: wall clock (unix
    seconds) at uptime 0 and rem_ms its milliseconds, so ts_ms = (epoch_s + uptime s) * 1000 + ms +
    rem_ms. sch_id: the id of the
    schedule with version sch_version (the one in force now): a record of another version gets
    a null id (an older record still queued)."""
    ver = buf[o + _F_SCH_VER]
    sn, bn, on = _names()
    ph = buf[o + _F_PHASES]
    ts = (epoch_s + buf[o + _F_TS_S]) * 1000 + buf[o + _F_TS_MS] + rem_ms
    return {
        'v': SCHEMA_VERSION,
        'seq': buf[o],
        'ts_ms': ts,
        'gcp_w': buf[o + _F_GCP],
        'gcp_l1_w': buf[o + _F_L1] if ph else None,
        'gcp_l2_w': buf[o + _F_L2] if ph else None,
        'gcp_l3_w': buf[o + _F_L3] if ph else None,
        'import_limit_w': buf[o + _F_LIMIT],
        'bat_sp_w': buf[o + _F_SP],
        'bat_w': buf[o + _F_BAT],
        'soc_bp': buf[o + _F_SOC],
        'objective': _name(on, buf[o + _F_OBJ]),
        'state': _name(sn, buf[o + _F_STATE]),
        'binding': _name(bn, buf[o + _F_BIND]),
        'flags': buf[o + _F_FLAGS],
        'avail_chg_w': buf[o + _F_AV_CHG],
        'avail_dis_w': buf[o + _F_AV_DIS],
        'dispatch_left_ms': buf[o + _F_DISP_LEFT],
        'override_left_ms': buf[o + _F_OVR_LEFT],
        'err': {
            'meter': buf[o + _F_E_METER],
            'battery': buf[o + _F_E_BAT],
            'cmd_rejected': buf[o + _F_E_CMD],
            'mqtt_lost': buf[o + _F_E_MQTT],
            'ring_dropped': buf[o + _F_E_DROP],
        },
        'heap_free': buf[o + _F_HEAP],
        'cycle_max_us': buf[o + _F_CYC_MAX],
        'reserve_bp': buf[o + _F_RESERVE],
        'ev_limit_w': buf[o + _F_EV_LIM],
        'sch': {
            'id': sch_id if ver and ver == sch_version else None,
            'version': ver,
            'interval': buf[o + _F_SCH_K],
            'source': _name(SOURCE_NAMES, buf[o + _F_SCH_SRC]),
        },
    }


def state_dict(ctl, ts_ms):
    """The retained <prefix>/<id>/state message: published when state or objective changes."""
    sn, bn, on = _names()
    return {'v': SCHEMA_VERSION, 'ts_ms': ts_ms, 'state': _name(sn, ctl.out.state),
            'objective': _name(on, ctl.out.objective)}
