#!/usr/bin/env python3
"""Provision a fleet (issue 12, item 1): from the sites file, every controller's MQTT credentials,
HMAC key and site config, and the broker's password and ACL files.

    python tools/fleet/provision.py --sites sites.csv --out fleet/ --mqtt-server 10.0.0.2 \\
        [--mqtt-port 1883] [--ntp-host 10.0.0.2] [--service-user fleet]

Writes into --out (all or nothing: a new folder is filled, then renamed over the old one):
  passwd            mosquitto password file (PBKDF2-SHA512, mosquitto 2.0's "$7$" format): one
                    user per device (username = device id = client id, docs/telemetry.md) and the
                    fleet service's users (fleet, fleet-2 ..: one per connection it holds at once)
  bess.acl          docs/mosquitto-example.acl plus a block per service user (reads and writes
                    bess/#); devices get their rights from its patterns (%u = their username)
  secrets.json      per device: MQTT password and HMAC key (hex); the service users' passwords
                    ("service": the first, "services": all). Mode 0600.
  console_users     the web console's logins (user:hash, the same format; tools/fleet/console.py)
  sites/<id>.json   the device's site config (tools/site.template.json filled and validated by
                    tools/site_config.py, as `make deploy SITE=` takes it)
Re-running keeps every existing device's password and key (a re-provisioned device keeps working);
new sites get new ones, sites no longer in the file are dropped. Bad input changes nothing and
says every problem (exit 2).
"""
import argparse
import base64
import hashlib
import json
import os
import secrets
import shutil
import sys
import tempfile

from fleetpath import ROOT  # noqa: E402 (tools/ and lib/ on sys.path)

import inventory  # noqa: E402
import site_config  # noqa: E402

ACL_BASE = os.path.join(ROOT, 'docs', 'mosquitto-example.acl')
PW_ITERATIONS = 101             # mosquitto_passwd's default for "$7$" (PBKDF2-SHA512)
KEY_BYTES = 32


class ProvisionError(ValueError):
    pass


def hash_password(password, salt=None, iterations=PW_ITERATIONS):
    """A mosquitto 2.0 password-file hash: $7$<iterations>$<salt b64>$<PBKDF2-SHA512 b64>."""
    salt = salt if salt is not None else os.urandom(12)
    dk = hashlib.pbkdf2_hmac('sha512', password.encode(), salt, iterations, 64)
    return '$7$%d$%s$%s' % (iterations, base64.b64encode(salt).decode(), base64.b64encode(dk).decode())


def service_users(service_user, n):
    """The service's usernames: one per connection it holds at once (the push, each ingest
    instance, the console): with use_username_as_clientid a username is one client."""
    return [service_user] + ['%s-%d' % (service_user, k) for k in range(2, n + 1)]


def verify_password(password, h):
    """True if password matches a hash_password() hash."""
    try:
        _, seven, it, salt, dk = h.split('$')
        if seven != '7':
            return False
        got = hashlib.pbkdf2_hmac('sha512', password.encode(), base64.b64decode(salt), int(it), 64)
        return secrets.compare_digest(got, base64.b64decode(dk))
    except (ValueError, TypeError):
        return False


def _secrets(old, sites, users):
    """Per device {password, hmac_key} and per service user a password: the old ones kept."""
    devs = {}
    for s in sites:
        o = old.get('devices', {}).get(s['id'])
        devs[s['id']] = o if isinstance(o, dict) and o.get('password') and o.get('hmac_key') else {
            'password': secrets.token_urlsafe(18), 'hmac_key': secrets.token_hex(KEY_BYTES)}
    was = {x.get('user'): x for x in old.get('services', []) if isinstance(x, dict) and x.get('password')}
    svcs = [was.get(u) or {'user': u, 'password': secrets.token_urlsafe(18)} for u in users]
    con = old.get('console')
    if not (isinstance(con, dict) and con.get('user') and con.get('password')):
        con = {'user': 'operator', 'password': secrets.token_urlsafe(12)}
    return {'devices': devs, 'service': svcs[0], 'services': svcs, 'console': con}


def site_values(site, cred, mqtt_server, mqtt_port, ntp_host=None):
    """tools/site.template.json values for one device."""
    v = {'BOARD': site['board'], 'IMPORT_LIMIT_W': site['import_limit_w'], 'PHASE_LIMIT_W': site['phase_limit_w'],
         'MAX_CHARGE_W': site['power_w'], 'MAX_DISCHARGE_W': site['power_w'],
         'MIN_SOC_BP': site['min_soc_bp'], 'MAX_SOC_BP': site['max_soc_bp'],
         'MQTT_SERVER': mqtt_server, 'MQTT_PORT': mqtt_port, 'DEVICE_ID': site['id'], 'MQTT_USER': site['id'],
         'MQTT_PASSWORD': cred['password'], 'HMAC_KEY': cred['hmac_key']}
    if ntp_host:
        v['NTP_HOST'] = ntp_host
    return v


