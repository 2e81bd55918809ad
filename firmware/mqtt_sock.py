# MQTT transport: the socket wrapper umqtt.simple is given (bounded blocking, whole reads, a tap
# on packet types) and the stand-ins that let the link drive umqtt's connect() non-blocking.
# Resident (firmware/mqtt_link.py uses it on every poll). Why each piece exists: mqtt_link.py.

import time
import errno
import socket


def der(data):
    """A PEM certificate as DER (the unix port's mbedTLS rejects PEM): the first one only."""
    if data[:10] != b'-----BEGIN':
        return data
    import binascii
    lines = data.split(b'\n')
    b64 = b''
    for ln in lines[1:]:
        if ln.startswith(b'-----END'):
            break
        b64 += ln.strip()
    return binascii.a2b_base64(b64)


class Deferred(Exception):
    """Raised into umqtt.simple where it would wait for an answer (CONNACK, SUBACK)."""


class Sock:
    """Socket wrapper handed to umqtt.simple: bounded blocking, whole reads, packet-type tap."""

    def __init__(self, raw, timeout_ms, max_read, wbuf):
        self.max_read = max_read
        self.raw = raw          # the TCP socket (timeouts are set here; SSL sockets lack them)
        self.s = raw            # what is read and written (raw or the SSL socket)
        self.tmo = timeout_ms
        self.tmo_s = timeout_ms / 1000   # one float, made once (a float is a heap object)
        self.nb = False
        self.last1 = None       # result of the latest read(1): a packet-type byte candidate
        self.pkt = 0            # type byte of the last packet started
        self.pongs = 0          # PINGRESPs seen
        self.rx_pkts = 0
        self.wbuf = wbuf            # the link's write buffer (fixed size, reused per connection)
        self.wlen = 0
        self.defer = False
        self.until = None       # ticks_ms: the current poll()'s budget for all blocking reads/writes
        raw.settimeout(self.tmo_s)

    def _deadline(self):
        # one operation's bound, cut to the poll's budget: a peer that trickles bytes cannot
        # stretch a poll (each byte used to renew nothing but also end nothing)
        d = time.ticks_add(time.ticks_ms(), self.tmo)
        u = self.until
        if u is not None and time.ticks_diff(u, d) < 0:
            return u
        return d

    # --- what umqtt.simple calls ---
    def connect(self, addr):    # already connected by the link
        pass

    def settimeout(self, t):    # newer umqtt connect(timeout=None): keep our bound
        pass

    def setblocking(self, flag):
        if flag:
            if self.nb:
                self.nb = False
                self.raw.settimeout(self.tmo_s)
            b = self.last1
            if b:
                # wait_msg() calls setblocking(True) right after reading a packet's first byte
                self.pkt = b[0]
                self.rx_pkts += 1
                if b[0] == 0xD0:
                    self.pongs += 1
            self.last1 = None
        elif not self.nb:
            self.nb = True
            self.raw.setblocking(False)

    def read_nb(self, n):
        """Whatever is there, up to n bytes, without waiting: bytes, b'' at EOF, or None."""
        if self.wlen:
            self.flush()
        self.raw.setblocking(False)
        try:
            return self.s.read(n)
        except OSError as e:
            if e.args[0] in (errno.EAGAIN, errno.ETIMEDOUT):
                return None
            raise
        finally:
            self.raw.settimeout(self.tmo_s)

    def read(self, n):
        if self.defer:              # CONNECT / SUBSCRIBE stay queued: the link flushes them
            raise Deferred()
        if self.wlen:
            self.flush()
        if n > self.max_read:
            # umqtt would allocate the whole payload: refuse instead (the link reconnects)
            raise ValueError('inbound packet too large')
        if self.nb:
            try:
                r = self.s.read(n)
            except OSError as e:
                if e.args[0] in (errno.EAGAIN, errno.ETIMEDOUT):
                    r = None
                else:
                    raise
            self.last1 = r if n == 1 else None
            return r
        deadline = self._deadline()
        buf = b''
        while len(buf) < n:
            if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                raise OSError(errno.ETIMEDOUT)      # checked every round, data or not
            try:
                # one byte per call: MicroPython's blocking read(n) loops inside until n bytes
                # have come, each byte renewing the socket timeout, so a peer trickling bytes
                # could hold it for minutes; read(1) returns with the first byte
                r = self.s.read(1)
            except OSError as e:
                if e.args[0] not in (errno.EAGAIN, errno.ETIMEDOUT):
                    raise
                r = None
            if r == b'':
                raise OSError(errno.ECONNRESET)
            if r:
                buf = r if not buf else buf + r
        self.last1 = buf if n == 1 else None
        return buf

    def write(self, data, n=None):
        # Collected in the fixed buffer and sent by flush() (before any read, by the link after
        # each batch, and whenever the buffer is full): umqtt writes a packet in 3-4 pieces, and
        # small separate segments meet Nagle and delayed ACKs (a 40 ms stall before CONNACK /
        # SUBACK on Linux). The buffer never grows: a growing one needed ever larger contiguous
        # blocks, which a fragmented 32-bit heap refused after a reconnect (docs/resources.md).
        mv = memoryview(data)
        total = len(mv) if n is None else n
        buf = self.wbuf
        size = len(buf)
        off = 0
        while off < total:
            if self.wlen == size:
                self.flush()
            k = size - self.wlen
            if k > total - off:
                k = total - off
            buf[self.wlen:self.wlen + k] = mv[off:off + k]
            self.wlen += k
            off += k
        return total

    def flush(self):
        if not self.wlen:
            return
        if self.nb:
            self.nb = False
            self.raw.settimeout(self.tmo_s)
        mv = memoryview(self.wbuf)
        deadline = self._deadline()
        off = 0
        total = self.wlen
        try:
            while off < total:
                if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                    raise OSError(errno.ETIMEDOUT)  # checked every round, progress or not
                end = off + 256 if off + 256 < total else total
                try:
                    w = self.s.write(mv[off:end])   # small pieces: the deadline gets a say
                except OSError as e:
                    if e.args[0] not in (errno.EAGAIN, errno.ETIMEDOUT):
                        raise
                    w = None
                if w:
                    off += w
        finally:
            self.wlen = 0

    def tls_step(self):
        """One non-blocking go at the TLS handshake, driven by writing the queued CONNECT:
        False while the handshake is in progress, True once it is done and CONNECT is sent."""
        self.raw.setblocking(False)
        try:
            w = self.s.write(memoryview(self.wbuf)[:self.wlen])
        except OSError as e:
            if e.args[0] not in (errno.EAGAIN, errno.ETIMEDOUT):
                raise
            w = None
        finally:
            self.raw.settimeout(self.tmo_s)
        if not w:
            return False
        rest = self.wlen - w
        self.wbuf[0:rest] = self.wbuf[w:self.wlen]
        self.wlen = rest
        self.flush()
        return True

    def close(self):
        try:
            self.flush()            # e.g. DISCONNECT written by umqtt's disconnect()
        except Exception:
            pass
        try:
            self.s.close()
        except Exception:
            pass
        if self.s is not self.raw:
            try:
                self.raw.close()
            except Exception:
                pass


class SocketModule:
    """Stands in for the `socket` module inside umqtt.simple during connect()."""

    def __init__(self, sock, addr):
        self.sock = sock
        self.addr = addr

    def socket(self, *a):
        return self.sock

    def getaddrinfo(self, host, port, *a):
        return [(socket.AF_INET, socket.SOCK_STREAM, 0, '', self.addr)]
