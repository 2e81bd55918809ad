# `machine` for the MicroPython unix port: the subset the firmware uses (UART, Pin, Timer, WDT,
# unique_id, reset, idle), backed by a pty or a real serial device (termios + select.poll).
#
# Put firmware/unix first on sys.path (MICROPYPATH=firmware/unix:firmware:lib:build/vendor); a
# machine.py found on the path replaces the unix port's built-in `machine`.
#
# Device path of UART(n): UART_DEVICES[n] (a board file sets it, e.g. UART_DEVICES[1] =
# '/dev/ttyUSB0' for a USB RS-485 adapter), else the environment variable MACHINE_UART<n>, else
# UART('/dev/ttyUSB0', ...) with the path as the id. Baud rate, bits, parity and stop bits are set
# with termios (raw mode, CLOCAL|CREAD, no flow control); on a pty they are accepted and ignored.
#
# Timing model: a pty delivers a write instantly. write() records when the last stop bit would
# leave a real wire (bytes x bits-per-char / baud); txdone() is False and flush() waits until
# then, so RS-485 direction (DE/RE) code runs with real-world timing.
#
# Timers and the watchdog are cooperative: the unix port has no usable threads (_thread is
# 'unsafe') and no signals, so they are serviced whenever the firmware enters this module:
# idle(), lightsleep(ms), UART any/read/readinto/write/flush, Pin writes, WDT.feed(), tick().
# The firmware's main loop waits with machine.idle() (on hardware it waits for the next
# interrupt, here it services timers and sleeps 1 ms) -- the same code runs on both.
# Soft timers run their callback through micropython.schedule; hard timers call it directly with
# the heap locked, so an allocation in a "hard ISR" raises MemoryError as it would on a board.
# WDT: on expiry (checked at those same points, and in feed() itself: a loop that stalled past
# the timeout and then feeds is reset, as hardware would have) the process prints a message to
# stderr and exits with code 4 (machine.reset() exits with 3). A hang in pure Python that never
# enters this module is not detected -- a supervisor's timeout covers that case.
import sys
import os
import time
import select
import termios
import micropython

UART_DEVICES = {}

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
EXIT_RESET = 3          # process exit code of reset()
EXIT_WDT = 4            # process exit code of a watchdog reset

# Linux termios values (the unix port's termios module exports only a few of them)
_CSIZE = 0o60
_CS = {5: 0, 6: 0o20, 7: 0o40, 8: 0o60}
_CSTOPB = 0o100
_CREAD = 0o200
_PARENB = 0o400
_PARODD = 0o1000
_CLOCAL = 0o4000
_CRTSCTS = 0o20000000000
_VTIME = 5
_VMIN = 6
_BAUD = {1200: 0o11, 2400: 0o13, 4800: 0o14, 9600: 0o15, 19200: 0o16, 38400: 0o17,
         57600: 0o10001, 115200: 0o10002, 230400: 0o10003, 460800: 0o10004, 921600: 0o10007}

_timers = []
_wdt = None
_trace = None           # list of (ticks_us, kind, a, b) while tracing (test aid; allocates)
_trace_max = 0


def trace_start(maxlen=256):
    """Record Pin writes and UART writes (for tests of DE/RE timing)."""
    global _trace, _trace_max
    _trace = []
    _trace_max = maxlen


def trace_stop():
    global _trace
    t, _trace = _trace, None
    return t or []


def _rec(kind, a, b):
    if _trace is not None and len(_trace) < _trace_max:
        _trace.append((time.ticks_us(), kind, a, b))


def _die(code, msg):
    try:
        sys.stderr.write(msg + '\n')
    except Exception:
        pass
    sys.exit(code)


def _check_wdt():
    w = _wdt
    if w is not None and time.ticks_diff(time.ticks_ms(), w._fed) > w._timeout:
        _die(EXIT_WDT, 'machine.WDT: not fed for %d ms (timeout %d ms): reset'
             % (time.ticks_diff(time.ticks_ms(), w._fed), w._timeout))


def tick():
    """Service due timers and the watchdog. Called from every waiting point of this module."""
    _check_wdt()
    if not _timers:
        return
    now = time.ticks_ms()
    for t in _timers:
        if t._cb is not None and time.ticks_diff(now, t._due) >= 0:
            t._fire(now)


def idle():
    tick()
    time.sleep_ms(1)


def lightsleep(ms=None):
    if ms is None:
        ms = 1000
    end = time.ticks_add(time.ticks_ms(), ms)
    while True:
        tick()
        left = time.ticks_diff(end, time.ticks_ms())
        if left <= 0:
            return
        time.sleep_ms(left if left < 5 else 5)


def deepsleep(ms=None):
    _die(EXIT_RESET, 'machine.deepsleep: reset')


def reset():
    _die(EXIT_RESET, 'machine.reset()')


def soft_reset():
    _die(EXIT_RESET, 'machine.soft_reset()')


def reset_cause():
    return PWRON_RESET


def freq(*a):
    return 0


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


