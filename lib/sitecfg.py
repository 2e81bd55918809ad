# Site config structure: what the firmware needs besides the control settings.
#
# Runs on CPython (tools/site_config.py, before `make deploy` copies anything) and on the device
# (firmware/app.py at boot, so a bad config lands in the safe state with the same message).
# check(site) returns a list of problems, one string each; [] means usable. The control section
# is checked with bess_config.validate; files (board file, profiles) are checked by the callers,
# which know where they live.
#
#   {"board": "esp32",
#    "bus": {"baud": 9600, "parity": "N", "timeout_ms": 200, "retries": 1, "device": null},
#    "meter": {"profile": "eastron_sdm630", "unit_id": 1},
#    "battery": {"profile": "sunspec_battery_802_124", "unit_id": 2},
#    "control": {...docs/config.md...},
#    "period_ms": 1000, "log_cycles": 0,
#    "network": {"ssid": "...", "password": "..."},  # wlan boards; lan / host need nothing
#    "mqtt": {...}}                                   # the MQTT link (docs/telemetry.md)

from bess_config import validate, ConfigError, is_int

BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
PARITIES = ('N', 'E', 'O')
KNOWN = ('board', 'bus', 'meter', 'battery', 'control', 'period_ms', 'log_cycles', 'check_alloc', 'network',
         'mqtt', 'schedule', 'doc')
# "schedule" section (docs/schedule.md): key -> (lo, hi) for ints, str for text
_SCHED_KEYS = {'path': str, 'ntp_host': str, 'max_bytes': (256, 65536), 'dlm_every_s': (1, 3600),
               'dlm_deadband_w': (0, 10000000), 'ntp_port': (1, 65535), 'ntp_period_s': (10, 86400),
               'ntp_retry_s': (1, 3600), 'clock_max_age_s': (20, 5 * 86400)}
_BUS_KEYS = ('baud', 'parity', 'timeout_ms', 'retries', 'device')
_DEV_KEYS = ('profile', 'unit_id')



def _int(errs, where, d, k, lo, hi, required=False):
    if k not in d:
        if required:
            errs.append('%s%s: required' % (where + '.' if where else '', k))
        return
    v = d[k]
    if not is_int(v) or v < lo or v > hi:
        errs.append('%s%s: must be an integer in %d..%d, got %r' % (where + '.' if where else '', k, lo, hi, v))


def name_ok(v):
    return isinstance(v, str) and 0 < len(v) <= 40 and '/' not in v and '.' not in v


def check_bus(site, errs):
    bus = site.get('bus', {})
    if not isinstance(bus, dict):
        errs.append('bus: must be an object')
        return
    for k in bus:
        if k not in _BUS_KEYS:
            errs.append('bus.%s: unknown setting (known: %s)' % (k, ', '.join(_BUS_KEYS)))
    if 'baud' in bus and bus['baud'] not in BAUDS:
        errs.append('bus.baud: must be one of %s, got %r' % (', '.join(str(b) for b in BAUDS), bus['baud']))
    if 'parity' in bus and bus['parity'] not in PARITIES:
        errs.append('bus.parity: must be "N", "E" or "O", got %r' % (bus['parity'],))
    _int(errs, 'bus', bus, 'timeout_ms', 10, 5000)
    _int(errs, 'bus', bus, 'retries', 0, 5)
    if bus.get('device') is not None and not isinstance(bus['device'], str):
        errs.append('bus.device: must be a path (unix port) or null')


def check_device(site, key, errs):
    d = site.get(key)
    if not isinstance(d, dict):
        errs.append('%s: required: {"profile": NAME, "unit_id": 1..247}' % key)
        return
    for k in d:
        if k not in _DEV_KEYS:
            errs.append('%s.%s: unknown setting (known: %s)' % (key, k, ', '.join(_DEV_KEYS)))
    if not name_ok(d.get('profile')):
        errs.append('%s.profile: required: a profile name (a file in profiles/ without .json), got %r'
                    % (key, d.get('profile')))
    _int(errs, key, d, 'unit_id', 1, 247)


def check(site):
    """Every structural problem of a site config (a dict), control settings included."""
    if not isinstance(site, dict):
        return ['site config: must be a JSON object']
    errs = []
    for k in site:
        if k not in KNOWN:
            errs.append('%s: unknown key (known: %s)' % (k, ', '.join(KNOWN)))
    if not name_ok(site.get('board')):
        errs.append('board: required: a board name (a file in boards/ without .json), got %r'
                    % (site.get('board'),))
    check_bus(site, errs)
    check_device(site, 'meter', errs)
    check_device(site, 'battery', errs)
    m, b = site.get('meter'), site.get('battery')
    if isinstance(m, dict) and isinstance(b, dict) and m.get('unit_id', 1) == b.get('unit_id', 2):
        errs.append('meter.unit_id and battery.unit_id: must differ (one RS-485 line), both %r'
                    % (site['meter'].get('unit_id', 1),))
    _int(errs, '', site, 'period_ms', 100, 60000)
    _int(errs, '', site, 'log_cycles', 0, 1)
    _int(errs, '', site, 'check_alloc', 0, 1)
    check_schedule(site, errs)
    for k in ('network', 'mqtt'):
        if k in site and site[k] is not None and not isinstance(site[k], dict):
            errs.append('%s: must be an object' % k)
    # the mqtt section is checked by deploy (site_config) but not here: at boot a broken mqtt
    # section disables MQTT (firmware/startup.py) instead of costing battery control
    if 'control' not in site:
        errs.append('control: required (docs/config.md; at least import_limit_w)')
    else:
        try:
            validate(site['control'])
        except ConfigError as e:
            lines = str(e).split('\n')
            for line in (lines[1:] if len(lines) > 1 else lines):
                errs.append('control.' + line.strip())
        errs += stale_errors(site)
    return errs


