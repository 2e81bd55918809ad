# Commands from the MQTT link to the controller: validate -> persist -> apply.
#
#   s = settings.load(site, config_path)        # at boot (firmware/settings.py)
#   ctl = bess_core.Controller(s.control)
#   h = CommandHandler(ctl, s.state_path, key, s.ctr, stats, base=s.base)
#                                                # key: bytes or None (no HMAC)
#   link = mqtt_link.MqttLink({..., 'on_command': h}); h.on_change = link.set_config
#
# The link calls h(name, topic, payload, retained) from poll(), outside ctl.step(); an accepted
# command is applied to ctl at once, so it takes effect on the next step(). Order for an
# accepted command: validate (lib/commands.py) -> save settings + counter atomically
# (firmware/persist.py) -> apply. A rejected command, or a storage failure, changes nothing.

import json
import commands
import settings


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
                    settings.save(self.path, cfg, ctr, self.base)
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
