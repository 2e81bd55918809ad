#!/usr/bin/env python3
"""Push a fleet's schedules before a deadline (issue 12, item 3), with acks and a deadline report.

    python tools/fleet/push.py --plan out/ --secrets fleet/secrets.json --port 1883 \\
        --deadline 07:00 [--utc-offset-s 7200] [--rate-per-min 600] [--retry-s 60] [--report report.json]

Each device's schedule (out/schedules/<id>.json from plan_fleet.py) is signed with the device's
key (HMAC over "<topic>\\n<body>", docs/schedule.md) and published retained at QoS 1 on
bess/<id>/schedule, at most --rate-per-min a minute (as fleet job services pace a rollout: the
broker and the devices' links are not flooded). The service reads bess/+/schedule/status (the
device's ack: active on a version, or rejected with a reason) and bess/+/status (online, or the
last will "offline"). A device that is online and has not acked the new version --retry-s after
its publish gets it again (a device that was offline gets the retained copy when it connects, and
again on reconnect). At the deadline, or once every device is done, the report: per device
active / fallback (it has the new version but runs its default block: no clock, expired; with
the reason) / rejected (reason) / pending (online, no ack yet) / offline, as a table and JSON.
"""
import argparse
import datetime
import json
import os
import sys
import threading
import time

import fleetpath  # noqa: E402,F401 (tools/ and lib/ on sys.path)

import paho.mqtt.client as mqtt  # noqa: E402

import schedule_host  # noqa: E402

STATES = ('active', 'fallback', 'rejected', 'pending', 'offline')


class PushError(ValueError):
    pass


class Device:
    def __init__(self, dev_id, payload, version):
        self.id = dev_id
        self.payload = payload
        self.version = version
        self.online = None              # None: no status seen yet
        self.sent = []                  # monotonic s of each publish
        self.acked_s = None             # monotonic s of the ack of this version
        self.rejected = None            # reason
        self.fallback = None            # received, but running its default block: the reason
        self.acked_version = None       # the version the device says is in force

    def state(self):
        if self.acked_s is not None:
            return 'fallback' if self.fallback else 'active'
        if self.rejected is not None:
            return 'rejected'
        return 'pending' if self.online else 'offline'


def load_plan(plan_dir, secrets, prefix='bess'):
    """{id: Device} with each schedule signed for its device; PushError lists what is missing."""
    d = os.path.join(plan_dir, 'schedules')
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith('.json'))
    except OSError as e:
        raise PushError('%s: %s' % (d, e))
    devs, errs = {}, []
    for n in names:
        i = n[:-5]
        key = secrets['devices'].get(i, {}).get('hmac_key')
        if not key:
            errs.append('%s: no HMAC key for device %r in the secrets' % (n, i))
            continue
        with open(os.path.join(d, n), 'rb') as f:
            body = f.read().strip()
        try:
            version = json.loads(body)['version']
        except (ValueError, KeyError, TypeError) as e:
            errs.append('%s: not a schedule (%s)' % (n, e))
            continue
        topic = '%s/%s/schedule' % (prefix, i)
        devs[i] = Device(i, schedule_host.sign_schedule(bytes.fromhex(key), topic, body), version)
    if errs:
        raise PushError('\n'.join(errs))
    if not devs:
        raise PushError('%s: no schedules' % d)
    return devs


