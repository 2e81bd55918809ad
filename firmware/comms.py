# The runtime's MQTT side: persisted settings, the command handler and the link, wired to a Runtime.
#
#   comms = Comms(site, config_path)          # before the Runtime: may replace site['control']
#   rt = Runtime(site, board, root)
#   comms.attach(rt)                          # builds the link on rt.ctl
#   rt.run(wdt, ..., on_cycle=comms.cycle)    # after every control cycle: telemetry + link.poll
#
# Everything here runs after ctl.step(), never inside it; link.poll() does bounded work and
# never waits for the broker (docs/telemetry.md). Without an "mqtt" section this does nothing.
import gc
import time

import telemetry
import commands
import cmd_handler
import mqtt_link
from bess_config import validate, ConfigError

# site["mqtt"] keys that are ours; every other key goes to MqttLink's config (mqtt_link.config)
_OWN = ('hmac_key', 'state_path')


def _dirname(path):
    i = path.rfind('/')
    return path[:i] if i > 0 else ('/' if i == 0 else '.')


class Comms:
    def __init__(self, site, config_path):
        self.mq = site.get('mqtt')
        self.link = None
        self.handler = None
        self.stats = telemetry.Stats()
        self.notice = None
        if not self.mq:
            return
        try:
            d = _dirname(config_path)
            # accepted commands persist beside the site config (on a board: /settings.json)
            self.state_path = self.mq.get('state_path') or (d.rstrip('/') + '/settings.json')
            self.base = validate(site['control'])
            cfg, self.ctr, self.notice = cmd_handler.load_state(self.state_path, site['control'])
        except ConfigError:
            raise                       # the control config itself is invalid: the safe state
        except Exception as e:          # an MQTT problem must never cost battery control
            self._disable(e)
            return
        if self.notice:
            print(self.notice)
        site['control'] = cfg           # saved settings win, unless made on another commissioned config

    def _disable(self, e):
        print('MQTT DISABLED (%s: %s): the controller runs without telemetry and commands; '
              'fix the "mqtt" section of the site config' % (type(e).__name__, e))
        self.mq = None
        self.link = None
        self.handler = None

    def attach(self, rt):
        self.rt = rt
        if not self.mq:
            return
        try:
            self._attach(rt)
        except Exception as e:
            self._disable(e)

    def _attach(self, rt):
        key = self.mq.get('hmac_key')
        key = commands.parse_key(key) if key else None
        self.handler = cmd_handler.CommandHandler(rt.ctl, self.state_path, key, self.ctr, self.stats,
                                                  base=self.base)
        lc = {}
        for k in self.mq:
            if k not in _OWN:
                lc[k] = self.mq[k]
        lc['on_command'] = self.handler
        self.link = mqtt_link.MqttLink(lc)
        self.link.notice = self.notice
        self.link.set_config(rt.ctl.cfg)
        self.handler.on_change = self.link.set_config

    def cycle(self):
        """After each control cycle: counters, one telemetry capture when due, bounded link work."""
        link = self.link
        if link is None:
            return
        rt = self.rt
        st = self.stats
        st.meter_err = rt.meter.dev.c[10]       # failed calls (bus.C_FAILED)
        st.bat_err = rt.battery.dev.c[10] + rt.write_errors     # + setpoints not sent
        if rt.last_cycle_us > st.cycle_max_us:
            st.cycle_max_us = rt.last_cycle_us
        st.heap_free = gc.mem_free()
        now = time.ticks_ms()
        ns = time.time_ns()
        link.publish_telemetry(now, rt.ctl, st, ns // 1000000000, (ns // 1000000) % 1000)
        link.poll(now)
