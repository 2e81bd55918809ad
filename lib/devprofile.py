# Device profiles, load time only: read a JSON profile, validate it, compile it into the
# per-cycle model (lib/profile_model.py). The firmware unloads this module after boot.
#
# Runs on CPython and MicroPython (json, array). The format is documented in docs/profiles.md.
# load(path) / from_dict(d) -> profile_model.Profile, or ProfileError listing every problem.
#
# Per cycle the runtime: for each block in prof.blocks that is due, reads block.count registers
# with block.fc from block.start into block.buf (a preallocated array('H')) and sets block.ok;
# then prof.points['total_w'].value() (or prof.value(name)) decodes without allocating.
# For a battery, prof.control.plan(setpoint_w) fills preallocated write buffers and returns
# the list of Write objects (fc, addr, buf, n) to send, in order, or None if it cannot encode.

import json

import regdecode as rd
from bess_config import is_int
from sitecfg import BAUDS
from profile_model import Block, Point, Write, Plan, SunSpecControl, CommandControl, Profile, Freshness  # noqa: F401
from profile_compiled import COMPILED_FORMAT, source_hash  # noqa: F401 (build.py)

FORMAT = 1
KINDS = ('meter', 'battery')
NAMES = {
    'meter': ('total_w', 'l1_w', 'l2_w', 'l3_w', 'import_wh', 'export_wh'),
    'battery': ('soc_bp', 'power_w', 'max_chg_w', 'max_dis_w'),
}
REQUIRED = {
    'meter': ('total_w', 'l1_w', 'l2_w', 'l3_w'),
    'battery': ('soc_bp', 'power_w'),
}
UNITS = {'W': rd.LIMIT_W, 'Wh': rd.LIMIT_BIG, 'bp': 10000}
SCALE_MAX = 9                   # |scale| in a profile; the SunSpec SF adds up to +-10 at run time
MODBUS_MAX_READ = 125
SCHEMES = ('sunspec_124', 'command')
EVERY_MAX_MS = 3600000         # slowest block cadence: hourly

_TOP_KEYS = ('format', 'name', 'title', 'kind', 'serial', 'max_regs', 'min_gap_ms', 'blocks',
             'points', 'control', 'identify', 'freshness', 'doc')
_SERIAL_KEYS = ('baud', 'parity', 'stop_bits', 'unit_id', 'doc')
_BLOCK_KEYS = ('fc', 'start', 'count', 'every_ms', 'doc')
_POINT_KEYS = ('fc', 'addr', 'type', 'order', 'scale', 'scale_sf', 'sign', 'unit', 'limit',
               'sunspec_na', 'doc')
_ID_KEYS = ('fc', 'addr', 'values', 'doc')
# freshness: how frozen data is recognised (docs/profiles.md); rule -> keys it needs besides
# within_ms and watch ('none' needs only a doc saying why)
RULES = {'heartbeat': (), 'counter': ('power', 'max_wh'), 'unchanged': ('power', 'min_w'), 'none': ()}
_FRESH_KEYS = ('rule', 'watch', 'within_ms', 'power', 'max_wh', 'min_w', 'doc')
_WATCH_KEYS = ('fc', 'addr', 'count')
WITHIN_MIN_MS = 1000
WITHIN_MAX_MS = 600000
_CTL_KEYS = {
    'sunspec_124': ('scheme', 'mod', 'out_rte', 'in_rte', 'win_tms', 'rvrt_tms', 'revert_s',
                    'rte_sf', 'wchamax', 'write_fc', 'doc'),
    'command': ('scheme', 'mode', 'command', 'power', 'charge_power', 'discharge_power',
                'write_fc', 'doc'),
}


class ProfileError(ValueError):
    """Raised with every problem found, one per line."""



# --- validation -----------------------------------------------------------------------------------

def _unknown(errs, where, d, allowed):
    for k in d:
        if k not in allowed:
            errs.append('%s: unknown key %r (allowed: %s)' % (where, k, ', '.join(allowed)))


