# The wall clock (resident): our own SNTP client (RFC 4330) on one UDP socket, polled by the loop
# between control cycles, never inside the timer callback. A schedule needs the time of day; the
# control path needs it as small ints.
#
# Why our own client: `ntptime` is not on the unix port, and it blocks for its socket timeout.
# poll() sends a request when one is due and reads the answer without waiting, except for at most
# wait_ms right after sending: the loop polls once per cycle, and an answer read a period late
# would count the period into the round trip (the time's error is at most half the round trip).
#
# Why a base and ticks: epoch seconds are above 2**30, a heap int on 32-bit MicroPython. A sync
# stores the epoch second of one instant (base_epoch_s, the only big int, once per sync) and that
# instant's ticks_ms (base_ticks_ms); per cycle the time is elapsed_s(), small-int seconds since the
# base, allocation-free. ticks_ms wraps at 2**30 on the boards and ticks_diff is valid to +-2**29 ms
# (6.2 days), so a base is never trusted longer than max_age_s <= MAX_AGE_S (5 days): past that the
# clock is invalid until a sync succeeds (and the plan falls back to the schedule's default block).
#
# Each successful sync sets a new base and bumps epoch_changed; poll() returns 1 then, and the
# runtime calls plan.rebase(clock.base_epoch_s) before the next cycle.
#
# Replies: one that is short or does not answer our request (originate != our transmit timestamp:
# a stray or spoofed datagram) is counted in `rejected` and the request keeps waiting; one that
# does answer it but is unusable (wrong mode or version, kiss-o'-death, stratum 16, leap 3, a time
# before min_epoch_s) ends the attempt as a failure. No answer within timeout_ms is a failure.
# A failure retries after retry_s; a kiss-o'-death (the server says: not so often, or not you)
# after period_s. Three failures in a row drop the socket, so the next attempt resolves the host
# again (a pool name may point elsewhere by then).
#
# Known limit: getaddrinfo blocks while a name is resolved (at the first request and after three
# failures); a numeric address (e.g. the router) never does.
import time

try:
    import socket
except ImportError:             # older MicroPython
    import usocket as socket
try:
    import select
except ImportError:
    import uselect as select
from os import urandom

NTP_DELTA_S = 2208988800        # 1900-01-01 (NTP era 0) -> 1970-01-01
MAX_AGE_S = 5 * 86400           # a base is used at most this long: inside ticks_diff's 2**29 ms
MIN_EPOCH_S = 1767225600        # 2026-01-01: no real answer is older than this build


