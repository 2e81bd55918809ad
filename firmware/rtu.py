# Allocation-light Modbus RTU master: one transaction at a time on a half-duplex RS-485 line.
#
# Preallocated request/response buffers, table-driven CRC16, FC03/FC04 (read), FC06 (write one),
# FC16 (write many). Integer-only. After the first request of each length (a memoryview of the
# request buffer is cached per length), a transaction allocates nothing on MicroPython: registers
# are stored into a caller-owned list/array.
#
# Timing (char_us = (1 + bits + parity + stop) * 10^6 / baud: 1041 us at 9600 8N1, 1145 us 8E1):
#   * before sending: the line must have been silent for t3.5 = 3.5 chars (1750 us above 19200 bd)
#   * DE/RE is asserted, the request written, and DE released once the last stop bit is out:
#     UART.txdone() where the port has it, else the computed on-wire time n x char_us; plus a
#     guard of one bit time.
#   * response timeout: timeout_ms for the FIRST byte, counted from the end of the request on
#     the wire. Then the frame ends when the expected length is reached (known from the request:
#     5 + 2 x count for reads, 8 for writes, 5 for an exception) or after gap_us of silence
#     (t3.5, raise it for USB adapters that deliver in bursts), or when the buffer is full.
#   Worst case per attempt: tx + timeout_ms + rx(expected) + gap_us.
#
# Status codes (ints; never raises into the caller):
OK = 0
NO_RESPONSE = 1     # timeout, not a single byte
BAD_CRC = 2         # complete frame shaped like the expected answer, wrong CRC
WRONG_UNIT = 3      # valid frame from another unit id
GARBLED = 4         # short/truncated frame, unexpected function code, byte count or echo mismatch
BAD_ARG = 5         # request not sent: argument out of range
IO_ERROR = 6        # the UART raised
EXC = 0x80          # EXC + n: exception response with exception code n (0x82: illegal address)
STATUS_NAMES = ('ok', 'no_response', 'bad_crc', 'wrong_unit', 'garbled', 'bad_arg', 'io_error')


def status_name(st):
    if st >= EXC:
        return 'exception_%d' % (st - EXC)
    return STATUS_NAMES[st] if 0 <= st < len(STATUS_NAMES) else 'status_%d' % st


try:
    from micropython import const
except ImportError:         # CPython: decode() and crc16() are portable for host tests
    def const(x):
        return x

from array import array

_BUF = const(256)           # max RTU ADU
_CHUNK = const(32)


def _mk_table():
    t = array('H', [0] * 256)
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c >> 1) ^ 0xA001) if (c & 1) else (c >> 1)
        t[i] = c
    return t


_CRC = _mk_table()


def crc16(buf, n):
    """Modbus CRC16 of buf[0:n] (low byte is sent first)."""
    crc = 0xFFFF
    t = _CRC
    for i in range(n):
        crc = (crc >> 8) ^ t[(crc ^ buf[i]) & 0xFF]
    return crc


def expected_len(fc, arg):
    """Length of a normal response to a request (fc, qty/value)."""
    if fc == 3 or fc == 4:
        return 5 + 2 * arg
    return 8


def decode(b, n, unit, fc, addr, arg, into):
    """Classify the response b[0:n] to request (unit, fc, addr, arg) and, for a good read, store
    arg registers (unsigned 16-bit) into into[0:arg]. arg: register count (FC03/04/16) or the
    written value (FC06). Returns a status code; raises nothing for any content of b."""
    if n <= 0:
        return NO_RESPONSE
    if n < 5 or n > len(b):
        return GARBLED
    rfc = b[1]
    if rfc == (fc | 0x80):
        flen = 5
    elif rfc == fc:
        flen = (5 + b[2]) if (fc == 3 or fc == 4) else 8
    else:                                   # not shaped like an answer to this request
        c = crc16(b, n - 2)
        if b[n - 2] == (c & 0xFF) and b[n - 1] == (c >> 8) and b[0] != unit:
            return WRONG_UNIT               # a valid frame of/for another unit
        return GARBLED
    if flen > n:
        return GARBLED                      # truncated
    c = crc16(b, flen - 2)
    if b[flen - 2] != (c & 0xFF) or b[flen - 1] != (c >> 8):
        return BAD_CRC
    if b[0] != unit:
        return WRONG_UNIT
    if flen != n:
        return GARBLED                      # trailing bytes after a valid frame
    if rfc == (fc | 0x80):
        return (EXC + b[2]) if b[2] else GARBLED
    if fc == 3 or fc == 4:
        if b[2] != 2 * arg:
            return GARBLED
        if into is not None:
            j = 3
            for i in range(arg):
                into[i] = (b[j] << 8) | b[j + 1]
                j += 2
        return OK
    if ((b[2] << 8) | b[3]) != addr:
        return GARBLED
    if ((b[4] << 8) | b[5]) != (arg & 0xFFFF):
        return GARBLED
    return OK


