#!/usr/bin/env python3
"""Watch BESS controllers over MQTT: live table, CSV log, PNG plot of the session.

  python tools/mqtt_consumer.py --host 127.0.0.1 --port 1883 [--device ID ...] \
      [--csv session.csv] [--plot session.png] [--duration 600] [--no-table]
  python tools/mqtt_consumer.py --from-csv session.csv --plot session.png     (plot only)

Subscribes to <prefix>/<id>/telemetry, /status, /config (retained: the config in force, for the
phase limit) and /cmd/ack for each --device (default: every device, the + wildcard). Records
repeated by store-and-forward after a reconnect (same device, seq and ts_ms) are counted once.
Telemetry schema: docs/telemetry.md. Needs paho-mqtt 2.x; the plot needs matplotlib.

The plot, per device: the three phases against the phase limit, the total GCP against the import
limit, battery setpoint and actual, SoC, and a strip of the controller's state and binding (the
rule that decided the setpoint), with the spans where a limit was binding shaded in its panel:
e.g. the battery discharging while the total is under its limit because one phase is at its own.
"""
import argparse
import csv
import datetime
import json
import os
import sys
import threading
import time

CSV_FIELDS = ('device', 'seq', 'ts_ms', 'time_utc', 'gcp_w', 'gcp_l1_w', 'gcp_l2_w', 'gcp_l3_w',
              'import_limit_w', 'bat_sp_w', 'bat_w', 'soc_bp', 'objective', 'state', 'binding', 'flags',
              'avail_chg_w', 'avail_dis_w', 'dispatch_left_ms', 'override_left_ms', 'err_meter',
              'err_battery', 'err_cmd_rejected', 'err_mqtt_lost', 'err_ring_dropped', 'heap_free',
              'cycle_max_us', 'phase_limit_w')
# phase_limit_w is not in the telemetry record: it is the retained <prefix>/<id>/config's, when known


def flatten(dev, rec):
    row = {'device': dev}
    for k in CSV_FIELDS:
        if k in rec:
            row[k] = rec[k]
    for k, v in (rec.get('err') or {}).items():
        row['err_' + k] = v
    row['time_utc'] = datetime.datetime.fromtimestamp(rec['ts_ms'] / 1000, datetime.timezone.utc).isoformat(
        timespec='milliseconds')
    return row