def _int_in(errs, where, d, key, lo, hi, required=True):
    if key not in d:
        if required:
            errs.append('%s: missing %r' % (where, key))
        return False
    v = d[key]
    if not is_int(v):
        errs.append('%s: %r must be an integer, got %r' % (where, key, v))
        return False
    if not lo <= v <= hi:
        errs.append('%s: %r = %d outside %d..%d' % (where, key, v, lo, hi))
        return False
    return True


def _covered(blocks, fc, addr, n):
    for b in blocks:
        if b[0] == fc and b[1] <= addr and addr + n <= b[1] + b[2]:
            return True
    return False


def _check_point(errs, where, p, blocks, unit_expected):
    if not isinstance(p, dict):
        errs.append('%s: must be an object' % where)
        return
    _unknown(errs, where, p, _POINT_KEYS)
    ok = _int_in(errs, where, p, 'fc', 3, 4) & _int_in(errs, where, p, 'addr', 0, 65535)
    t = p.get('type')
    if t not in rd.TYPE_NAMES:
        errs.append('%s: type %r is not one of %s' % (where, t, ', '.join(rd.TYPE_NAMES)))
        ok = False
    n = rd.TYPE_WORDS[rd.type_code(t)] if t in rd.TYPE_NAMES else 1
    order = p.get('order', 'msw')
    if order not in ('msw', 'lsw'):
        errs.append("%s: order %r must be 'msw' or 'lsw'" % (where, order))
    elif n == 2 and 'order' not in p:
        errs.append("%s: 32-bit type needs 'order' ('msw' or 'lsw' first)" % where)
    _int_in(errs, where, p, 'scale', -SCALE_MAX, SCALE_MAX, False)
    if 'sign' in p and p['sign'] not in (1, -1):
        errs.append('%s: sign must be 1 or -1, got %r' % (where, p['sign']))
    if 'limit' in p:
        _int_in(errs, where, p, 'limit', 1, rd.LIMIT_BIG)
    if 'sunspec_na' in p and not isinstance(p['sunspec_na'], bool):
        errs.append('%s: sunspec_na must be true or false' % where)
    if unit_expected is not None:
        u = p.get('unit')
        if u != unit_expected:
            errs.append('%s: unit must be %r for this name, got %r' % (where, unit_expected, u))
    if ok:
        if not _covered(blocks, p['fc'], p['addr'], n):
            errs.append('%s: registers fc%d %d..%d are not inside any read block'
                        % (where, p['fc'], p['addr'], p['addr'] + n - 1))
        if 'scale_sf' in p and _int_in(errs, where, p, 'scale_sf', 0, 65535):
            if not _covered(blocks, p['fc'], p['scale_sf'], 1):
                errs.append('%s: scale factor register fc%d %d is not inside any read block'
                            % (where, p['fc'], p['scale_sf']))


def _check_reg(errs, where, d, value=False):
    if not isinstance(d, dict):
        errs.append('%s: must be an object with "addr"' % where)
        return False
    ok = _int_in(errs, where, d, 'addr', 0, 65535)
    if value:
        ok &= _int_in(errs, where, d, 'value', 0, 65535)
    return ok


