"""`make fleet` (issue 12, item 7): tools/fleet/demo.py runs the heat-advisory day at accelerated
time. A short run at 240x from 03:00 (the 07:00 deadline a minute of real time away): the push is acked by the 07:00 deadline (fleet time), the twins and
the real firmware stamp their telemetry with the fleet's clock (the firmware through NTP), the
firmware follows the pushed schedule, and the progress lines report it hour by hour."""
import json
import os
import sqlite3
import subprocess
import sys
import time

from broker import free_port
from mqtt_fixtures import ROOT


def test_the_demo_day_runs_at_accelerated_time(tmp_path):
    out = tmp_path / 'demo'
    speed, seconds = 240, 50
    t_real = time.time()
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'fleet', 'demo.py'), '--twins', '3', '--firmware', '1',
                        '--speed', str(speed), '--start', '03:00', '--seconds', str(seconds), '--port', str(free_port()),
                        '--out', str(out)], capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    lines = p.stdout.splitlines()
    assert any('fleet time runs x240 from 03:00 local' in ln for ln in lines), lines
    rep = json.load(open(out / 'push.json'))
    assert rep['counts']['active'] == rep['devices'] == 4, rep
    assert time.strftime('%H:%M', time.gmtime(rep['deadline'] + 7200)) == '07:00'      # in fleet time
    hours = [ln for ln in lines if ln.startswith('fleet ') and ' local: ' in ln]
    assert len(hours) >= 2, lines                       # at least 2 fleet hours in 50 s at 240x
    assert 'fw1 SoC' in hours[-1] and 'schedule v%d' % rep['rows'][0]['version'] in hours[-1], hours
    db = sqlite3.connect(str(out / 'fleet.db'))
    day_start = json.load(open(out / 'plan' / 'schedules' / 'fw1.json'))['created']    # local midnight
    for dev in ('fw1', 'tw000'):
        ts = [r[0] for r in db.execute('SELECT ts FROM telemetry WHERE dev = ? ORDER BY ts', (dev,))]
        assert ts, dev
        # fleet time: from 03:00 local on, and far ahead of the real time that passed
        assert ts[0] >= day_start + 3 * 3600 - 60, (dev, ts[0] - day_start)
        assert ts[-1] - ts[0] > 0.4 * speed * (seconds - 20), (dev, ts[-1] - ts[0])
    vers = [r[0] for r in db.execute("SELECT sch_version FROM telemetry WHERE dev = 'fw1' ORDER BY ts")]
    assert vers[-1] == rep['rows'][0]['version'], vers[-5:]      # the firmware runs the pushed schedule
    assert time.time() - t_real < 200


def test_a_speed_that_leaves_no_time_to_push_is_refused(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'fleet', 'demo.py'), '--speed', '3600',
                        '--out', str(tmp_path / 'x')], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and 'lower --speed or move --start earlier' in p.stderr, p.stderr
    assert not (tmp_path / 'x').exists()                # nothing started, nothing written