class Session:
    """Collected telemetry per device (in arrival order, repeats removed), status and acks."""

    def __init__(self, csv_path=None):
        self.lock = threading.Lock()
        self.records = {}           # device -> list of records
        self.seen = {}              # device -> set of seq
        self.status = {}
        self.last_rx = {}
        self.acks = {}
        self.config = {}            # device -> the retained config in force (dict)
        self.repeats = 0
        self.csv_file = None
        self.csv = None
        if csv_path:
            self.csv_file = open(csv_path, 'w', newline='')
            self.csv = csv.DictWriter(self.csv_file, CSV_FIELDS)
            self.csv.writeheader()

    def on_message(self, topic, payload):
        parts = topic.split('/')
        if len(parts) < 3:
            return
        dev, kind = parts[-2], parts[-1]
        if parts[-2] == 'cmd' and len(parts) >= 4:
            dev, kind = parts[-3], 'ack'
        with self.lock:
            self.last_rx[dev] = time.time()
            if kind == 'status':
                self.status[dev] = payload.decode(errors='replace')
            elif kind == 'ack':
                try:
                    self.acks[dev] = json.loads(payload)
                except ValueError:
                    pass
            elif kind == 'config':
                try:
                    cfg = json.loads(payload)
                except ValueError:
                    return
                if isinstance(cfg, dict):
                    self.config[dev] = cfg
            elif kind == 'telemetry':
                try:
                    rec = json.loads(payload)
                except ValueError:
                    return
                if not isinstance(rec, dict) or 'seq' not in rec or 'ts_ms' not in rec:
                    return
                # seq restarts at 0 after a reboot; a store-and-forward repeat keeps seq and ts_ms
                key = (rec['seq'], rec['ts_ms'])
                s = self.seen.setdefault(dev, set())
                if key in s:
                    self.repeats += 1
                    return
                s.add(key)
                self.records.setdefault(dev, []).append(rec)
                if self.csv:
                    row = flatten(dev, rec)
                    pl = self.config.get(dev, {}).get('phase_limit_w')
                    if pl is not None:
                        row['phase_limit_w'] = pl
                    self.csv.writerow(row)
                    self.csv_file.flush()

    def table(self):
        cols = ('device', 'status', 'age s', 'state', 'obj', 'GCP W', 'limit W', 'setp W', 'bat W',
                'SoC %', 'binding', 'chg/dis W', 'errors', 'seq')
        rows = []
        now = time.time()
        with self.lock:
            devs = sorted(set(self.records) | set(self.status))
            for d in devs:
                r = (self.records.get(d) or [{}])[-1]
                e = r.get('err') or {}
                rows.append((d, self.status.get(d, '?'), '%.1f' % (now - self.last_rx.get(d, now)),
                             r.get('state', ''), r.get('objective', ''), r.get('gcp_w', ''),
                             r.get('import_limit_w', ''), r.get('bat_sp_w', ''), r.get('bat_w', ''),
                             '%.2f' % (r['soc_bp'] / 100) if 'soc_bp' in r else '', r.get('binding', ''),
                             '%s/%s' % (r.get('avail_chg_w', ''), r.get('avail_dis_w', '')),
                             sum(e.values()) if e else '', r.get('seq', '')))
        w = [max(len(str(x)) for x in col) for col in zip(cols, *rows)] if rows else [len(c) for c in cols]
        line = lambda r: '  '.join(str(x).rjust(n) for x, n in zip(r, w))   # noqa: E731
        return '\n'.join([line(cols)] + [line(r) for r in rows])

    def close(self):
        if self.csv_file:
            self.csv_file.close()


def read_csv(path):
    """CSV log -> {device: [records]} with the fields plot() needs (older logs lack some: left out)."""
    out = {}
    with open(path, newline='') as f:
        for row in csv.DictReader(f):
            rec = {}
            for k in ('seq', 'ts_ms', 'gcp_w', 'import_limit_w', 'bat_sp_w', 'bat_w', 'soc_bp'):
                rec[k] = int(row[k])
            for k in ('gcp_l1_w', 'gcp_l2_w', 'gcp_l3_w', 'phase_limit_w'):
                if row.get(k) not in (None, ''):
                    rec[k] = int(row[k])
            for k in ('state', 'binding'):
                if row.get(k):
                    rec[k] = row[k]
            out.setdefault(row['device'], []).append(rec)
    return out


# strip colours: the limits that make the battery act stand out; the rest from a fixed palette
COLOURS = {'phase_limit': '#d62728', 'import_limit': '#ff7f0e', 'ev_headroom': '#1f77b4', 'none': '#d9d9d9',
           'idle': '#d9d9d9', 'deadband': '#bcbcbc', 'discharging': '#ff9896', 'charging': '#aec7e8',
           'failsafe': '#000000', 'tapering': '#c49c94', 'ramp': '#9467bd', 'feed_in': '#2ca02c'}
PALETTE = ('#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf', '#9edae5', '#c5b0d5', '#f7b6d2',
           '#dbdb8d', '#98df8a', '#ffbb78', '#393b79', '#637939', '#8c6d31', '#843c39', '#7b4173')
# binding -> the panel (0 phases, 1 total) whose limit it is: those spans are shaded there
SHADE = {'phase_limit': 0, 'import_limit': 1, 'ev_headroom': 1}


def colour(name):
    if name in COLOURS:
        return COLOURS[name]
    return PALETTE[sum(name.encode()) % len(PALETTE)]


