# A stand-in firmware main loop on the MicroPython unix port, for host_tests/test_mqtt.py.
#
# Real parts: bess_core.Controller, firmware/reporting.py (telemetry capture, after_cycle) with
# mqtt_link.py (+ mqtt_sock.py), cmd_handler, settings, persist. Fake part: the site and its
# devices (constant load; the battery reaches its setpoint in one cycle).
# Run: MICROPYPATH=firmware:lib:build/vendor micropython mqtt_device.py PARAMS.json
# PARAMS: {"mqtt": {...link config...}, "base_cfg": {...}, "state_path": str, "hmac_key": hex|null,
#          "period_ms": int, "run_ms": int, "load_w": int, "soc_bp": int,
#          "ssl_context_cafile": DER path (optional: mqtt "ssl" becomes an SSLContext verifying with it)}
# stdout: one JSON line per second {"t": ms, "link": state, "late_max_ms", "work_max_us", ...}
# and a final line {"done": true, ...}. The boot message (if any) goes to stderr.
import sys
import json
import time

import bess_core
import bess_config
import telemetry
import mqtt_link
import command_mac
import settings
import reporting

p = json.load(open(sys.argv[1]))
cfg, ctr, msg = settings.load_state(p['state_path'], bess_config.validate(p['base_cfg']))
if msg:
    sys.stderr.write(msg + '\n')
ctl = bess_core.Controller(cfg)
stats = telemetry.Stats()
key = command_mac.parse_key(p['hmac_key']) if p.get('hmac_key') else None
handler = reporting.CommandHandler(ctl, p['state_path'], key, ctr, stats,
                                     base=bess_config.validate(p['base_cfg']))
mc = dict(p['mqtt'])
mc['on_command'] = handler
if p.get('ssl_context_cafile'):         # TLS through an SSLContext built here (a DER CA file)
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=p['ssl_context_cafile'])
    ctx.verify_mode = ssl.CERT_REQUIRED
    mc['ssl'] = ctx
link = mqtt_link.MqttLink(mc)
link.notice = msg
link.set_config(ctl.cfg)
handler.on_change = link.set_config


class FakeDevice:
    def failed_calls(self):
        return 0


class FakeRuntime:
    def __init__(self, ctl):
        self.ctl = ctl
        self.meter = FakeDevice()
        self.battery = FakeDevice()
        self.write_errors = 0
        self.last_cycle_us = 0
        self.capture = None
        self.clock = None               # no wall clock (cycle.Runtime has one when a schedule section is set)


rt = FakeRuntime(ctl)
rep = reporting.Reporter(rt, link, stats)
rep.start()

period = p.get('period_ms', 100)
run_ms = p.get('run_ms', 60000)
load_w = p.get('load_w', 12000)
i = ctl.inp
i.meter_valid = 1
i.bat_valid = 1
i.phases_valid = 1
i.soc_bp = p.get('soc_bp', 5000)
i.dt_ms = period

t0 = time.ticks_ms()
sched = t0
cycles = 0
# worst figures, overall and per link state while it was not up (outage)
late_max = 0
work_max = 0
late_max_down = 0
work_max_down = 0
down_cycles = 0
report_at = time.ticks_add(t0, 1000)
while True:
    now = time.ticks_ms()
    late = time.ticks_diff(now, sched)
    c0 = time.ticks_us()
    # --- the control cycle ---
    i.bat_w = ctl.out.setpoint_w            # the fake battery reached last cycle's setpoint
    i.gcp_w = load_w - i.bat_w
    ph = i.gcp_w // 3
    i.gcp_l1_w = ph
    i.gcp_l2_w = ph
    i.gcp_l3_w = i.gcp_w - 2 * ph
    ctl.step()
    rep.capture(now)
    was = link.state
    rep.after_cycle(now)
    work = time.ticks_diff(time.ticks_us(), c0)
    rt.last_cycle_us = work
    cycles += 1
    if late > late_max:
        late_max = late
    if work > work_max:
        work_max = work
    if was != mqtt_link.UP or link.state != mqtt_link.UP:
        down_cycles += 1
        if late > late_max_down:
            late_max_down = late
        if work > work_max_down:
            work_max_down = work
    el = time.ticks_diff(now, t0)
    if time.ticks_diff(now, report_at) >= 0 or el >= run_ms:
        report_at = time.ticks_add(report_at, 1000)
        print(json.dumps({'t': el, 'link': mqtt_link.STATE_NAMES[link.state], 'cycles': cycles,
                          'late_max_ms': late_max, 'work_max_us': work_max,
                          'late_max_down_ms': late_max_down, 'work_max_down_us': work_max_down,
                          'down_cycles': down_cycles, 'connects': link.connects, 'lost': link.lost,
                          'published': link.published, 'ring': len(link.ring),
                          'dropped': link.ring.dropped, 'seq': link.ring.seq,
                          'accepted': handler.accepted, 'rejected': handler.rejected,
                          'cmds': link.cmds, 'acks_skipped': link.acks_skipped,
                          'err': link.last_error}))
        if el >= run_ms:
            break
    # --- wait for the next period (the grid is fixed: lateness does not accumulate) ---
    # a late cycle is measured as such (no resynchronisation below 10 periods behind)
    sched = time.ticks_add(sched, period)
    d = time.ticks_diff(sched, time.ticks_ms())
    if d > 0:
        time.sleep_ms(d)
    elif d < -10 * period:
        sched = time.ticks_ms()
link.close()
print(json.dumps({'done': True}))
