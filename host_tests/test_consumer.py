"""tools/mqtt_consumer.py without a broker: the plot from synthetic telemetry (phase limit, binding
marks), the retained config feeding the phase limit, the CSV round trip, de-duplication.
The consumer against a real broker and firmware: host_tests/test_mqtt.py::test_consumer_table_csv_plot."""
import json

import matplotlib
import pytest
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

import mqtt_consumer as mc  # noqa: E402

T0 = 1732320000000
CONFIG = {'import_limit_w': 60000, 'phase_limit_w': 25000, 'max_discharge_w': 40000}


def session_records():
    """60 s like `make sim`: charging, idle, one phase at its limit while the total is well under
    60 kW (the battery discharges for the phase), the total at its limit, then charging again."""
    out = []
    for i in range(60):
        if i < 10:
            ph, sp, st, b = (10000, 10000, 10000), -20000, 'charging', 'ev_headroom'
        elif i < 20:
            ph, sp, st, b = (17300, 17300, 17300), 0, 'idle', 'none'
        elif i < 40:
            ph, sp, st, b = (25000, 10200, 10200), 21400, 'discharging', 'phase_limit'
        elif i < 45:
            ph, sp, st, b = (20000, 20000, 20000), 3000, 'discharging', 'import_limit'
        else:
            ph, sp, st, b = (16700, 16700, 16700), -20000, 'charging', 'deadband'
        out.append({'v': 1, 'seq': i, 'ts_ms': T0 + 1000 * i, 'gcp_w': sum(ph), 'gcp_l1_w': ph[0],
                    'gcp_l2_w': ph[1], 'gcp_l3_w': ph[2], 'import_limit_w': 60000, 'bat_sp_w': sp, 'bat_w': sp,
                    'soc_bp': 6000 - i, 'objective': 'gce', 'state': st, 'binding': b, 'flags': 0,
                    'err': {'meter': 0, 'battery': 0}})
    return out


def lines(ax):
    return {ln.get_label(): ln for ln in ax.get_lines()}


def x_extent(patch):
    """(x0, x1) of an axvspan: a Rectangle (matplotlib >= 3.9) or a Polygon (older)."""
    if hasattr(patch, 'get_width'):
        return patch.get_x(), patch.get_x() + patch.get_width()
    xs = [x for x, y in patch.get_xy()]
    return min(xs), max(xs)


def check_figure(fig, phase_limit_kw=25.0):
    ph, tot, bat, soc, strip = fig.axes[:5]
    # the phases and the phase limit
    ls = lines(ph)
    assert {'L1', 'L2', 'L3', 'phase limit'} <= set(ls), set(ls)
    assert set(ls['phase limit'].get_ydata()) == {phase_limit_kw}
    assert max(ls['L1'].get_ydata()) == 25.0
    # the total and the import limit: under the limit while the phase was binding
    ls = lines(tot)
    assert set(ls['import limit'].get_ydata()) == {60.0}
    assert max(ls['GCP total (+ import)'].get_ydata()[20:40]) == 45.4
    assert {'setpoint', 'actual'} <= set(lines(bat))
    assert len(soc.get_lines()) == 1
    # binding marks: the phase_limit span shaded in the phase panel, import_limit in the total panel
    shaded = [p for p in ph.patches if p.get_label() == 'binding: phase_limit']
    assert len(shaded) == 1
    t = ph.get_lines()[0].get_xdata()
    assert x_extent(shaded[0]) == pytest.approx((t[20], t[40]), abs=1e-9)
    assert [p.get_label() for p in tot.patches if p.get_label().startswith('binding:')] == \
        ['binding: ev_headroom', 'binding: import_limit']
    # the strip: state and binding runs, labelled with their names
    bars = [c for c in strip.collections if isinstance(c, PolyCollection)]
    assert len(bars) == 4 + 5                   # state runs + binding runs
    names = {c.get_label() for c in bars if not c.get_label().startswith('_')}
    assert {'phase_limit', 'import_limit', 'deadband', 'discharging', 'charging', 'idle'} <= names
    texts = [x.get_text() for x in strip.texts]
    assert 'phase_limit' in texts and 'discharging' in texts
    assert [x.get_text() for x in strip.get_yticklabels()] == ['binding', 'state']
    legend = [x.get_text() for x in strip.get_legend().get_texts()]
    assert 'phase_limit' in legend and 'import_limit' in legend


def test_plot_shows_phase_limit_and_binding_marks(tmp_path):
    recs = session_records()
    fig = mc.figure({'sim1': recs}, configs={'sim1': CONFIG})
    try:
        check_figure(fig)
    finally:
        plt.close(fig)
    png = tmp_path / 's.png'
    assert mc.plot({'sim1': recs}, str(png), configs={'sim1': CONFIG}) == str(png)
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 10000


def test_no_phase_limit_known_or_configured_no_line():
    recs = session_records()
    for cfgs in (None, {'sim1': dict(CONFIG, phase_limit_w=0)}):
        fig = mc.figure({'sim1': recs}, configs=cfgs)
        try:
            assert 'phase limit' not in lines(fig.axes[0])
            assert 'L1' in lines(fig.axes[0])
        finally:
            plt.close(fig)


def test_session_takes_the_phase_limit_from_the_retained_config_into_csv_and_plot(tmp_path):
    csv_path = tmp_path / 's.csv'
    sess = mc.Session(str(csv_path))
    sess.on_message('bess/sim1/config', json.dumps(CONFIG).encode())
    sess.on_message('bess/sim1/status', b'online')
    recs = session_records()
    for r in recs:
        sess.on_message('bess/sim1/telemetry', json.dumps(r).encode())
    sess.on_message('bess/sim1/telemetry', json.dumps(recs[5]).encode())    # store-and-forward repeat
    # after a reboot seq starts again at 0, with a later ts_ms: a new record, not a repeat
    sess.on_message('bess/sim1/telemetry', json.dumps(dict(recs[0], ts_ms=T0 + 90000)).encode())
    sess.close()
    assert sess.config['sim1']['phase_limit_w'] == 25000
    assert sess.repeats == 1 and len(sess.records['sim1']) == 61
    back = mc.read_csv(str(csv_path))
    assert len(back['sim1']) == 61 and back['sim1'][0]['phase_limit_w'] == 25000
    assert back['sim1'][25]['binding'] == 'phase_limit' and back['sim1'][25]['gcp_l1_w'] == 25000
    fig = mc.figure({'sim1': back['sim1'][:60]})            # the CSV alone carries the phase limit
    try:
        check_figure(fig)
    finally:
        plt.close(fig)
    png = tmp_path / 'from_csv.png'
    assert mc.main(['--from-csv', str(csv_path), '--plot', str(png)]) == 0 and png.stat().st_size > 10000
