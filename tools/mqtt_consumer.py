#!/usr/bin/env python3
"""Watch BESS controllers over MQTT: live table, CSV log, PNG plot of the session.

  python tools/mqtt_consumer.py --host 127.0.0.1 --port 1883 [--device ID ...] \
      [--csv session.csv] [--plot session.png] [--duration 600] [--no-table]
  python tools/mqtt_consumer.py --from-csv session.csv --plot session.png     (plot only)

Subscribes to <prefix>/<id>/telemetry, /status and /cmd/ack for each --device (default: every
device, the + wildcard). Records repeated by store-and-forward after a reconnect (same device
and seq) are counted once. Telemetry schema: docs/telemetry.md. Needs paho-mqtt 2.x; the plot
needs matplotlib.
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
              'cycle_max_us')


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
            elif kind == 'telemetry':
                try:
                    rec = json.loads(payload)
                except ValueError:
                    return
                if not isinstance(rec, dict) or 'seq' not in rec or 'ts_ms' not in rec:
                    return
                s = self.seen.setdefault(dev, set())
                if rec['seq'] in s:
                    self.repeats += 1
                    return
                s.add(rec['seq'])
                self.records.setdefault(dev, []).append(rec)
                if self.csv:
                    self.csv.writerow(flatten(dev, rec))
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
    """CSV log -> {device: [records]} with the numeric fields plot() needs."""
    out = {}
    with open(path, newline='') as f:
        for row in csv.DictReader(f):
            rec = {}
            for k in ('seq', 'ts_ms', 'gcp_w', 'import_limit_w', 'bat_sp_w', 'bat_w', 'soc_bp'):
                rec[k] = int(row[k])
            out.setdefault(row['device'], []).append(rec)
    return out


def plot(records, path, title='BESS session'):
    """PNG: per device, GCP vs import limit, battery setpoint and actual, SoC."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.dates as mdates
    devs = sorted(d for d in records if records[d])
    if not devs:
        raise SystemExit('plot: no telemetry records')
    fig, axes = plt.subplots(3, len(devs), figsize=(7 * len(devs), 8), sharex='col', squeeze=False)
    for j, d in enumerate(devs):
        rs = sorted(records[d], key=lambda r: r['ts_ms'])
        t = [datetime.datetime.fromtimestamp(r['ts_ms'] / 1000) for r in rs]
        a = axes[0][j]
        a.plot(t, [r['gcp_w'] / 1000 for r in rs], label='GCP (+ import)')
        a.step(t, [r['import_limit_w'] / 1000 for r in rs], where='post', color='r', ls='--', label='import limit')
        a.set_ylabel('kW')
        a.set_title('%s: %s' % (title, d))
        a.legend(loc='best', fontsize=8)
        a = axes[1][j]
        a.step(t, [r['bat_sp_w'] / 1000 for r in rs], where='post', label='setpoint')
        a.plot(t, [r['bat_w'] / 1000 for r in rs], label='actual')
        a.axhline(0, color='k', lw=0.5)
        a.set_ylabel('battery kW (+ discharge)')
        a.legend(loc='best', fontsize=8)
        a = axes[2][j]
        a.plot(t, [r['soc_bp'] / 100 for r in rs], color='g')
        a.set_ylabel('SoC %')
        a.set_ylim(0, 100)
        a.set_xlabel('local time')
        a.xaxis.set_major_formatter(mdates.DateFormatter('%H:%M:%S'))
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
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
            for leaf in ('telemetry', 'status', 'cmd/ack'):
                cl.subscribe('%s/%s/%s' % (a.prefix, d, leaf), qos=1)

    c.on_connect = on_connect
    c.on_message = lambda cl, u, m: sess.on_message(m.topic, bytes(m.payload))
    c.connect(a.host, a.port, keepalive=30)
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
            plot(sess.records, a.plot)
            print('plot: %s' % a.plot)
        else:
            print('plot: no records, nothing written')
    return 0


if __name__ == '__main__':
    sys.exit(main())
