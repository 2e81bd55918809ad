# Register decoding and encoding for device profiles: pure integer arithmetic, no floats.
#
# Runs unchanged on CPython and MicroPython; imports nothing but micropython.const. A point is
# described by ints (type code, word order, power-of-ten exponent, sign, limit, SunSpec
# "not implemented" check) so the per-cycle decode path creates no list, tuple or float:
# on the device it reads from a preallocated array('H') a runtime filled from one Modbus read.
#
# value_in_our_unit = sign * device_value * 10**exp10        (exp10 = profile scale [+ SunSpec SF])
#
# Rounding: half away from zero (2.5 -> 3, -2.5 -> -3), applied once, after the scale.
# Out of range: a decoded value with |v| > limit is *flagged*, i.e. decode() returns None, like
# NaN, infinity and "not implemented". We do not saturate: a saturated reading looks plausible and
# the control core would act on it; None makes the runtime mark the device invalid, which the
# core turns into its fail-safe (0 W). LIMIT_W (10 MW) is the core's own supported range.
#
# Integer sizes: power points (int16/int32 raw, or float32 with exp10 <= 0 and |v| < 2**24) stay
# within MicroPython small ints on 32-bit ports. Energy counters (float32 kWh -> Wh, or uint32
# values >= 2**30) may create a temporary long int there: correct, but it allocates.

try:
    from micropython import const
except ImportError:         # CPython
    def const(x):
        return x

U16 = const(0)
I16 = const(1)
U32 = const(2)
I32 = const(3)
F32 = const(4)
TYPE_NAMES = ('uint16', 'int16', 'uint32', 'int32', 'float32')
TYPE_WORDS = (1, 1, 2, 2, 2)

LIMIT_W = const(10000000)       # +-10 MW, = bess_config.POWER_MAX_W
LIMIT_BIG = const(2000000000)   # largest limit a profile may set (energy counters in Wh)
EXP_MAX = const(16)             # |exp10| accepted by decode/encode (profile scale + SunSpec SF)
SF_MIN = const(-10)             # SunSpec scale factors outside -10..10 are treated as invalid
SF_MAX = const(10)
SF_NA = const(0x8000)

# 10**k, k = 0..16. Built once at import (entries >= 2**30 are long ints on 32-bit ports).
_POW10 = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000,
          10000000000, 100000000000, 1000000000000, 10000000000000, 100000000000000,
          1000000000000000, 10000000000000000)


def type_code(name):
    """'int32' -> I32; ValueError for an unknown name."""
    for i in range(len(TYPE_NAMES)):
        if TYPE_NAMES[i] == name:
            return i
    raise ValueError('unknown register type %r' % (name,))


