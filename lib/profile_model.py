# Device profile as the runtime uses it every cycle: read blocks, decode points, plan writes.
#
# Resident. Built at boot by lib/devprofile.py (load-time only: JSON, validation, compiling),
# which is unloaded afterwards; nothing here parses or validates. Every per-cycle method is
# allocation-free on 32-bit MicroPython for power values (heap_lock proofs in host_tests):
#   block.buf       preallocated array('H') a Modbus read fills; block.ok set by the runtime
#   point.value()   decodes from its block (None: not read, invalid, not implemented, out of range)
#   control.plan(w) fills preallocated write buffers, returns the list of Write to send, or None

from array import array

import regdecode as rd


class Block:
    """One Modbus read request. every_ms: read it this often (0: every cycle); due: ticks_ms when
    it is due again (the runtime sets it after a good read; a failed read, or a device that went
    silent, makes the block due at once)."""

    def __init__(self, fc, start, count, every_ms=0):
        self.fc = fc
        self.start = start
        self.count = count
        self.every_ms = every_ms
        self.due = 0
        self.buf = _regs(count)
        self.ok = 0                 # runtime: 1 after a successful read of this block
        self.fresh = 0              # runtime: 1 when this poll read it (0: skipped, not due)


def _regs(n):
    return array('H', bytes(2 * n))


class Point:
    """One value (Profile.points: by its name). value() decodes it from its block's buffer (None if
    invalid). Only what decoding needs: on a board every attribute of the ~16 points costs ~6 B
    and their tables grow in steps (15 attributes: 162 B a point, these 10: 98 B; docs/resources.md).
    The host (lib/devprofile.py) adds the register map, for the simulator and the docs."""

    def __init__(self, block, off, typ, lsw, exp10, sign, limit, na, sf_block, sf_off):
        self.block = block
        self.off = off
        self.typ = typ
        self.lsw = lsw
        self.exp10 = exp10
        self.sign = sign
        self.limit = limit
        self.na = na
        self.sf_block = sf_block    # None: fixed scale
        self.sf_off = sf_off

    def value(self):
        b = self.block
        if not b.ok:
            return None
        e = self.exp10
        sb = self.sf_block
        if sb is not None:
            if not sb.ok:
                return None
            sf = rd.decode_sf(sb.buf, self.sf_off)
            if sf is None:
                return None
            e += sf
        return rd.decode(b.buf, self.off, self.typ, self.lsw, e, self.sign, self.limit, self.na)


class Write:
    """One Modbus write request: fc 6 (n == 1) or 16, registers buf[0:n] at addr."""

    def __init__(self, fc, addr, n):
        self.fc = fc
        self.addr = addr
        self.n = n
        self.buf = _regs(n)


class Plan:
    """The registers a control scheme writes, as contiguous Write requests (grouped at load time
    by devprofile.plan_writes). slot: addr -> (Write, index)."""

    def __init__(self, writes, slot):
        self.writes = writes
        self.slot = slot

    def put(self, addr, value, typ=rd.U16, lsw=0, exp10=0):
        w, k = self.slot[addr]
        rd.encode(value, typ, lsw, exp10, 1, w.buf, k)


class SunSpecControl:
    """Model 124: StorCtl_Mod, OutWRte / InWRte in % of WChaMax (scaled by InOutWRte_SF), RvrtTms.

    Discharge P > 0: mod=3, OutWRte=+x, InWRte=-x; charge P < 0: InWRte=+x, OutWRte=-x;
    0 W: both 0, which needs neither WChaMax nor the scale factor (so 0 W can always be written,
    even when the battery's reads fail). x = |P| / WChaMax * 100 %, clamped to 100 %.
    RvrtTms = revert_s (re-armed by every write); the battery reverts to its default after
    revert_s without one. Fields are set by devprofile (boot)."""

    scheme = 'sunspec_124'

    def plan(self, w):
        pl = self.plan_
        if w == 0:
            x = 0
        else:
            wmax = self.wchamax.value()
            p = self.rte_sf
            if wmax is None or wmax <= 0 or not p.block.ok:
                return None
            sf = rd.decode_sf(p.block.buf, p.off)
            if sf is None:
                return None
            full = rd.scale_int(100, -sf)              # 100 % in register units (10 ** (2 - sf))
            a = -w if w < 0 else w
            if a >= wmax:
                x = full
            else:
                # x = floor(a * full / wmax): rounded toward 0 so the battery never does more than
                # the setpoint (a zero-feed-in or import-limit margin must not be eaten by
                # rounding), and computed digit by digit so no product a * full (> 2**30 for a
                # 100 kW battery at SF -2, a heap int on 32-bit boards) is formed: every
                # intermediate < 10 * wmax.
                x = 0
                r = a
                n = 2 - sf
                while n > 0 and x <= 32767:
                    r *= 10
                    x = x * 10 + r // wmax
                    r %= wmax
                    n -= 1
            if x > 32767:
                x = 32767
        pl.put(self.mod_addr, self.mod_value)
        if w > 0:
            pl.put(self.out_addr, x, rd.I16)
            pl.put(self.in_addr, -x, rd.I16)
        else:
            pl.put(self.out_addr, -x, rd.I16)
            pl.put(self.in_addr, x, rd.I16)
        if self.win_addr >= 0:
            pl.put(self.win_addr, 0)
        if self.rvrt_addr >= 0:
            pl.put(self.rvrt_addr, self.revert_s)
        return self.writes


