# RS-485 bus adapter: what the control loop calls to talk to the meter and the battery.
#
#   bus = Bus(RtuMaster(uart, de_pin, baudrate=9600, timeout_ms=200), retries=1)
#   bus.add_device(1, 'meter', min_interval_ms=100)
#   st = bus.read(1, 4, 0x0034, 2, regs)        # -> status code, regs[0:2] filled on OK
#   st = bus.write_registers(2, 47247, (hi, lo))
#
# Every call returns a status code from rtu.py (OK, NO_RESPONSE, BAD_CRC, WRONG_UNIT, GARBLED,
# BAD_ARG, IO_ERROR, EXC + exception code); nothing raises into the control loop. Each call makes
# up to 1 + retries attempts: transport faults (no response, bad CRC, wrong unit, garbled, I/O)
# and exception codes 5 (acknowledge) and 6 (busy) are retried; other exception responses are a
# definitive answer and are not. Per-device counters (array, no allocation when updated):
# attempts, every status class, retries, failed calls and the current run of failed calls.
#
# The master does the wire work (rtu.RtuMaster, allocation-free; or bus_umodbus.UmodbusMaster).
# min_interval_ms: quiet time enforced between the end of one request to a device and the start
# of the next one to the same device (an SDM630 wants >= 100 ms between queries).
from array import array

from rtu import (OK, NO_RESPONSE, BAD_CRC, WRONG_UNIT, GARBLED, BAD_ARG, IO_ERROR, EXC,  # noqa
                 status_name)

# counter indexes: 0..6 = status codes OK..IO_ERROR, then:
C_EXC = 7               # exception responses (any code)
C_ATTEMPTS = 8          # requests put on the wire (or attempted)
C_RETRIES = 9           # attempts after the first one of a call
C_FAILED = 10           # calls that returned something other than OK
C_RUN = 11              # failed calls in a row (0 after an OK)
_NC = 12
COUNTER_NAMES = ('ok', 'no_response', 'bad_crc', 'wrong_unit', 'garbled', 'bad_arg', 'io_error',
                 'exception', 'attempts', 'retries', 'failed_calls', 'failed_run')


class Device:
    def __init__(self, unit, name, min_interval_ms, retries, timeout_ms):
        self.unit = unit
        self.name = name
        self.min_interval_ms = min_interval_ms
        self.retries = retries
        self.timeout_ms = timeout_ms    # None: the master's default
        self.c = array('i', [0] * _NC)
        self.last_status = OK
        self.last_exc = 0               # last exception code received (0: none yet)
        self.t_end = None               # ticks_ms at the end of the last call

    def failed_calls(self):
        return self.c[C_FAILED]

    def stats(self):
        """Counters as a dict (for telemetry; allocates)."""
        d = {}
        for i in range(_NC):
            d[COUNTER_NAMES[i]] = self.c[i]
        d['last_status'] = status_name(self.last_status)
        d['last_exc'] = self.last_exc
        return d


def retryable(st):
    return st != OK and st != BAD_ARG and (st < EXC or st == EXC + 5 or st == EXC + 6)


class Bus:
    def __init__(self, master, retries=1, min_interval_ms=0):
        import time
        self._time = time
        self.m = master
        self.retries = retries
        self.min_interval_ms = min_interval_ms
        self._dev = {}

    def add_device(self, unit, name=None, min_interval_ms=None, retries=None, timeout_ms=None):
        d = Device(unit, name or 'unit%d' % unit,
                   self.min_interval_ms if min_interval_ms is None else min_interval_ms,
                   self.retries if retries is None else retries, timeout_ms)
        self._dev[unit] = d
        return d

    def device(self, unit):
        d = self._dev.get(unit)
        if d is None:                   # first contact with an unregistered unit (allocates once)
            d = self.add_device(unit)
        return d

    def stats(self):
        out = {}
        for u in self._dev:
            out[u] = self._dev[u].stats()
        return out

    def read(self, unit, fc, addr, count, into):
        """FC03 (holding) or FC04 (input): count registers from addr into into[0:count]."""
        if (fc != 3 and fc != 4) or into is None or len(into) < count:
            return self._bad(unit)
        return self._call(unit, fc, addr, count, None, into)

    def write_register(self, unit, addr, value):
        """FC06: one register (value 0..65535 or -32768..-1)."""
        return self._call(unit, 6, addr, value, None, None)

    def write_registers(self, unit, addr, values):
        """FC16: len(values) registers from addr."""
        if values is None:
            return self._bad(unit)
        return self._call(unit, 16, addr, len(values), values, None)

    def _bad(self, unit):
        d = self.device(unit)
        d.c[BAD_ARG] += 1
        d.c[C_FAILED] += 1
        d.last_status = BAD_ARG
        return BAD_ARG

    def _call(self, unit, fc, addr, arg, values, into):
        t = self._time
        d = self._dev.get(unit)
        if d is None:
            d = self.device(unit)
        c = d.c
        if d.t_end is not None and d.min_interval_ms > 0:
            w = d.min_interval_ms - t.ticks_diff(t.ticks_ms(), d.t_end)
            if w > 0:
                t.sleep_ms(w)
        m = self.m
        saved = m.timeout_ms
        if d.timeout_ms is not None:
            m.timeout_ms = d.timeout_ms
        st = IO_ERROR
        try:
            for attempt in range(d.retries + 1):
                if attempt:
                    c[C_RETRIES] += 1
                c[C_ATTEMPTS] += 1
                try:
                    st = m.transact(unit, fc, addr, arg, values, into)
                except MemoryError:
                    # not the line's fault: an allocation in the cycle (under check_alloc's
                    # heap_lock: the allocation-free proof must see it) or a heap exhausted.
                    # The cycle fails safe (0 W) and says so; counted as I/O it would hide.
                    raise
                except Exception:       # a master must not raise; if it does, count it
                    st = IO_ERROR
                if st >= EXC:
                    c[C_EXC] += 1
                    d.last_exc = st - EXC
                elif 0 <= st < C_EXC:
                    c[st] += 1
                if not retryable(st):
                    break
        finally:
            m.timeout_ms = saved
        d.last_status = st
        if st == OK:
            c[C_RUN] = 0
        else:
            c[C_FAILED] += 1
            c[C_RUN] += 1
        d.t_end = t.ticks_ms()
        return st
