"""The fleet's web console (issue 12, item 5) in a real headless Chromium (Debian's, driven by
Selenium): the login is required, the fleet table of 10 000 devices is drawn a screenful at a
time and can be scrolled, sorted and filtered, the aggregates show the event shortfall, the push
status shows the counts against the deadline, a site page plots its telemetry with the
schedule, and the override form forces a reserve that device twins ack. Screenshots are kept in
out/ (ignored)."""
import json
import os
import time

import pytest

from mqtt_fixtures import wait_for, free_port, procs, ROOT  # noqa: F401
from fleet_fixtures import Stopper, provisioned_broker, twins, write_plan

import console  # noqa: E402  (tools/fleet)
import store  # noqa: E402

OUT = os.path.join(ROOT, 'out')
N = 10000


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    o = webdriver.ChromeOptions()
    o.binary_location = '/usr/bin/chromium'
    for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--window-size=1280,1000',
              '--disable-dev-shm-usage'):
        o.add_argument(a)
    d = webdriver.Chrome(options=o, service=Service('/usr/bin/chromedriver'))
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def _fill(tmp_path, sec_ids):
    """A store with N devices (the first ones are the twins), telemetry for one site, a plan
    report with a shortfall and a push report."""
    st = store.open_store('sqlite:///%s' % (tmp_path / 'fleet.db'))
    now = int(time.time())
    batch = []
    for k in range(N):
        dev = sec_ids[k] if k < len(sec_ids) else 'x%05d' % k
        batch.append(('telemetry', dev, json.dumps({'v': 2, 'seq': 1, 'ts': now - k % 600, 'soc_bp': 2000 + k % 7000,
                                                    'state': 1, 'reserve_bp': 4000, 'gcp_w': 5000,
                                                    'sch': {'id': dev, 'version': 7}}).encode(), now))
    batch.append(('status', 'x09999', b'offline', now))
    batch.append(('schedule', 'x00042', b'{"status": "rejected", "version": 6, "reason": "unauthorized: bad mac"}', now))
    # what a compromised device may say about itself is shown as text, never as markup
    batch.append(('telemetry', 'x00043', json.dumps({'v': 2, 'seq': 2, 'ts': now, 'soc_bp': 5000,
                                                    'alarms': ['<img src=x onerror="window.pwned=1">']}).encode(), now))
    for k in range(200):                                  # a day of one site, 5 min apart
        batch.append(('telemetry', sec_ids[0], json.dumps({'v': 2, 'seq': 10 + k, 'ts': now - 3600 * 17 + 300 * k,
                                                           'gcp_w': 8000 + 50 * (k % 40), 'bat_w': 1000 - 20 * (k % 50),
                                                           'soc_bp': 5000 + 10 * (k % 100), 'state': 1}).encode(), now))
    st.add(batch)
    st.close()
    return now