class RtuMaster:
    """transact(unit, fc, addr, arg, values, into) -> status. See the header for timing."""

    def __init__(self, uart, de=None, baudrate=9600, bits=8, parity=None, stop=1,
                 timeout_ms=200, gap_us=0, de_guard_us=-1):
        self.uart = uart
        self.de = de
        nbits = 1 + bits + (0 if parity is None else 1) + stop
        self.char_us = nbits * 1000000 // baudrate
        self.t35_us = (35 * self.char_us // 10) if baudrate <= 19200 else 1750
        self.gap_us = gap_us if gap_us > self.t35_us else self.t35_us
        self.timeout_ms = timeout_ms
        self.de_guard_us = (1000000 // baudrate + 1) if de_guard_us < 0 else de_guard_us
        self._poll_us = self.char_us if self.char_us < 1000 else 1000
        self._req = bytearray(_BUF)
        self._rsp = bytearray(_BUF)
        self._chunk = bytearray(_CHUNK)
        self._mv = {}               # request length -> memoryview(self._req)[:n]
        self._has_txdone = hasattr(uart, 'txdone')
        import time
        self._time = time
        self._t_idle = time.ticks_us()
        self.rx_n = 0               # bytes received for the last request
        self.stale = 0              # bytes found in the RX buffer before a request (late, noise)
        self.tx_us = 0              # DE asserted -> released, last request

    @property
    def response(self):
        """memoryview of the last received bytes (diagnostics; allocates)."""
        return memoryview(self._rsp)[:self.rx_n]

    def _build(self, unit, fc, addr, arg, values):
        r = self._req
        if not (0 <= unit <= 247) or not (0 <= addr <= 0xFFFF):
            return 0
        r[0] = unit
        r[1] = fc
        r[2] = addr >> 8
        r[3] = addr & 0xFF
        if fc == 3 or fc == 4:
            if not (1 <= arg <= 125) or unit == 0:
                return 0
            r[4] = arg >> 8
            r[5] = arg & 0xFF
            n = 6
        elif fc == 6:
            if not (-32768 <= arg <= 0xFFFF):
                return 0
            v = arg & 0xFFFF
            r[4] = v >> 8
            r[5] = v & 0xFF
            n = 6
        elif fc == 16:
            if values is None or not (1 <= arg <= 123) or len(values) < arg:
                return 0
            r[4] = 0
            r[5] = arg
            r[6] = 2 * arg
            n = 7
            for i in range(arg):
                v = values[i]
                if not (-32768 <= v <= 0xFFFF):
                    return 0
                v &= 0xFFFF
                r[n] = v >> 8
                r[n + 1] = v & 0xFF
                n += 2
        else:
            return 0
        c = crc16(r, n)
        r[n] = c & 0xFF
        r[n + 1] = c >> 8
        return n + 2

    def _send(self, n):
        t = self._time
        uart = self.uart
        chunk = self._chunk
        while uart.any():           # drain what arrived since the last transaction
            k = uart.readinto(chunk)
            if not k:
                break
            self.stale += k
        w = t.ticks_diff(t.ticks_add(self._t_idle, self.t35_us), t.ticks_us())
        if w > 0:                   # keep >= 3.5 chars of silence between frames
            t.sleep_us(w)
        mv = self._mv.get(n)
        if mv is None:
            mv = memoryview(self._req)[:n]
            self._mv[n] = mv
        de = self.de
        if de is not None:
            de.value(1)
        t0 = t.ticks_us()
        uart.write(mv)
        wire_end = t.ticks_add(t0, n * self.char_us)
        if de is not None:
            # sleep through most of the frame, then make sure the last stop bit is out
            d = t.ticks_diff(wire_end, t.ticks_us()) - self.char_us
            if d > 0:
                t.sleep_us(d)
            if self._has_txdone:
                while not uart.txdone():
                    pass
                t.sleep_us(self.de_guard_us)
            else:
                d = t.ticks_diff(wire_end, t.ticks_us()) + self.de_guard_us
                if d > 0:
                    t.sleep_us(d)
            de.value(0)
            self.tx_us = t.ticks_diff(t.ticks_us(), t0)
            return t.ticks_us()
        return wire_end             # no direction pin (auto-direction adapter)

    def _recv(self, t_start, expect, fc):
        t = self._time
        uart = self.uart
        rsp = self._rsp
        chunk = self._chunk
        size = len(rsp)
        tmo = self.timeout_ms * 1000
        gap = self.gap_us
        n = 0
        last = t_start
        efc = fc | 0x80
        while True:
            k = uart.any()
            if k:
                lim = expect - n
                if lim > _CHUNK:
                    lim = _CHUNK
                if lim <= 0:
                    lim = 1
                k = uart.readinto(chunk, lim)
                if k:
                    for i in range(k):
                        if n < size:
                            rsp[n] = chunk[i]
                            n += 1
                    last = t.ticks_us()
                    if n >= 2 and expect != size:
                        if rsp[1] == efc:
                            expect = 5
                        elif rsp[1] != fc:
                            expect = size   # unknown frame: read until silence
                    if n >= expect or n >= size:
                        break
                    continue
            now = t.ticks_us()
            if n == 0:
                if t.ticks_diff(now, t_start) >= tmo:
                    break
            elif t.ticks_diff(now, last) >= gap:
                break
            t.sleep_us(self._poll_us)
        self._t_idle = t.ticks_us()
        self.rx_n = n
        return n

    def transact(self, unit, fc, addr, arg, values=None, into=None):
        """One request/response. fc 3/4: arg = count, registers into into[0:count];
        fc 6: arg = value; fc 16: arg = count of values. Returns a status code."""
        n = self._build(unit, fc, addr, arg, values)
        if n == 0:
            return BAD_ARG
        try:
            t_end = self._send(n)
            if unit == 0:           # broadcast write: no response
                self._t_idle = self._time.ticks_us()
                self.rx_n = 0
                return OK
            m = self._recv(t_end, expected_len(fc, arg), fc)
        except OSError:
            if self.de is not None:
                try:
                    self.de.value(0)
                except Exception:
                    pass
            return IO_ERROR
        return decode(self._rsp, m, unit, fc, addr, arg, into)
