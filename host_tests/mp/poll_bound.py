# Worst duration of one MqttLink.poll() against a hostile broker (host_tests/test_mqtt.py).
# usage (unix port): poll_bound.py PORT POLL_BUDGET_MS SECONDS
#   -> prints "worst_poll_ms N polls P lost L connects C"
# The link's TCP send buffer is made small (SO_SNDBUF 4 KB, through a stand-in for its `socket`
# module) and a ~3 KB retained config is queued before every poll, so a broker that stops reading
# fills the buffers within a few polls and the writes have to wait: the budget must end them.
import sys
import time
import socket as _so
import mqtt_link

SOL_SOCKET = 1
SO_SNDBUF = 7       # Linux


class SmallSendBuffer:
    def socket(self, *a):
        s = _so.socket(*a)
        s.setsockopt(SOL_SOCKET, SO_SNDBUF, 4096)
        return s

    def getaddrinfo(self, *a):
        return _so.getaddrinfo(*a)


mqtt_link.socket = SmallSendBuffer()
budget = int(sys.argv[2])
link = mqtt_link.MqttLink({'client_id': 'd1', 'server': '127.0.0.1', 'port': int(sys.argv[1]),
                           'ha_discovery': False, 'poll_budget_ms': budget, 'keepalive': 2,
                           'backoff_min_ms': 100, 'backoff_max_ms': 200,
                           'on_command': lambda *a: None})
cfg = {'pad': 'x' * 3000}
worst = 0
polls = 0
end = time.ticks_add(time.ticks_ms(), int(sys.argv[3]) * 1000)
while time.ticks_diff(end, time.ticks_ms()) > 0:
    if link.connected():
        link.set_config(cfg)
    t0 = time.ticks_ms()
    link.poll(t0)
    d = time.ticks_diff(time.ticks_ms(), t0)
    polls += 1
    if d > worst:
        worst = d
    time.sleep_ms(20)
print('worst_poll_ms %d polls %d lost %d connects %d' % (worst, polls, link.lost, link.connects))
