"""Pushing a fleet's schedules with acks and a deadline report (issue 12, item 3):
tools/fleet/push.py against device twins (tools/fleet/twin.py: the device's topics, its own
schedule checks) on a real mosquitto with the provisioned passwords and ACL."""
import json
import os
import signal
import subprocess
import sys
import time

from mqtt_fixtures import Collector, wait_for, procs  # noqa: F401
from fleet_fixtures import Stopper, FLEET, provisioned_broker, twins, write_plan

import push  # noqa: E402  (tools/fleet, on the path through fleet_fixtures)

IDS = ['d%02d' % k for k in range(20)]
NORMAL, BAD, MUTE, KILLED, NEVER = IDS[:15], IDS[15], IDS[16], IDS[17:19], IDS[19]


def test_push_acks_and_the_deadline_report(tmp_path, procs):
    br, sec, fleet = provisioned_broker(tmp_path, IDS)
    procs.append(br)
    secrets_path = os.path.join(fleet, 'secrets.json')
    a = twins(br.port, secrets_path, NORMAL + [BAD, MUTE], '--bad-key', BAD, '--mute', MUTE)
    b = twins(br.port, secrets_path, KILLED)
    procs.extend([Stopper(a)])
    other = sec['services'][1]              # not the push's username: one username, one client
    mon = Collector(br.port, topics=('bess/+/status',), user=other['user'], password=other['password'])
    procs.append(mon)
    assert wait_for(lambda: len({m[0] for m in mon.get() if m[1] == b'online'}) == 19, 15)
    b.send_signal(signal.SIGKILL)           # two devices die: the broker publishes their wills
    b.wait()
    assert wait_for(lambda: all(mon.get('bess/%s/status' % i) and mon.get('bess/%s/status' % i)[-1][1] == b'offline'
                                for i in KILLED), 90)
    plan = write_plan(tmp_path / 'plan', IDS, 4242)
    devs = push.load_plan(plan, sec)
    p = push.Push(devs, '127.0.0.1', br.port, sec['service']['user'], sec['service']['password'],
                  rate_per_min=1200, retry_s=1.0, max_tries=3)
    try:
        t = time.time()
        rep = p.run(t + 12)
    finally:
        p.close()
    by = {r['id']: r for r in rep['rows']}
    assert rep['counts'] == {'active': 15, 'fallback': 0, 'rejected': 1, 'pending': 1, 'offline': 3}, push.table(rep)
    assert all(by[i]['state'] == 'active' and by[i]['acked_version'] == 4242 for i in NORMAL)
    assert by[BAD]['state'] == 'rejected' and 'mac' in by[BAD]['reason']
    assert by[MUTE]['state'] == 'pending' and by[MUTE]['tries'] == 3        # retried, then left
    assert all(by[i]['state'] == 'offline' and by[i]['tries'] == 1 for i in KILLED + [NEVER])
    # the rate: 20 publishes at 1 200 a minute take at least 19 x 50 ms
    first = sorted(d.sent[0] for d in devs.values())
    assert first[-1] - first[0] >= 19 * 0.05 * 0.9
    assert time.time() - t < 14                 # the deadline ended it (the mute one never acks)
    txt = push.table(rep)
    assert 'active 15, fallback 0, rejected 1, pending 1, offline 3' in txt and BAD in txt and NEVER in txt
    # a device that comes online after the deadline gets the retained schedule and acks it
    late = twins(br.port, secrets_path, [NEVER])
    procs.append(Stopper(late))
    col = Collector(br.port, topics=('bess/%s/schedule/status' % NEVER,), user=sec['services'][2]['user'],
                    password=sec['services'][2]['password'])
    procs.append(col)
    assert wait_for(lambda: [m for m in col.get() if json.loads(m[1]).get('version') == 4242], 15)


def test_the_command_line_reports_and_exits_1_when_not_all_acked(tmp_path, procs):
    ids = ['e1', 'e2']
    br, sec, fleet = provisioned_broker(tmp_path, ids)
    procs.append(br)
    secrets_path = os.path.join(fleet, 'secrets.json')
    procs.append(Stopper(twins(br.port, secrets_path, ['e1'])))
    plan = write_plan(tmp_path / 'plan', ids, 7)
    rep_path = str(tmp_path / 'report.json')
    r = subprocess.run([sys.executable, os.path.join(FLEET, 'push.py'), '--plan', plan, '--secrets', secrets_path,
                        '--port', str(br.port), '--deadline', '+4', '--report', rep_path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'active 1, fallback 0, rejected 0, pending 0, offline 1' in r.stdout and 'e2' in r.stdout
    rep = json.load(open(rep_path))
    assert rep['counts']['active'] == 1 and rep['deadline_utc']
    # bad input: nothing sent, says why
    os.remove(os.path.join(plan, 'schedules', 'e2.json'))
    (tmp_path / 'plan' / 'schedules' / 'zz.json').write_text('{}')
    r = subprocess.run([sys.executable, os.path.join(FLEET, 'push.py'), '--plan', plan, '--secrets', secrets_path,
                        '--port', str(br.port), '--deadline', '+1'], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "no HMAC key for device 'zz'" in r.stderr


class _Msg:
    def __init__(self, topic, payload, retain=False):
        self.topic, self.payload, self.retain = topic, payload, retain


def _push_without_broker(version=9):
    import threading
    p = push.Push.__new__(push.Push)
    p.devs = {'a': push.Device('a', b'{}', version)}
    p.lock, p.prefix, p.t0, p.published = threading.Lock(), 'bess', 0.0, 1
    p.devs['a'].sent.append(0.0)
    return p


def test_what_the_firmware_says_is_counted_as_it_is():
    """The firmware's own status messages (firmware/plan_side.py): a schedule it could not read
    (too large, out of memory: no version known) is a rejection of ours when said live after the
    publish; the new version running its default block (no clock, expired) is "fallback", not
    "active"; a stale retained one changes nothing."""
    p = _push_without_broker()
    rej = {'status': 'rejected', 'reason': 'too large: 30000 bytes > max_bytes 24576', 'id': 's/day', 'version': 8,
           'last_rejected': {'reason': 'too large: 30000 bytes > max_bytes 24576', 'id': None, 'version': 0}}
    p._on_message(None, None, _Msg('bess/a/schedule/status', json.dumps(rej).encode(), retain=True))
    assert p.devs['a'].state() != 'rejected'                  # retained: from before our publish
    p._on_message(None, None, _Msg('bess/a/schedule/status', json.dumps(rej).encode()))
    assert p.devs['a'].state() == 'rejected' and 'too large' in p.devs['a'].rejected
    p = _push_without_broker()
    fb = {'status': 'fallback', 'reason': 'no_clock', 'id': 's/day', 'version': 9}
    p._on_message(None, None, _Msg('bess/a/schedule/status', json.dumps(fb).encode()))
    rep = p.report()
    assert rep['counts']['fallback'] == 1 and rep['rows'][0]['reason'] == 'fallback (no_clock)'
    p._on_message(None, None, _Msg('bess/a/schedule/status', json.dumps(dict(fb, status='active')).encode()))
    assert p.report()['counts']['active'] == 1