def unique_id():
    h = os.getenv('MACHINE_UNIQUE_ID')
    try:
        if h is None:
            with open('/etc/machine-id') as f:
                h = f.read().strip()[:12]
        import binascii
        return binascii.unhexlify(h)
    except Exception:
        return b'unix00'


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, value=None, **kw):
        self.id = id
        self.mode = mode
        self._v = 0
        self.toggles = 0        # number of level changes
        self.t_high_us = 0      # ticks_us of the last rising edge
        self.t_low_us = 0       # ticks_us of the last falling edge
        if value is not None:
            self._set(value)

    def init(self, mode=-1, pull=-1, value=None, **kw):
        if mode != -1:
            self.mode = mode
        if value is not None:
            self._set(value)

    def _set(self, v):
        v = 1 if v else 0
        if v != self._v:
            self._v = v
            self.toggles += 1
            if v:
                self.t_high_us = time.ticks_us()
            else:
                self.t_low_us = time.ticks_us()
            if _trace is not None:
                _rec('pin', self.id, v)
        _check_wdt()

    def value(self, v=None):
        if v is None:
            return self._v
        self._set(v)

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self._set(1)

    def off(self):
        self._set(0)

    high = on
    low = off

    def toggle(self):
        self._set(1 - self._v)

    def irq(self, handler=None, trigger=3, hard=False):
        return None

    def __repr__(self):
        return 'Pin(%r, value=%d)' % (self.id, self._v)


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id=-1, *a, **kw):
        self.id = id
        self._cb = None
        if a or kw:
            self.init(*a, **kw)

    def init(self, mode=1, freq=-1, period=-1, callback=None, hard=False, tick_hz=1000):
        if freq > 0:
            period = 1000 // freq if freq <= 1000 else 1
        if period <= 0:
            period = 1000
        self._mode = mode
        self._period = period
        self._hard = hard
        self._due = time.ticks_add(time.ticks_ms(), period)
        self._cb = callback
        self.overruns = 0       # schedule queue full, or periods skipped because nobody ticked
        if self not in _timers:
            _timers.append(self)

    def deinit(self):
        self._cb = None
        if self in _timers:
            _timers.remove(self)

    def _fire(self, now):
        cb = self._cb
        if self._mode == Timer.PERIODIC:
            self._due = time.ticks_add(self._due, self._period)
            late = time.ticks_diff(now, self._due)
            if late >= 0:       # missed whole periods: do not fire a burst, skip them
                skip = late // self._period + 1
                self.overruns += skip
                self._due = time.ticks_add(self._due, skip * self._period)
        else:
            self._cb = None
            _timers.remove(self)
        if self._hard:
            micropython.heap_lock()
            try:
                cb(self)
            finally:
                micropython.heap_unlock()
        else:
            try:
                micropython.schedule(cb, self)
            except RuntimeError:    # schedule queue full
                self.overruns += 1


class WDT:
    def __init__(self, id=0, timeout=5000):
        global _wdt
        if timeout < 1:
            raise ValueError('timeout')
        self._timeout = timeout
        self._fed = time.ticks_ms()
        _wdt = self             # like hardware: cannot be stopped once started

    def feed(self):
        _check_wdt()
        self._fed = time.ticks_ms()


def _device_for(id):
    if isinstance(id, str):
        return id
    p = UART_DEVICES.get(id)
    if p is None:
        p = os.getenv('MACHINE_UART%d' % id)
    if p is None:
        raise OSError(19, 'UART(%d): no device; set machine.UART_DEVICES[%d] or MACHINE_UART%d'
                      % (id, id, id))
    return p


