# lib/commands.py, lib/telemetry.py and firmware/persist.py on MicroPython (unix port).
# argv: tmpdir; tmpdir/hmac.txt holds key:msg:expected_hex lines computed by CPython's hmac
# (a file: this unix port build aborts on a command-line argument longer than ~255 bytes).
import sys
import json
import micropython
import commands
import command_mac
import telemetry
import persist
import bess_core

tmp = sys.argv[1]
res = {}
ok = 0
for t in open(tmp + '/hmac.txt').read().split():
    k, m, want = t.split(':')
    import binascii
    got = binascii.hexlify(command_mac.hmac_sha256(binascii.unhexlify(k), binascii.unhexlify(m))).decode()
    ok += got == want
res['hmac_ok'] = ok
# sign / verify / check
key = b'K' * 32
auth = commands.Auth(key, 0)
ctl = bess_core.Controller({'import_limit_w': 10000})
p = command_mac.sign(key, b'bess/d/cmd/import_limit', b'{"value":9000,"ctr":3}')
c = commands.check('import_limit', p, ctl.cfg, auth, b'bess/d/cmd/import_limit')
res['check'] = [c.kind, c.data['import_limit_w'], c.ctr]
try:
    commands.check('import_limit', p.replace(b'9000', b'9001'), ctl.cfg, auth, b'bess/d/cmd/import_limit')
    res['tamper'] = 'accepted'
except commands.Rejected as e:
    res['tamper'] = str(e)
# ring capture allocates nothing (values are small ints here)
ring = telemetry.Ring(4)
st = telemetry.Stats()
ctl.inp.meter_valid = ctl.inp.bat_valid = 1
ctl.inp.gcp_w = 12000
ctl.inp.soc_bp = 5000
ctl.inp.dt_ms = 100
ctl.step()


def fill(ring, ctl, st, ts):
    # locals only: a new global would grow the module dict (an allocation) under the lock
    micropython.heap_lock()
    try:
        for i in range(10):
            ring.capture(ctl, ts, i, st)
        r = 0
    except MemoryError:
        r = 1
    finally:
        micropython.heap_unlock()
    return 'ok' if r == 0 else 'allocated'


locked = fill(ring, ctl, st, 1000000)   # ts: a small int on 32-bit ports too
res['capture_heap_locked'] = locked
res['ring'] = [len(ring), ring.dropped, ring.value(0, telemetry.F_SEQ), json.loads(json.dumps(ring.record_dict(3)))['seq']]
# persist
path = tmp + '/st.json'
persist.save(path, {'a': 1})
persist.save(path, {'a': 2})
res['load'] = persist.load(path)[0]
with open(path, 'wb') as f:
    f.write(b'{"a": 3}\n0000\n')
res['corrupt'] = persist.load(path)[1]
res['missing'] = persist.load(tmp + '/nope.json')[1]
print(json.dumps(res))
