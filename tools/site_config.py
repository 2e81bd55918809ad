#!/usr/bin/env python3
"""Fill the site config template with the user's values and validate it, before anything is copied.

    python tools/site_config.py --board esp32 --values my-site.env IMPORT_LIMIT_W=60000 -o build/site.json
    python tools/site_config.py --board esp32 --site my-site.json        # a complete site config instead

Values: a file of NAME=VALUE lines (# comments) and NAME=VALUE arguments (they win). Template:
tools/site.template.json (its _doc and _vars say how it works and what each value means).
Validation: lib/sitecfg.check (structure, bus, ids, control via lib/bess_config.validate) plus the
files the firmware will look for: boards/<board>.json (and it must be the board being deployed),
profiles/<meter>.json of kind meter, profiles/<battery>.json of kind battery with a control scheme.
Exit 2 with every problem listed, one per line.
"""
import argparse
import difflib
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
import paths  # noqa: E402,F401 (lib/ on sys.path)

import devprofile  # noqa: E402
import sitecfg  # noqa: E402

TEMPLATE = os.path.join(HERE, 'site.template.json')
PLACEHOLDER = re.compile(r'^\$\{([A-Z][A-Z0-9_]*)(?::(.*))?\}$')


class SiteError(Exception):
    pass


def parse_value(text):
    if not isinstance(text, str):           # already a value (called from Python)
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_values(path):
    vals = {}
    try:
        f = open(path)
    except FileNotFoundError:
        raise SiteError('VALUES file %s not found' % path)
    except OSError as e:
        raise SiteError('VALUES file %s: %s' % (path, e.strerror or e))
    with f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            k, sep, v = line.partition('=')
            if not sep:
                raise SiteError('%s:%d: expected NAME=VALUE, got %r' % (path, n, line))
            vals[k.strip()] = v.strip()
    return vals


def template_names(template):
    """Every NAME the template knows: its ${NAME} placeholders, _if conditions and _vars entries."""
    names = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get('_if'), str):
                names.add(node['_if'])
            for k, v in node.items():
                if k == '_vars' and isinstance(v, dict):
                    for key in v:
                        names.update(n.strip() for n in key.split(','))
                elif not k.startswith('_'):
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str):
            m = PLACEHOLDER.match(node)
            if m:
                names.add(m.group(1))
    walk(template)
    return names


def unknown_errors(names, template, dropped=None):
    """One line per name the template does not use, with the nearest known name when one is close."""
    known = sorted(template_names(template))
    out = []
    for name in sorted(names):
        if dropped and name in dropped:
            out.append('setting %s has no effect without %s (the section it belongs to is dropped)'
                       % (name, dropped[name]))
            continue
        near = difflib.get_close_matches(name, known, n=1)
        if near:
            out.append('unknown setting %s: did you mean %s?' % (name, near[0]))
        else:
            out.append('unknown setting %s (names: tools/site.template.json _vars)' % name)
    return out


def fill(template, values):
    """Template (parsed JSON) + {NAME: text} -> config. Raises SiteError listing missing values."""
    missing = []
    used = set()
    dropped = {}            # NAME -> the _if NAME whose section was dropped

    def names_in(node, out):
        if isinstance(node, dict):
            for k, v in node.items():
                if not k.startswith('_'):
                    names_in(v, out)
        elif isinstance(node, list):
            for v in node:
                names_in(v, out)
        elif isinstance(node, str):
            m = PLACEHOLDER.match(node)
            if m:
                out.add(m.group(1))
        return out

    def value(name, default):
        used.add(name)
        if name in values:
            return parse_value(values[name])
        if default is None:
            missing.append(name)
            return None
        return parse_value(default)

    def walk(node):
        if isinstance(node, dict):
            cond = node.get('_if')
            if cond is not None and value(cond, 'null') is None:
                for name in names_in(node, set()):
                    dropped.setdefault(name, cond)
                return None
            out = {}
            for k, v in node.items():
                if k.startswith('_'):
                    continue
                w = walk(v)
                if w is not None:
                    out[k] = w
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str):
            m = PLACEHOLDER.match(node)
            if m:
                return value(m.group(1), m.group(2))
        return node

    cfg = walk(template)
    # a mistyped name first: its correct twin is then usually "missing" too
    errs = unknown_errors(set(values) - used, template, dropped)
    suggested = {e.rsplit(' ', 1)[-1].rstrip('?') for e in errs if e.endswith('?')}
    missing = sorted(set(missing) - suggested)          # "did you mean X?" already says X is needed
    if missing:
        errs.append('no value for %s (give NAME=VALUE; meanings: tools/site.template.json _vars)' % ', '.join(missing))
    if errs:
        raise SiteError('\n  '.join(errs))
    return cfg


def profile_dir():
    return paths.PROFILES


