"""Reproducible input series at 1 s resolution for one simulated day (86400 values, integer W).

- PV: pvlib's bundled TMY3 file 723170TYA.CSV (Greensboro NC, 36.1 N, hourly, local standard time),
  transposed to the array plane (isotropic sky) and converted with PVWatts (DC temperature
  coefficient, flat losses, PVWatts inverter). Hourly means are placed at mid-hour and linearly
  interpolated to 1 s, so intra-hour cloud transients are NOT in the data (see docs/benchmarks.md).
- Building load: BDEW 2025 standard load profiles as shipped by demandlib (G25 commerce, H25
  households), 15-min values held constant within each quarter hour (the SLP definition), scaled
  to an annual energy; optionally a cooling load from the TMY air temperature (heat days).
- EV sessions: a seeded generator (random.Random(seed)); distributions are parameters of
  `ev_sessions` and are documented per scenario in scenarios.py.
"""
import os
import random

DAY_S = 86400
TMY_FILE = '723170TYA.CSV'


def _tmy_path():
    import pvlib
    p = os.path.join(os.path.dirname(pvlib.__file__), 'data', TMY_FILE)
    if not os.path.exists(p):
        raise FileNotFoundError('pvlib does not ship %s any more (looked in %s)' % (TMY_FILE, p))
    return p


_TMY = None


def tmy():
    """(data, metadata) of the bundled TMY3 file, coerced to 2025 so weekdays are well defined."""
    global _TMY
    if _TMY is None:
        from pvlib import iotools
        _TMY = iotools.read_tmy3(_tmy_path(), coerce_year=2025, map_variables=True)
    return _TMY


def daily_ghi_kwh_m2(date):
    data, _ = tmy()
    d = data[data.index.strftime('%Y-%m-%d') == date]
    return float(d['ghi'].sum()) / 1000.0


def pv_series(date, kwp, tilt=15, azimuth=180, loss=0.14, gamma=-0.0037):
    """AC PV power (W, >= 0) for every second of `date` (YYYY-MM-DD, local standard time)."""
    import numpy as np
    import pandas as pd
    from pvlib import irradiance, solarposition, temperature, pvsystem, inverter
    data, meta = tmy()
    # TMY3 stamps are hour-ending: the value at hh:00 is the mean of the hour before it.
    day = data[(data.index - pd.Timedelta('30min')).strftime('%Y-%m-%d') == date]
    if len(day) != 24:
        raise ValueError('no full TMY day for %s' % date)
    mid = day.index - pd.Timedelta('30min')
    sp = solarposition.get_solarposition(mid, meta['latitude'], meta['longitude'], altitude=meta['altitude'])
    poa = irradiance.get_total_irradiance(tilt, azimuth, sp['apparent_zenith'].values, sp['azimuth'].values,
                                          day['dni'].values, day['ghi'].values, day['dhi'].values,
                                          model='isotropic')['poa_global']
    poa = np.nan_to_num(np.asarray(poa, dtype=float)).clip(0)
    tcell = temperature.faiman(poa, day['temp_air'].values, day['wind_speed'].values)
    pdc0 = kwp * 1000.0
    pdc = pvsystem.pvwatts_dc(poa, tcell, pdc0, gamma) * (1.0 - loss)
    pac = np.asarray(inverter.pvwatts(pdc, pdc0 / 1.1), dtype=float).clip(0)   # DC/AC ratio 1.1
    hours = (mid.hour + mid.minute / 60.0).values.astype(float) * 3600.0    # 1800, 5400, ...
    t = np.arange(DAY_S, dtype=float)
    xs = np.concatenate(([0.0], hours, [DAY_S]))
    ys = np.concatenate(([0.0], pac, [0.0]))
    return [int(v) for v in np.interp(t, xs, ys)]


