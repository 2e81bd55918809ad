#!/usr/bin/env python3
"""Virtual board: the MicroPython unix port behind a serial port (a pty), with its own filesystem.

It behaves like a USB-serial MicroPython board as far as mpremote and tools/deploy.py can tell:

  - the serial port is the slave side of a pty (`/dev/pts/N`); it stays while the "chip" resets,
    like the CP2102/CH340 bridge of an ESP32 board;
  - the filesystem root is a directory (the unix port's cwd); sys.path is ['', <machine shim>,
    <root>/lib] like a board's ['', '.frozen', '/lib'], with firmware/unix/machine.py standing in
    for the board's `machine` (it lives outside the board's filesystem, as `machine` is firmware);
  - boot = `micropython -i main.py` when main.py exists (runs it, then the REPL when it returns),
    else the REPL: the same order as a board;
  - Ctrl-C interrupts a running program: the pty on the board side is the process's controlling
    terminal with ISIG on while code runs (the unix port switches it to raw mode only to read REPL
    input), so the kernel turns 0x03 into SIGINT -> KeyboardInterrupt, as a board's UART IRQ does;
  - reset: the unix port exits on Ctrl-D at an empty REPL prompt (soft reset on a board), on
    machine.reset() (exit 3) and on a watchdog expiry (exit 4); the supervisor then boots it
    again and prints "MPY: soft reboot" or a reset line, like a board. A soft reset from the raw
    REPL comes back in the raw REPL without running main.py, as on a board (mpremote's default
    soft reset on connect relies on that);
  - output nobody reads is dropped (a UART does not block on a missing listener).

    python tools/vboard.py ROOT [--port-file F]     # prints the port path, runs until Ctrl-C

    with VirtualBoard(root) as vb:                   # tests
        vb.port ... vb.console_text() ... vb.boots
"""
import argparse
import errno
import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import threading
import time
import tty

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHIM = os.path.join(ROOT, 'firmware', 'unix')
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), 'micropython')


def _board_side_termios(fd):
    """The terminal the unix port sees: no echo, no line editing, but ISIG (Ctrl-C -> SIGINT).
    No output processing: the REPL writes its own CR LF, and mpremote matches them exactly."""
    a = termios.tcgetattr(fd)
    a[0] = 0                                        # iflag
    a[1] = 0                                        # oflag
    a[3] = termios.ISIG                             # lflag
    a[6][termios.VMIN] = 1
    a[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, a)


class VirtualBoard:
    def __init__(self, root, micropython=None, shim=SHIM, env=None, console_max=1 << 20):
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.exe = micropython or MICROPYTHON
        self.shim = shim
        self.env = dict(os.environ, **(env or {}))
        self.env['MICROPYPATH'] = '%s:%s:.frozen' % (self.shim, os.path.join(self.root, 'lib'))  # .frozen: ssl etc.
        self.env.pop('PYTHONPATH', None)
        self.port = None
        self.boots = 0              # number of boots so far
        self.exits = []             # exit codes of the unix port process, one per reset
        self.console = bytearray()  # everything the board wrote to its serial port
        self.console_max = console_max
        self._lock = threading.Lock()
        self._stop = False
        self._proc = None
        self._thread = None
        self._tail = b''
        self._raw = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self):
        if not os.path.exists(self.exe):
            raise RuntimeError('MicroPython unix port missing: run `make deps`')
        self._hm, self._hs = os.openpty()           # host side: mpremote opens the slave path
        tty.setraw(self._hs)
        self.port = os.ttyname(self._hs)
        fl = fcntl.fcntl(self._hm, fcntl.F_GETFL)
        fcntl.fcntl(self._hm, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        self._boot()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        return self

    def _boot(self, raw=False):
        bm, bs = os.openpty()                       # board side: the unix port's stdio
        _board_side_termios(bs)
        args = [self.exe]
        if not raw and os.path.exists(os.path.join(self.root, 'main.py')):
            args += ['-i', 'main.py']

        def ctty():
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        self._proc = subprocess.Popen(args, cwd=self.root, env=self.env, stdin=bs, stdout=bs, stderr=bs,
                                      preexec_fn=ctty, close_fds=True)
        os.close(bs)
        self._bm = bm
        self.boots += 1
        if raw:
            os.write(bm, b'\r\x01')                # back into the raw REPL once it reads input

    def _emit(self, data):
        t = self._tail + data                       # which REPL is the board in?
        r, f = t.rfind(b'raw REPL; CTRL-B to exit'), t.rfind(b'>>> ')
        if r >= 0 or f >= 0:
            self._raw = r > f
        self._tail = t[-40:]
        with self._lock:
            self.console += data
            if len(self.console) > self.console_max:
                del self.console[:len(self.console) - self.console_max]
        try:
            os.write(self._hm, data)
        except OSError as e:                        # nobody reading: a UART drops it
            if e.errno not in (errno.EAGAIN, errno.EIO):
                raise

    def _pump(self):
        while not self._stop:
            try:
                r, _, _ = select.select([self._hm, self._bm], [], [], 0.1)
            except (OSError, ValueError):
                break
            if self._hm in r:
                try:
                    data = os.read(self._hm, 4096)
                except OSError:
                    data = b''
                if data:
                    try:
                        os.write(self._bm, data)
                    except OSError:
                        pass                        # board resetting: input lost, like a UART
            if self._bm in r:
                try:
                    data = os.read(self._bm, 4096)
                except OSError:                     # EIO: the unix port exited (reset)
                    data = b''
                if data:
                    self._emit(data)
                    continue
                os.close(self._bm)
                code = self._proc.wait()
                self.exits.append(code)
                if self._stop:
                    break
                raw = code == 0 and self._raw
                if code == 0:
                    self._emit(b'MPY: soft reboot\r\n')
                else:
                    self._emit(b'\r\n[virtual board: reset (exit %d)]\r\n' % code)
                self._boot(raw)

    def stop(self):
        self._stop = True
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread:
            self._thread.join(3)
        for fd in (self._hm, self._hs):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- test helpers ----------------------------------------------------------------------
    def console_text(self):
        with self._lock:
            return self.console.decode('utf-8', 'replace').replace('\r\n', '\n')

    def mark(self):
        """Position in the console, for console_since()."""
        with self._lock:
            return len(self.console)

    def console_since(self, mark):
        with self._lock:
            return self.console[mark:].decode('utf-8', 'replace').replace('\r\n', '\n')

    def wait_console(self, text, mark=0, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.console_since(mark):
                return True
            time.sleep(0.05)
        return False

    def files(self):
        """{relative path: bytes} of the board's filesystem."""
        out = {}
        for d, _, fs in os.walk(self.root):
            for f in fs:
                p = os.path.join(d, f)
                with open(p, 'rb') as fh:
                    out[os.path.relpath(p, self.root)] = fh.read()
        return out

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('root', help='directory that is the board filesystem (created if missing)')
    ap.add_argument('--port-file', help='write the serial port path here')
    a = ap.parse_args()
    vb = VirtualBoard(a.root).start()
    print('virtual board: port %s, filesystem %s' % (vb.port, vb.root), flush=True)
    if a.port_file:
        with open(a.port_file, 'w') as f:
            f.write(vb.port + '\n')
    try:
        signal.signal(signal.SIGTERM, lambda *x: sys.exit(0))
        while True:
            time.sleep(1)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        vb.stop()


if __name__ == '__main__':
    main()