def _check_control(errs, c, blocks):
    where = 'control'
    if not isinstance(c, dict):
        errs.append('control: must be an object')
        return
    s = c.get('scheme')
    if s not in SCHEMES:
        errs.append('control: scheme %r is not one of %s' % (s, ', '.join(SCHEMES)))
        return
    _unknown(errs, where, c, _CTL_KEYS[s])
    if 'write_fc' in c and c['write_fc'] not in (0, 16):
        errs.append('control: write_fc must be 0 (auto: 6 for single registers) or 16')
    used = []
    if s == 'sunspec_124':
        for k in ('mod', 'out_rte', 'in_rte', 'rte_sf'):
            if k not in c:
                errs.append('control: missing %r' % k)
            elif _check_reg(errs, 'control.' + k, c[k]) and k != 'rte_sf':
                used.append(c[k]['addr'])
        if 'mod' in c and 'value' in c['mod']:
            _int_in(errs, 'control.mod', c['mod'], 'value', 0, 65535)
        for k in ('win_tms', 'rvrt_tms'):
            if k in c and _check_reg(errs, 'control.' + k, c[k]):
                used.append(c[k]['addr'])
        _int_in(errs, where, c, 'revert_s', 0, 65535, 'rvrt_tms' in c)
        if 'rte_sf' in c and isinstance(c['rte_sf'], dict) and is_int(c['rte_sf'].get('addr')):
            if not _covered(blocks, 3, c['rte_sf']['addr'], 1):
                errs.append('control.rte_sf: register fc3 %d is not inside any read block'
                            % c['rte_sf']['addr'])
        if 'wchamax' not in c:
            errs.append("control: missing 'wchamax' (a point: WChaMax with its scale factor)")
        else:
            _check_point(errs, 'control.wchamax', c['wchamax'], blocks, 'W')
    else:
        if 'mode' in c and _check_reg(errs, 'control.mode', c['mode'], True):
            used.append(c['mode']['addr'])
        cm = c.get('command')
        if not isinstance(cm, dict):
            errs.append("control: missing 'command' {addr, charge, discharge, stop}")
        else:
            if _check_reg(errs, 'control.command', cm):
                used.append(cm['addr'])
            for k in ('charge', 'discharge', 'stop'):
                _int_in(errs, 'control.command', cm, k, 0, 65535)
        has = [k for k in ('power', 'charge_power', 'discharge_power') if k in c]
        if not has:
            errs.append("control: needs 'power' or 'charge_power' + 'discharge_power'")
        elif 'power' not in c and len(has) != 2:
            errs.append("control: 'charge_power' and 'discharge_power' go together")
        for k in has:
            p = c[k]
            w = 'control.' + k
            if not _check_reg(errs, w, p):
                continue
            _unknown(errs, w, p, ('addr', 'type', 'order', 'scale', 'doc'))
            t = p.get('type', 'uint16')
            if t not in ('uint16', 'uint32', 'int16', 'int32'):
                errs.append('%s: type %r must be an integer type' % (w, t))
                continue
            n = rd.TYPE_WORDS[rd.type_code(t)]
            if n == 2 and p.get('order') not in ('msw', 'lsw'):
                errs.append("%s: 32-bit type needs 'order' ('msw' or 'lsw')" % w)
            _int_in(errs, w, p, 'scale', -SCALE_MAX, SCALE_MAX, False)
            for k2 in range(n):
                used.append(p['addr'] + k2)
    seen = []
    for a in used:
        if a in seen:
            errs.append('control: register %d is written twice' % a)
        seen.append(a)