def load_series(date, annual_mwh, profile='G25'):
    """Building load (W) from a BDEW 2025 profile (demandlib: 'G25' commerce, 'H25' households),
    constant within each quarter hour."""
    import pandas as pd
    from demandlib import bdew
    idx = pd.date_range(date, periods=96, freq='15min')
    prof = getattr(bdew, profile)(idx)       # kW for 1 GWh/a
    scale = annual_mwh / 1000.0 * 1000.0     # -> W
    q = [int(round(v * scale)) for v in prof.values]
    return [q[t // 900] for t in range(DAY_S)]


def cooling_series(date, w_per_k, base_c=24.0):
    """Air-conditioning load (W) of a day: w_per_k per kelvin of TMY air temperature above base_c,
    hourly values at mid-hour linearly interpolated to 1 s (like pv_series)."""
    import numpy as np
    import pandas as pd
    data, _ = tmy()
    day = data[(data.index - pd.Timedelta('30min')).strftime('%Y-%m-%d') == date]
    if len(day) != 24:
        raise ValueError('no full TMY day for %s' % date)
    hours = np.arange(24) * 3600.0 + 1800.0
    w = np.clip(day['temp_air'].values - base_c, 0, None) * w_per_k
    t = np.arange(DAY_S, dtype=float)
    return [int(v) for v in np.interp(t, hours, w)]


class Session:
    __slots__ = ('start_s', 'end_s', 'power_w', 'phases', 'energy_wh')

    def __init__(self, start_s, end_s, power_w, phases, energy_wh):
        self.start_s, self.end_s, self.power_w, self.phases, self.energy_wh = start_s, end_s, power_w, phases, energy_wh

    def __repr__(self):
        return 'Session(%d..%d s, %d W on %s, %d Wh)' % (self.start_s, self.end_s, self.power_w, self.phases,
                                                      self.energy_wh)


def ev_sessions(seed, n, arrive_mean_h, arrive_sd_h, arrive_lo_h, arrive_hi_h, energy_kwh, dwell_h, types):
    """Seeded EV sessions.

    arrival ~ Normal(arrive_mean_h, arrive_sd_h) clipped to [arrive_lo_h, arrive_hi_h];
    energy ~ Uniform(energy_kwh); dwell ~ Uniform(dwell_h) (the car leaves then, charged or not);
    type drawn from `types` = [(weight, power_w, phase_spec)], phase_spec 'L123' (three-phase,
    split evenly) or a list of (weight, 'L1'|'L2'|'L3') for single-phase cars.
    Each car charges at constant power until its energy is delivered or it leaves (no CV tail).
    """
    rng = random.Random(seed)
    out = []
    tw = sum(t[0] for t in types)
    for _ in range(n):
        a = rng.gauss(arrive_mean_h, arrive_sd_h)
        a = min(max(a, arrive_lo_h), arrive_hi_h)
        e_kwh = rng.uniform(*energy_kwh)
        dwell = rng.uniform(*dwell_h)
        r = rng.uniform(0, tw)
        for w, p_w, spec in types:
            r -= w
            if r <= 0:
                break
        if spec == 'L123':
            ph = 'L123'
        else:
            pw = sum(x[0] for x in spec)
            r2 = rng.uniform(0, pw)
            for x in spec:
                r2 -= x[0]
                if r2 <= 0:
                    break
            ph = x[1]
        start = int(a * 3600)
        full = start + int(e_kwh * 1000 * 3600 / p_w)
        end = min(full, start + int(dwell * 3600), DAY_S)
        out.append(Session(start, end, p_w, ph, int(e_kwh * 1000)))
    return out


def ev_phase_series(sessions):
    """Per-phase EV load (three lists of W, one value per second) from sessions."""
    d = [[0] * (DAY_S + 1) for _ in range(3)]    # difference arrays
    for s in sessions:
        if s.phases == 'L123':
            parts = ((0, s.power_w // 3), (1, s.power_w // 3), (2, s.power_w - 2 * (s.power_w // 3)))
        else:
            parts = ((int(s.phases[1]) - 1, s.power_w),)
        for k, p in parts:
            d[k][s.start_s] += p
            d[k][s.end_s] -= p
    out = []
    for k in range(3):
        acc = 0
        row = [0] * DAY_S
        dk = d[k]
        for t in range(DAY_S):
            acc += dk[t]
            row[t] = acc
        out.append(row)
    return out
