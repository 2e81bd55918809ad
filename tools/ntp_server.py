#!/usr/bin/env python3
"""A loopback SNTP server (RFC 4330 / 5905 packet format) for the wall clock's tests and `make sim`:
the firmware's firmware/wallclock.py asks it for the time, and it can be told to misbehave.

Behaviours (`mode`, or one per request through `plan`):
    ok          a proper mode-4 answer: server time = host time (or `clock()`) + offset_s
    silent      no answer (a lost request, a server gone)
    garbage     48 random bytes
    short       the first 20 bytes of a proper answer
    kod         kiss-o'-death: stratum 0, the reference id carries kod_code (RATE, DENY, ...)
    wrong_mode  a proper answer with mode 5 (broadcast) instead of 4
    bad_origin  a proper answer whose originate timestamp is not the request's transmit timestamp
    unsync      a proper answer with leap indicator 3 (server not synchronised)
    stratum16   a proper answer with stratum 16 (unsynchronised)
late_ms delays every answer (the receive timestamp is taken on arrival, the transmit timestamp
when it leaves, as a busy server's would be). A time before the client's floor: a negative offset.

Library (a thread):
    with NtpServer(offset_s=3600) as srv:      # srv.port: the UDP port on 127.0.0.1
        srv.mode = 'silent'; srv.plan = ['ok', 'garbage']; srv.late_ms = 500
CLI (until Ctrl-C; --control FILE: a JSON object of the same settings, read again when it changes):
    .venv/bin/python tools/ntp_server.py --port 12300 --offset 3600 [--mode ok] [--late-ms 0]
        [--stratum 2] [--kod-code RATE] [--control /tmp/ntp.json]
"""
import argparse
import json
import os
import socket
import struct
import sys
import threading
import time

NTP_DELTA_S = 2208988800            # 1900-01-01 -> 1970-01-01
MODES = ('ok', 'silent', 'garbage', 'short', 'kod', 'wrong_mode', 'bad_origin', 'unsync', 'stratum16')
SETTINGS = ('mode', 'offset_s', 'late_ms', 'stratum', 'kod_code')


def ntp_timestamp(t):
    """Unix seconds (float) -> the 8-byte NTP timestamp (era by era: seconds mod 2**32)."""
    sec = int(t // 1) + NTP_DELTA_S
    frac = int((t % 1) * 4294967296) & 0xFFFFFFFF
    return struct.pack('!II', sec & 0xFFFFFFFF, frac)


class NtpServer:
    def __init__(self, host='127.0.0.1', port=0, offset_s=0.0, mode='ok', late_ms=0, stratum=2,
                 kod_code='RATE', clock=None):
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.offset_s = offset_s
        self.clock = clock              # callable -> unix s (e.g. an accelerated demo clock); None: host time
        self.mode = mode
        self.plan = []                  # modes for the next requests, one each, before `mode`
        self.late_ms = late_ms
        self.stratum = stratum
        self.kod_code = kod_code
        self.requests = 0
        self.answered = 0
        self.log = []                   # (mode, client address) per request
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()

    def now(self):
        """The server's time (unix seconds, float)."""
        return (self.clock() if self.clock is not None else time.time()) + self.offset_s

    def start(self):
        self._thread = threading.Thread(target=self.serve, name='ntp_server', daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def serve(self, poll=None):
        """Answer until stop(); poll() (if given) runs about every 50 ms (the CLI's control file)."""
        while not self._stop.is_set():
            if poll is not None:
                poll()
            try:
                data, addr = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            t2 = self.now()
            with self._lock:
                mode = self.plan.pop(0) if self.plan else self.mode
                self.requests += 1
                self.log.append((mode, addr))
            if mode == 'silent' or len(data) < 48:
                continue
            if self.late_ms:
                threading.Timer(self.late_ms / 1000.0, self._answer, (data, addr, t2, mode)).start()
            else:
                self._answer(data, addr, t2, mode)

    def reply(self, request, t2, mode, t3=None):
        """The answer to `request` (bytes) received at server time t2, leaving at t3."""
        if mode == 'garbage':
            return os.urandom(48)
        version = request[0] >> 3 & 7 or 4
        leap = 3 if mode == 'unsync' else 0
        kind = 5 if mode == 'wrong_mode' else 4
        stratum = 0 if mode == 'kod' else 16 if mode == 'stratum16' else self.stratum
        if stratum == 0:
            ref_id = self.kod_code.encode()[:4].ljust(4, b' ')
        elif stratum == 1:
            ref_id = b'GPS\0'
        else:
            ref_id = bytes((127, 127, 1, 0))
        origin = os.urandom(8) if mode == 'bad_origin' else request[40:48]
        t3 = self.now() if t3 is None else t3
        out = (bytes((leap << 6 | version << 3 | kind, stratum, request[2], 0xEC))   # poll, precision
               + struct.pack('!II', 0x00000100, 0x00000200)       # root delay, dispersion (~4, 8 ms)
               + ref_id + ntp_timestamp(t2 - 16) + origin + ntp_timestamp(t2) + ntp_timestamp(t3))
        return out[:20] if mode == 'short' else out

    def _answer(self, data, addr, t2, mode):
        try:
            self.sock.sendto(self.reply(data, t2, mode), addr)
        except OSError:
            return                      # stopped meanwhile
        with self._lock:
            self.answered += 1

    def configure(self, **settings):
        for k, v in settings.items():
            if k not in SETTINGS:
                raise ValueError('unknown setting %r (known: %s)' % (k, ', '.join(SETTINGS)))
            if k == 'mode' and v not in MODES:
                raise ValueError('mode %r is not one of %s' % (v, ', '.join(MODES)))
            setattr(self, k, v)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--port', type=int, default=0, help='UDP port (0: a free one, printed)')
    ap.add_argument('--offset', type=float, default=0.0, help='server time - host time, seconds')
    ap.add_argument('--mode', choices=MODES, default='ok')
    ap.add_argument('--late-ms', type=int, default=0)
    ap.add_argument('--stratum', type=int, default=2)
    ap.add_argument('--kod-code', default='RATE')
    ap.add_argument('--control', help='JSON file {"mode": ..., "offset_s": ..., "late_ms": ...}, '
                                      'read again whenever it changes')
    a = ap.parse_args(argv)
    srv = NtpServer(a.host, a.port, a.offset, a.mode, a.late_ms, a.stratum, a.kod_code)
    seen = [None]

    def control():
        if not a.control:
            return
        try:
            m = os.stat(a.control).st_mtime_ns
        except OSError:
            return
        if m == seen[0]:
            return
        seen[0] = m
        try:
            with open(a.control) as f:
                srv.configure(**json.load(f))
            now = ', '.join('%s=%r' % (k, getattr(srv, k)) for k in SETTINGS)
            print('ntp_server: now %s' % now, flush=True)
        except (OSError, ValueError, TypeError) as e:
            print('ntp_server: control file ignored: %s' % e, file=sys.stderr, flush=True)

    print('ntp_server: %s:%d mode=%s offset=%+.3f s' % (a.host, srv.port, srv.mode, srv.offset_s), flush=True)
    try:
        srv.serve(control)
    except KeyboardInterrupt:
        pass
    finally:
        srv.sock.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
