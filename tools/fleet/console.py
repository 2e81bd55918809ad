#!/usr/bin/env python3
"""The operators' web console (issue 12, item 5), served by the fleet service on 127.0.0.1.

    python tools/fleet/console.py --db sqlite:///out/fleet.db --fleet fleet/ --plan out/plan \\
        [--report out/push.json] [--port 8080] [--mqtt-port 1883]

Login required (fleet/console_users, written by provision.py; its password is in secrets.json
"console"); every page and API call without a session goes to the login form (401 for the API).
A login lasts 8 h and ends at logout (a nonce kept here: a copied cookie is then worth nothing);
requests naming another host are refused (DNS rebinding); one override runs at a time.
Pages: the fleet table (online, SoC, state, reserve in force, schedule version acked and status,
last seen, alarms; sorted and filtered in the browser, drawn a screenful at a time so 10 000 rows
stay usable), the fleet's aggregates and the event shortfall (plan.json), the push status against
the deadline (the push report), a page per site (grid vs the import limit, battery, SoC, the
schedule's reserve and power over it) and the override form (tools/fleet/override.py: suspend
arbitrage / force the reserve as new schedule versions pushed with acks, or a signed dispatch).

Libraries: Flask (routing, signed session cookie) served by Werkzeug's threaded server (loopback
only); uPlot (npm, fetched into build/fleet-web by assets(), never committed) for the plots.
"""
import argparse
import json
import os
import secrets
import subprocess
import sys
import tarfile
import threading
import time

from fleetpath import ROOT  # noqa: E402 (tools/ and lib/ on sys.path)

from flask import Flask, abort, jsonify, redirect, request, session, Response  # noqa: E402

import override  # noqa: E402
import provision  # noqa: E402
import push  # noqa: E402
import store as store_mod  # noqa: E402

ASSETS = os.path.join(ROOT, 'build', 'fleet-web')
UPLOT = 'uplot@1.6.32'