def validate(site, board):
    """All problems (list of str) of a filled site config for deployment to `board`."""
    errs = sitecfg.check(site)
    if not isinstance(site, dict):
        return errs
    sitecfg.check_mqtt(site, errs)
    b = site.get('board')
    if board is not None and b != board:
        errs.append('board: the site config names %r but BOARD=%s is being deployed' % (b, board))
    bpath = os.path.join(ROOT, 'boards', '%s.json' % b)
    if sitecfg.name_ok(b) and not os.path.exists(bpath):
        errs.append('board: no board file boards/%s.json' % b)
    elif sitecfg.name_ok(b) and not errs:
        with open(bpath) as f:
            errs += sitecfg.timing_errors(site, json.load(f))
    for key, kind in (('meter', 'meter'), ('battery', 'battery')):
        d = site.get(key)
        if not isinstance(d, dict) or not sitecfg.name_ok(d.get('profile')):
            continue
        path = os.path.join(profile_dir(), '%s.json' % d['profile'])
        if not os.path.exists(path):
            names = sorted(p[:-5] for p in os.listdir(profile_dir()) if p.endswith('.json'))
            errs.append('%s.profile: no profile %r (known: %s)' % (key, d['profile'], ', '.join(names)))
            continue
        try:
            prof = devprofile.load(path)
        except devprofile.ProfileError as e:
            errs.append('%s.profile: %s: %s' % (key, d['profile'], e))
            continue
        if prof.kind != kind:
            errs.append('%s.profile: %r is a %s profile, not a %s' % (key, d['profile'], prof.kind, kind))
        elif kind == 'battery' and prof.control is None:
            errs.append('battery.profile: %r has no control section (cannot take a setpoint)' % d['profile'])
        errs += freshness_errors(key, prof, site.get('period_ms', 1000))
    return errs


def freshness_errors(key, prof, period):
    """The profile's freshness window must span a poll of every watched block, else a steady
    device looks frozen and the battery sits at 0 W (safe, but useless; docs/profiles.md)."""
    f = prof.freshness
    if f is None or not isinstance(period, int):
        return []
    slow = max([period] + [w[0].every_ms for w in f.watch])
    if f.within_ms <= slow:
        return ['%s.profile: %s judges its data frozen after %d ms without a change, but it is read only every '
                '%d ms (PERIOD_MS / the block cadence): shorten PERIOD_MS' % (key, prof.name, f.within_ms, slow)]
    return []


def warnings(site):
    out = []
    try:
        with open(os.path.join(ROOT, 'boards', '%s.json' % site['board'])) as f:
            net = json.load(f).get('network')
    except (OSError, ValueError, KeyError, TypeError):
        return out
    kind = net.get('kind') if isinstance(net, dict) else net
    if kind == 'wlan' and not (site.get('network') or {}).get('ssid'):
        out.append('board %s uses Wi-Fi but WIFI_SSID is not set: the controller runs, MQTT will not connect'
                   % site['board'])
    if site.get('bus', {}).get('device') and kind != 'host':
        out.append('bus.device is only used on the unix port')
    return out


def make(board, values=None, site_path=None, template=TEMPLATE):
    """Return (site config, warnings) or raise SiteError with every problem."""
    if site_path:
        try:
            with open(site_path) as f:
                site = json.load(f)
        except (OSError, ValueError) as e:
            raise SiteError('site config %s: %s' % (site_path, e))
        if values:
            raise SiteError('give either a complete site config or template values, not both')
    else:
        with open(template) as f:
            tpl = json.load(f)
        vals = dict(values or {})
        vals.setdefault('BOARD', board)
        site = fill(tpl, vals)
    errs = validate(site, board)
    if errs:
        raise SiteError('site config invalid:\n  ' + '\n  '.join(errs))
    return site, warnings(site)


def main(argv=None):
    ap = argparse.ArgumentParser(description='fill and validate the site config')
    ap.add_argument('--board', required=True)
    ap.add_argument('--values', help='file of NAME=VALUE lines')
    ap.add_argument('--site', help='a complete site config (JSON) instead of the template')
    ap.add_argument('-o', '--out', help='write the config here (default: stdout)')
    ap.add_argument('assign', nargs='*', help='NAME=VALUE')
    a = ap.parse_args(argv)
    try:
        vals = read_values(a.values) if a.values else {}
        for s in a.assign:
            k, sep, v = s.partition('=')
            if not sep:
                raise SiteError('expected NAME=VALUE, got %r' % s)
            vals[k] = v
        site, warns = make(a.board, vals, a.site)
    except (SiteError, OSError) as e:
        print('site config: error: %s' % e, file=sys.stderr)
        return 2
    for w in warns:
        print('site config: warning: %s' % w, file=sys.stderr)
    text = json.dumps(site, indent=1, sort_keys=True) + '\n'
    if a.out:
        with open(a.out, 'w') as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