class Push:
    """One rollout: start(), wait(deadline_s), report(). Thread-safe counters; paho's thread
    delivers the acks."""

    def __init__(self, devices, host, port, user, password, rate_per_min=600, retry_s=60, max_tries=5,
                 prefix='bess'):
        self.devs = devices
        self.rate_per_min = rate_per_min
        self.retry_s = retry_s
        self.max_tries = max_tries
        self.prefix = prefix
        self.lock = threading.Lock()
        self.t0 = None
        self.published = 0
        c = self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
        c.username_pw_set(user, password)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        self.connected = threading.Event()
        c.connect(host, port, keepalive=30)
        c.loop_start()
        if not self.connected.wait(10):
            raise PushError('cannot connect to the broker %s:%d as %s' % (host, port, user))

    def _on_connect(self, c, u, flags, rc, props=None):
        if not rc.is_failure:
            c.subscribe([('%s/+/schedule/status' % self.prefix, 1), ('%s/+/status' % self.prefix, 1)])
            self.connected.set()

    def _on_message(self, c, u, m):
        parts = m.topic.split('/')
        if len(parts) < 3:
            return
        d = self.devs.get(parts[1])
        if d is None:
            return
        with self.lock:
            if parts[2] == 'status' and len(parts) == 3:
                d.online = bytes(m.payload) == b'online'
            elif parts[2:] == ['schedule', 'status']:
                try:
                    s = json.loads(m.payload)
                except ValueError:
                    return
                if s.get('status') in ('active', 'expired', 'fallback') and s.get('version') == d.version:
                    if d.acked_s is None:
                        d.acked_s = time.monotonic()
                    d.acked_version = d.version
                    d.rejected = None
                    # received, but not running it (no clock, expired): said as such, not "active"
                    d.fallback = None if s['status'] == 'active' else '%s (%s)' % (s['status'], s.get('reason', ''))
                elif s.get('status') == 'rejected' and d.sent and d.acked_s is None:
                    # this version's rejection: named in last_rejected; or said live after our
                    # publish (not a retained one from an earlier rollout) without a version
                    # (too large, out of memory, not stored: the device could not read it)
                    lr = s.get('last_rejected')
                    lv = lr.get('version') if isinstance(lr, dict) else None
                    if lv == d.version or (not m.retain and lv in (None, 0)):
                        d.rejected = s.get('reason') or (lr or {}).get('reason') or 'rejected'
                elif isinstance(s.get('version'), int):
                    d.acked_version = s['version']

    def _publish(self, d):
        self.c.publish('%s/%s/schedule' % (self.prefix, d.id), d.payload, qos=1, retain=True)
        d.sent.append(time.monotonic())
        self.published += 1

    def run(self, deadline_s):
        """Publish at the rate, retry the silent ones, until every device is done or time.time()
        reaches deadline_s."""
        self.t0 = time.monotonic()
        queue = sorted(self.devs.values(), key=lambda d: d.id)
        interval = 60.0 / self.rate_per_min
        nxt = time.monotonic()
        while time.time() < deadline_s:
            now = time.monotonic()
            with self.lock:
                if queue and now >= nxt:
                    self._publish(queue.pop(0))
                    nxt = max(nxt + interval, now - 1.0)   # no burst beyond one second's worth
                    continue
                if not queue:
                    for d in self.devs.values():
                        if (d.acked_s is None and d.rejected is None and d.online and d.sent
                                and len(d.sent) < self.max_tries and now - d.sent[-1] >= self.retry_s):
                            queue.append(d)
                    if all(d.acked_s is not None or d.rejected is not None for d in self.devs.values()):
                        break
            time.sleep(min(0.01, max(0.0, nxt - time.monotonic())) if queue else 0.05)
        return self.report(deadline_s)

    def report(self, deadline_s=None):
        with self.lock:
            rows = []
            for d in sorted(self.devs.values(), key=lambda d: d.id):
                rows.append({'id': d.id, 'state': d.state(), 'version': d.version, 'acked_version': d.acked_version,
                             'tries': len(d.sent), 'reason': d.rejected or d.fallback,
                             'ack_s': round(d.acked_s - self.t0, 3) if d.acked_s is not None else None})
        counts = {s: sum(1 for r in rows if r['state'] == s) for s in STATES}
        acks = [r['ack_s'] for r in rows if r['ack_s'] is not None]
        return {'deadline': deadline_s, 'devices': len(rows), 'counts': counts, 'published': self.published,
                'all_acked_s': max(acks) if acks and counts['active'] + counts['fallback'] == len(rows) else None,
                'last_ack_s': max(acks) if acks else None, 'rows': rows}

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def table(rep):
    """The report as text: counts, then every device not active."""
    c = rep['counts']
    out = ['devices %d: active %d, fallback %d, rejected %d, pending %d, offline %d; published %d%s' % (
        rep['devices'], c['active'], c['fallback'], c['rejected'], c['pending'], c['offline'], rep['published'],
        '; all acked after %.1f s' % rep['all_acked_s'] if rep['all_acked_s'] is not None else '')]
    out.append('%-24s %-9s %8s %8s %5s  %s' % ('device', 'state', 'version', 'acked', 'tries', 'reason'))
    for r in rep['rows']:
        if r['state'] != 'active':
            out.append('%-24s %-9s %8s %8s %5d  %s' % (r['id'], r['state'], r['version'], r['acked_version'],
                                                       r['tries'], r['reason'] or ''))
    return '\n'.join(out)


def deadline_ts(hhmm, utc_offset_s=0, now=None):
    """The next local hh:mm (UTC offset utc_offset_s) as unix s."""
    now = time.time() if now is None else now
    h, m = (int(x) for x in hhmm.split(':'))
    local = now + utc_offset_s
    day0 = local - local % 86400
    t = day0 + h * 3600 + m * 60
    if t <= local:
        t += 86400
    return t - utc_offset_s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--plan', required=True, help='plan_fleet.py --out folder (schedules/<id>.json)')
    ap.add_argument('--secrets', required=True)
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--port', type=int, default=1883)
    ap.add_argument('--deadline', required=True, help='local HH:MM (the next one), or +SECONDS from now')
    ap.add_argument('--utc-offset-s', type=int, default=0)
    ap.add_argument('--rate-per-min', type=int, default=600)
    ap.add_argument('--retry-s', type=float, default=60)
    ap.add_argument('--report', help='write the JSON report here')
    a = ap.parse_args(argv)
    try:
        with open(a.secrets) as f:
            sec = json.load(f)
        devs = load_plan(a.plan, sec)
        dl = (time.time() + float(a.deadline[1:])) if a.deadline.startswith('+') else deadline_ts(a.deadline, a.utc_offset_s)
        p = Push(devs, a.host, a.port, sec['service']['user'], sec['service']['password'], a.rate_per_min, a.retry_s)
    except (OSError, ValueError, KeyError) as e:
        print('push: nothing sent: %s' % e, file=sys.stderr)
        return 2
    try:
        rep = p.run(dl)
    finally:
        p.close()
    rep['deadline_utc'] = datetime.datetime.fromtimestamp(dl, datetime.timezone.utc).isoformat()
    print(table(rep))
    if a.report:
        with open(a.report, 'w') as f:
            json.dump(rep, f, indent=1)
    return 0 if rep['counts']['active'] == rep['devices'] else 1


if __name__ == '__main__':
    sys.exit(main())