def assets(dest=ASSETS):
    """uPlot from the npm registry into dest (once): uPlot.iife.min.js and uPlot.min.css."""
    js = os.path.join(dest, 'uPlot.iife.min.js')
    if os.path.exists(js):
        return dest
    os.makedirs(dest, exist_ok=True)
    r = subprocess.run(['npm', 'pack', UPLOT, '--silent', '--pack-destination', dest], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError('npm pack %s: %s' % (UPLOT, r.stderr.strip()))
    tgz = os.path.join(dest, r.stdout.strip().splitlines()[-1])
    with tarfile.open(tgz) as t:
        for name in ('package/dist/uPlot.iife.min.js', 'package/dist/uPlot.min.css'):
            with t.extractfile(name) as src, open(os.path.join(dest, os.path.basename(name)), 'wb') as out:
                out.write(src.read())
    os.remove(tgz)
    return dest


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>%(title)s</title>
<link rel="stylesheet" href="/static/uPlot.min.css">
<style>body{font:14px sans-serif;margin:12px}table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;
white-space:nowrap}th{cursor:pointer;background:#eee}#tbl{height:480px;overflow:auto;position:relative;border:1px solid #ccc}
.bad{color:#b00;font-weight:bold}.ok{color:#070}.box{border:1px solid #ccc;padding:6px;margin:6px 0}</style>
</head><body><div><a href="/">fleet</a> &middot; %(user)s &middot; <a href="/logout">log out</a></div>%(body)s
<script>const CSRF=%(csrf)s;</script>%(script)s</body></html>"""

FLEET_BODY = """<h2>Fleet</h2><div id="agg" class="box">loading…</div><div id="push" class="box"></div>
<div>filter <input id="q" size="20"> <span id="count"></span></div>
<div id="tbl"><table><thead><tr id="head"></tr></thead><tbody id="rows"></tbody></table></div>
<h3>Override</h3><form id="ovr" class="box">sites <input name="sites" value="all" size="30">
<select name="kind"><option value="suspend_arbitrage">suspend arbitrage</option>
<option value="force_reserve">force the reserve (bp)</option><option value="dispatch">dispatch (W, + discharge)</option></select>
value <input name="value" size="7"> for <input name="minutes" value="60" size="4"> min
<button type="submit">send</button> <span id="ovr_state"></span></form>"""

FLEET_JS = """<script>
const COLS=[['dev','device'],['online','online'],['soc_bp','SoC %'],['state','state'],['reserve_bp','reserve %'],
 ['sch_acked','schedule acked'],['sch_status','schedule status'],['last_seen','last seen'],['alarms','alarms']];
let all=[],view=[],key='dev',dir=1;const RH=22;
const esc=x=>String(x).replace(/[&<>"']/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));
function fmt(c,v){if(v===null||v===undefined)return'';if(c==='soc_bp'||c==='reserve_bp')return(v/100).toFixed(1);
 if(c==='online')return v?'yes':'NO';if(c==='last_seen')return new Date(v*1000).toISOString().slice(0,19)+'Z';return v;}
function sortf(){const q=document.getElementById('q').value;view=all.filter(r=>!q||r.dev.includes(q)||
 String(r.sch_status).includes(q));view.sort((a,b)=>{const x=a[key],y=b[key];return (x===y?0:(x===null?1:y===null?-1:x<y?-1:1))*dir;});
 document.getElementById('count').textContent=view.length+' of '+all.length+' devices';draw();}
function draw(){const t=document.getElementById('tbl');const first=Math.max(0,Math.floor(t.scrollTop/RH)-5);
 const n=Math.ceil(t.clientHeight/RH)+10;let h='<tr style="height:'+(first*RH)+'px"></tr>';
 for(const r of view.slice(first,first+n)){h+='<tr style="height:'+RH+'px">'+COLS.map(c=>'<td'+((c[0]==='online'&&!r.online)||
  (c[0]==='sch_status'&&r.sch_status==='rejected')?' class="bad"':'')+'>'+(c[0]==='dev'?'<a href="/site/'+encodeURIComponent(r.dev)+'">'+esc(r.dev)+'</a>':
  esc(fmt(c[0],r[c[0]])))+'</td>').join('')+'</tr>';}
 h+='<tr style="height:'+(Math.max(0,view.length-first-n)*RH)+'px"></tr>';document.getElementById('rows').innerHTML=h;}
async function load(){const d=await (await fetch('/api/fleet')).json();all=d.devices;
 const a=d.aggregates;document.getElementById('agg').innerHTML=a?('committed '+(a.committed_wh/1000).toFixed(1)+
  ' kWh, deliverable '+(a.deliverable_wh/1000).toFixed(1)+' kWh'+(a.shortfall?' <span class="bad" id="short">SHORTFALL '+
  (a.shortfall_wh/1000).toFixed(1)+' kWh at '+a.short_sites.length+' sites</span>':' <span class="ok">no shortfall</span>')):'no plan';
 const p=d.push;document.getElementById('push').innerHTML=p?('push: '+['active','fallback','rejected','pending','offline'].map(k=>k+' '+(p.counts[k]||0)).join(', ')+
  ' of '+esc(p.devices)+' &middot; deadline '+esc(p.deadline_utc||'')+' &middot; '+(p.late?'<span class="bad">LATE</span>':'<span class="ok">on time</span>')):'no push';
 document.getElementById('push').innerHTML+=' &middot; fleet time <span id="now">'+new Date(d.now*1000).toISOString().slice(0,16)+
  'Z</span>'+(d.speed!==1?' (&times;'+esc(d.speed)+')':'');
 sortf();}
document.getElementById('head').innerHTML=COLS.map(c=>'<th data-k="'+c[0]+'">'+c[1]+'</th>').join('');
document.getElementById('head').onclick=e=>{const k=e.target.dataset.k;if(!k)return;dir=(k===key)?-dir:1;key=k;sortf();};
document.getElementById('q').oninput=sortf;document.getElementById('tbl').onscroll=draw;
document.getElementById('ovr').onsubmit=async e=>{e.preventDefault();const f=new FormData(e.target);f.append('csrf',CSRF);
 const r=await (await fetch('/api/override',{method:'POST',body:f})).json();const s=document.getElementById('ovr_state');
 if(r.error){s.textContent='refused: '+r.error;return;}s.textContent='sent (job '+r.job+')…';
 for(;;){await new Promise(x=>setTimeout(x,500));const j=await (await fetch('/api/override/'+r.job)).json();
  if(j.done){s.textContent='job '+r.job+': '+j.result;break;}}};
load();setInterval(load,10000);
</script>"""

SITE_BODY = """<h2>Site %(dev)s</h2><div id="info" class="box">loading…</div><div id="p1"></div><div id="p2"></div>"""

SITE_JS = """<script src="/static/uPlot.iife.min.js"></script><script>
async function load(){const d=await (await fetch('/api/site/'+%(dev)s)).json();
 document.getElementById('info').textContent=d.t.length+' records; import limit '+(d.limit_w||'?')+' W; schedule version '+
  (d.schedule_version||'none');
 const lim=d.t.map(_=>d.limit_w);
 new uPlot({title:'grid and battery (W, battery + discharge)',width:900,height:260,axes:[{},{size:70}],series:[{},{label:'grid',stroke:'#c00'},
  {label:'import limit',stroke:'#000',dash:[5,5]},{label:'battery',stroke:'#06c'},{label:'planned power',stroke:'#0a0'}]},
  [d.t,d.gcp_w,lim,d.bat_w,d.plan_w],document.getElementById('p1'));
 new uPlot({title:'SoC and reserve (%%)',width:900,height:220,axes:[{},{size:70}],series:[{},{label:'SoC',stroke:'#06c'},
  {label:'schedule reserve',stroke:'#a0a',dash:[4,4]}]},[d.t,d.soc,d.reserve],document.getElementById('p2'));}
load();</script>"""


SESSION_S = 8 * 3600                # a login lasts a working day


def create_app(db, fleet_dir, plan_dir=None, report=None, mqtt_host='127.0.0.1', mqtt_port=1883, port=None,
               clock=time.time, speed=1.0):
    """clock: the fleet's time (unix s; the devices' clocks, the records' ts, the push report's
    deadline, an override's end); `make fleet` passes its accelerated day (tools/fleet/demo_clock.py),
    running speed times real time: a dispatch of N fleet minutes then lasts N / speed real minutes
    on the devices (their command timers count real time). Logins always age in real time."""
    app = Flask(__name__, static_folder=assets(), static_url_path='/static')
    app.secret_key = secrets.token_bytes(32)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE='Strict')
    st = store_mod.open_store(db)
    lock = threading.Lock()                 # one database connection for the app's threads
    users = {}
    with open(os.path.join(fleet_dir, 'console_users')) as f:
        for ln in f:
            if ':' in ln:
                u, h = ln.strip().split(':', 1)
                users[u] = h
    jobs = {}
    live = {}                               # session nonce -> login time: logout and age end it
    job_lock = threading.Lock()             # one override at a time (one service username)
    hosts = ('127.0.0.1:%d' % port, 'localhost:%d' % port) if port else None

    def page(title, body, script):
        return PAGE % {'title': title, 'body': body, 'script': script, 'user': session.get('user'),
                       'csrf': json.dumps(session.get('csrf'))}

    @app.before_request
    def need_login():
        if hosts and request.host not in hosts:     # a page of another site (DNS rebinding)
            return Response('unknown host', status=400)
        if request.endpoint in ('login', 'static'):
            return None
        t = live.get(session.get('nonce'))
        if t is not None and time.time() - t < SESSION_S and session.get('user') in users:
            return None
        live.pop(session.get('nonce'), None)
        if request.path.startswith('/api/'):
            return jsonify({'error': 'login required'}), 401
        return redirect('/login')

    @app.route('/login', methods=['GET', 'POST'])
    def login():
        msg = ''
        if request.method == 'POST':
            u, pw = request.form.get('user', ''), request.form.get('password', '')
            if u in users and provision.verify_password(pw, users[u]):
                live.pop(session.get('nonce'), None)            # a login again ends the one before
                for k in [k for k, t in live.items() if time.time() - t >= SESSION_S]:
                    live.pop(k, None)
                session.clear()
                session['user'] = u
                session['csrf'] = secrets.token_urlsafe(16)
                session['nonce'] = n = secrets.token_urlsafe(16)
                live[n] = time.time()
                return redirect('/')
            msg = '<p class="bad" id="err">wrong user or password</p>'
            time.sleep(0.5)                 # a little friction for guessing
        return Response('<!doctype html><html><body style="font:14px sans-serif"><h2>Fleet console</h2>%s'
                        '<form method="post">user <input name="user" id="user"> password <input type="password" '
                        'name="password" id="password"> <button id="go">log in</button></form></body></html>' % msg)

    @app.route('/logout')
    def logout():
        live.pop(session.get('nonce'), None)        # the cookie is worth nothing from now on
        session.clear()
        return redirect('/login')

    @app.route('/')
    def fleet():
        return page('Fleet', FLEET_BODY, FLEET_JS)

    def _json(path):
        if not path:
            return None
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    @app.route('/api/fleet')
    def api_fleet():
        with lock:
            devs = st.devices()
        plan = _json(plan_dir and os.path.join(plan_dir, 'plan.json'))
        rep = _json(report)
        if rep is not None:
            rep = {k: rep.get(k) for k in ('counts', 'devices', 'deadline', 'deadline_utc', 'all_acked_s')}
            rep['late'] = rep['counts'] is not None and rep['counts'].get('active') != rep['devices'] and \
                rep['deadline'] is not None and clock() > rep['deadline']
        return jsonify({'devices': devs, 'aggregates': plan and plan.get('aggregates'), 'push': rep,
                        'now': clock(), 'speed': speed})

    @app.route('/site/<dev>')
    def site(dev):
        if not all(c.isalnum() or c in '_-' for c in dev):
            abort(404)
        return page('Site ' + dev, SITE_BODY % {'dev': dev}, SITE_JS % {'dev': json.dumps(dev)})

    @app.route('/api/site/<dev>')
    def api_site(dev):
        try:
            hours = min(168, max(1, int(request.args.get('hours', 24))))
        except ValueError:
            return jsonify({'error': 'hours must be an integer'}), 400
        t1 = int(clock()) + 60
        with lock:
            rows = st.history(dev, t1 - hours * 3600, t1)
        sch = _json(plan_dir and os.path.join(plan_dir, 'schedules', dev + '.json')) or {}
        ivs = sch.get('intervals', [])

        def at(t, f):
            for iv in ivs:
                if iv['start'] <= t < iv['start'] + iv['duration_s']:
                    return iv.get(f)
            return None
        lim = None
        for iv in ivs:
            lim = iv.get('import_limit_w', lim)
        if lim is None:
            cfg = _json(os.path.join(fleet_dir, 'sites', dev + '.json')) or {}
            lim = (cfg.get('control') or {}).get('import_limit_w')
        t = [r[0] for r in rows]
        rsv = [at(x, 'reserve_soc_bp') for x in t]
        return jsonify({'t': t, 'gcp_w': [r[1] for r in rows], 'bat_w': [r[2] for r in rows],
                        'soc': [None if r[3] is None else r[3] / 100 for r in rows],
                        'reserve': [None if v is None else v / 100 for v in rsv],
                        'plan_w': [at(x, 'power_w') for x in t], 'limit_w': lim,
                        'schedule_version': sch.get('version')})

    @app.route('/api/override', methods=['POST'])
    def api_override():
        f = request.form
        if not session.get('csrf') or f.get('csrf') != session['csrf']:
            return jsonify({'error': 'bad csrf token'}), 403
        kind = f.get('kind')
        try:
            minutes = float(f.get('minutes', '60'))
            value = int(f['value']) if f.get('value') else None
        except ValueError:
            return jsonify({'error': 'minutes and value must be numbers'}), 400
        if kind not in override.KINDS or not 1 <= minutes <= 24 * 60 or (kind != 'suspend_arbitrage' and value is None):
            return jsonify({'error': 'kind, value and 1..1440 minutes needed'}), 400
        if kind == 'force_reserve' and not 0 <= value <= 10000:
            return jsonify({'error': 'a reserve is 0..10000 bp'}), 400
        if kind == 'dispatch' and not -10 ** 7 <= value <= 10 ** 7:
            return jsonify({'error': 'a dispatch is -10 MW..10 MW'}), 400
        with open(os.path.join(fleet_dir, 'secrets.json')) as fh:
            sec = json.load(fh)
        svc = sec['services'][-1]           # the console's own username (the CLI's is another)
        ids = sorted(sec['devices']) if f.get('sites', 'all').strip() == 'all' else \
            [x.strip() for x in f['sites'].split(',') if x.strip()]
        unknown = [i for i in ids if i not in sec['devices']]
        if unknown or not ids:
            return jsonify({'error': 'unknown sites: %s' % ', '.join(unknown[:10]) if unknown else 'no sites'}), 400
        if not job_lock.acquire(blocking=False):      # released by the job's thread when it ends
            return jsonify({'error': 'an override is still running; try again when it is done'}), 409
        n = len(jobs) + 1
        jobs[n] = {'done': False, 'result': None, 'by': session['user']}
        until = clock() + minutes * 60

        def run():
            try:
                if kind == 'dispatch':
                    acks = override.dispatch(sec, ids, value, max(1, int(minutes * 60 / speed)), mqtt_host,
                                             mqtt_port, time.time() + 30,
                                             user=svc['user'])
                    ok = sum(1 for a in acks.values() if a and a.get('ok'))
                    res = 'dispatch %d W: %d of %d acked ok' % (value, ok, len(ids))
                else:
                    override.schedules(plan_dir, ids, kind, until, value, fleet_dir=fleet_dir)
                    devs = push.load_plan(plan_dir, sec)
                    p = push.Push({i: devs[i] for i in ids}, mqtt_host, mqtt_port, svc['user'], svc['password'])
                    try:
                        rep = p.run(time.time() + 60)
                    finally:
                        p.close()
                    res = '%s: %s' % (kind.replace('_', ' '), ', '.join('%s %d' % kv for kv in rep['counts'].items()))
            except Exception as e:
                res = 'failed: %s' % e
            finally:
                job_lock.release()
            jobs[n].update(done=True, result=res)
        threading.Thread(target=run, daemon=True).start()
        return jsonify({'job': n})

    @app.route('/api/override/<int:n>')
    def api_job(n):
        if n not in jobs:
            abort(404)
        return jsonify(jobs[n])

    return app


def serve(app, port=8080):
    """Werkzeug's threaded server on 127.0.0.1 only (the console is not for the open network)."""
    from werkzeug.serving import make_server
    srv = make_server('127.0.0.1', port, app, threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    return srv


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--db', default='sqlite:///out/fleet.db')
    ap.add_argument('--fleet', required=True, help='provision.py --out folder (console_users, secrets.json)')
    ap.add_argument('--plan', help='plan_fleet.py --out folder')
    ap.add_argument('--report', help='push.py --report JSON')
    ap.add_argument('--port', type=int, default=8080)
    ap.add_argument('--mqtt-port', type=int, default=1883)
    a = ap.parse_args(argv)
    srv = serve(create_app(a.db, a.fleet, a.plan, a.report, mqtt_port=a.mqtt_port, port=a.port), a.port)
    print('console: http://127.0.0.1:%d/ (user and password: %s/secrets.json "console")' % (a.port, a.fleet),
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
