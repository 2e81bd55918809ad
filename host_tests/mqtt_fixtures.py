"""Helpers for the MQTT tests: a mosquitto on 127.0.0.1, the firmware harness on the MicroPython
unix port (host_tests/mp/mqtt_device.py), and a paho-mqtt collector."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from broker import Broker, free_port, wait_for, mosquitto_exe  # noqa: F401 (re-exported for the tests)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, 'host_tests', 'mp', 'mqtt_device.py')
# '.frozen' last, as on a board: the unix port's `ssl` is a frozen module (needed for TLS)
MICROPYPATH = ':'.join([os.path.join(ROOT, d) for d in ('firmware', 'lib', os.path.join('build', 'vendor'))]
                       + ['.frozen'])


def micropython_exe():
    exe = os.path.join(os.path.dirname(sys.executable), 'micropython')
    if not os.path.exists(exe):
        exe = shutil.which('micropython')
    assert exe, 'MicroPython unix port missing: run `make deps`'
    return exe


class Device:
    """The firmware harness (stand-in main loop) on the MicroPython unix port."""

    def __init__(self, workdir, name, broker_port, base_cfg=None, mqtt_extra=None, hmac_key=None,
                 period_ms=100, run_ms=60000, telemetry_ms=100, state_path=None):
        self.name = name
        self.workdir = str(workdir)
        self.state_path = state_path or os.path.join(self.workdir, 'state_%s.json' % name)
        m = {'client_id': name, 'server': '127.0.0.1', 'port': broker_port, 'keepalive': 4,
             'telemetry_ms': telemetry_ms, 'backoff_min_ms': 200, 'backoff_max_ms': 1000,
             'sock_timeout_ms': 500, 'connect_timeout_ms': 1000}
        m.update(mqtt_extra or {})
        self.params = {'mqtt': m, 'base_cfg': base_cfg or {'import_limit_w': 10000},
                       'state_path': self.state_path, 'hmac_key': hmac_key,
                       'period_ms': period_ms, 'run_ms': run_ms, 'load_w': 12000, 'soc_bp': 5000}
        self.proc = None
        self.stats = []
        self.stderr = ''

    def start(self):
        pf = os.path.join(self.workdir, 'params_%s.json' % self.name)
        with open(pf, 'w') as f:
            json.dump(self.params, f)
        env = dict(os.environ, MICROPYPATH=MICROPYPATH)
        self.stats = []
        self.proc = subprocess.Popen([micropython_exe(), HARNESS, pf], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        proc = self.proc

        def rd():
            for line in proc.stdout:
                try:
                    self.stats.append(json.loads(line))
                except ValueError:
                    pass
        self._t = threading.Thread(target=rd, daemon=True)
        self._t.start()
        return self

    def last(self):
        return self.stats[-1] if self.stats else {}

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(5)
        if self.proc:
            self.stderr = self.proc.stderr.read()
            self._t.join(2)
        self.proc = None


class Collector:
    """paho-mqtt subscriber recording (topic, payload bytes, retain, monotonic time)."""

    def __init__(self, port, topics=('#',), client_id='', persistent=False, user=None, password=None,
                 tls_ca=None):
        self.msgs = []
        self.lock = threading.Lock()
        kw = {}
        if persistent:
            kw = {'client_id': client_id, 'clean_session': False}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kw)
        if user:
            self.c.username_pw_set(user, password)
        if tls_ca:
            self.c.tls_set(ca_certs=tls_ca)     # verifies the broker's certificate and name
        self.c.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        self.topics = topics
        self.connected = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.connect('127.0.0.1', port, keepalive=10)
        self.c.loop_start()
        assert self.connected.wait(5), 'collector could not connect'

    def _on_connect(self, c, u, flags, rc, props=None):
        if rc == 0:
            for t in self.topics:
                c.subscribe(t, qos=1)
            self.connected.set()

    def _on_message(self, c, u, m):
        with self.lock:
            self.msgs.append((m.topic, bytes(m.payload), m.retain, time.monotonic()))

    def get(self, topic=None, suffix=None):
        with self.lock:
            return [m for m in self.msgs if (topic is None or m[0] == topic)
                    and (suffix is None or m[0].endswith(suffix))]

    def telemetry(self, dev):
        return [json.loads(m[1]) for m in self.get('bess/%s/telemetry' % dev)]

    def publish(self, topic, payload, retain=False):
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def procs():
    """Everything started by a test is stopped here, whatever happens."""
    items = []
    yield items
    for it in reversed(items):
        try:
            if isinstance(it, Device):
                it.kill()
            elif isinstance(it, Collector):
                it.close()
            elif isinstance(it, Broker):
                it.stop()
            elif hasattr(it, 'stop'):       # anything else a test started (a helper process)
                it.stop()
        except Exception:
            pass
