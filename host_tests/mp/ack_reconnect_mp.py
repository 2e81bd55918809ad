# MicroPython (unix port), host_tests/test_mqtt.py: a link lost while ACK_MAX acks wait to be sent
# reads the CONNACK of its reconnect all the same (it used to wait in 'handshake' forever: acks
# leave only while up, and the read loop stopped at ACK_MAX acks waiting).
#   micropython ack_reconnect_mp.py PORT SETTINGS_PATH
import sys
import time
import bess_core
import reporting
import telemetry
import mqtt_link
from bess_config import validate

port = int(sys.argv[1])
base = validate({'import_limit_w': 10000})
ctl = bess_core.Controller(base)
h = reporting.CommandHandler(ctl, sys.argv[2], None, 0, telemetry.Stats(), base=base)
link = mqtt_link.MqttLink({'client_id': 'devA', 'server': '127.0.0.1', 'port': port, 'on_command': h,
                           'ha_discovery': False, 'backoff_min_ms': 100, 'backoff_max_ms': 300,
                           'connect_timeout_ms': 1000})
link.set_config(ctl.cfg)
h.on_change = link.set_config


def run(ms, until=None):
    t = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t) < ms and not (until and until()):
        link.poll(time.ticks_ms())
        time.sleep_ms(50)


run(3000, lambda: link.state == mqtt_link.UP)
print('up', link.state == mqtt_link.UP)
# a burst handled in one poll (its acks queued, none sent yet), then the connection fails
for k in range(mqtt_link.ACK_MAX):
    link._command(b'import_limit', b'bess/devA/cmd/import_limit', b'{"value":%d}' % (9000 + k), 0)
print('waiting', len(link.out))
link._lost(time.ticks_ms(), OSError(104))
run(8000, lambda: link.state == mqtt_link.UP and not link.out)
print('after', mqtt_link.STATE_NAMES[link.state], link.connects, len(link.out))
