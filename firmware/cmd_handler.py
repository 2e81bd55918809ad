# Commands from the MQTT link to the controller: validate -> persist -> apply. Loaded on demand:
# reporting.CommandHandler (resident: key, counter, counts) imports this module when a command
# arrives and unloads it (with commands, settings, persist) when commands stop, so the command
# path's code does not occupy the heap between commands (docs/resources.md).
#
#   h = reporting.CommandHandler(ctl, path, key, last_ctr, stats, base=commissioned_config)
#   link = mqtt_link.MqttLink({..., 'on_command': h}); h.on_change = link.set_config
#
# The link calls h(name, topic, payload, retained) from poll(), outside ctl.step(); an accepted
# command is applied to ctl at once, so it takes effect on the next step(). Order for an
# accepted command: validate (lib/commands.py) -> save settings + counter atomically
# (firmware/persist.py) -> apply. A rejected command, or a storage failure, changes nothing.

import json
import commands
import persist                          # not settings: its boot code would load too


def _req_id(payload):
    # best effort, for the ack of a rejected command
    if not isinstance(payload, bytes) or len(payload) > commands.MAX_PAYLOAD:
        return None
    try:
        i = json.loads(payload).get('id')
        if isinstance(i, str) and len(i) <= commands.ID_MAX:
            return i
    except Exception:
        pass
    return None


def handle(h, name, topic, payload, retained, mac=None):
    """Handle one command for h (reporting.CommandHandler: the state that outlives this module);
    return the ack dict for <prefix>/<id>/cmd/ack. topic, payload: bytes, or the length (an int)
    of one too long for the link to read (then name is '?'). mac: the verdict of the mac check
    reporting.CommandHandler made on a signed site, or None (commands.Auth)."""
    try:
        cmd = _run(h, name, topic, payload, retained, mac)
    except commands.Rejected as e:
        h.rejected += 1
        if h.stats is not None:
            h.stats.cmd_rejected += 1
        return commands.ack(name, False, str(e), None if retained else _req_id(payload))
    h.accepted += 1
    if cmd.kind == commands.K_CONFIG and h.on_change is not None:
        h.on_change(h.ctl.cfg)
    return commands.ack(name, True, None, cmd.id, cmd.ctr)


def _run(h, name, topic, payload, retained, mac):
    """validate -> persist -> apply (apart from handle(): a function's bytecode is one block of
    heap, loaded into a fragmented one; docs/resources.md). Raises commands.Rejected."""
    if retained:
        raise commands.Rejected('rejected: retained commands are not accepted')
    if isinstance(topic, int):
        raise commands.Rejected('oversized: topic %d bytes (not read)' % topic)
    if isinstance(payload, int):
        raise commands.Rejected('oversized: payload %d bytes > %d (not read)' % (payload, commands.MAX_PAYLOAD))
    cmd = commands.check(name, payload, h.ctl.cfg, commands.Auth(h.key, h.last_ctr, mac), topic)
    signed = h.key is not None
    if cmd.kind == commands.K_CONFIG or signed:
        cfg = cmd.data if cmd.kind == commands.K_CONFIG else h.ctl.cfg
        ctr = cmd.ctr if signed else h.last_ctr
        try:
            persist.save_settings(h.path, cfg, ctr, h.base)
        except OSError as e:
            raise commands.Rejected('storage: could not save settings (%s); nothing changed' % e)
    commands.apply(h.ctl, cmd)
    if signed:
        h.last_ctr = cmd.ctr
    return cmd
