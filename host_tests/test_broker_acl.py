"""The documented broker setup (docs/mosquitto-example.conf + docs/mosquitto-example.acl,
docs/telemetry.md "Security") on a real mosquitto on 127.0.0.1, with paho-mqtt clients standing in
for devices, the operator and Home Assistant (issue 10, item 7):

- a device's credentials cannot take over another device's session (client id takeover), and the
  option that prevents it (use_username_as_clientid) is what matters: same config without it, the
  takeover works;
- a device cannot write any topic of another device (status, telemetry, commands, acks, Home
  Assistant discovery) nor read another device's commands; it can use its own topics;
- the operator can command a device; the Home Assistant and monitor accounts are read-only.

The example files are used as they are, except: listener ports are free loopback ports, the
password / ACL paths point into the test's directory and the TLS lines are dropped (TLS:
test_mqtt_tls.py; the options tested here do not depend on it).
"""
import os
import pwd
import socket
import subprocess
import threading
import time

import paho.mqtt.client as mqtt

from mqtt_fixtures import Broker, Collector, free_port, wait_for, ROOT, procs  # noqa: F401

CONF = os.path.join(ROOT, 'docs', 'mosquitto-example.conf')
ACL = os.path.join(ROOT, 'docs', 'mosquitto-example.acl')
USERS = {'devA': 'pwA', 'devB': 'pwB', 'operator': 'pwOp', 'homeassistant': 'pwHa', 'monitor': 'pwMo',
         'devB/cmd': 'pwX'}
OPTION = 'use_username_as_clientid true'


