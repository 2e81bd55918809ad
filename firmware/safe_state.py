# Safe state: the site config (or the firmware's start) is unusable. Hold the battery at 0 W if
# the battery section alone is usable, keep saying why, keep the watchdog fed. Boot-only code:
# loaded by firmware/startup.py when it cannot start the runtime.
import time

import machine

import sitecfg
from rtu import OK
from cycle import Poller, send_writes


class SafeBattery:
    """Only the battery, held at 0 W while the rest of the config is unusable."""

    def __init__(self, site, board, root):
        import startup
        b = site['battery']
        prof = startup.load_profile(root, b['profile'])
        if prof.kind != 'battery' or prof.control is None:
            raise startup.ConfigProblem('battery profile %r cannot take a setpoint' % b['profile'])
        self.bus = startup.open_bus(site, board)
        self.poller = Poller(self.bus, prof, b.get('unit_id', 2))
        self.name = '%s id %d' % (prof.name, self.poller.unit)
        self.sent = 0                   # 0 W writes acknowledged
        self.failed = 0

    def zero(self):
        """Read the battery (identify it), write 0 W (a 0 W plan needs no readings). 1 when
        acknowledged."""
        p = self.poller
        p.poll()
        writes = p.prof.control.plan(0) if p.ident == 1 else None   # never write an unconfirmed device
        if writes is not None and send_writes(self.bus, p.unit, writes) == OK:
            self.sent += 1
            return 1
        self.failed += 1
        return 0


SET_HINT = ('set the site config: board, bus {baud, parity}, meter {profile, unit_id}, battery {profile, '
            'unit_id}, control {import_limit_w, ...} (docs/deploy.md; `make deploy` writes it from '
            'tools/site.template.json)')


def safe_battery(site, board, root):
    """(SafeBattery or None, why not, board). Loads the board file if boot did not get to it."""
    import startup
    if not isinstance(site, dict):
        return None, 'no site config', board
    if board is None and sitecfg.name_ok(site.get('board')):
        try:
            board = startup.load_json('%s/boards/%s.json' % (root, site['board']), 'board file')
        except startup.ConfigProblem as e:
            return None, str(e), None
    if board is None:
        return None, 'no board file', None
    errs = sitecfg.battery_errors(site)
    if errs:
        return None, '; '.join(errs), board
    try:
        return SafeBattery(site, board, root), None, board
    except MemoryError:
        raise                           # main.py: free everything, then try again
    except Exception as e:             # profile missing, UART cannot open, ...
        return None, str(e), board


def idle(msg, board, period_ms=1000, site=None, root='', cycles=0):
    """Hold the safe state. cycles=0: forever (tests pass a number)."""
    bat, why, board = safe_battery(site, board, root)
    if bat is None:
        state = 'battery NOT commanded: cannot talk to any battery (%s)' % why
    wdt = machine.WDT(timeout=board.get('wdt_timeout_ms', 10000)) if board else None
    n = 0
    while cycles == 0 or n < cycles:
        if bat is not None:
            ok = bat.zero()
            state = ('battery held at 0 W (%s, %d writes)' % (bat.name, bat.sent) if ok else
                     'battery 0 W NOT confirmed: %s not answering (%d tries)' % (bat.name, bat.failed))
        if n % 10 == 0:
            print('SAFE STATE (%s): %s' % (state, msg))
        n += 1
        if wdt is not None:
            wdt.feed()
        time.sleep_ms(period_ms)
