# The control settings in force: the commissioned config (site.json "control") and the settings
# accepted over MQTT since, saved beside it. One home: decided once at boot, validated once, and
# handed to the controller and to the command handler (nothing else rewrites site['control']).
#
#   s = load(site, config_path)    # s['control']: the config in force; s['base']: commissioned
#                                  # (validated); s['ctr']: last HMAC counter; s['notice']: boot
#                                  # message or None; s['state_path']
# A plain dict, not an object of a class defined here: boot unloads this module right after.
#   save(path, cfg, ctr, base)     # = persist.save_settings (what an accepted command calls)
#
# Saved settings apply only while they were made on the same commissioned config: a redeployed
# (changed) config wins, so a lowered import limit is never undone by an older command.
# Without an "mqtt" section no command can arrive and nothing saved is read.

import persist
from bess_config import validate, ConfigError

STATE_VERSION = persist.SETTINGS_VERSION


def _settings(control, base, ctr=0, notice=None, state_path=None):
    return {'control': control, 'base': base, 'ctr': ctr, 'notice': notice, 'state_path': state_path}


def _dirname(path):
    i = path.rfind('/')
    return path[:i] if i > 0 else ('/' if i == 0 else '.')


def state_path_for(site, config_path):
    """Accepted commands persist beside the site config (on a board: /settings.json)."""
    mq = site.get('mqtt') or {}
    return mq.get('state_path') or (_dirname(config_path).rstrip('/') + '/settings.json')


def load(site, config_path):
    """Settings at boot. A ConfigError from the commissioned config propagates (safe state)."""
    base = validate(site['control'])
    if not site.get('mqtt'):
        return _settings(base, base)
    path = state_path_for(site, config_path)
    cfg, ctr, notice = load_state(path, base)
    return _settings(cfg, base, ctr, notice, path)


save = persist.save_settings


def load_state(path, base):
    """(config, last HMAC counter, message or None) from the saved file over the validated
    commissioned config base. A lost file also loses the replay counter (docs/telemetry.md)."""
    obj, err = persist.load(path)
    if obj is None:
        if err.endswith(': missing'):
            return base, 0, 'config: no saved settings (%s), using the commissioned config' % err
        return (base, 0,
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
                save(path, base, ctr, base)
            except OSError:
                pass
            return (base, ctr, 'config: the commissioned config changed since settings were saved over MQTT '
                    '(%s); saved settings discarded, the commissioned config is in force' % path)
        return cfg, ctr, None
    except (ConfigError, ValueError, KeyError, TypeError) as e:
        msg = str(e).replace('\n', ' ')
        return (base, 0,
                'config: SAVED SETTINGS INVALID (%s: %s), using the commissioned config; replay counter reset'
                % (path, msg))
