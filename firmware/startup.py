# Boot (load-time only): site config, board file, settings, profiles, bus, controller, MQTT side.
#
#   job = startup.boot(config_path, root)    # a Job, or None after the safe state (tests)
#   startup.unload()                         # boot-only modules leave the heap
#   job.run(cycles)                          # firmware/cycle.py: the resident loop
#
# Everything here runs once; main.py unloads it (and devprofile, sitecfg, settings, net,
# safe_state) before the loop starts, so only the cycle's modules stay resident
# (docs/resources.md). Any failure to start lands in the safe state (firmware/safe_state.py),
# saying why; running out of memory says so, with the heap figures.
import gc
import json

import machine

from bess_config import ConfigError

# + the command path: loaded again when a command arrives (reporting.CommandHandler)
BOOT_ONLY = ('startup', 'devprofile', 'profile_compiled', 'sitecfg', 'safe_state', 'net', 'settings', 'commands', 'command_mac', 'persist',
             'cmd_handler', 'bess_config')
# Where profiles live: at the root on a board (deploy flattens), in firmware/ in a checkout
PROFILE_DIRS = ('profiles', 'firmware/profiles')
# site["mqtt"] keys that are not the link's (the rest go to mqtt_link.config)
MQTT_OWN = ('hmac_key', 'state_path')


class ConfigProblem(Exception):
    pass


class ConfigMissing(ConfigProblem):
    pass


def load_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        if e.args and e.args[0] == 2:       # ENOENT: first boot, nothing deployed yet
            raise ConfigMissing('%s %s: missing' % (what, path))
        raise ConfigProblem('%s %s: cannot read (%s)' % (what, path, e))
    except ValueError as e:
        raise ConfigProblem('%s %s: not valid JSON (%s)' % (what, path, e))


def load_profile(root, name):
    """The profile's model: from its compiled form (profiles/<name>.cpf.json, written by `make
    build` after validating the JSON on the host) when it is there, readable and made from the
    JSON beside it; else from the JSON through devprofile (parser and validator: unix-port
    checkouts, a profile copied by hand, a damaged compiled file), saying why."""
    for d in PROFILE_DIRS:
        c = _compiled(root, d, name)
        if c is not None:
            return c
    import devprofile
    for d in PROFILE_DIRS:
        try:
            return devprofile.load('%s/%s/%s.json' % (root, d, name))
        except OSError:
            continue
        except devprofile.ProfileError as e:
            raise ConfigProblem('device profile %r: %s' % (name, e))
    raise ConfigProblem('device profile %r not found in %s' % (name, ' or '.join('%s/%s' % (root, d) for d in PROFILE_DIRS)))


def _compiled(root, d, name):
    base = '%s/%s/%s' % (root, d, name)
    try:
        with open(base + '.cpf.json') as f:
            c = json.load(f)
    except OSError:
        return None
    except MemoryError:
        raise
    except ValueError as e:
        print('profile %s.cpf.json not valid JSON (%s): using %s.json' % (base, e, base))
        return None
    try:
        with open(base + '.json', 'rb') as f:
            from profile_compiled import source_hash
            sha = source_hash(f.read())
    except OSError:
        sha = None                      # no source beside it: the compiled file is all there is
    if sha is not None and (not isinstance(c, list) or not c or c[-1] != sha):
        print('profile %s.cpf.json was not made from %s.json (changed by hand?): using the JSON' % (base, base))
        return None
    try:
        import profile_compiled
        return profile_compiled.from_compiled(c)
    except MemoryError:
        raise
    except Exception as e:
        print('profile %s.cpf.json unusable (%r): using %s.json' % (base, e, base))
        return None


def open_bus(site, board):
    """UART (+ DE pin) and Bus from the board file and the site's bus section."""
    from rtu import RtuMaster
    from bus import Bus
    bus_cfg = site.get('bus', {})
    baud = bus_cfg.get('baud', 9600)
    parity = {'N': None, 'E': 0, 'O': 1}[bus_cfg.get('parity', 'N')]
    u = board['uart']
    dev = bus_cfg.get('device') or u.get('device')
    if dev and hasattr(machine, 'UART_DEVICES'):
        machine.UART_DEVICES[u['id']] = dev
    kw = {}
    if u.get('tx') is not None:
        kw['tx'] = u['tx']
        kw['rx'] = u['rx']
    uart = machine.UART(u['id'], baudrate=baud, bits=8, parity=parity, stop=1, **kw)
    de_pin = board.get('rs485_de_pin')
    de = machine.Pin(de_pin, machine.Pin.OUT, value=0) if de_pin is not None else None
    master = RtuMaster(uart, de, baudrate=baud, parity=parity, timeout_ms=bus_cfg.get('timeout_ms', 200))
    return Bus(master, retries=bus_cfg.get('retries', 1))


def wire_time_ms(nbytes, baud, bits_per_char=10):
    return nbytes * bits_per_char * 1000 // baud


def runtime(site, board, meter_prof, battery_prof, control):
    """The resident Runtime for a checked site config, its two profiles (devprofile.load) and the
    control settings in force."""
    import bess_core
    from cycle import Poller, Runtime
    bus = open_bus(site, board)
    period = site.get('period_ms', 1000)
    meter = Poller(bus, meter_prof, site['meter'].get('unit_id', 1))
    battery = Poller(bus, battery_prof, site['battery'].get('unit_id', 2))
    if meter.prof.kind != 'meter' or battery.prof.kind != 'battery':
        raise ConfigProblem('meter profile must be kind "meter" and battery profile kind "battery"')
    try:
        ctl = bess_core.Controller(control)
    except ConfigError as e:
        raise ConfigProblem(str(e))
    rt = Runtime(bus, meter, battery, ctl, period, site.get('log_cycles', 0), site.get('check_alloc', 0))
    baud = site.get('bus', {}).get('baud', 9600)
    print('bus: %d baud; meter %s: %d requests, battery %s: %d requests; %d bytes polled per cycle at most '
          '= %d ms of line time' % (baud, meter.prof.name, len(meter.blocks), battery.prof.name,
                                    len(battery.blocks), rt.wire_bytes, wire_time_ms(rt.wire_bytes, baud)))
    return rt