class CommandControl:
    """Mode register + command register (charge / discharge / stop) + power magnitude register(s).
    pw: {'power' | 'charge_power' | 'discharge_power': (addr, type, lsw, exp10)}. Fields are set
    by devprofile (boot)."""

    scheme = 'command'

    def plan(self, w):
        pl = self.plan_
        a = -w if w < 0 else w
        if self.mode_addr >= 0:
            pl.put(self.mode_addr, self.mode_value)
        cmd = self.cmd_discharge if w > 0 else (self.cmd_charge if w < 0 else self.cmd_stop)
        pw = self.pw
        for key in pw:
            addr, typ, lsw, e = pw[key]
            if key == 'power':
                v = a
            elif key == 'charge_power':
                v = a if w < 0 else 0
            else:
                v = a if w > 0 else 0
            if not rd.fits(v, typ, e, 1):
                return None
            pl.put(addr, v, typ, lsw, e)
        pl.put(self.cmd_addr, cmd)
        return self.writes


class Freshness:
    """How a device shows that its data is live, not a register image frozen in a gateway or a
    hung device (profile key 'freshness', docs/profiles.md). watch: (block, offset, words) of the
    registers that must change; they are compared raw, so a counter beyond 2**30 stays a small-int
    problem of nobody's. judge(now) after every complete poll returns 1 (fresh) or 0 (frozen):

      heartbeat   power None: the registers must change within within_ms
      counter     max_wh > 0: energy counters must change once the reported power, integrated
                  since they last changed, exceeds max_wh (more than their resolution) and
                  within_ms has passed
      unchanged   min_w > 0: the registers must change within within_ms while |power| >= min_w
                  (below it nothing is expected to move: not judged)

    Allocation-free: raw words go into a preallocated snapshot; energy is kept in W*s as kW x ms
    (< 2**30 for 10 MW over the 10 s cap on one step). Once frozen it stays so until the
    registers change."""

    def __init__(self, watch, within_ms, power=None, min_w=0, max_wh=0, f32=(), f32_wh=1000):
        self.watch = watch
        n = 0
        for w in watch:
            n += w[2]
        self.snap = array('H', bytes(2 * n))
        self.within_ms = within_ms
        self.power = power
        self.min_w = min_w
        self.max_ws = max_wh * 3600
        # float32 counters: (block, offset of the high word); their step grows with the value
        # (2**(E - 150) in the counter's unit, f32_wh Wh per unit), so the energy that must show
        # is at least twice the sum of their steps (an import/export pair shares it)
        self.f32 = f32
        self.f32_wh = f32_wh
        self.age_ms = -1            # since the watched registers last changed (or were last
                                    # not expected to: power below min_w); -1: never judged
        self.ws = 0                 # energy the power says flowed since then, W*s
        self.frozen = 0

    def judge(self, dt_ms):
        """After a complete poll; dt_ms since the previous judge (the runtime's ticks_diff).
        Decides only on a poll that read every watched block: between reads of a slow block
        its registers cannot change, and the power integrated meanwhile is not yet in them."""
        if dt_ms < 0 or dt_ms > 10000:  # a long gap counts as 10 s at most
            dt_ms = 10000
        read = 1
        for w in self.watch:
            if not w[0].fresh:
                read = 0
        moved = 0
        if read:
            moved = self.age_ms < 0
            k = 0
            snap = self.snap
            for w in self.watch:
                buf = w[0].buf
                j = w[1]
                for _ in range(w[2]):
                    if snap[k] != buf[j]:
                        snap[k] = buf[j]
                        moved = 1
                    k += 1
                    j += 1
        pw = self.power
        if pw is not None and not moved:
            p = pw.value()
            if p is None:
                p = 0
            elif p < 0:
                p = -p
            if p < self.min_w:          # nothing is expected to move now
                moved = 1
            elif self.max_ws:
                p = self.ws + (p // 1000) * dt_ms
                self.ws = p if p < 0x20000000 else 0x20000000
        if moved:
            self.age_ms = 0
            self.ws = 0
            self.frozen = 0
            return 1
        a = self.age_ms
        a = dt_ms if a < 0 else a + dt_ms
        self.age_ms = a if a < 0x20000000 else 0x20000000
        if read and a > self.within_ms and self.ws >= self.max_ws and self.ws >= self._steps_ws():
            self.frozen = 1
        return 1 - self.frozen


    def _steps_ws(self):
        n = 0
        for b, k in self.f32:
            e = (b.buf[k] >> 7) & 0xFF          # biased exponent of the float32 value
            if e >= 150:
                n += self.f32_wh << (e - 150 if e < 160 else 10)
            else:
                n += self.f32_wh >> (150 - e)
        n *= 2
        return (n if n < 131072 else 131072) * 3600     # < 2**30


class Profile:
    def __init__(self):
        self.name = ''
        self.title = ''
        self.kind = ''
        self.serial = {}
        self.unit_id = 1
        self.max_regs = 125
        self.min_gap_ms = 0
        self.blocks = []
        self.points = {}
        self.control = None
        self.identify = []
        self.freshness = None       # Freshness, or None: the profile declares rule 'none'

    def value(self, name):
        p = self.points.get(name)
        return None if p is None else p.value()

    def invalidate(self):
        for b in self.blocks:
            b.ok = 0