def validate(d):
    """Return a list of problems (empty if the profile is valid)."""
    errs = []
    if not isinstance(d, dict):
        return ['profile must be a JSON object']
    _unknown(errs, 'profile', d, _TOP_KEYS)
    if d.get('format') != FORMAT:
        errs.append('profile: format must be %d, got %r' % (FORMAT, d.get('format')))
    if not isinstance(d.get('name'), str) or not d.get('name'):
        errs.append('profile: name must be a non-empty string')
    kind = d.get('kind')
    if kind not in KINDS:
        errs.append('profile: kind %r must be one of %s' % (kind, ', '.join(KINDS)))
        kind = None
    s = d.get('serial')
    if not isinstance(s, dict):
        errs.append("profile: missing 'serial' {baud, parity, stop_bits, unit_id}")
    else:
        _unknown(errs, 'serial', s, _SERIAL_KEYS)
        if s.get('baud') not in BAUDS:
            errs.append('serial: baud %r is not one of %s' % (s.get('baud'), BAUDS))
        if s.get('parity') not in ('N', 'E', 'O'):
            errs.append("serial: parity %r must be 'N', 'E' or 'O'" % (s.get('parity'),))
        if s.get('stop_bits') not in (1, 2):
            errs.append('serial: stop_bits %r must be 1 or 2' % (s.get('stop_bits'),))
        _int_in(errs, 'serial', s, 'unit_id', 1, 247)
    max_regs = MODBUS_MAX_READ
    if 'max_regs' in d and _int_in(errs, 'profile', d, 'max_regs', 1, MODBUS_MAX_READ):
        max_regs = d['max_regs']
    _int_in(errs, 'profile', d, 'min_gap_ms', 0, 10000, False)
    blocks = []
    bl = d.get('blocks')
    if not isinstance(bl, list) or not bl:
        errs.append("profile: 'blocks' must be a non-empty list")
        bl = []
    for i in range(len(bl)):
        b = bl[i]
        w = 'blocks[%d]' % i
        if not isinstance(b, dict):
            errs.append(w + ': must be an object {fc, start, count}')
            continue
        _unknown(errs, w, b, _BLOCK_KEYS)
        ok = _int_in(errs, w, b, 'fc', 3, 4) & _int_in(errs, w, b, 'start', 0, 65535)
        ok &= _int_in(errs, w, b, 'count', 1, max_regs)
        _int_in(errs, w, b, 'every_ms', 0, EVERY_MAX_MS, False)
        if ok and b['start'] + b['count'] > 65536:
            errs.append('%s: ends beyond register 65535' % w)
            ok = False
        if ok:
            for j in range(len(blocks)):
                o = blocks[j]
                if o[0] == b['fc'] and b['start'] < o[1] + o[2] and o[1] < b['start'] + b['count']:
                    errs.append('%s: overlaps blocks[%d] (fc%d %d..%d)'
                                % (w, o[3], o[0], o[1], o[1] + o[2] - 1))
            blocks.append((b['fc'], b['start'], b['count'], i))
    pts = d.get('points')
    if not isinstance(pts, dict):
        errs.append("profile: 'points' must be an object name -> point")
        pts = {}
    if kind:
        names = NAMES[kind]
        for n in pts:
            if n not in names:
                errs.append('points: unknown name %r for a %s (allowed: %s)'
                            % (n, kind, ', '.join(names)))
        for n in REQUIRED[kind]:
            if n not in pts:
                errs.append('points: %r is required for a %s' % (n, kind))
    for n in pts:
        unit = 'W' if n.endswith('_w') else ('Wh' if n.endswith('_wh') else
                                            ('bp' if n.endswith('_bp') else None))
        _check_point(errs, 'points.' + n, pts[n], blocks, unit)
    if kind == 'battery':
        if 'control' not in d:
            errs.append("profile: a battery needs a 'control' section")
        else:
            _check_control(errs, d['control'], blocks)
    elif kind == 'meter' and 'control' in d:
        errs.append("profile: a meter has no 'control' section")
    idl = d.get('identify', [])
    if not isinstance(idl, list):
        errs.append("profile: 'identify' must be a list")
        idl = []
    for i in range(len(idl)):
        e = idl[i]
        w = 'identify[%d]' % i
        if not isinstance(e, dict):
            errs.append(w + ': must be an object {fc, addr, values}')
            continue
        _unknown(errs, w, e, _ID_KEYS)
        _int_in(errs, w, e, 'fc', 3, 4)
        _int_in(errs, w, e, 'addr', 0, 65535)
        v = e.get('values')
        if not isinstance(v, list) or not v or not all(is_int(x) and 0 <= x <= 65535 for x in v):
            errs.append(w + ': values must be a non-empty list of 0..65535')
    if kind:
        _check_freshness(errs, d.get('freshness'), pts, blocks)
    return errs