def test_the_console_in_chromium(tmp_path, procs, browser):
    ids = ['c1', 'c2']
    br, sec, fleet = provisioned_broker(tmp_path, ids)
    procs.append(br)
    t = twins(br.port, os.path.join(fleet, 'secrets.json'), ids)
    procs.append(Stopper(t))
    plan = write_plan(tmp_path / 'plan', ids, 7)
    with open(os.path.join(plan, 'plan.json'), 'w') as f:
        json.dump({'aggregates': {'committed_wh': 20000000, 'deliverable_wh': 18500000, 'shortfall_wh': 1500000,
                                  'short_sites': ['x00001', 'x00002'], 'shortfall': True}}, f)
    now = _fill(tmp_path, ids)
    rep = tmp_path / 'push.json'
    rep.write_text(json.dumps({'devices': N, 'deadline': now + 3600, 'deadline_utc': '2026-07-14T05:00:00+00:00',
                               'counts': {'active': 9990, 'rejected': 3, 'pending': 2, 'offline': 5}}))
    port = free_port()
    srv = console.serve(console.create_app('sqlite:///%s' % (tmp_path / 'fleet.db'), fleet, plan, str(rep),
                                           mqtt_port=br.port, port=port), port)
    procs.append(Stopper(srv))
    url = 'http://127.0.0.1:%d' % port
    os.makedirs(OUT, exist_ok=True)
    from selenium.webdriver.common.by import By
    b = browser
    # no session: the login form, for the page and for the API
    b.get(url + '/')
    assert '/login' in b.current_url
    b.get(url + '/api/fleet')
    assert 'login required' in b.page_source
    b.get(url + '/login')
    b.find_element(By.ID, 'user').send_keys('operator')
    b.find_element(By.ID, 'password').send_keys('wrong')
    b.find_element(By.ID, 'go').click()
    assert wait_for(lambda: b.find_elements(By.ID, 'err'), 5)
    b.get(url + '/login')
    b.find_element(By.ID, 'user').send_keys(sec['console']['user'])
    b.find_element(By.ID, 'password').send_keys(sec['console']['password'])
    b.find_element(By.ID, 'go').click()
    assert wait_for(lambda: '%d of %d devices' % (N, N) in b.find_element(By.ID, 'count').text, 20), \
        b.find_element(By.ID, 'count').text
    # a screenful of rows in the page, not 10 000
    rows = b.find_elements(By.CSS_SELECTOR, '#rows tr')
    assert 10 < len(rows) < 80, len(rows)
    assert 'SHORTFALL 1500.0 kWh at 2 sites' in b.find_element(By.ID, 'agg').text
    assert 'active 9990, fallback 0, rejected 3, pending 2, offline 5 of 10000' in b.find_element(By.ID, 'push').text
    b.save_screenshot(os.path.join(OUT, 'console-fleet.png'))
    # scroll to the end: the last device is drawn
    b.execute_script("const t=document.getElementById('tbl'); t.scrollTop=t.scrollHeight;")
    assert wait_for(lambda: 'x09999' in b.find_element(By.ID, 'rows').text, 5)
    # sort by online: the offline device first; filter
    b.find_element(By.CSS_SELECTOR, 'th[data-k="online"]').click()
    b.execute_script("document.getElementById('tbl').scrollTop=0;")
    assert wait_for(lambda: b.find_element(By.CSS_SELECTOR, '#rows tr:nth-child(2) td').text == 'x09999', 5)
    q = b.find_element(By.ID, 'q')
    q.send_keys('rejected')
    assert wait_for(lambda: b.find_element(By.ID, 'count').text.startswith('1 of'), 5)
    assert 'x00042' in b.find_element(By.ID, 'rows').text
    q.clear()
    q.send_keys('x00043')
    assert wait_for(lambda: 'onerror' in b.find_element(By.ID, 'rows').text, 5)     # shown as text
    assert not b.execute_script('return window.pwned') and not b.find_elements(By.CSS_SELECTOR, '#rows img')
    # the override form: force the reserve at c1 and c2; the twins ack the new version
    q.clear()
    q.send_keys(' ')
    q.clear()
    f = b.find_element(By.ID, 'ovr')
    f.find_element(By.NAME, 'sites').clear()
    f.find_element(By.NAME, 'sites').send_keys('c1,c2')
    f.find_element(By.CSS_SELECTOR, 'option[value="force_reserve"]').click()
    f.find_element(By.NAME, 'value').send_keys('6000')
    f.find_element(By.CSS_SELECTOR, 'button').click()
    assert wait_for(lambda: 'force reserve: active 2' in b.find_element(By.ID, 'ovr_state').text, 60), \
        b.find_element(By.ID, 'ovr_state').text
    s1 = json.load(open(os.path.join(plan, 'schedules', 'c1.json')))
    assert s1['intervals'][0]['reserve_soc_bp'] == 6000 and s1['version'] > 7
    # a site page: its telemetry plotted with the schedule's reserve
    b.get(url + '/site/c1')
    assert wait_for(lambda: len(b.find_elements(By.CSS_SELECTOR, '.uplot canvas')) == 2, 10)
    assert '201 records' in b.find_element(By.ID, 'info').text
    assert 'import limit 20000 W' in b.find_element(By.ID, 'info').text
    b.save_screenshot(os.path.join(OUT, 'console-site.png'))
    # an override without the page's token is refused
    r = b.execute_script("""const f=new FormData();f.append('kind','dispatch');f.append('value','1000');
        return fetch('/api/override',{method:'POST',body:f}).then(r=>r.status);""")
    assert r == 403
    # logged out: back to the login, and the old cookie is worth nothing
    cookie = {c['name']: c['value'] for c in b.get_cookies()}
    b.get(url + '/logout')
    b.get(url + '/')
    assert '/login' in b.current_url
    import urllib.request
    import urllib.error
    req = urllib.request.Request(url + '/api/fleet', headers={'Cookie': '; '.join('%s=%s' % kv for kv in cookie.items())})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 401
    # another host name (DNS rebinding) is refused
    req = urllib.request.Request(url + '/login', headers={'Host': 'evil.example:%d' % port})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 400

