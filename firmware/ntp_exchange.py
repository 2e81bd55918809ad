# The wall clock's exchange with its SNTP server (loaded on demand). firmware/wallclock.py's
# Clock.poll() imports this module only while a request is due or out; when the attempt ends (a
# new base, or a failure) end() takes the module out of sys.modules, and its code leaves the heap
# once the poll returns (nothing resident refers to it: the Clock holds only built-in objects).
# Functions take the Clock: what must outlive one poll is kept on it - the socket (between
# attempts too), the request out (q: its nonce), the answer buffer (r), its send time (t_sent) and
# the failures in a row (streak). The first request creates those four; end() drops q and r.
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
import select
import socket
import sys
import time
from os import urandom

NTP_DELTA_S = 2208988800        # 1900-01-01 (NTP era 0) -> 1970-01-01
MIN_EPOCH_S = 1767225600        # 2026-01-01: no real answer is older than this build


def poll(c, now):
    """Clock.poll() once a request is due (c.due already moved on by retry_s) or out: 1 when a
    new base was set, else 0."""
    if c.pending:
        return receive(c, now)
    send(c)
    if c.pending and c.wait_ms:
        p = select.poll()               # until the answer is in, or wait_ms
        p.register(c.sock, select.POLLIN)
        p.ipoll(c.wait_ms)
        return receive(c, now)
    return 0


def send(c):
    q = c.q = bytearray(48)             # the request, its nonce kept to match the answer
    c.r = bytearray(48)                 # the answer (a longer datagram is cut: extensions unused)
    try:
        if c.sock is None:
            a = socket.getaddrinfo(c.host, c.port, 0, socket.SOCK_DGRAM)[0]
            s = socket.socket(a[0], socket.SOCK_DGRAM)
            c.sock = s
            s.setblocking(False)
            s.connect(a[-1])            # the kernel / lwIP drops datagrams from elsewhere
        q[0] = 0x23                     # leap 0, version 4, mode 3 (client)
        # transmit timestamp: a nonce the server copies into originate (RFC 4330 asks only
        # that it be echoed; random, it also tells nothing about our clock)
        q[40:48] = urandom(8)
        c.sock.send(q)
    except OSError as e:                # no route, name not resolved, ...
        fail(c, 'send %s' % (e.args[0],), 0, 1)
        return
    c.t_sent = time.ticks_ms()
    c.pending = 1


def receive(c, now):
    r = c.r
    q = c.q
    for _ in range(4):                  # bounded: a flood of strays cannot hold the loop
        try:
            n = c.sock.readinto(r)
        except OSError as e:            # e.g. ECONNREFUSED: nobody listens there
            fail(c, 'recv %s' % (e.args[0],), 0, 1)
            return 0
        if n is None:
            break
        t4 = time.ticks_ms()
        if n < 48:
            why = 'short'
        else:
            why = None
            for i in range(8):
                if r[24 + i] != q[40 + i]:
                    why = 'origin'
                    break
        if why is not None:             # not an answer to our request: keep waiting
            c.rejected += 1
            c.last_error = why
            continue
        why = verdict(r)
        if why is None:
            return accept(c, r, t4, now)
        fail(c, why, c.period_s * 1000 if why[:3] == 'kod' else 0, 0)
        return 0
    if time.ticks_diff(time.ticks_ms(), c.t_sent) > c.timeout_ms:
        fail(c, 'timeout', 0, 0)
    return 0


def verdict(r):
    """Why the server's own answer r is unusable, or None."""
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


def accept(c, r, t4, now):
    rtt = time.ticks_diff(t4, c.t_sent)
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
    if epoch < (MIN_EPOCH_S if c.min_epoch_s is None else c.min_epoch_s):
        fail(c, 'early', 0, 0)
        return 0
    # the time at t4: the transmit timestamp plus half the path (round trip less hold)
    ms = ((r[44] << 8 | r[45]) * 1000 >> 16) + (rtt - hold) // 2
    base = epoch + ms // 1000
    bt = time.ticks_add(t4, -(ms % 1000))
    if c.valid:                         # how far this moves the running clock
        d = (base - c.base_epoch_s) * 1000 - time.ticks_diff(bt, c.base_ticks_ms)
        if d > 1 << 29 or d < -(1 << 29):
            d = 1 << 29 if d > 0 else -(1 << 29)
        c.last_step_ms = d
        if d > c.step_ms or d < -c.step_ms:
            c.steps += 1
    c.base_epoch_s = base
    c.base_ticks_ms = bt
    c.valid = 1
    c.synced += 1
    c.epoch_changed += 1
    c.rtt_ms = rtt - hold
    c.streak = 0
    c.due = time.ticks_add(now, c.period_s * 1000)
    end(c)
    return 1


def fail(c, why, wait_ms, drop):
    c.fails += 1
    c.last_error = why
    c.streak = n = getattr(c, 'streak', 0) + 1     # created here at a first failure
    c.due = time.ticks_add(time.ticks_ms(), wait_ms or c.retry_s * 1000)
    end(c)
    if drop or n % 3 == 0:
        close(c)


def close(c):
    """Drop the socket (the next request resolves the host again) and end any attempt."""
    s = c.sock
    c.sock = None
    if s is not None:
        try:
            s.close()
        except OSError:
            pass
    end(c)


def end(c):
    """The attempt is over: nothing waits for an answer, and this module leaves sys.modules (it
    runs on to the end of this poll; the next due request imports it again)."""
    c.pending = 0
    c.q = None
    c.r = None
    sys.modules.pop(__name__, None)
