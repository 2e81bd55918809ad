# Commands from the MQTT link to the controller, and the persisted settings they change.
#
#   cfg, ctr, msg = load_state(STATE_PATH, COMMISSIONED_CFG)    # at boot; print msg if any
#   ctl = bess_core.Controller(cfg)
#   h = CommandHandler(ctl, STATE_PATH, key, ctr, stats, base=validate(COMMISSIONED_CFG))
#                                                                # key: bytes or None (no HMAC)
#   link = mqtt_link.MqttLink({..., 'on_command': h}); h.on_change = link.set_config
#
# The link calls h(name, topic, payload, retained) from poll(), outside ctl.step(); an accepted
# command is applied to ctl at once, so it takes effect on the next step(). Order for an
# accepted command: validate (lib/commands.py) -> save settings + counter atomically
# (firmware/persist.py) -> apply. A rejected command, or a storage failure, changes nothing.

import json
import commands
import persist
from bess_config import validate, ConfigError

STATE_VERSION = 1


def load_state(path, base_cfg):
    """Boot: return (config, last HMAC counter, message or None).

    The saved settings when the file is intact and valid AND were made on top of the same
    commissioned config; otherwise the commissioned base_cfg (validated; a ConfigError from it
    propagates: the runtime must then stay in fail-safe) and a message saying why. A redeployed
    config therefore always wins over settings saved before it (a lowered import limit must not be
    undone by an old command). A lost file also loses the replay counter (docs/telemetry.md)."""
    base = validate(base_cfg)
    obj, err = persist.load(path)
    if obj is None:
        if err.endswith(': missing'):
            return validate(base_cfg), 0, 'config: no saved settings (%s), using the commissioned config' % err
        return (validate(base_cfg), 0,
                'config: SAVED SETTINGS UNUSABLE (%s), using the commissioned config; replay counter reset' % err)
    try:
        if not isinstance(obj, dict) or obj.get('v') != STATE_VERSION:
            raise ValueError('unknown format version')
        ctr = obj.get('ctr', 0)
        if not isinstance(ctr, int) or isinstance(ctr, bool) or ctr < 0:
            raise ValueError('bad ctr')
        cfg = validate(obj['config'])
        if obj.get('base') != base:
            try:                        # overwrite, so redeploying the old config cannot revive them
                persist.save(path, {'v': STATE_VERSION, 'config': base, 'ctr': ctr, 'base': base})
            except OSError:
                pass
            return (base, ctr, 'config: the commissioned config changed since settings were saved over MQTT '
                    '(%s); saved settings discarded, the commissioned config is in force' % path)
        return cfg, ctr, None
    except (ConfigError, ValueError, KeyError, TypeError) as e:
        msg = str(e).replace('\n', ' ')
        return (validate(base_cfg), 0,
                'config: SAVED SETTINGS INVALID (%s: %s), using the commissioned config; replay counter reset'
                % (path, msg))


def _req_id(payload):
    # best effort, for the ack of a rejected command
    if payload is None or len(payload) > commands.MAX_PAYLOAD:
        return None
    try:
        i = json.loads(payload).get('id')
        if isinstance(i, str) and len(i) <= commands.ID_MAX:
            return i
    except Exception:
        pass
    return None


class CommandHandler:
    def __init__(self, ctl, path, key=None, last_ctr=0, stats=None, on_change=None, base=None):
        self.ctl = ctl
        self.path = path
        self.base = base                # the commissioned config the saved settings build on
        self.auth = commands.Auth(key, last_ctr)
        self.stats = stats              # telemetry.Stats: cmd_rejected is counted there
        self.on_change = on_change      # f(config dict) after an accepted settings change
        self.accepted = 0
        self.rejected = 0

    def __call__(self, name, topic, payload, retained):
        """Handle one command; return the ack dict for <prefix>/<id>/cmd/ack."""
        try:
            if retained:
                raise commands.Rejected('rejected: retained commands are not accepted')
            cmd = commands.check(name, payload, self.ctl.cfg, self.auth, topic)
            signed = self.auth.key is not None
            if cmd.kind == commands.K_CONFIG or signed:
                cfg = cmd.data if cmd.kind == commands.K_CONFIG else self.ctl.cfg
                ctr = cmd.ctr if signed else self.auth.last_ctr
                try:
                    persist.save(self.path, {'v': STATE_VERSION, 'config': cfg, 'ctr': ctr, 'base': self.base})
                except OSError as e:
                    raise commands.Rejected('storage: could not save settings (%s); nothing changed' % e)
            commands.apply(self.ctl, cmd)
            if signed:
                self.auth.last_ctr = cmd.ctr
        except commands.Rejected as e:
            self.rejected += 1
            if self.stats is not None:
                self.stats.cmd_rejected += 1
            return commands.ack(name, False, str(e), None if retained else _req_id(payload))
        self.accepted += 1
        if cmd.kind == commands.K_CONFIG and self.on_change is not None:
            self.on_change(self.ctl.cfg)
        return commands.ack(name, True, None, cmd.id, cmd.ctr)
