# Compiled device profiles -> the per-cycle model (lib/profile_model.py). Boot-only.
#
# `make build` validates each profile on the host (lib/devprofile.py) and writes its compiled form
# (devprofile.compiled(): lists of ints and names, no keys to check) beside it as
# profiles/<name>.cpf.json; the device builds the model from that with from_compiled(), so the
# JSON parser and validator (devprofile, ~12 KB of heap) never load on a board.
from profile_model import Block, Point, Write, Plan, SunSpecControl, CommandControl, Profile, Freshness

COMPILED_FORMAT = 2             # 2: freshness added (element 9)


def source_hash(data):
    """The first 16 hex digits of sha256 over a profile file's bytes: the last element of a
    compiled profile, so the device can tell it from a stale one."""
    import hashlib
    import binascii
    return binascii.hexlify(hashlib.sha256(data).digest())[:16].decode()


def from_compiled(c):
    """Profile from devprofile.compiled() output (a list, e.g. parsed from .cpf.json)."""
    if not isinstance(c, list) or len(c) != 11 or c[0] != COMPILED_FORMAT:
        raise ValueError('not a compiled profile (format %d)' % COMPILED_FORMAT)
    p = Profile()
    p.name = p.title = c[1]
    p.kind = c[2]
    p.min_gap_ms = c[3]
    p.unit_id = c[4]
    for fc, start, count, every_ms in c[5]:
        b = Block(fc, start, count, every_ms)
        p.blocks.append(b)
    for pt in c[6]:
        p.points[pt[0]] = _point(p.blocks, pt)
    ctl = c[7]
    if ctl is not None:
        writes = []
        slot = {}
        for fc, addr, n in ctl[-1]:
            w = Write(fc, addr, n)
            writes.append(w)
            for k in range(n):
                slot[addr + k] = (w, k)
        if ctl[0] == 'sunspec_124':
            s = SunSpecControl()
            (s.mod_addr, s.mod_value, s.out_addr, s.in_addr, s.win_addr, s.rvrt_addr,
             s.revert_s) = ctl[1:8]
            s.wchamax = _point(p.blocks, ctl[8])
            s.rte_sf = _point(p.blocks, ctl[9])
        else:
            s = CommandControl()
            (s.mode_addr, s.mode_value, s.cmd_addr, s.cmd_charge, s.cmd_discharge, s.cmd_stop) = ctl[1:7]
            s.revert_s = 0
            s.pw = {}
            for key, addr, typ, lsw, e in ctl[7]:
                s.pw[key] = (addr, typ, lsw, e)
        s.plan_ = Plan(writes, slot)
        s.writes = writes
        p.control = s
    p.identify = c[8]
    f = c[9]
    if f is not None:
        watch, within_ms, pw, min_w, max_wh, f32, f32_wh = f
        p.freshness = Freshness(tuple((p.blocks[b], off, n) for b, off, n in watch), within_ms,
                                None if pw is None else p.points[pw], min_w, max_wh,
                                tuple((p.blocks[b], k) for b, k in f32), f32_wh)
    return p


def _point(blocks, pt):
    # pt[0] (the name) keys Profile.points; fc, addr and unit (pt[11:]) are the host's
    bi, off, typ, lsw, exp10, sign, limit, na, sbi, soff = pt[1:11]
    return Point(blocks[bi], off, typ, lsw, exp10, sign, limit, na, None if sbi < 0 else blocks[sbi], soff)
