# umodbus (micropython-modbus 2.3.7, fetched into build/vendor by tools/fetch_vendor.py) behind
# the same transact() interface as rtu.RtuMaster, for comparison and for non-hot-path use.
#
# What this wrapper adds to umodbus.serial.Serial:
#   * a real response timeout: umodbus polls any() up to 119 times with a 3.5-char sleep
#     (~477 ms at 9600 bd) whatever happens (issue #86). Unless stock=True, _uart_read() is
#     replaced by one with timeout_ms for the first byte and t3.5 of silence for the frame end.
#   * status codes instead of its generic exceptions (OSError('no data received from slave'),
#     OSError('invalid response CRC'), ValueError('wrong slave address'),
#     ValueError('slave returned exception code: N')), a short frame told apart from a bad CRC,
#     and checks umodbus omits: response function code and byte count.
#   * unsigned registers (umodbus reads signed by default).
# The UART and DE pin objects are passed in (Serial() would build its own from uart_id/pins).
from umodbus.serial import Serial

from rtu import (OK, NO_RESPONSE, BAD_CRC, WRONG_UNIT, GARBLED, BAD_ARG, IO_ERROR, EXC,  # noqa
                 expected_len)


class _Serial(Serial):
    def __init__(self, uart, de, baudrate, bits, stop, timeout_ms, stock):
        # same fields as Serial.__init__, without constructing the UART/Pin
        self._uart = uart
        self._ctrlPin = de
        self._has_uart_flush = hasattr(uart, 'flush')
        self._t1char = (1000000 * (bits + stop + 2)) // baudrate
        self._inter_frame_delay = (self._t1char * 3500) // 1000 if baudrate <= 19200 else 1750
        self.timeout_ms = timeout_ms
        self.stock = stock
        self.last = b''

    def _uart_read(self):
        if self.stock:
            r = Serial._uart_read(self)
        else:
            import time
            r = bytearray()
            t0 = time.ticks_us()
            last = t0
            tmo = self.timeout_ms * 1000
            while True:
                if self._uart.any():
                    r.extend(self._uart.read())
                    last = time.ticks_us()
                    if self._exit_read(r):
                        break
                    continue
                now = time.ticks_us()
                if not r:
                    if time.ticks_diff(now, t0) >= tmo:
                        break
                elif time.ticks_diff(now, last) >= self._inter_frame_delay:
                    break
                time.sleep_us(500)
        self.last = r
        return r


class UmodbusMaster:
    def __init__(self, uart, de=None, baudrate=9600, bits=8, parity=None, stop=1,
                 timeout_ms=200, stock=False):
        self.s = _Serial(uart, de, baudrate, bits, stop, timeout_ms, stock)
        self.timeout_ms = timeout_ms

    def _classify(self, e, fc, arg):
        msg = e.args[0] if e.args else ''
        if not isinstance(msg, str):
            return IO_ERROR
        if 'no data' in msg:
            return NO_RESPONSE
        if 'CRC' in msg:
            r = self.s.last
            n = len(r)
            if n < 5 or (n < expected_len(fc, arg) and r[1] != (fc | 0x80)):
                return GARBLED
            return BAD_CRC
        if 'wrong slave' in msg:
            return WRONG_UNIT
        if 'exception code' in msg:
            try:
                return EXC + int(msg.split(':')[-1])
            except ValueError:
                return GARBLED
        return GARBLED

    def transact(self, unit, fc, addr, arg, values=None, into=None):
        s = self.s
        s.timeout_ms = self.timeout_ms
        if not (1 <= unit <= 247) or not (0 <= addr <= 0xFFFF):
            return BAD_ARG
        try:
            if fc == 3 or fc == 4:
                if not (1 <= arg <= 125):
                    return BAD_ARG
                if fc == 3:
                    r = s.read_holding_registers(unit, addr, arg, False)
                else:
                    r = s.read_input_registers(unit, addr, arg, False)
                last = s.last
                if len(r) != arg or last[1] != fc or last[2] != 2 * arg:
                    return GARBLED
                if into is not None:
                    for i in range(arg):
                        into[i] = r[i]
                return OK
            if fc == 6:
                ok = s.write_single_register(unit, addr, arg & 0xFFFF, False)
            elif fc == 16:
                if values is None or not (1 <= arg <= 123):
                    return BAD_ARG
                ok = s.write_multiple_registers(unit, addr, [v & 0xFFFF for v in values[:arg]],
                                                False)
            else:
                return BAD_ARG
            return OK if ok and s.last[1] == fc else GARBLED
        except (OSError, ValueError) as e:
            return self._classify(e, fc, arg)
        except Exception:           # IndexError/struct errors on mangled frames
            return GARBLED
