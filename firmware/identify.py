# Device identification: the profile's identify registers must read exactly so before the
# device is trusted or written to. Loaded on demand by cycle.Poller until the device is confirmed
# (1) or refused for good (-1); 0: not decided yet, asked again after a backoff.
#
# Only a definitive answer refuses: registers that read but differ, or an exception response
# that says the registers do not exist (illegal function / address / value: another layout).
# Anything transient (no answer, bad CRC, garbled, busy, acknowledge) is retried with a backoff
# of 1, 2, 4 ... 32 cycles, and the log says which it was.
from rtu import OK, EXC, status_name

BACKOFF_MAX = 32


def check(p):
    """Check the profile's identify registers. A mismatch or an exception response (e.g.
    illegal address: another register layout) refuses the device for good. Allocates
    (messages): runs only until the device is confirmed."""
    if p.id_wait > 0:
        p.id_wait -= 1
        return 0
    for e in p.prof.identify:
        vals = e['values']
        st = p.bus.read(p.unit, e['fc'], e['addr'], len(vals), p._id_buf)
        if st != OK and not EXC + 1 <= st <= EXC + 3:
            p.id_tries += 1
            p.id_wait = p.id_backoff
            if p.id_tries == 1 or p.id_tries % 10 == 0:
                print('%s at unit %d: identify register %d not read (%s, %d tries): retried in %d cycles'
                      % (p.prof.name, p.unit, e['addr'], status_name(st), p.id_tries, p.id_backoff))
            p.id_backoff = p.id_backoff * 2 if p.id_backoff < BACKOFF_MAX else BACKOFF_MAX
            return 0
        bad = st != OK
        for k in range(len(vals)):
            if bad or p._id_buf[k] != vals[k]:
                p.ident = -1
                print('REFUSED %s at unit %d: register %d %s, the profile expects %r: wrong profile or '
                      'layout; it is neither trusted nor written to' % (
                          p.prof.name, p.unit, e['addr'] + k,
                          'answered status %d' % st if bad else 'reads %d' % p._id_buf[k], vals))
                return -1
    p.ident = 1
    print('%s at unit %d: layout confirmed (%d identify registers)' % (p.prof.name, p.unit,
                                                                     len(p.prof.identify)))
    return 1
