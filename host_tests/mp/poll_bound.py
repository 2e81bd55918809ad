# Worst duration of one MqttLink.poll() against a broker that trickles a command 1 byte at a time.
# usage (unix port): poll_bound.py PORT SOCK_TIMEOUT_MS -> prints "worst_poll_ms N"
import sys
import time
import mqtt_link

link = mqtt_link.MqttLink({'client_id': 'd1', 'server': '127.0.0.1', 'port': int(sys.argv[1]),
                           'ha_discovery': False, 'sock_timeout_ms': int(sys.argv[2]),
                           'backoff_min_ms': 60000, 'on_command': lambda *a: None})
worst = 0
end = time.ticks_add(time.ticks_ms(), 6000)
while time.ticks_diff(end, time.ticks_ms()) > 0:
    t0 = time.ticks_ms()
    link.poll(t0)
    d = time.ticks_diff(time.ticks_ms(), t0)
    if d > worst:
        worst = d
    time.sleep_ms(50)
print('worst_poll_ms %d lost %d' % (worst, link.lost))