def _check_freshness(errs, f, pts, blocks):
    if f is None:
        errs.append("profile: 'freshness' missing: say how frozen data is recognised, rule one of %s "
                    "(docs/profiles.md)" % ', '.join(RULES))
        return
    if not isinstance(f, dict):
        errs.append("profile: 'freshness' must be an object {rule, watch, within_ms, ...}")
        return
    _unknown(errs, 'freshness', f, _FRESH_KEYS)
    rule = f.get('rule')
    if rule not in RULES:
        errs.append('freshness: rule %r must be one of %s' % (rule, ', '.join(RULES)))
        return
    if rule == 'none':
        if not isinstance(f.get('doc'), str) or not f['doc']:
            errs.append("freshness: rule 'none' needs a 'doc' saying why frozen data cannot be recognised")
        for k in f:
            if k not in ('rule', 'doc'):
                errs.append("freshness: rule 'none' takes no %r" % k)
        return
    for k in ('power', 'max_wh', 'min_w'):
        if k in f and k not in RULES[rule]:
            errs.append('freshness: rule %r takes no %r' % (rule, k))
    _int_in(errs, 'freshness', f, 'within_ms', WITHIN_MIN_MS, WITHIN_MAX_MS)
    if 'max_wh' in RULES[rule]:
        _int_in(errs, 'freshness', f, 'max_wh', 1, 1000000)
    if 'min_w' in RULES[rule]:
        _int_in(errs, 'freshness', f, 'min_w', 1, rd.LIMIT_W)
    if 'power' in RULES[rule]:
        pw = f.get('power')
        if not isinstance(pw, str) or not pw.endswith('_w') or pw not in pts:
            errs.append('freshness: power %r must name a power point (..._w) of this profile' % (pw,))
    w = f.get('watch')
    if not isinstance(w, list) or not w:
        errs.append('freshness: watch must be a non-empty list of point names or {fc, addr, count}')
        return
    for i in range(len(w)):
        e = w[i]
        where = 'freshness.watch[%d]' % i
        if isinstance(e, str):
            if e not in pts:
                errs.append('%s: %r is not a point of this profile' % (where, e))
            continue
        if not isinstance(e, dict):
            errs.append(where + ': must be a point name or {fc, addr, count}')
            continue
        _unknown(errs, where, e, _WATCH_KEYS)
        ok = _int_in(errs, where, e, 'fc', 3, 4) & _int_in(errs, where, e, 'addr', 0, 65535)
        if 'count' in e:
            ok &= _int_in(errs, where, e, 'count', 1, 4)
        if ok and not _covered(blocks, e['fc'], e['addr'], e.get('count', 1)):
            errs.append('%s: fc%d %d is not inside a read block' % (where, e['fc'], e['addr']))


def block_for(blocks, fc, addr, n):
    """(block, offset) holding registers addr..addr+n-1 read with fc, or (None, 0)."""
    for b in blocks:
        if b.fc == fc and b.start <= addr and addr + n <= b.start + b.count:
            return b, addr - b.start
    return None, 0


def encode_point(p, value, buf, off, sf=0):
    """Device representation of value (our unit) into buf[off:] (simulator, tests; the runtime
    only decodes, so this stays out of the resident profile_model)."""
    rd.encode(value, p.typ, p.lsw, p.exp10 + sf, p.sign, buf, off)


def compile_point(blocks, name, p, unit):
    typ = rd.type_code(p['type'])
    b, off = block_for(blocks, p['fc'], p['addr'], rd.TYPE_WORDS[typ])
    sfb, sfo = None, 0
    if 'scale_sf' in p:
        sfb, sfo = block_for(blocks, p['fc'], p['scale_sf'], 1)
    limit = p.get('limit', UNITS.get(unit, rd.LIMIT_W))
    pt = Point(b, off, typ, 1 if p.get('order', 'msw') == 'lsw' else 0, p.get('scale', 0), p.get('sign', 1),
               limit, 1 if p.get('sunspec_na', False) else 0, sfb, sfo)
    # the register map, for the simulator, the compiled profile and the docs (not on a board)
    pt.name, pt.fc, pt.addr, pt.unit = name, p['fc'], p['addr'], unit
    pt.sf_addr = -1 if sfb is None else sfb.start + sfo
    return pt


