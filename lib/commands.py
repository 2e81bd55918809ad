# Remote commands: parse, authenticate and validate one command; pure, no I/O.
#
# Runs on CPython and MicroPython. A command arrives on <prefix>/<id>/cmd/<name> with a JSON
# object payload (format: docs/telemetry.md). check() either returns a Command (a complete new
# validated config, or a dispatch / override start or stop) or raises Rejected(reason); it never
# changes the config it was given. apply() hands an accepted Command to a bess_core.Controller.
#
# Optional authentication (lib/schedule_mac.py checks it, loaded only when a key is configured;
# lib/command_mac.py signs): HMAC-SHA256 with a per-device key over
# "<topic>\n<payload without the mac member>", and a counter that must increase (replay
# protection). The counter advances only when a command is accepted, so a rejected command
# changes nothing at all (docs/telemetry.md, "Security").

import json

from bess_config import validate, ConfigError, POWER_MAX_W, is_int
from bess_core import COMMAND_MAX_MS

MAX_PAYLOAD = 512               # bytes; larger payloads are rejected unread
CTR_MAX = 9007199254740991      # 2**53 - 1: exact in every JSON implementation
ID_MAX = 32                     # longest request id echoed in the ack

# command name -> config key it sets
SETTINGS = {
    'objective': 'objective',
    'import_limit': 'import_limit_w',
    'ev_headroom': 'ev_headroom_w',
    'min_soc': 'min_soc_bp',
    'reserve_soc': 'reserve_soc_bp',
    'max_soc': 'max_soc_bp',
    'max_charge': 'max_charge_w',
    'max_discharge': 'max_discharge_w',
}
ACTIONS = ('dispatch', 'override')

# Command.kind
K_CONFIG = 'config'
K_DISPATCH = 'dispatch'
K_OVERRIDE = 'override'

_SETTING_KEYS = ('value', 'id', 'ctr')
_ACTION_KEYS = ('power_w', 'duration_ms', 'id', 'ctr')


class Rejected(ValueError):
    """The command was refused; str(e) is the reason sent back in the ack."""


class Command:
    """An accepted command. kind: 'config' (data = new validated config dict) or 'dispatch' /
    'override' (data = (power_w, duration_ms); duration_ms 0 = stop)."""

    def __init__(self, name, kind, data, ctr, req_id):
        self.name = name
        self.kind = kind
        self.data = data
        self.ctr = ctr
        self.id = req_id


class Auth:
    """Command authentication state: key (bytes or None = off) and the last accepted counter.
    mac: what the caller found checking a payload's mac, when it did (the device does, before
    this module loads: firmware/reporting.py): (that payload, the body's length or why it is
    refused: a str). Used only for that very payload object; any other is checked here."""

    def __init__(self, key=None, last_ctr=0, mac=None):
        self.key = key
        self.last_ctr = last_ctr
        self.mac = mac

    def verify(self, topic, payload):
        """Return (body bytes to parse, True or None: signed). Raises Rejected. Changes nothing.
        The HMAC code (lib/schedule_mac.py) is loaded only by a site with a key."""
        if self.key is None:
            return payload, None
        v = self.mac
        if v is not None and v[0] is payload:
            n = v[1]
        else:
            # the HMAC the schedules are checked with as they stream in (lib/schedule_mac.py):
            # one HMAC on the device, hashed in place (no copy of the payload or the key pads)
            from schedule_mac import MacStream
            m = MacStream(self.key, topic, len(payload))
            m.update(memoryview(payload))       # its slices are views, not copies of the body
            n = m.body if m.ok() else m.why
        if isinstance(n, str):
            raise Rejected(n)
        return payload[:n] + b'}', True         # the body: without ,"mac":"<64 hex>"

    def check_ctr(self, obj):
        ctr = obj.get('ctr')
        if not is_int(ctr) or not 0 < ctr <= CTR_MAX:
            raise Rejected('unauthorized: ctr must be an integer in 1..%d' % CTR_MAX)
        if ctr <= self.last_ctr:
            raise Rejected('unauthorized: replay (ctr %d <= last accepted %d)' % (ctr, self.last_ctr))
        return ctr


def _decode(body):
    try:
        obj = json.loads(body)
    except Exception:
        # (a MemoryError too: a payload is at most MAX_PAYLOAD bytes, and one that exhausts the
        # parser, such as 500 nested brackets (~17 KB on 32-bit), is malformed; refused as such
        # it is counted in err.cmd_rejected like every other refusal)
        raise Rejected('malformed: payload is not JSON')
    if not isinstance(obj, dict):
        raise Rejected('malformed: payload must be a JSON object')
    return obj