def spans(x, values):
    """Runs of equal values: [(x0, x1, value)], each run lasting until the next one starts; the
    last lasts one typical record interval."""
    out = []
    if not x:
        return out
    step = sorted(b - a for a, b in zip(x, x[1:]))[(len(x) - 1) // 2] if len(x) > 1 else 1 / 86400
    i = 0
    for j in range(1, len(x) + 1):
        if j == len(x) or values[j] != values[i]:
            out.append((x[i], x[j] if j < len(x) else x[-1] + step, values[i]))
            i = j
    return out


def figure(records, title='BESS session', configs=None):
    """matplotlib Figure of a session: per device (one column each) the phases vs the phase limit,
    the total GCP vs the import limit, battery setpoint / actual, SoC, and a state / binding strip.
    records: {device: [telemetry records]}; configs: {device: retained config} (phase_limit_w),
    else a record's own phase_limit_w (from a CSV log) is used."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.dates as mdates
    configs = configs or {}
    devs = sorted(d for d in records if records[d])
    if not devs:
        raise SystemExit('plot: no telemetry records')
    fig, axes = plt.subplots(5, len(devs), figsize=(8 * len(devs), 12), sharex='col', squeeze=False,
                             gridspec_kw={'height_ratios': [3, 3, 3, 2, 1.2]})
    for j, d in enumerate(devs):
        rs = sorted(records[d], key=lambda r: r['ts_ms'])
        x = [mdates.date2num(datetime.datetime.fromtimestamp(r['ts_ms'] / 1000)) for r in rs]
        kw = lambda key: [None if r.get(key) is None else r[key] / 1000 for r in rs]   # noqa: E731
        cfg_pl = configs.get(d, {}).get('phase_limit_w')
        pl = [r.get('phase_limit_w', cfg_pl) for r in rs] if cfg_pl is None else [cfg_pl] * len(rs)
        binding = [r.get('binding', '') for r in rs]
        # 0: phases vs the phase limit
        a = axes[0][j]
        for k, c in (('gcp_l1_w', '#1f77b4'), ('gcp_l2_w', '#2ca02c'), ('gcp_l3_w', '#9467bd')):
            y = kw(k)
            if any(v is not None for v in y):
                a.plot(x, [float('nan') if v is None else v for v in y], color=c, label=k[4:6].upper())
        if any(v for v in pl):
            a.step(x, [v / 1000 if v else float('nan') for v in pl], where='post', color='#d62728', ls='--',
                   label='phase limit')
        a.set_ylabel('phase kW (+ import)')
        a.set_title('%s: %s' % (title, d))
        # 1: total vs the import limit
        a = axes[1][j]
        a.plot(x, kw('gcp_w'), color='k', label='GCP total (+ import)')
        a.step(x, kw('import_limit_w'), where='post', color='#ff7f0e', ls='--', label='import limit')
        a.set_ylabel('GCP kW')
        # shade where a limit decided the setpoint, in that limit's panel
        for x0, x1, b in spans(x, binding):
            if b in SHADE:
                a0 = axes[SHADE[b]][j]
                a0.axvspan(x0, x1, color=colour(b), alpha=0.15, lw=0,
                           label='binding: %s' % b if ('binding: %s' % b) not in
                           a0.get_legend_handles_labels()[1] else None)
        for a in axes[0][j], axes[1][j]:
            a.legend(loc='best', fontsize=8, ncol=2)
        # 2: battery
        a = axes[2][j]
        a.step(x, kw('bat_sp_w'), where='post', label='setpoint')
        a.plot(x, kw('bat_w'), label='actual')
        a.axhline(0, color='k', lw=0.5)
        a.set_ylabel('battery kW (+ discharge)')
        a.legend(loc='upper left', fontsize=8)
        # 3: SoC
        a = axes[3][j]
        a.plot(x, [r['soc_bp'] / 100 for r in rs], color='g')
        a.set_ylabel('SoC %')
        a.set_ylim(0, 100)
        # 4: state and binding strip, each run labelled where it is wide enough
        a = axes[4][j]
        width = (x[-1] - x[0]) or 1 / 86400
        seen = set()
        for lane, key in ((1, 'state'), (0, 'binding')):
            for x0, x1, v in spans(x, [r.get(key, '') for r in rs]):
                if not v:
                    continue
                a.broken_barh([(x0, x1 - x0)], (lane - 0.4, 0.8), facecolors=colour(v), edgecolor='white',
                              lw=0.5, label=None if v in seen else v)
                seen.add(v)
                if (x1 - x0) > (len(v) + 2) * 0.009 * width:     # room for the name (7 pt on ~7 in)
                    a.text((x0 + x1) / 2, lane, v, ha='center', va='center', fontsize=7, clip_on=True)
        a.set_ylim(-0.6, 1.6)
        a.set_yticks([0, 1])
        a.set_yticklabels(['binding', 'state'])
        a.set_xlabel('local time')
        a.xaxis_date()
        a.xaxis.set_major_formatter(mdates.DateFormatter('%H:%M:%S'))
        if seen:
            a.legend(loc='upper left', bbox_to_anchor=(0, -0.65), ncol=6, fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def plot(records, path, title='BESS session', configs=None):
    """Write the figure() of a session as a PNG."""
    fig = figure(records, title, configs)
    import matplotlib.pyplot as plt
    fig.savefig(path, dpi=90, bbox_inches='tight')
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--port', type=int, default=1883)
    ap.add_argument('--user')
    ap.add_argument('--password')
    ap.add_argument('--tls', action='store_true', help='TLS with the system CA store')
    ap.add_argument('--cafile')
    ap.add_argument('--prefix', default='bess')
    ap.add_argument('--device', action='append', help='device id (repeatable); default: all (+)')
    ap.add_argument('--csv', help='write every record to this CSV file')
    ap.add_argument('--plot', help='write a PNG plot of the session at the end')
    ap.add_argument('--duration', type=float, default=0, help='seconds; 0 = until Ctrl-C')
    ap.add_argument('--no-table', action='store_true')
    ap.add_argument('--refresh', type=float, default=1.0)
    ap.add_argument('--from-csv', help='plot a logged session instead of subscribing')
    a = ap.parse_args(argv)
    if a.from_csv:
        if not a.plot:
            ap.error('--from-csv needs --plot')
        plot(read_csv(a.from_csv), a.plot)
        print('plot: %s' % a.plot)
        return 0

    import paho.mqtt.client as mqtt
    sess = Session(a.csv)
    devs = a.device or ['+']
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if a.user:
        c.username_pw_set(a.user, a.password)
    if a.tls or a.cafile:
        c.tls_set(ca_certs=a.cafile)

    def on_connect(cl, u, flags, rc, props=None):
        if rc.is_failure:
            sys.stderr.write('mqtt_consumer: connect refused: %s\n' % rc)
            return
        for d in devs:
            for leaf in ('telemetry', 'status', 'config', 'cmd/ack'):
                cl.subscribe('%s/%s/%s' % (a.prefix, d, leaf), qos=1)

    c.on_connect = on_connect
    c.on_message = lambda cl, u, m: sess.on_message(m.topic, bytes(m.payload))
    try:
        c.connect(a.host, a.port, keepalive=30)
    except OSError as e:
        sys.stderr.write('mqtt_consumer: cannot connect to %s:%d (%s): is the broker running there? '
                         "(make sim's own broker stops with the run)\n" % (a.host, a.port, e.strerror or e))
        sess.close()
        return 2
    c.loop_start()
    t_end = time.time() + a.duration if a.duration else None
    tty = sys.stdout.isatty()
    try:
        while t_end is None or time.time() < t_end:
            time.sleep(a.refresh if t_end is None else max(0.05, min(a.refresh, t_end - time.time())))
            if not a.no_table:
                if tty:
                    sys.stdout.write('\x1b[H\x1b[2J')
                sys.stdout.write(sess.table() + '\n' + ('' if tty else '\n'))
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        c.loop_stop()
        c.disconnect()
        sess.close()
    n = sum(len(v) for v in sess.records.values())
    print('mqtt_consumer: %d records from %d device(s), %d repeats dropped' % (n, len(sess.records), sess.repeats))
    if a.plot:
        if n:
            plot(sess.records, a.plot, configs=sess.config)
            print('plot: %s' % a.plot)
        else:
            print('plot: no records, nothing written')
    return 0


if __name__ == '__main__':
    sys.exit(main())