def mqtt_key(site):
    """The HMAC key (bytes) from the mqtt section, or None. ValueError when it is unusable."""
    mq = site.get('mqtt') or {}
    if not mq.get('hmac_key'):
        return None
    import command_mac
    return command_mac.parse_key(mq['hmac_key'])


def mqtt_side(site, s, rt, key):
    """Reporter (telemetry, commands, link) for the mqtt section, or None. A broken mqtt section
    disables MQTT with a message; it never costs battery control. key: mqtt_key() or an
    exception it raised."""
    mq = site.get('mqtt')
    if not mq:
        return None
    try:
        if isinstance(key, Exception):
            raise key
        import telemetry
        import mqtt_link
        from reporting import Reporter, CommandHandler
        stats = telemetry.Stats()
        handler = CommandHandler(rt.ctl, s['state_path'], key, s['ctr'], stats, base=s['base'])
        lc = {}
        for k in mq:
            if k not in MQTT_OWN:
                lc[k] = mq[k]
        lc['on_command'] = handler
        link = mqtt_link.MqttLink(lc)
        link.notice = s['notice']
        link.set_config(rt.ctl.cfg)
        handler.on_change = link.set_config
        return Reporter(rt, link, stats)
    except MemoryError as e:
        print('MQTT DISABLED (%s): the controller runs without telemetry and commands'
              % oom_text('building the MQTT side', e))
        return None
    except Exception as e:
        print('MQTT DISABLED (%s: %s): the controller runs without telemetry and commands; '
              'fix the "mqtt" section of the site config' % (type(e).__name__, e))
        return None


def plan_cfg(site, root, key):
    """What the schedule side needs (firmware/plan_side.build, run by the loop once boot's code
    has left the heap: its modules are not in the boot peak), or None without a "schedule" section."""
    sc = site.get('schedule')
    if not sc:
        return None
    path = sc.get('path', 'schedule.json')
    if root and not path.startswith('/'):
        path = '%s/%s' % (root, path)
    return {'sc': sc, 'path': path, 'key': None if isinstance(key, Exception) else key}


def problem_text(e):
    from safe_state import SET_HINT
    if isinstance(e, ConfigMissing):
        return '%s; %s' % (e, SET_HINT)
    if isinstance(e, ConfigProblem):
        return str(e)
    hint = ' (bus.device / the board file\'s uart pins?)' if isinstance(e, OSError) else ''
    return 'cannot start: %s: %s%s' % (type(e).__name__, e, hint)


def oom_text(what, e):
    from ondemand import heap_text
    return ('OUT OF MEMORY while %s (%s): %s after collection; the build does not fit this board '
            '(docs/resources.md)' % (what, e, heap_text()))


def boot(config_path='/site.json', root='', cycles=0):
    """A Job, or (after holding the safe state for `cycles` cycles, tests) None."""
    import sitecfg
    import settings
    board = None
    site = None
    try:
        site = load_json(config_path, 'site config')
        errs = sitecfg.check(site)
        if errs:
            raise ConfigProblem('site config %s invalid:\n  %s' % (config_path, '\n  '.join(errs)))
        board = load_json('%s/boards/%s.json' % (root, site.get('board', 'unknown')), 'board file')
        terrs = sitecfg.timing_errors(site, board)
        if terrs:
            raise ConfigProblem('site config %s: %s' % (config_path, terrs[0]))
        s = settings.load(site, config_path)
        if s['notice']:
            print(s['notice'])
        try:
            key = mqtt_key(site)
        except ValueError as e:
            key = e
        # the checks are done: drop their code before the profiles, the peak of boot
        del sitecfg, settings
        _unload(('sitecfg', 'settings', 'persist', 'commands', 'command_mac'))
        # profiles (compiled: a small JSON list each; from source only without `make build`)
        mp = load_profile(root, site['meter']['profile'])
        bp = load_profile(root, site['battery']['profile'])
        _unload(('devprofile', 'profile_compiled', 'sitecfg'))
        rt = runtime(site, board, mp, bp, s['control'])
        rep = mqtt_side(site, s, rt, key)
        ps = plan_cfg(site, root, key)
    except MemoryError:
        raise                           # main.py frees every module first, then the safe state
    except Exception as e:              # any failure to start: safe state, saying why
        import safe_state
        safe_state.idle(problem_text(e), board, site=site, root=root, cycles=cycles)
        return None
    from cycle import Job           # a resident class: a Job must not keep this module alive
    return Job(rt, rep, board, ps)


def _unload(names):
    import sys
    for m in names:
        if m in sys.modules:
            del sys.modules[m]
    gc.collect()


def safe(msg, config_path, root, cycles=0):
    """The safe state with only what it needs loaded (main.py, after boot ran out of memory)."""
    import safe_state
    try:
        site = load_json(config_path, 'site config')
    except ConfigProblem:
        site = None
    safe_state.idle(msg, None, site=site, root=root, cycles=cycles)


def unload():
    """Drop the boot-only modules (their code and data are garbage once boot returned). A module
    listed in BOOT_ONLY must not be imported by any resident one, or it would stay referenced."""
    _unload(BOOT_ONLY)