def _only(obj, keys):
    for k in obj:
        if k not in keys:
            raise Rejected('malformed: unknown member %r' % k)


def check(name, payload, cfg, auth, topic=b''):
    """Parse, authenticate and validate one command against the current config cfg.

    name: the last topic level; payload: bytes; auth: Auth; topic: the full command topic (bytes,
    covered by the mac). Returns a Command or raises Rejected. cfg and auth are not modified.
    """
    if not payload:
        raise Rejected('malformed: empty payload')
    if len(payload) > MAX_PAYLOAD:
        raise Rejected('oversized: payload %d bytes > %d' % (len(payload), MAX_PAYLOAD))
    if name not in SETTINGS and name not in ACTIONS:
        raise Rejected('unknown command %r' % name)
    body, signed = auth.verify(topic, payload)
    obj = _decode(body)
    if signed:
        ctr = auth.check_ctr(obj)
    else:
        ctr = None
        if 'ctr' in obj:
            ctr = obj['ctr']
            if not is_int(ctr) or not 0 < ctr <= CTR_MAX:
                raise Rejected('malformed: ctr must be an integer in 1..%d' % CTR_MAX)
    req_id = obj.get('id')
    if req_id is not None and not (isinstance(req_id, str) and len(req_id) <= ID_MAX):
        raise Rejected('malformed: id must be a string of at most %d characters' % ID_MAX)
    # two functions, not one: a function's bytecode is one block of heap, and the command path
    # is loaded into a fragmented heap (docs/resources.md)
    return (_setting if name in SETTINGS else _action)(name, obj, cfg, ctr, req_id)


def _setting(name, obj, cfg, ctr, req_id):
    _only(obj, _SETTING_KEYS)
    if 'value' not in obj:
        raise Rejected('malformed: missing "value"')
    new = dict(cfg)
    new[SETTINGS[name]] = obj['value']
    if name == 'min_soc' and cfg['reserve_soc_bp'] == cfg['min_soc_bp']:
        # a reserve equal to min SoC is the default "no reserve": it follows min SoC
        new['reserve_soc_bp'] = obj['value']
    try:
        new = validate(new)
    except ConfigError as e:
        # validate() lists every problem; report the lines after its header
        msg = str(e)
        i = msg.find('\n')
        raise Rejected(('invalid: ' + msg[i + 1:].strip()) if i >= 0 else msg)
    return Command(name, K_CONFIG, new, ctr, req_id)


def _action(name, obj, cfg, ctr, req_id):
    _only(obj, _ACTION_KEYS)
    p = obj.get('power_w')
    d = obj.get('duration_ms')
    if not is_int(d) or not 0 <= d <= COMMAND_MAX_MS:
        raise Rejected('invalid: duration_ms must be an integer in 0..%d (0 = stop)' % COMMAND_MAX_MS)
    if d == 0:
        if p is not None and p != 0:
            raise Rejected('invalid: a stop (duration_ms 0) takes power_w 0 or none')
        return Command(name, name, (0, 0), ctr, req_id)
    if not is_int(p) or not -POWER_MAX_W <= p <= POWER_MAX_W:
        raise Rejected('invalid: power_w must be an integer in -%d..%d' % (POWER_MAX_W, POWER_MAX_W))
    if p > cfg['max_discharge_w']:
        raise Rejected('invalid: power_w %d exceeds max_discharge_w %d' % (p, cfg['max_discharge_w']))
    if -p > cfg['max_charge_w']:
        raise Rejected('invalid: power_w %d exceeds max_charge_w %d' % (p, cfg['max_charge_w']))
    return Command(name, name, (p, d), ctr, req_id)


def apply(ctl, cmd):
    """Hand an accepted command to a bess_core.Controller; effective from its next step()."""
    if cmd.kind == K_CONFIG:
        ctl.configure(cmd.data)
    elif cmd.kind == K_DISPATCH:
        if cmd.data[1]:
            ctl.start_dispatch(cmd.data[0], cmd.data[1])
        else:
            ctl.stop_dispatch()
    elif cmd.kind == K_OVERRIDE:
        if cmd.data[1]:
            ctl.start_override(cmd.data[0], cmd.data[1])
        else:
            ctl.stop_override()


def ack(cmd_name, ok, reason=None, req_id=None, ctr=None):
    """The ack record published on <prefix>/<id>/cmd/ack (a dict; the link encodes it)."""
    a = {'cmd': cmd_name, 'ok': ok}
    if reason is not None:
        a['reason'] = reason
    if req_id is not None:
        a['id'] = req_id
    if ctr is not None:
        a['ctr'] = ctr
    return a