class UART:
    INV_TX = 1
    INV_RX = 2
    RTS = 1
    CTS = 2

    def __init__(self, id, baudrate=9600, bits=8, parity=None, stop=1, **kw):
        self.id = id
        self._f = None
        self._path = _device_for(id)
        self._one = bytearray(1)
        self._rb = bytearray(kw.get('rxbuf', 512))
        self._head = 0
        self._cnt = 0
        self.overflows = 0
        self._tx_end = time.ticks_us()
        self.init(baudrate, bits, parity, stop, **kw)

    def init(self, baudrate=9600, bits=8, parity=None, stop=1, tx=None, rx=None, timeout=0,
             timeout_char=0, rxbuf=None, txbuf=None, flow=0, invert=0, **kw):
        if baudrate not in _BAUD:
            raise ValueError('baudrate %d not supported' % baudrate)
        if bits not in _CS or parity not in (None, 0, 1) or stop not in (1, 2):
            raise ValueError('bits/parity/stop')
        self.baudrate = baudrate
        self.bits = bits
        self.parity = parity
        self.stop = stop
        self.timeout = timeout
        self.timeout_char = timeout_char
        # on-wire time of one character: start + data + parity + stop bits
        self.char_us = (1 + bits + (0 if parity is None else 1) + stop) * 1000000 // baudrate
        if self._f is None:
            if not self._path.startswith('/dev/pts/'):
                # open() has no O_NONBLOCK/O_NOCTTY here: with CLOCAL off, opening a real serial
                # port can block waiting for carrier (DCD), which RS-485 adapters never raise
                os.system('stty -F %s clocal -hupcl 2>/dev/null' % self._path)
            self._f = open(self._path, 'r+b')
            self._poll = select.poll()
            self._poll.register(self._f, select.POLLIN)
        fd = self._f.fileno()
        termios.setraw(fd)
        a = termios.tcgetattr(fd)
        a[0] = 0                                            # iflag: no parity check/strip, no XON
        a[1] = 0                                            # oflag: raw
        c = a[2] & ~(_CSIZE | _PARENB | _PARODD | _CSTOPB | _CRTSCTS)
        c |= _CS[bits] | _CREAD | _CLOCAL
        if parity is not None:
            c |= _PARENB | (_PARODD if parity == 1 else 0)
        if stop == 2:
            c |= _CSTOPB
        a[2] = c
        self.cflag = c          # as requested (a pty keeps CS8 and drops PARENB: kernel pty.c)
        a[3] = 0                                            # lflag: no echo, no canonical mode
        a[4] = a[5] = _BAUD[baudrate]
        a[6][_VMIN] = 1
        a[6][_VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, a)

    def deinit(self):
        if self._f is not None:
            self._poll.unregister(self._f)
            self._f.close()
            self._f = None

    # -- receive ---------------------------------------------------------------------------
    def _readable(self, ms):
        for _ in self._poll.ipoll(ms):
            return True
        return False

    def _fill(self):
        # move every byte the fd has now into the ring buffer (a pty readinto() blocks until
        # its buffer is full, so read one byte at a time while poll says readable)
        rb = self._rb
        size = len(rb)
        one = self._one
        while self._readable(0):
            if self._f.readinto(one) != 1:
                break
            if self._cnt == size:               # overrun: drop the oldest byte, like a FIFO
                self._head = (self._head + 1) % size
                self._cnt -= 1
                self.overflows += 1
            rb[(self._head + self._cnt) % size] = one[0]
            self._cnt += 1
        return self._cnt

    def _wait(self, ms):
        # wait up to ms for at least one byte, servicing timers/WDT every 10 ms
        if self._fill():
            return True
        end = time.ticks_add(time.ticks_ms(), ms)
        while True:
            tick()
            left = time.ticks_diff(end, time.ticks_ms())
            if left <= 0:
                return self._fill() > 0
            if self._readable(left if left < 10 else 10):
                return self._fill() > 0

    def any(self):
        tick()
        return self._fill()

    def readinto(self, buf, nbytes=None):
        n = len(buf) if nbytes is None else min(nbytes, len(buf))
        if n == 0 or not self._wait(self.timeout):
            return None
        rb = self._rb
        size = len(rb)
        got = 0
        while got < n:
            if self._cnt == 0 and not self._wait(self.timeout_char):
                break
            buf[got] = rb[self._head]
            self._head = (self._head + 1) % size
            self._cnt -= 1
            got += 1
        return got

    def read(self, nbytes=None):
        if nbytes is None:
            if not self._wait(self.timeout):
                return None
            if self.timeout_char:       # keep collecting until a gap of timeout_char ms
                while self._cnt < len(self._rb) and self._readable(self.timeout_char):
                    self._fill()
            buf = bytearray(self._cnt)
        else:
            buf = bytearray(nbytes)
        n = self.readinto(buf)
        if n is None:
            return None
        return bytes(buf) if n == len(buf) else bytes(buf[:n])

    def readline(self):
        out = bytearray()
        while True:
            b = self.read(1)
            if b is None:
                return bytes(out) if out else None
            out.extend(b)
            if b == b'\n':
                return bytes(out)

    # -- transmit --------------------------------------------------------------------------
    def write(self, buf):
        tick()
        n = len(buf)
        done = 0
        while done < n:
            if done == 0:
                k = self._f.write(buf)
            else:
                k = self._f.write(memoryview(buf)[done:])
            if not k:
                break
            done += k
        now = time.ticks_us()
        # a new write queues behind bytes still "on the wire"
        start = self._tx_end if time.ticks_diff(self._tx_end, now) > 0 else now
        self._tx_end = time.ticks_add(start, done * self.char_us)
        if _trace is not None:
            _rec('tx', done, self._tx_end)
        return done

    def txdone(self):
        return time.ticks_diff(time.ticks_us(), self._tx_end) >= 0

    def flush(self):
        while True:
            tick()
            left = time.ticks_diff(self._tx_end, time.ticks_us())
            if left <= 0:
                return
            time.sleep_us(left if left < 5000 else 5000)

    def sendbreak(self):
        pass

    def irq(self, *a, **kw):
        raise OSError(95, 'UART.irq not supported on the unix shim')

    def __repr__(self):
        return 'UART(%r, baudrate=%d, bits=%d, parity=%r, stop=%d, device=%r)' % (
            self.id, self.baudrate, self.bits, self.parity, self.stop, self._path)
