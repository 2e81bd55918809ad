"""MQTT link over TLS (docs/telemetry.md, TLS): a throwaway PKI made here with the openssl CLI
(EC P-256: a CA, a broker certificate for 127.0.0.1 signed by it, and a rogue CA with a broker
certificate of the same names), mosquitto with a TLS-only listener on 127.0.0.1, and the firmware
link on the MicroPython unix port (host_tests/mp/mqtt_device.py, mbedTLS). Figures go to
out/mqtt_figures.json under "tls".
"""
import json
import shutil
import statistics
import subprocess

import pytest

from figures import record
from mqtt_fixtures import Broker, Collector, Device, wait_for, micropython_exe, procs  # noqa: F401 (fixture)

DEV_TLS = {'ssl': True, 'ha_discovery': False}


def _openssl(*args, cwd):
    subprocess.run(['openssl'] + list(args), cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope='module')
def pki(tmp_path_factory):
    assert shutil.which('openssl'), 'openssl CLI missing: apt-get install openssl (.ci/run does)'
    d = tmp_path_factory.mktemp('pki')
    (d / 'san.cnf').write_text('subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n'
                               'keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n')
    ec = ('-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes')
    for ca in ('ca', 'rogue_ca'):
        _openssl('req', '-x509', *ec, '-keyout', ca + '.key', '-out', ca + '.pem', '-days', '2',
                 '-subj', '/CN=test %s' % ca, cwd=d)
        _openssl('x509', '-in', ca + '.pem', '-outform', 'DER', '-out', ca + '.der', cwd=d)
    for srv, ca in (('srv', 'ca'), ('rogue_srv', 'rogue_ca')):
        _openssl('req', *ec, '-keyout', srv + '.key', '-out', srv + '.csr', '-subj', '/CN=127.0.0.1', cwd=d)
        _openssl('x509', '-req', '-in', srv + '.csr', '-CA', ca + '.pem', '-CAkey', ca + '.key',
                 '-CAcreateserial', '-out', srv + '.pem', '-days', '2', '-extfile', 'san.cnf', cwd=d)
    p = {k: str(d / k) for k in ('ca.pem', 'ca.der', 'rogue_ca.pem', 'rogue_ca.der')}
    p['good'] = (p['ca.pem'], str(d / 'srv.pem'), str(d / 'srv.key'))
    p['rogue'] = (p['rogue_ca.pem'], str(d / 'rogue_srv.pem'), str(d / 'rogue_srv.key'))
    return p



def _cmd(col, dev, name, body, timeout=3.0):
    n = len(col.get('bess/%s/cmd/ack' % dev))
    col.publish('bess/%s/cmd/%s' % (dev, name), json.dumps(body, separators=(',', ':')))
    assert wait_for(lambda: len(col.get('bess/%s/cmd/ack' % dev)) > n, timeout), 'no ack'
    return json.loads(col.get('bess/%s/cmd/ack' % dev)[n][1])


BLOCKING_HS = '''
import socket, ssl, time, sys
ca = open(sys.argv[1], 'rb').read()
addr = socket.getaddrinfo('127.0.0.1', int(sys.argv[2]))[0][-1]
for i in range(int(sys.argv[3])):
    s = socket.socket()
    s.connect(addr)
    s.settimeout(1)
    t = time.ticks_us()
    ss = ssl.wrap_socket(s, cadata=ca, cert_reqs=ssl.CERT_REQUIRED, server_hostname='127.0.0.1')
    print(time.ticks_diff(time.ticks_us(), t))
    ss.close()
'''