def example_broker(tmp_path, procs, option=True):
    """mosquitto running docs/mosquitto-example.conf (see the module doc); option=False drops the
    use_username_as_clientid lines (the negative control). Returns (broker, [port of each listener])."""
    d = tmp_path / ('with' if option else 'without')
    d.mkdir()
    pw = d / 'passwd'
    pw.write_text('')
    for u, p in USERS.items():
        subprocess.run(['mosquitto_passwd', '-b', str(pw), u, p], check=True)
    br = Broker(d, name='example')
    br.log = d / 'example.log'
    ports = [br.port]
    lines = ['user %s' % pwd.getpwuid(os.getuid()).pw_name,     # as root: stay this user (Broker does too)
             'log_dest file %s' % br.log, 'log_type error', 'log_type warning',
             'log_type notice', 'log_type information']
    n_listeners = 0
    with open(CONF) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            key = line.split()[0]
            if key == 'listener':
                if n_listeners:
                    ports.append(free_port())
                line = 'listener %d 127.0.0.1' % ports[n_listeners]
                n_listeners += 1
            elif key in ('cafile', 'certfile', 'keyfile'):
                continue
            elif key == 'password_file':
                line = 'password_file %s' % pw
            elif key == 'acl_file':
                line = 'acl_file %s' % ACL
            elif line == OPTION and not option:
                continue
            lines.append(line)
    assert n_listeners == 2 and (lines.count(OPTION) == 2) == option
    with open(br.conf, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    procs.append(br.start())
    for p in ports[1:]:
        assert wait_for(lambda: _listening(p), 5), 'second listener not up'
    # exactly the configured listeners: no default listener (0.0.0.0:1883) opened by a misplaced option
    log = br.log.read_text()
    opened = sorted(int(w.split()[-1].rstrip('.')) for w in log.splitlines() if 'listen socket on port' in w)
    assert opened == sorted(ports), log
    return br, ports


def _listening(port):
    try:
        socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
        return True
    except OSError:
        return False


class Peer(Collector):
    """A paho client with a client id, credentials and optionally a retained will; records its
    connects, disconnects (paho on_disconnect) and messages. Closed by the procs fixture."""

    def __init__(self, port, user, client_id, will=None, topics=()):
        self.msgs = []
        self.lock = threading.Lock()
        self.connects = []
        self.disconnects = []
        self.topics = topics
        self.connected = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.c.username_pw_set(user, USERS[user])
        if will:
            self.c.will_set(will[0], will[1], qos=1, retain=True)
        self.c.reconnect_delay_set(min_delay=0.05, max_delay=0.2)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_disconnect = lambda c, u, flags, rc, props=None: self.disconnects.append(str(rc))
        self.c.connect('127.0.0.1', port, keepalive=10)
        self.c.loop_start()
        assert self.connected.wait(5), '%s could not connect' % user

    def _on_connect(self, c, u, flags, rc, props=None):
        self.connects.append(str(rc))
        Collector._on_connect(self, c, u, flags, rc, props)

    def close(self):
        quick_close(self)           # a clean DISCONNECT: no will, no lingering session


def quick_close(col):
    """Collector.close, but DISCONNECT first: loop_stop then returns at once instead of waiting
    out paho's 1 s select."""
    col.c.disconnect()
    col.c.loop_stop()


def attempt(port, user, client_id, will, clean):
    """One connection with `user`'s credentials as `client_id` (paho, no thread): connect, publish
    one QoS 1 message on the user's own status topic, then DISCONNECT (clean) or just drop the
    socket (the broker then sends the will)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.username_pw_set(user, USERS[user])
    c.will_set(will[0], will[1], qos=1, retain=True)
    rc = []
    c.on_connect = lambda c_, u, flags, r, props=None: rc.append(r)
    c.connect('127.0.0.1', port, keepalive=10)
    end = time.monotonic() + 5
    while not rc and time.monotonic() < end:
        c.loop(0.05)
    assert rc and not rc[0].is_failure, rc
    info = c.publish('bess/%s/status' % user, b'attempt', qos=1)
    while not info.is_published() and time.monotonic() < end:
        c.loop(0.05)
    assert info.is_published()
    if clean:
        c.disconnect()              # (closes the socket)
    else:
        c.socket().close()


def payloads(col, topic):
    return [m[1] for m in col.get(topic)]


def barrier(sender, seen_by, topic):
    """Publish a marker from `sender` on `topic` (a topic it may write and `seen_by` reads) and wait
    until `seen_by` has it: the broker handles one connection's packets in order, so whatever
    `sender` published before has been routed (or dropped) by then."""
    marker = ('marker %f' % time.monotonic()).encode()
    sender.publish(topic, marker)
    assert wait_for(lambda: marker in [m[1] for m in seen_by.get(topic)], 5), 'marker not seen'


def test_client_id_takeover_needs_use_username_as_clientid(tmp_path, procs):
    # negative control: the documented config WITHOUT use_username_as_clientid. devA's credentials
    # connecting with client id "devB" throw devB off, and devB's will ("offline") goes out.
    br, ports = example_broker(tmp_path, procs, option=False)
    op = Peer(ports[0], 'operator', '', topics=('bess/#',))
    procs.append(op)
    devb = Peer(ports[0], 'devB', 'devB', will=('bess/devB/status', b'offline'), topics=('bess/devB/cmd/#',))
    procs.append(devb)
    devb.publish('bess/devB/status', b'online', retain=True)
    evil = Peer(ports[0], 'devA', 'devB', will=('bess/devB/status', b'EVIL'))
    procs.append(evil)
    assert wait_for(lambda: devb.disconnects, 3), 'takeover expected without the option'
    assert wait_for(lambda: b'offline' in payloads(op, 'bess/devB/status'), 3)
    # (the will of devA's credentials on devB's status topic is still refused by the ACL)
    evil.close()
    devb.close()
    op.close()
    br.stop()
    assert b'EVIL' not in payloads(op, 'bess/devB/status')

    # the documented config: the client id is the username, so "devB" from devA's credentials is
    # "devA"; devB is never disconnected, its will never sent, and it keeps receiving commands
    br, ports = example_broker(tmp_path, procs, option=True)
    for port in ports:                       # both listeners carry the option
        op = Peer(port, 'operator', '', topics=('bess/#',))
        procs.append(op)
        devb = Peer(port, 'devB', 'devB', will=('bess/devB/status', b'offline'), topics=('bess/devB/cmd/#',))
        procs.append(devb)
        devb.publish('bess/devB/status', b'online', retain=True)
        for i in range(5):                   # repeatedly, with a will on devB's status topic
            attempt(port, 'devA', 'devB', ('bess/devB/status', b'EVIL'), clean=i % 2)
        time.sleep(0.3)             # a takeover closes devB's socket while the CONNECT is handled
        assert devb.connects == ['Success'] and devb.disconnects == [], (devb.connects, devb.disconnects)
        barrier(op, devb, 'bess/devB/cmd/ping')      # devB still receives, on its first connection
        assert devb.connects == ['Success'] and devb.disconnects == [], (devb.connects, devb.disconnects)
        assert wait_for(lambda: len(op.get('bess/devA/status')) == 5, 3)     # the attempts' own messages
        assert set(payloads(op, 'bess/devB/status')) == {b'online'}, payloads(op, 'bess/devB/status')
        op.close()
        devb.close()
    # what the broker made of it (its log): devA's credentials always connected as client "devA"
    log = br.log.read_text()
    assert log.count("as devA (p2, c1, k10, u'devA')") == 10, log
    assert "u'devA')" not in log.replace("as devA (p2, c1, k10, u'devA')", ''), log


def test_a_device_writes_and_reads_only_its_own_topics(tmp_path, procs):
    br, ports = example_broker(tmp_path, procs)
    port = ports[0]
    # devB's retained discovery and status, as the firmware publishes them
    devb = Peer(port, 'devB', 'devB', will=('bess/devB/status', b'offline'),
                topics=('bess/devB/cmd/#', 'bess/devB/schedule'))
    procs.append(devb)
    disc_b = b'{"name": "Objective", "command_topic": "bess/devB/cmd/objective"}'
    devb.publish('homeassistant/select/devB/objective/config', disc_b, retain=True)
    devb.publish('bess/devB/status', b'online', retain=True)
    op = Peer(port, 'operator', '', topics=('bess/#', 'homeassistant/#'))
    procs.append(op)
    assert wait_for(lambda: op.get('homeassistant/select/devB/objective/config'), 3)

    deva = Peer(port, 'devA', 'devA', will=('bess/devA/status', b'offline'),
                topics=('bess/devA/cmd/+', 'bess/devB/#', 'homeassistant/#'))
    procs.append(deva)
    # (b) every topic of devB: status, telemetry, state, config, commands, acks, its discovery
    # (overwrite or delete), and discovery topics whose node id is devB in any position
    foreign = ['bess/devB/status', 'bess/devB/telemetry', 'bess/devB/state', 'bess/devB/config',
               'bess/devB/schedule', 'bess/devB/schedule/status', 'bess/devB/dlm',
               'bess/devB/cmd/import_limit', 'bess/devB/cmd/objective', 'bess/devB/cmd/ack',
               'bess/devB/cmd/x/y', 'homeassistant/sensor/devB/gcp_w/config',
               'homeassistant/select/devB/objective/config', 'homeassistant/sensor/devB/devA/config',
               'homeassistant/devB/config', 'bess/devA/x/y']
    for t in foreign:
        deva.publish(t, b'{"value": 9000}')
        deva.publish(t, b'', retain=True)    # an empty retained message would delete devB's config
    # nor its own commands (a device cannot command itself)
    deva.publish('bess/devA/cmd/import_limit', b'{"value": 9000}')
    barrier(deva, op, 'bess/devA/status')
    got = [m[0] for m in op.msgs if not m[0].startswith('bess/devA/status')
           and m[0] not in ('bess/devB/status', 'homeassistant/select/devB/objective/config')]
    assert got == [], got
    assert [m[1] for m in op.get('bess/devB/status')] == [b'online']
    assert devb.get() == []
    # devB's retained discovery is intact: a fresh subscriber (Home Assistant's account: a second
    # "operator" connection would throw the first off) gets the original
    fresh = Peer(port, 'homeassistant', 'ha', topics=('homeassistant/select/devB/objective/config',))
    procs.append(fresh)
    assert wait_for(lambda: fresh.get(), 3) and payloads(fresh, 'homeassistant/select/devB/objective/config') == [disc_b]

    # devA reads neither devB's commands nor anything else of devB's, though it subscribed
    op.publish('bess/devB/cmd/import_limit', b'{"value": 8000}')
    op.publish('bess/devB/telemetry', b'{"v": 1}')
    barrier(op, deva, 'bess/devA/cmd/ping')
    assert [m[0] for m in deva.get()] == ['bess/devA/cmd/ping'], deva.get()
    # (d) the operator commands devB and sends it a schedule (devA saw neither)
    assert wait_for(lambda: payloads(devb, 'bess/devB/cmd/import_limit') == [b'{"value": 8000}'], 3)
    op.publish('bess/devB/schedule', b'{"v": 1}')
    assert wait_for(lambda: payloads(devb, 'bess/devB/schedule') == [b'{"v": 1}'], 3)
    assert not deva.get('bess/devB/schedule')

    # (c) devA's own topics, as the firmware publishes them, all reach the operator
    own = ['bess/devA/status', 'bess/devA/telemetry', 'bess/devA/state', 'bess/devA/config',
           'bess/devA/cmd/ack', 'bess/devA/schedule/status', 'bess/devA/dlm', 'homeassistant/sensor/devA/gcp_w/config',
           'homeassistant/select/devA/objective/config']
    for t in own:
        deva.publish(t, ('own %s' % t).encode(), retain=t.startswith('homeassistant'))
    barrier(deva, op, 'bess/devA/status')
    for t in own:
        assert ('own %s' % t).encode() in payloads(op, t), t
    # and its commands reach it
    op.publish('bess/devA/cmd/import_limit', b'{"value": 7000}')
    assert wait_for(lambda: payloads(deva, 'bess/devA/cmd/import_limit') == [b'{"value": 7000}'], 3)

    # provisioning rule: a username containing "/" escapes its namespace (mosquitto 2.0 refuses
    # usernames with + or # in patterns, not "/"): never create one. Shown here with "devB/cmd".
    slash = Peer(port, 'devB/cmd', 'x')
    procs.append(slash)
    slash.publish('bess/devB/cmd/import_limit', b'{"value": 1}')
    assert wait_for(lambda: b'{"value": 1}' in payloads(devb, 'bess/devB/cmd/import_limit'), 3)


def test_home_assistant_and_monitor_accounts_are_read_only(tmp_path, procs):
    br, ports = example_broker(tmp_path, procs)
    port = ports[1]                          # HA next to the broker: the loopback listener
    op = Peer(port, 'operator', '', topics=('bess/#', 'homeassistant/#'))
    procs.append(op)
    devb = Peer(port, 'devB', 'devB', topics=('bess/devB/cmd/#',))
    procs.append(devb)
    ha = Peer(port, 'homeassistant', '', topics=('bess/+/telemetry', 'homeassistant/#'))
    procs.append(ha)
    mon = Peer(port, 'monitor', '', topics=('bess/+/telemetry',))       # e.g. tools/mqtt_consumer.py
    procs.append(mon)
    # what an ACL cannot stop: devA's discovery config, in its own namespace, pointing at devB
    deva = Peer(port, 'devA', 'devA')
    procs.append(deva)
    forged = b'{"name": "Objective", "command_topic": "bess/devB/cmd/objective", "options": ["gce", "ss"]}'
    deva.publish('homeassistant/select/devA/objective/config', forged, retain=True)
    assert wait_for(lambda: payloads(ha, 'homeassistant/select/devA/objective/config') == [forged], 3)
    # HA following it, or any other command: dropped by the broker, devB sees nothing
    for t in ('bess/devB/cmd/objective', 'bess/devB/cmd/import_limit', 'bess/devA/cmd/objective',
              'bess/devB/status', 'homeassistant/select/devB/objective/config'):
        ha.publish(t, b'{"value": "ss"}')
        mon.publish(t, b'{"value": "ss"}')
    mon.publish('homeassistant/status', b'offline')
    ha.publish('homeassistant/status', b'online')            # HA's birth message is allowed
    barrier(ha, op, 'homeassistant/status')
    assert [m[0] for m in op.msgs if m[0] != 'homeassistant/status'] == \
        ['homeassistant/select/devA/objective/config'], op.msgs
    assert b'offline' not in payloads(op, 'homeassistant/status')        # monitor's was dropped
    assert devb.get() == []
    # both read telemetry
    devb.publish('bess/devB/telemetry', b'{"v": 1}')
    assert wait_for(lambda: payloads(ha, 'bess/devB/telemetry') == [b'{"v": 1}'], 3)
    assert wait_for(lambda: payloads(mon, 'bess/devB/telemetry') == [b'{"v": 1}'], 3)
