#!/usr/bin/env python3
"""Operator overrides for the whole fleet or some sites (issue 12, item 3), each with an expiry,
each signed with the device's key.

    python tools/fleet/override.py --plan out/ --secrets fleet/secrets.json --port 1883 \\
        --sites all|id,id --until +3600|HH:MM [--utc-offset-s S] \\
        (--suspend-arbitrage | --force-reserve BP | --dispatch W) [--deadline +60]

- suspend arbitrage: the plan's schedule again, as a new version, without economic power and
  without battery export in the intervals that start before the expiry; firm intervals (the
  obligation) stay as planned, their export included;
- force the reserve: reserve_soc_bp = BP (never below the plan's) in those intervals;
- dispatch: a signed `dispatch` command (docs/telemetry.md: power_w, duration_ms until the
  expiry, ctr: ms since 1970 or the last one + 1, kept on this host) on bess/<id>/cmd/dispatch; the device
  acks it on bess/<id>/cmd/ack and returns to its plan by itself at the end.
Schedule overrides go out through tools/fleet/push.py (acks, report); the plan's schedules
folder keeps the overridden versions (the next plan replaces them). After the expiry the device
runs the plan again: the intervals after it are the plan's own. The expiry's resolution is the
schedule's intervals (15 min): an interval that starts before it is overridden whole.
"""
import argparse
import copy
import json
import os
import sys
import threading
import time

import fleetpath  # noqa: E402,F401 (tools/ and lib/ on sys.path)

import command_mac  # noqa: E402
import plan_fleet  # noqa: E402
import push  # noqa: E402

KINDS = ('suspend_arbitrage', 'force_reserve', 'dispatch')


class OverrideError(ValueError):
    pass


def override_schedule(d, kind, until_s, version, reserve_bp=None):
    """A new version of schedule d with the override in every interval starting before until_s."""
    s = copy.deepcopy(d)
    s['version'] = version
    for iv in s['intervals']:
        if iv['start'] >= until_s:
            continue
        if kind == 'suspend_arbitrage':
            if iv.get('firm'):
                continue                # an obligation: its power and its export stay as planned
            iv.pop('power_w', None)
            iv['export'] = False
        elif kind == 'force_reserve':
            iv['reserve_soc_bp'] = max(reserve_bp, iv.get('reserve_soc_bp', 0))
        else:
            raise OverrideError('kind %r is not a schedule override' % kind)
    return s


def next_ctr(state=None):
    """A command counter above every one this host issued: ms since 1970, or the last one + 1
    (two commands in one ms, a clock stepped back). Kept in a file beside the planner's versions,
    under a lock (the console's jobs and the command line may sign at once)."""
    state = state or os.path.join(os.path.dirname(planner_version_file()), 'fleet-ctr')
    return _bump(state, int(time.time() * 1000))


def planner_version_file():
    import planner
    return planner.version_file()


def _bump(state, at_least):
    """max(at_least, the value in state + 1), written back; one process at a time (flock)."""
    import fcntl
    os.makedirs(os.path.dirname(state), exist_ok=True)
    with open(state + '.lock', 'a') as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        try:
            with open(state) as f:
                v = max(at_least, int(f.read().strip()) + 1)
        except (OSError, ValueError):
            v = at_least
        with open(state + '.new', 'w') as f:
            f.write('%d\n' % v)
        os.replace(state + '.new', state)
    return v


def dispatch_payload(key_hex, dev, power_w, duration_s, prefix='bess', ctr=None, req_id=None):
    """(topic, signed payload) of a dispatch command for one device."""
    topic = '%s/%s/cmd/dispatch' % (prefix, dev)
    body = {'power_w': int(power_w), 'duration_ms': int(duration_s * 1000),
            'ctr': next_ctr() if ctr is None else ctr}
    if req_id:
        body['id'] = req_id
    raw = json.dumps(body, separators=(',', ':')).encode()
    return topic, command_mac.sign(bytes.fromhex(key_hex), topic, raw)


def schedules(plan_dir, ids, kind, until_s, reserve_bp=None, version=None, fleet_dir=None):
    """Override the plan's schedules of ids in plan_dir/schedules (rewritten); returns the ids.
    Each new schedule is checked by the device's rules first (lib/schedule_host.py, against the
    site's commissioned config in fleet_dir/sites/<id>.json when given; a site whose config is
    missing or unreadable is refused too): one that a device would refuse changes nothing, anywhere."""
    import bess_config
    import schedule_host
    d = os.path.join(plan_dir, 'schedules')
    version = version or plan_fleet.next_version()
    ids = list(dict.fromkeys(ids))      # a site named twice is overridden once
    errs, done = [], []
    try:
        for i in ids:
            p = os.path.join(d, i + '.json')
            try:
                with open(p) as f:
                    s = json.load(f)
            except (OSError, ValueError) as e:
                errs.append('%s: %s' % (i, e))
                continue
            new = override_schedule(s, kind, until_s, version, reserve_bp)
            comm = None
            if fleet_dir:
                try:                        # no commissioned limits, no check: refused, not waved through
                    with open(os.path.join(fleet_dir, 'sites', i + '.json')) as f:
                        comm = json.load(f)['control']
                    if not isinstance(comm, dict):
                        raise ValueError('"control" is not an object')
                    comm = bess_config.validate(comm)       # the device's own check: its limits, complete
                except (OSError, ValueError, KeyError, TypeError, bess_config.ConfigError) as e:
                    errs.append('%s: its commissioned site config (sites/%s.json) cannot be read: %s' % (i, i, e))
                    continue
            bad = schedule_host.validate(new, comm, 0)
            if bad:
                errs.append('%s: %s' % (i, '; '.join(bad[:3])))
                continue
            done.append((p, i))
            with open(p + '.new', 'w') as f:
                json.dump(new, f, separators=(',', ':'))
    except BaseException:
        _discard(done)                      # nothing half-done: the written copies go
        raise
    if errs:
        _discard(done)
        raise OverrideError('nothing overridden:\n  ' + '\n  '.join(errs))
    for k, (p, i) in enumerate(done):
        try:
            os.replace(p + '.new', p)
        except OSError as e:            # the file system failed half-way: say exactly where it stands
            _discard(done[k:])
            raise OverrideError('overridden: %s; NOT overridden (%s): %s' % (
                ', '.join(x for _, x in done[:k]) or 'none', e, ', '.join(x for _, x in done[k:])))
    return [i for _, i in done]