def check_schedule(site, errs):
    sc = site.get('schedule')
    if sc is None:
        return
    if not isinstance(sc, dict):
        errs.append('schedule: must be an object')
        return
    for k in sc:
        t = _SCHED_KEYS.get(k)
        if t is None:
            errs.append('schedule.%s: unknown setting (known: %s)' % (k, ', '.join(sorted(_SCHED_KEYS))))
        elif t is str:
            if not isinstance(sc[k], str) or not sc[k]:
                errs.append('schedule.%s: must be a non-empty string' % k)
        else:
            _int(errs, 'schedule', sc, k, t[0], t[1])
    per, retry, age = sc.get('ntp_period_s', 3600), sc.get('ntp_retry_s', 60), sc.get('clock_max_age_s', 172800)
    if is_int(per) and is_int(retry) and is_int(age) and not retry <= per < age:
        errs.append('schedule: need ntp_retry_s <= ntp_period_s < clock_max_age_s, got %r, %r, %r' % (retry, per, age))


def stale_errors(site):
    """Data older than stale_ms is missing data: below two periods a single late poll fails safe."""
    ctl = site.get('control')
    period = site.get('period_ms', 1000)
    stale = ctl.get('stale_ms', 2000) if isinstance(ctl, dict) else None
    if not (is_int(period) and is_int(stale)):
        return []                           # type errors are reported above
    if stale < 2 * period:
        return ['control.stale_ms: STALE_MS=%d is below 2 x PERIOD_MS=%d: one late poll would make the data '
                'stale and the battery fail safe to 0 W; set STALE_MS >= %d (or a shorter PERIOD_MS)'
                % (stale, period, 2 * period)]
    return []


def check_mqtt(site, errs):
    """The keys the MQTT link cannot do without, and the ones that would make it fail at boot."""
    mq = site.get('mqtt')
    if not isinstance(mq, dict):
        return
    cid = mq.get('client_id')
    if not isinstance(cid, str) or not 1 <= len(cid) <= 64 or '/' in cid or '+' in cid or '#' in cid:
        errs.append('mqtt.client_id: required: a string of 1..64 characters without / + # (the topic '
                    'level <id>), got %r' % (cid,))
    if not isinstance(mq.get('server'), str) or not mq.get('server'):
        errs.append('mqtt.server: required: the broker address (an IP avoids a blocking DNS lookup)')
    _int(errs, 'mqtt', mq, 'port', 0, 65535)
    _int(errs, 'mqtt', mq, 'keepalive', 0, 65535)     # a 16-bit field in CONNECT
    _int(errs, 'mqtt', mq, 'telemetry_ms', 100, 3600000)
    _int(errs, 'mqtt', mq, 'sock_timeout_ms', 50, 5000)
    _int(errs, 'mqtt', mq, 'poll_budget_ms', 20, 2000)
    key = mq.get('hmac_key')
    if key is not None:
        ok = isinstance(key, str) and 32 <= len(key) <= 128 and len(key) % 2 == 0
        if ok:
            for ch in key:
                if ch not in '0123456789abcdefABCDEF':
                    ok = False
        if not ok:
            errs.append('mqtt.hmac_key: must be 16..64 bytes as hex (32..128 hex digits)')


WRITES_MAX = 3          # setpoint writes per cycle at most (the profiles' control plans)
POLL_BUDGET_MS = 200    # mqtt.poll_budget_ms default (firmware/mqtt_link.py)
POLL_SLACK_MS = 50      # an MQTT poll's overrun: the step under way at its deadline (one command
                        # handled, one record encoded; measured 1 ms on the unix port)


def worst_cycle_ms(site):
    """Longest a cycle can take when both devices are silent or garbled: each costs (1 + retries)
    x timeout once (the poller skips such a device's other blocks), the setpoint writes likewise,
    and an MQTT poll its budget plus the step under way at its deadline."""
    bus = site.get('bus') or {}
    per = (1 + bus.get('retries', 1)) * bus.get('timeout_ms', 200)
    t = (2 + WRITES_MAX) * per
    mq = site.get('mqtt')
    if isinstance(mq, dict):
        t += mq.get('poll_budget_ms', POLL_BUDGET_MS) + POLL_SLACK_MS
    return t


def timing_errors(site, board):
    """The watchdog is fed once per completed cycle: period + the worst cycle must fit with a
    margin (3/4 of its timeout), or a silent bus turns into a reset loop instead of fail-safe."""
    wdt = board.get('wdt_timeout_ms', 10000)
    period = site.get('period_ms', 1000)
    worst = worst_cycle_ms(site)
    if period + worst > wdt * 3 // 4:
        return ['period_ms + worst cycle (%d + %d ms: bus timeout x (1 + retries) for a silent meter, '
                'battery and %d setpoint writes, + the MQTT poll budget) must stay within 3/4 of the '
                "board's watchdog (%d ms): shorten period_ms, bus.timeout_ms or bus.retries"
                % (period, worst, WRITES_MAX, wdt)]
    return []


def battery_errors(site):
    """Problems that stop the firmware from talking to the battery at all (bus, battery section).
    [] means it can at least command 0 W even though the rest of the config is unusable."""
    if not isinstance(site, dict):
        return ['no site config']
    errs = []
    check_bus(site, errs)
    check_device(site, 'battery', errs)
    return errs