def test_tls_telemetry_commands_reconnect_and_handshake_cost(tmp_path, pki, procs):
    br = Broker(tmp_path, tls=pki['good']).start()
    procs.append(br)
    col = Collector(br.port, ('bess/#',), tls_ca=pki['ca.pem'])     # paho: TLS, verifies the broker
    procs.append(col)
    # ssl=True + ssl_params (a PEM CA file: the link converts it to DER) ...
    dev = Device(tmp_path, 'devS', br.port, mqtt_extra=dict(DEV_TLS, ssl_params={'cafile': pki['ca.pem']}))
    # ... and ssl=<an SSLContext> (CERT_REQUIRED, DER CA) built by the harness
    ctxdev = Device(tmp_path, 'devK', br.port, mqtt_extra=dict(DEV_TLS))
    ctxdev.params['ssl_context_cafile'] = pki['ca.der']
    procs.append(dev.start())
    procs.append(ctxdev.start())
    assert wait_for(lambda: len(col.telemetry('devS')) >= 5 and len(col.telemetry('devK')) >= 5, 6), \
        (dev.last(), ctxdev.last())
    for d in ('devS', 'devK'):
        seqs = [r['seq'] for r in col.telemetry(d)]
        assert seqs == sorted(seqs) and seqs[0] == 0 and all(r['v'] == 2 for r in col.telemetry(d))
        assert col.get('bess/%s/status' % d)[0][1] == b'online'
    # a command round-trips over TLS, and takes effect
    a = _cmd(col, 'devS', 'import_limit', {'value': 9000, 'id': 'tls1'})
    assert a['ok'] is True and a['id'] == 'tls1', a
    eff = a['eff_seq']
    assert wait_for(lambda: any(r['seq'] == eff for r in col.telemetry('devS')), 3)
    assert {r['seq']: r for r in col.telemetry('devS')}[eff]['import_limit_w'] == 9000
    # the broker restarts: a fresh TLS handshake, the ring is forwarded
    br.stop()
    assert wait_for(lambda: dev.last().get('link') != 'up', 3)
    br.start()
    assert wait_for(lambda: dev.last().get('connects') == 2 and dev.last().get('link') == 'up'
                    and ctxdev.last().get('connects') == 2, 6), (dev.last(), ctxdev.last())
    n = len(col.telemetry('devS'))
    assert wait_for(lambda: len(col.telemetry('devS')) > n + 3, 5)
    dev.kill()
    ctxdev.kill()
    s = dev.stats[-1]
    k = ctxdev.stats[-1]
    assert s['lost'] == 1 and s['dropped'] == 0, s
    # cost: the handshake runs across polls; the worst cycle while not connected (TCP connect,
    # TLS steps, CONNACK) is the poll that receives the server's flight and does the crypto
    worst_us = max(s['work_max_down_us'], k['work_max_down_us'])
    worst_late = max(s['late_max_down_ms'], k['late_max_down_ms'])
    assert worst_us < 100000 and worst_late < 50, (s, k)
    # for comparison: the same handshake done blocking (ssl.wrap_socket with do_handshake=True)
    r = subprocess.run([micropython_exe(), '-c', BLOCKING_HS, pki['ca.der'], str(br.port), '5'],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    blocking = [int(x) / 1000 for x in r.stdout.split()]
    record('mqtt', tls={
        'pki': 'EC P-256 (prime256v1), CA -> server cert CN/SAN IP 127.0.0.1; TLS 1.2 '
               'ECDHE-ECDSA-AES256-GCM-SHA384 (mbedTLS 3.6 on the unix port)',
        'period_ms': 100, 'handshakes_per_device': 2,
        'worst_cycle_work_while_connecting_us': worst_us,
        'worst_cycle_lateness_while_connecting_ms': worst_late,
        'cycles_not_up_per_device': [s['down_cycles'], k['down_cycles']],
        'blocking_handshake_ms_median': round(statistics.median(blocking), 1),
        'blocking_handshake_ms_max': round(max(blocking), 1)})


def test_tls_rejects_wrong_ca_and_wrong_name(tmp_path, pki, procs):
    good = Broker(tmp_path, tls=pki['good'], name='good').start()
    rogue = Broker(tmp_path, tls=pki['rogue'], name='rogue').start()
    procs += [good, rogue]
    col = Collector(rogue.port, ('bess/#',), tls_ca=pki['rogue_ca.pem'])
    procs.append(col)
    devs = {
        # verifying with our CA: the rogue broker's certificate (another CA, same names) fails
        'devR': Device(tmp_path, 'devR', rogue.port, mqtt_extra=dict(DEV_TLS, ssl_params={'cafile': pki['ca.der']})),
        'devC': Device(tmp_path, 'devC', rogue.port, mqtt_extra=dict(DEV_TLS)),    # SSLContext, our CA
        # our CA, right broker, but another expected name: the name check fails
        'devN': Device(tmp_path, 'devN', good.port, mqtt_extra=dict(
            DEV_TLS, ssl_params={'cafile': pki['ca.pem'], 'server_hostname': 'broker.example'})),
        # no CA given: encrypted but nothing verified -- it talks to the rogue broker
        'devU': Device(tmp_path, 'devU', rogue.port, mqtt_extra=dict(DEV_TLS)),
    }
    devs['devC'].params['ssl_context_cafile'] = pki['ca.der']
    for d in devs.values():
        procs.append(d.start())
    assert wait_for(lambda: all(d.last().get('t', 0) >= 2000 for d in devs.values()), 6)
    st = {n: d.last() for n, d in devs.items()}
    for n in ('devR', 'devC', 'devN'):
        assert st[n]['connects'] == 0 and st[n]['link'] != 'up', st[n]
        assert st[n]['cycles'] >= 19, st[n]                     # the control loop kept running
        assert st[n]['late_max_ms'] < 50, st[n]
    assert 'not correctly signed' in st['devR']['err'], st['devR']
    assert 'not correctly signed' in st['devC']['err'], st['devC']
    assert 'Common Name' in st['devN']['err'], st['devN']
    assert col.get('bess/devR/status') == [] and col.get('bess/devC/status') == []
    assert st['devU']['connects'] == 1 and col.telemetry('devU'), st['devU']