def provision(sites_path, out, mqtt_server, mqtt_port=1883, ntp_host=None, service_user='fleet', n_service=6):
    """Write the fleet's files into out (see the module's doc); returns the secrets dict."""
    try:
        sites = inventory.load(sites_path)
    except OSError as e:
        raise ProvisionError('%s: %s' % (sites_path, e))
    users = service_users(service_user, n_service)
    clash = sorted(set(users) & set(s['id'] for s in sites))
    if clash or not inventory.NAME_RE.match(service_user):
        raise ProvisionError('service user %r: its names (%s) must be names no device has%s'
                             % (service_user, ', '.join(users), ': ' + ', '.join(clash) if clash else ''))
    old = {}
    try:
        with open(os.path.join(out, 'secrets.json')) as f:
            old = json.load(f)
    except OSError:
        pass
    except ValueError as e:
        raise ProvisionError('%s/secrets.json is not valid JSON (%s): fix or remove it; nothing changed' % (out, e))
    if not (isinstance(old, dict) and isinstance(old.get('devices', {}), dict)
            and isinstance(old.get('services', []), list)):
        raise ProvisionError('%s/secrets.json is not a provisioning secrets file: fix or remove it; nothing changed'
                             % out)
    sec = _secrets(old, sites, users)
    configs, errs = {}, []
    for s in sites:
        vals = site_values(s, sec['devices'][s['id']], mqtt_server, mqtt_port, ntp_host)
        try:
            configs[s['id']], _ = site_config.make(s['board'], vals)
        except site_config.SiteError as e:
            errs.append('site %s: %s' % (s['id'], str(e).replace('\n', '\n  ')))
    if errs:
        raise ProvisionError('\n'.join(errs))
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.provision-', dir=parent)
    try:
        os.makedirs(os.path.join(tmp, 'sites'))
        with open(os.path.join(tmp, 'passwd'), 'w') as f:
            for u in sec['services']:
                f.write('%s:%s\n' % (u['user'], hash_password(u['password'])))
            for s in sites:
                f.write('%s:%s\n' % (s['id'], hash_password(sec['devices'][s['id']]['password'])))
        with open(ACL_BASE) as f:
            acl = f.read()
        with open(os.path.join(tmp, 'bess.acl'), 'w') as f:
            f.write('# The fleet service (tools/fleet), one username per connection it holds: schedules,\n'
                    '# commands, overrides; reads telemetry and status\n')
            for u in sec['services']:
                f.write('user %s\ntopic readwrite bess/#\n\n' % u['user'])
            f.write(acl)
        with open(os.path.join(tmp, 'console_users'), 'w') as f:      # the web console's logins
            f.write('%s:%s\n' % (sec['console']['user'], hash_password(sec['console']['password'])))
        fd = os.open(os.path.join(tmp, 'secrets.json'), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'w') as f:
            json.dump(sec, f, indent=1, sort_keys=True)
        for i, c in configs.items():            # passwords and keys: the owner only
            fd = os.open(os.path.join(tmp, 'sites', i + '.json'), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, 'w') as f:
                json.dump(c, f, indent=1, sort_keys=True)
        if os.path.isdir(out):
            gone = tempfile.mkdtemp(prefix='.provision-old-', dir=parent)     # never a name of the user's
            os.rmdir(gone)
            os.rename(out, gone)
            try:
                os.rename(tmp, out)
            except OSError:
                os.rename(gone, out)        # the old folder back, as it was
                raise
            shutil.rmtree(gone)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sites', required=True, help='the sites file (CSV; docs/fleet.md)')
    ap.add_argument('--out', required=True, help='folder to write (replaced as a whole)')
    ap.add_argument('--mqtt-server', required=True, help='broker address the devices connect to')
    ap.add_argument('--mqtt-port', type=int, default=1883)
    ap.add_argument('--ntp-host', help='NTP server for the devices\' wall clock (schedules need one)')
    ap.add_argument('--service-user', default='fleet', help='the fleet service\'s MQTT username')
    ap.add_argument('--service-users', type=int, default=6, help='how many (fleet, fleet-2, ...): one per '
                    'connection at once: push fleet, ingest fleet-2 (and fleet-3, fleet-4 for more instances), '
                    'override.py the one before last, the console the last')
    a = ap.parse_args(argv)
    try:
        sec = provision(a.sites, a.out, a.mqtt_server, a.mqtt_port, a.ntp_host, a.service_user, a.service_users)
    except (ProvisionError, inventory.InventoryError) as e:
        print('provision: nothing written:\n  ' + str(e).replace('\n', '\n  '), file=sys.stderr)
        return 2
    print('provision: %d devices in %s (passwd, bess.acl, secrets.json, sites/)' % (len(sec['devices']), a.out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