class Clock:
    def __init__(self, host, port=123, period_s=3600, retry_s=60, max_age_s=2 * 86400,
                 min_epoch_s=MIN_EPOCH_S, timeout_ms=2000, wait_ms=20, step_ms=1000):
        if not 0 < max_age_s <= MAX_AGE_S:
            raise ValueError('max_age_s must be 1..%d' % MAX_AGE_S)
        if not 0 < retry_s <= period_s < max_age_s:
            raise ValueError('need 0 < retry_s <= period_s < max_age_s')
        if not 0 <= wait_ms <= 50 or not wait_ms < timeout_ms <= 10000:
            raise ValueError('need 0 <= wait_ms <= 50, wait_ms < timeout_ms <= 10000')
        self.host = host
        self.port = port
        self.period_ms = period_s * 1000
        self.retry_ms = retry_s * 1000
        self.max_age_ms = max_age_s * 1000
        self.min_epoch_s = min_epoch_s
        self.timeout_ms = timeout_ms
        self.wait_ms = wait_ms
        self.step_ms = step_ms          # a sync that moves the running clock more than this: a step
        self.q = bytearray(48)          # the request, its nonce kept to match the answer
        self.r = bytearray(48)          # the answer (a longer datagram is cut: extensions unused)
        self.sock = None
        self.p = None
        self.due = None                 # ticks_ms of the next request; None: at the first poll
        self.pending = 0                # 1: a request is out, t_sent = its ticks_ms
        self.t_sent = 0
        self.streak = 0                 # failures in a row
        # state (status, telemetry, the plan)
        self.valid = 0
        self.base_epoch_s = 0
        self.base_ticks_ms = 0
        self.synced = 0
        self.fails = 0
        self.rejected = 0
        self.steps = 0
        self.last_step_ms = 0           # the last sync's correction of the running clock
        self.rtt_ms = -1                # the last sync's round trip less the server's hold time
        self.last_error = ''
        self.epoch_changed = 0

    # --- per cycle: allocation-free ---
    def elapsed_s(self):
        """Seconds since base_epoch_s (a small int): the time the plan evaluates."""
        return time.ticks_diff(time.ticks_ms(), self.base_ticks_ms) // 1000

    # --- off the control path ---
    def now_s(self):
        """Epoch seconds (allocates on 32-bit: status messages only)."""
        return self.base_epoch_s + self.elapsed_s()

    def check_created(self, created_s, skew_s=600):
        """0 when the clock is invalid or reads earlier than created_s - skew_s (behind whoever
        wrote the schedule: not to be trusted with it), else 1."""
        if not self.valid or self.now_s() < created_s - skew_s:
            return 0
        return 1

    def poll(self, now):
        """Between cycles (now: ticks_ms). Sends a request when due, reads the answer without
        waiting (at most wait_ms after a send), expires an old sync. 1 when a new base was set
        (call plan.rebase(base_epoch_s)), else 0."""
        if self.valid and time.ticks_diff(now, self.base_ticks_ms) > self.max_age_ms:
            self.valid = 0
            self.last_error = 'expired'
        if self.pending:
            return self._receive(now)
        if self.due is not None and time.ticks_diff(now, self.due) < 0:
            return 0
        self._send(now)
        if self.pending and self.wait_ms:
            self.p.ipoll(self.wait_ms)      # until the answer is in, or wait_ms
            return self._receive(now)
        return 0

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.p = None
        self.pending = 0

    def _send(self, now):
        self.due = time.ticks_add(now, self.retry_ms)
        q = self.q
        try:
            if self.sock is None:
                a = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_DGRAM)[0]
                s = socket.socket(a[0], socket.SOCK_DGRAM)
                self.sock = s
                s.setblocking(False)
                s.connect(a[-1])            # the kernel / lwIP drops datagrams from elsewhere
                self.p = select.poll()
                self.p.register(s, select.POLLIN)
            q[0] = 0x23                     # leap 0, version 4, mode 3 (client)
            # transmit timestamp: a nonce the server copies into originate (RFC 4330 asks only
            # that it be echoed; random, it also tells nothing about our clock)
            q[40:48] = urandom(8)
            self.sock.send(q)
        except OSError as e:                # no route, name not resolved, ...
            self._fail('send %s' % (e.args[0],), 0, 1)
            return
        self.t_sent = time.ticks_ms()
        self.pending = 1

    def _receive(self, now):
        r = self.r
        for _ in range(4):                  # bounded: a flood of strays cannot hold the loop
            try:
                n = self.sock.readinto(r)
            except OSError as e:            # e.g. ECONNREFUSED: nobody listens there
                self._fail('recv %s' % (e.args[0],), 0, 1)
                return 0
            if n is None:
                break
            t4 = time.ticks_ms()
            if n < 48:
                why = 'short'
            else:
                why = None
                for i in range(8):
                    if r[24 + i] != self.q[40 + i]:
                        why = 'origin'
                        break
            if why is not None:             # not an answer to our request: keep waiting
                self.rejected += 1
                self.last_error = why
                continue
            why = self._verdict()
            if why is None:
                return self._accept(t4, now)
            self._fail(why, self.period_ms if why[:3] == 'kod' else 0, 0)
            return 0
        if time.ticks_diff(time.ticks_ms(), self.t_sent) > self.timeout_ms:
            self._fail('timeout', 0, 0)
        return 0

    def _verdict(self):
        """Why the server's own answer is unusable, or None."""
        r = self.r
        if r[0] & 7 != 4:
            return 'mode'
        if not 3 <= (r[0] >> 3 & 7) <= 4:
            return 'version'
        if r[1] == 0:                       # kiss-o'-death: the code is in the reference id
            return 'kod ' + ''.join(chr(c) if 32 < c < 127 else '?' for c in r[12:16])
        if r[1] > 15:
            return 'stratum'
        if r[0] >> 6 == 3:
            return 'unsync'
        if not (r[40] | r[41] | r[42] | r[43]):
            return 'zero'
        return None

    def _accept(self, t4, now):
        r = self.r
        rtt = time.ticks_diff(t4, self.t_sent)
        # the server's hold time T3 - T2 (from 16-bit halves: small ints), not part of the path
        hold = ((r[40] << 8 | r[41]) - (r[32] << 8 | r[33])) * 65536 + (r[42] << 8 | r[43]) \
            - (r[34] << 8 | r[35])
        hold = hold * 1000 + (((r[44] << 8 | r[45]) - (r[36] << 8 | r[37])) * 1000 >> 16)
        if hold < 0 or hold > rtt:
            hold = 0 if hold < 0 else rtt
        sec = r[40] << 24 | r[41] << 16 | r[42] << 8 | r[43]
        if not r[40] & 0x80:                # NTP era 1: from 2036-02-07 on (valid to 2104)
            sec += 0x100000000
        epoch = sec - NTP_DELTA_S
        if epoch < self.min_epoch_s:
            self._fail('early', 0, 0)
            return 0
        # the time at t4: the transmit timestamp plus half the path (round trip less hold)
        ms = ((r[44] << 8 | r[45]) * 1000 >> 16) + (rtt - hold) // 2
        base = epoch + ms // 1000
        bt = time.ticks_add(t4, -(ms % 1000))
        if self.valid:                      # how far this moves the running clock
            d = (base - self.base_epoch_s) * 1000 - time.ticks_diff(bt, self.base_ticks_ms)
            if d > 1 << 29 or d < -(1 << 29):
                d = 1 << 29 if d > 0 else -(1 << 29)
            self.last_step_ms = d
            if d > self.step_ms or d < -self.step_ms:
                self.steps += 1
        self.base_epoch_s = base
        self.base_ticks_ms = bt
        self.valid = 1
        self.synced += 1
        self.epoch_changed += 1
        self.rtt_ms = rtt - hold
        self.streak = 0
        self.pending = 0
        self.due = time.ticks_add(now, self.period_ms)
        return 1

    def _fail(self, why, wait_ms, drop):
        self.fails += 1
        self.last_error = why
        self.pending = 0
        self.streak += 1
        self.due = time.ticks_add(time.ticks_ms(), wait_ms or self.retry_ms)
        if drop or self.streak % 3 == 0:
            self.close()
