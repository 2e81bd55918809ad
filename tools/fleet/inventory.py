"""The fleet's sites, as a file (issue 12, item 1): one CSV row per site and controller.

    sites = load('sites.csv')            # list of Site; InventoryError lists every problem
    planner_site(site, soc_bp)           # the site as tools/planner.py reads it

Columns (header row required; docs/fleet.md): each with its unit, range and default in COLUMNS
below. Units as everywhere: W, Wh, s, SoC in basis points (docs/units.md); the battery's size in
kWh and kW, as an inventory gives it, converted once here.
"""
import csv
import re

# name: (kind, lo, hi, default (None: required), description)
COLUMNS = {
    'id': ('id', None, None, None, 'device id = MQTT username = client id (1..40 of A-Z a-z 0-9 _ -)'),
    'capacity_kwh': ('num', 0.5, 10000, None, 'usable battery energy, kWh'),
    'power_kw': ('num', 0.5, 10000, None, 'battery charge and discharge power limit, kW'),
    'import_limit_w': ('int', 1, 10 ** 7, None, 'grid-connection import limit, W'),
    'phase_limit_w': ('int', 0, 10 ** 7, 0, 'per-phase import limit, W (0 = off)'),
    'min_soc_bp': ('int', 0, 10000, 1000, 'commissioned min SoC, bp'),
    'max_soc_bp': ('int', 0, 10000, 9500, 'commissioned max SoC, bp'),
    'committed_w': ('int', 0, 10 ** 7, 0, "the site's share of the fleet's capacity commitment, W (0 = none)"),
    'event_duration_s': ('int', 60, 86400, 3600, 'duration of a capacity event, s'),
    'tariff': ('name', None, None, 'default', 'tariff (price curve) name'),
    'utc_offset_s': ('int', -14 * 3600, 14 * 3600, 0, 'local time - UTC, s'),
    'board': ('name', None, None, 'esp32', 'boards/<board>.json of the controller'),
}
ID_RE = re.compile(r'^[A-Za-z0-9_-]{1,40}$')
NAME_RE = re.compile(r'^[A-Za-z0-9_.-]{1,40}$')
# usernames the broker's ACL gives other rights (docs/mosquitto-example.acl, tools/fleet/provision.py)
RESERVED = ('operator', 'monitor', 'homeassistant') + tuple(['fleet'] + ['fleet-%d' % k for k in range(2, 7)])


class InventoryError(ValueError):
    """Every problem of a sites file, one per line."""


class Site(dict):
    """One row, checked and converted: the COLUMNS keys plus capacity_wh and power_w."""


def _value(kind, lo, hi, text):
    """(value, None) or (None, what is wrong)."""
    if kind == 'id':
        return (text, None) if ID_RE.match(text) else (None, 'must be 1..40 of A-Z a-z 0-9 _ -')
    if kind == 'name':
        return (text, None) if NAME_RE.match(text) else (None, 'must be 1..40 of A-Z a-z 0-9 _ . -')
    try:
        v = float(text) if kind == 'num' else int(text)
    except ValueError:
        return None, 'must be %s, got %r' % ('a number' if kind == 'num' else 'an integer', text)
    if not lo <= v <= hi:
        return None, 'must be %s..%s, got %s' % (lo, hi, text)
    return v, None


def parse(rows, where='sites'):
    """Sites from rows of text (the header first): every problem at once."""
    rows = [(n, r) for n, r in enumerate(rows, 1)       # (line number in the file, fields)
            if any(c.strip() for c in r) and not r[0].lstrip().startswith('#')]
    if not rows:
        raise InventoryError('%s: empty (a header row and one row per site)' % where)
    head = [h.strip() for h in rows[0][1]]
    errs = ['%s: unknown column %r (known: %s)' % (where, h, ', '.join(COLUMNS)) for h in head if h not in COLUMNS]
    errs += ['%s: column %r missing' % (where, k) for k, c in COLUMNS.items() if c[3] is None and k not in head]
    if errs:
        raise InventoryError('\n'.join(errs))
    sites, seen = [], {}
    for n, r in rows[1:]:
        at = '%s line %d' % (where, n)
        if len(r) != len(head):
            errs.append('%s: %d fields, the header has %d' % (at, len(r), len(head)))
            continue
        s = Site()
        for k, (kind, lo, hi, dflt, _) in COLUMNS.items():
            text = r[head.index(k)].strip() if k in head else ''
            if text == '':
                if dflt is None:
                    errs.append('%s: %s: required' % (at, k))
                s[k] = dflt
                continue
            v, why = _value(kind, lo, hi, text)
            if why:
                errs.append('%s: %s: %s' % (at, k, why))
            s[k] = v
        i = s.get('id')
        if i in RESERVED:
            errs.append('%s: id %r is a reserved username (%s)' % (at, i, ', '.join(RESERVED)))
        if i is not None and i in seen:
            errs.append('%s: id %r already on line %d' % (at, i, seen[i]))
        seen.setdefault(i, n)
        lo, hi = s.get('min_soc_bp'), s.get('max_soc_bp')
        if isinstance(lo, int) and isinstance(hi, int) and lo >= hi:
            errs.append('%s: min_soc_bp %d must be below max_soc_bp %d' % (at, lo, hi))
        if isinstance(s.get('capacity_kwh'), float):
            s['capacity_wh'] = int(round(s['capacity_kwh'] * 1000))
        if isinstance(s.get('power_kw'), float):
            s['power_w'] = int(round(s['power_kw'] * 1000))
        sites.append(s)
    if errs:
        raise InventoryError('\n'.join(errs))
    return sites


def load(path):
    """Sites from a CSV file; InventoryError (every problem) or OSError."""
    with open(path, newline='') as f:
        return parse(list(csv.reader(f)), path)


def control(site):
    """The site's commissioned control config (lib/bess_config keys)."""
    c = {'objective': 'gce', 'import_limit_w': site['import_limit_w'], 'phase_limit_w': site['phase_limit_w'],
         'max_charge_w': site['power_w'], 'max_discharge_w': site['power_w'],
         'min_soc_bp': site['min_soc_bp'], 'max_soc_bp': site['max_soc_bp']}
    if site['committed_w']:
        c.update(committed_w=site['committed_w'], event_duration_s=site['event_duration_s'],
                 usable_wh=site['capacity_wh'])
    return c


def planner_site(site, soc_bp, window=('16:00', '20:00'), events=(), risk_margin_bp=1000):
    """The site as tools/planner.py's Site reads it: battery state soc_bp (from telemetry) and the
    fleet's delivery window and events (local "HH:MM")."""
    d = {'id': site['id'], 'utc_offset_s': site['utc_offset_s'], 'control': control(site),
         'battery': {'capacity_wh': site['capacity_wh'], 'soc_bp': soc_bp}}
    if site['committed_w']:
        d['commitment'] = {'committed_w': site['committed_w'], 'event_duration_s': site['event_duration_s'],
                           'usable_wh': site['capacity_wh'], 'window': list(window),
                           'events': [{'start': s, 'duration_s': du} for s, du in events],
                           'risk_margin_bp': risk_margin_bp}
    return d