def plan_writes(regs, write_fc):
    """Registers a control scheme writes -> Plan of contiguous writes. regs: list of (addr,
    nwords) in the order they should be sent (a group goes in the order of its first register)."""
    addrs = []
    for a, n in regs:
        for k in range(n):
            addrs.append(a + k)
    groups = []
    for a in sorted(addrs):
        if groups and groups[-1][0] + groups[-1][1] == a:
            groups[-1][1] += 1
        else:
            groups.append([a, 1])
    first = {}
    for i in range(len(addrs)):
        first.setdefault(addrs[i], i)
    # send groups in the order their first register was listed (e.g. powers before command)
    groups.sort(key=lambda g: min(first[g[0] + k] for k in range(g[1])))
    writes = []
    slot = {}
    for a, n in groups:
        w = Write(6 if (n == 1 and write_fc != 16) else 16, a, n)
        writes.append(w)
        for k in range(n):
            slot[a + k] = (w, k)
    return Plan(writes, slot)


def sunspec_control(c, blocks):
    s = SunSpecControl()
    s.mod_addr = c['mod']['addr']
    s.mod_value = c['mod'].get('value', 3)
    s.out_addr = c['out_rte']['addr']
    s.in_addr = c['in_rte']['addr']
    s.win_addr = c['win_tms']['addr'] if 'win_tms' in c else -1
    s.rvrt_addr = c['rvrt_tms']['addr'] if 'rvrt_tms' in c else -1
    s.revert_s = c.get('revert_s', 0)
    s.wchamax = compile_point(blocks, 'wchamax', c['wchamax'], 'W')
    s.rte_sf = compile_point(blocks, 'rte_sf', {'fc': 3, 'addr': c['rte_sf']['addr'], 'type': 'int16'}, '')
    regs = [(s.mod_addr, 1), (s.out_addr, 1), (s.in_addr, 1)]
    if s.win_addr >= 0:
        regs.append((s.win_addr, 1))
    if s.rvrt_addr >= 0:
        regs.append((s.rvrt_addr, 1))
    s.plan_ = plan_writes(regs, c.get('write_fc', 0))
    s.writes = s.plan_.writes
    return s


def command_control(c):
    s = CommandControl()
    m = c.get('mode')
    s.mode_addr = m['addr'] if m else -1
    s.mode_value = m['value'] if m else 0
    cm = c['command']
    s.cmd_addr = cm['addr']
    s.cmd_charge = cm['charge']
    s.cmd_discharge = cm['discharge']
    s.cmd_stop = cm['stop']
    s.revert_s = 0
    regs = []
    s.pw = {}
    for key in ('power', 'charge_power', 'discharge_power'):
        if key in c:
            p = c[key]
            typ = rd.type_code(p.get('type', 'uint16'))
            s.pw[key] = (p['addr'], typ, 1 if p.get('order', 'msw') == 'lsw' else 0, p.get('scale', 0))
            regs.append((p['addr'], rd.TYPE_WORDS[typ]))
    if s.mode_addr >= 0:
        regs.insert(0, (s.mode_addr, 1))
    regs.append((s.cmd_addr, 1))
    s.plan_ = plan_writes(regs, c.get('write_fc', 0))
    s.writes = s.plan_.writes
    return s


def from_dict(d):
    errs = validate(d)
    if errs:
        name = d.get('name', '?') if isinstance(d, dict) else '?'
        raise ProfileError('profile %s:\n  ' % name + '\n  '.join(errs))
    p = Profile()
    p.name = d['name']
    p.title = d.get('title', d['name'])
    p.kind = d['kind']
    p.serial = d['serial']
    p.unit_id = d['serial']['unit_id']
    p.max_regs = d.get('max_regs', MODBUS_MAX_READ)
    p.min_gap_ms = d.get('min_gap_ms', 0)
    for b in d['blocks']:
        blk = Block(b['fc'], b['start'], b['count'], b.get('every_ms', 0))
        p.blocks.append(blk)
    for n in NAMES[p.kind]:
        if n in d['points']:
            unit = 'W' if n.endswith('_w') else ('Wh' if n.endswith('_wh') else 'bp')
            p.points[n] = compile_point(p.blocks, n, d['points'][n], unit)
    if p.kind == 'battery':
        c = d['control']
        p.control = sunspec_control(c, p.blocks) if c['scheme'] == 'sunspec_124' else command_control(c)
    p.identify = d.get('identify', [])
    p.freshness = freshness(d['freshness'], p)
    return p