def div_round(n, d):
    """n / d rounded half away from zero; d > 0."""
    if n >= 0:
        return (n + (d >> 1)) // d
    return -((-n + (d >> 1)) // d)


def scale_int(v, exp10):
    """v * 10**exp10, rounded half away from zero when exp10 < 0."""
    if exp10 == 0:
        return v
    if exp10 > 0:
        return v * _POW10[exp10]
    return div_round(v, _POW10[-exp10])


def raw(regs, off, typ, lsw):
    """Raw integer of one register value at regs[off] (two registers for 32-bit types).

    lsw: 1 = least significant word first (Carlo Gavazzi, Sungrow), 0 = most significant first.
    Float32 is not handled here (see f32_scaled).
    """
    if typ == U16:
        return regs[off]
    if typ == I16:
        v = regs[off]
        return v - 65536 if v & 0x8000 else v
    if lsw:
        lo = regs[off]
        hi = regs[off + 1]
    else:
        hi = regs[off]
        lo = regs[off + 1]
    if typ == I32 and hi & 0x8000:
        return ((hi - 65536) << 16) + lo
    return (hi << 16) | lo


def is_na(regs, off, typ, lsw):
    """True if the raw value is SunSpec's 'not implemented' marker for its type."""
    if typ == U16:
        return regs[off] == 0xFFFF
    if typ == I16:
        return regs[off] == 0x8000
    if lsw:
        lo = regs[off]
        hi = regs[off + 1]
    else:
        hi = regs[off]
        lo = regs[off + 1]
    if typ == U32:
        return hi == 0xFFFF and lo == 0xFFFF
    if typ == I32:
        return hi == 0x8000 and lo == 0
    return hi & 0x7F80 == 0x7F80 and (hi & 0x7F or lo) != 0     # float32 NaN


def f32_scaled(hi, lo, exp10):
    """IEEE-754 binary32 given as two 16-bit halves, times 10**exp10, rounded half away from 0.

    Integer arithmetic only. Returns None for infinities and NaNs (and for magnitudes far beyond
    any sane reading); +-0 and subnormals decode exactly (to 0 after rounding unless scaled up).
    """
    e = (hi >> 7) & 0xFF
    m = ((hi & 0x7F) << 16) | lo
    if e == 0xFF:
        return None                 # inf / nan
    if e == 0:
        if m == 0:
            return 0                # +0 and -0
        e2 = -149                   # subnormal: m * 2**-149
    else:
        m |= 0x800000
        e2 = e - 150                # normal: (2**23 + frac) * 2**(e - 150)
    if exp10 > EXP_MAX or exp10 < -EXP_MAX:
        return None
    if e2 > 80:
        return None                 # >= 2**103 * 10**-16: beyond every limit; avoids huge ints
    # |value| < 2**(24 + e2) * 10**exp10 < 2**(24 + e2 + 4 * max(exp10, 0)): below 0.25 it rounds to
    # 0, so say so before 2**-e2 (a heap int on 32-bit boards) is formed (meter noise, 0.004 W)
    if 24 + e2 + (4 * exp10 if exp10 > 0 else 0) <= -2:
        return 0
    n = m
    d = 1
    if exp10 >= 0:
        n = m * _POW10[exp10]
    else:
        d = _POW10[-exp10]
    if e2 >= 0:
        n <<= e2
    else:
        d <<= -e2
    q = (n + (d >> 1)) // d
    if hi & 0x8000:
        return -q
    return q


def decode(regs, off, typ, lsw, exp10, sign, limit, na):
    """Decode one point from regs (list or array of uint16) at offset off.

    Returns sign * value * 10**exp10 as an int in our unit, or None if the value is invalid:
    NaN/inf, SunSpec 'not implemented' (when na), or |result| > limit. No allocation for
    small-int results.
    """
    if exp10 > EXP_MAX or exp10 < -EXP_MAX:     # profile scale + device SF out of range: bad data
        return None
    if na and is_na(regs, off, typ, lsw):
        return None
    if typ == F32:
        if lsw:
            v = f32_scaled(regs[off + 1], regs[off], exp10)
        else:
            v = f32_scaled(regs[off], regs[off + 1], exp10)
        if v is None:
            return None
    else:
        v = scale_int(raw(regs, off, typ, lsw), exp10)
    if sign < 0:
        v = -v
    if v > limit or v < -limit:
        return None
    return v


def decode_sf(regs, off):
    """SunSpec scale factor (int16) at regs[off]; None if 0x8000 (not implemented) or outside -10..10."""
    v = regs[off]
    if v == SF_NA:
        return None
    if v & 0x8000:
        v -= 65536
    if v < SF_MIN or v > SF_MAX:
        return None
    return v


# --- encoding (simulator, setpoint writes) ------------------------------------------------------

_TYPE_MIN = (0, -32768, 0, -2147483648)
_TYPE_MAX = (65535, 32767, 4294967295, 2147483647)


def _bitlen(n):
    k = 0
    while n >= 65536:
        n >>= 16
        k += 16
    while n:
        n >>= 1
        k += 1
    return k


def f32_bits(n, d, neg):
    """Nearest binary32 (ties to even) to n/d (n >= 0, d > 0) as (hi, lo); neg sets the sign bit.

    Raises ValueError if the magnitude overflows binary32.
    """
    sb = 0x8000 if neg else 0
    if n == 0:
        return sb, 0
    # choose s so that q = n * 2**s / d lies in [2**23, 2**24)
    s = 24 - (_bitlen(n) - _bitlen(d))
    while True:
        if s >= 0:
            num = n << s
            den = d
        else:
            num = n
            den = d << -s
        q = num // den
        if q >= 0x1000000:
            s -= 1
        elif q < 0x800000:
            s += 1
        else:
            break
    ebits = 150 - s
    if ebits <= 0:
        # subnormal: fixed s = 149, q = round-half-even(n * 2**149 / d) <= 2**23
        num = n << 149
        den = d
        q = num // den
        r = num - q * den
        if 2 * r > den or (2 * r == den and q & 1):
            q += 1
        return sb | (q >> 16), q & 0xFFFF      # q == 2**23 gives the smallest normal, exactly
    r = num - q * den
    if 2 * r > den or (2 * r == den and q & 1):
        q += 1
        if q == 0x1000000:
            q = 0x800000
            ebits += 1
    if ebits >= 255:
        raise ValueError('value overflows float32')
    return sb | (ebits << 7) | ((q >> 16) & 0x7F), q & 0xFFFF


def encode(value, typ, lsw, exp10, sign, buf, off):
    """Inverse of decode: write the device representation of value (our unit) into buf[off:].

    device_value = sign * value / 10**exp10 (integer types: rounded half away from zero;
    float32: nearest binary32). Raises ValueError if it does not fit the register type.
    """
    v = value if sign > 0 else -value
    if exp10 > EXP_MAX or exp10 < -EXP_MAX:
        raise ValueError('exponent out of range')
    if typ == F32:
        a = -v if v < 0 else v
        if exp10 <= 0:
            hi, lo = f32_bits(a * _POW10[-exp10], 1, v < 0)
        else:
            hi, lo = f32_bits(a, _POW10[exp10], v < 0)
    else:
        r = scale_int(v, -exp10)
        if r < _TYPE_MIN[typ] or r > _TYPE_MAX[typ]:
            raise ValueError('%d does not fit %s' % (r, TYPE_NAMES[typ]))
        if typ <= I16:
            buf[off] = r & 0xFFFF
            return
        r &= 0xFFFFFFFF
        hi = r >> 16
        lo = r & 0xFFFF
    if lsw:
        buf[off] = lo
        buf[off + 1] = hi
    else:
        buf[off] = hi
        buf[off + 1] = lo


def encode_sf(sf, buf, off):
    """Write a SunSpec scale factor (int16)."""
    if sf < SF_MIN or sf > SF_MAX:
        raise ValueError('scale factor out of range')
    buf[off] = sf & 0xFFFF


def fits(value, typ, exp10, sign):
    """True if encode() would accept value (integer types; float32: always within range here)."""
    if typ == F32:
        return True
    v = value if sign > 0 else -value
    r = scale_int(v, -exp10)
    return _TYPE_MIN[typ] <= r <= _TYPE_MAX[typ]