def _discard(done):
    """Remove the <schedule>.new copies of done ((path, id) pairs) that exist."""
    for p, _ in done:
        try:
            os.remove(p + '.new')
        except OSError:
            pass


def service_user(secrets, user=None):
    """The service username for an override: its own (the push holds the first, ingest the
    next ones; one username is one client: docs/fleet.md)."""
    svcs = secrets['services']
    if user is not None:
        return [x for x in svcs if x['user'] == user][0]
    if len(svcs) < 4:
        raise OverrideError('the secrets hold %d service users; provision with --service-users 6 (push, '
                            'ingest, the command line and the console each need their own)' % len(svcs))
    return svcs[-2]


def dispatch(secrets, ids, power_w, duration_s, host, port, deadline_s, user=None):
    """Send a signed dispatch to each device; {id: ack dict or None} by the deadline."""
    svc = service_user(secrets, user)
    import paho.mqtt.client as mqtt
    acks, lock, ready = {}, threading.Lock(), threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=svc['user'], protocol=mqtt.MQTTv5)
    c.username_pw_set(svc['user'], svc['password'])

    def on_connect(cl, u, f, rc, props=None):
        if not rc.is_failure:
            cl.subscribe([('bess/%s/cmd/ack' % i, 1) for i in ids])

    def on_sub(cl, u, mid, rcs, props=None):
        ready.set()

    def on_message(cl, u, m):
        try:
            a = json.loads(m.payload)
        except ValueError:
            return
        dev = m.topic.split('/')[1]
        if a.get('cmd') == 'dispatch' and a.get('id') == 'ovr-' + dev:
            with lock:
                acks[dev] = a
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_sub, on_message
    c.connect(host, port, keepalive=30)
    c.loop_start()
    try:
        if not ready.wait(10):
            raise OverrideError('cannot subscribe to the acks at %s:%d' % (host, port))
        for i in ids:
            t, pl = dispatch_payload(secrets['devices'][i]['hmac_key'], i, power_w, duration_s, req_id='ovr-' + i)
            c.publish(t, pl, qos=1)
        while time.time() < deadline_s:
            with lock:
                if len(acks) == len(ids):
                    break
            time.sleep(0.05)
    finally:
        c.disconnect()
        c.loop_stop()
    return {i: acks.get(i) for i in ids}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--plan', required=True)
    ap.add_argument('--secrets', required=True)
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--port', type=int, default=1883)
    ap.add_argument('--sites', default='all', help='all, or comma-separated ids')
    ap.add_argument('--until', required=True, help='+SECONDS from now, or local HH:MM (the next one)')
    ap.add_argument('--utc-offset-s', type=int, default=0)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument('--suspend-arbitrage', action='store_true')
    g.add_argument('--force-reserve', type=int, metavar='BP')
    g.add_argument('--dispatch', type=int, metavar='W', help='battery power, + discharge (docs/units.md)')
    ap.add_argument('--deadline', default='+60', help='wait for acks this long (+SECONDS)')
    a = ap.parse_args(argv)
    now = time.time()
    until = now + float(a.until[1:]) if a.until.startswith('+') else push.deadline_ts(a.until, a.utc_offset_s)
    deadline = now + float(a.deadline.lstrip('+'))
    try:
        with open(a.secrets) as f:
            sec = json.load(f)
        ids = sorted(sec['devices']) if a.sites == 'all' else a.sites.split(',')
        unknown = [i for i in ids if i not in sec['devices']]
        if unknown:
            raise OverrideError('unknown device(s): %s' % ', '.join(unknown))
        if a.dispatch is not None:
            acks = dispatch(sec, ids, a.dispatch, until - now, a.host, a.port, deadline)
            bad = {i: a_ for i, a_ in acks.items() if not (a_ and a_.get('ok'))}
            print('override: dispatch %d W until %s: %d of %d acked ok' % (
                a.dispatch, time.strftime('%H:%M:%S', time.gmtime(until)), len(ids) - len(bad), len(ids)))
            for i, a_ in sorted(bad.items()):
                print('  %s: %s' % (i, (a_ or {}).get('reason', 'no ack')))
            return 0 if not bad else 1
        kind = 'suspend_arbitrage' if a.suspend_arbitrage else 'force_reserve'
        schedules(a.plan, ids, kind, until, a.force_reserve, fleet_dir=os.path.dirname(os.path.abspath(a.secrets)))
        devs = push.load_plan(a.plan, sec)
        devs = {i: devs[i] for i in ids}
        svc = service_user(sec)
        p = push.Push(devs, a.host, a.port, svc['user'], svc['password'])
    except (OSError, ValueError, KeyError) as e:
        print('override: nothing sent: %s' % e, file=sys.stderr)
        return 2
    try:
        rep = p.run(deadline)
    finally:
        p.close()
    print(push.table(rep))
    return 0 if rep['counts']['active'] == rep['devices'] else 1


if __name__ == '__main__':
    sys.exit(main())