def freshness(f, p):
    """profile_model.Freshness from a validated 'freshness' section, or None for rule 'none'."""
    if f['rule'] == 'none':
        return None
    watch = []
    for e in f['watch']:
        if isinstance(e, str):
            q = p.points[e]
            watch.append((q.block, q.off, rd.TYPE_WORDS[q.typ]))
        else:
            b, off = block_for(p.blocks, e['fc'], e['addr'], e.get('count', 1))
            watch.append((b, off, e.get('count', 1)))
    pw = p.points[f['power']] if 'power' in f else None
    f32 = []
    wh = 1000
    if f['rule'] == 'counter':
        for e in f['watch']:
            q = p.points.get(e) if isinstance(e, str) else None
            if q is not None and q.typ == rd.F32:
                f32.append((q.block, q.off + (1 if q.lsw else 0)))
                wh = rd.scale_int(1, q.exp10) if q.exp10 >= 0 else 1
    return Freshness(tuple(watch), f['within_ms'], pw, f.get('min_w', 0), f.get('max_wh', 0), tuple(f32), wh)


def compiled(p, source_sha=''):
    """The compiled form of a loaded Profile (profile_compiled.from_compiled builds it back): what
    `make build` writes to profiles/<name>.cpf.json for the device. source_sha: source_hash() of
    the JSON it came from, so the device can tell a compiled file from a stale one."""
    bi = {}
    for k in range(len(p.blocks)):
        bi[id(p.blocks[k])] = k

    def pt(x):
        return [x.name, bi[id(x.block)], x.off, x.typ, x.lsw, x.exp10, x.sign, x.limit, x.na,
                -1 if x.sf_block is None else bi[id(x.sf_block)], x.sf_off, x.fc, x.addr, x.unit]
    fr = None
    f = p.freshness
    if f is not None:
        fr = [[[bi[id(w[0])], w[1], w[2]] for w in f.watch], f.within_ms,
              None if f.power is None else f.power.name, f.min_w, f.max_ws // 3600,
              [[bi[id(b)], k] for b, k in f.f32], f.f32_wh]
    ctl = None
    c = p.control
    if c is not None:
        writes = [[w.fc, w.addr, w.n] for w in c.writes]
        if c.scheme == 'sunspec_124':
            ctl = ['sunspec_124', c.mod_addr, c.mod_value, c.out_addr, c.in_addr, c.win_addr, c.rvrt_addr,
                   c.revert_s, pt(c.wchamax), pt(c.rte_sf), writes]
        else:
            ctl = ['command', c.mode_addr, c.mode_value, c.cmd_addr, c.cmd_charge, c.cmd_discharge,
                   c.cmd_stop, [[k] + list(c.pw[k]) for k in c.pw], writes]
    return [COMPILED_FORMAT, p.name, p.kind, p.min_gap_ms, p.unit_id,
            [[b.fc, b.start, b.count, b.every_ms] for b in p.blocks],
            [pt(p.points[n]) for n in p.points], ctl,
            [{'fc': e['fc'], 'addr': e['addr'], 'values': e['values']} for e in p.identify], fr, source_sha]



def loads(text):
    try:
        d = json.loads(text)
    except ValueError as e:
        raise ProfileError('profile is not valid JSON: %s' % e)
    return from_dict(d)


def load(path):
    with open(path) as f:
        text = f.read()
    try:
        return loads(text)
    except ProfileError as e:
        raise ProfileError('%s: %s' % (path, e))
