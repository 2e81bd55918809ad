"""Soak with heap samples for tools/faults.py: the firmware as deployed (esp32 build, .mpy) on the
32-bit MicroPython unix port with a fixed heap (tools/heapfit.py: 96 000 bytes + the unix
`machine` shim), MQTT to a real mosquitto, the SDM630 + SunSpec battery on the pty simulator,
every control cycle under heap_lock, at the template period (1000 ms; heapfit's own runs use
100 ms). heapfit's script runs first (broker outage, a command burst, bus faults), then the
firmware runs on for the rest of the soak; what heapfit judged wrong is quoted in the note.

The heap is sampled from telemetry (heap_free, every record): min / max, and the slope of a
least-squares line over the samples after the first minute (boot and the ring allocation are
over by then), in bytes per minute. A leak shows as a steady negative slope; the GC's sawtooth
averages out over minutes.
"""
import json

import heapfit
import mp32fixed

HEAP = 96000 + 10000        # host_tests/test_heapfit.py: the budget + the shim's share


def slope_per_min(samples):
    """Least-squares slope of [(t_s, bytes)] in bytes per minute (None for < 2 samples)."""
    if len(samples) < 2:
        return None
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    den = sum((t - mt) ** 2 for t, _ in samples)
    if den == 0:
        return None
    return 60.0 * sum((t - mt) * (v - mv) for t, v in samples) / den


def case_soak(minutes=10, period_ms=1000, heap=HEAP):
    from faults_modbus import row
    mp32fixed.build()
    root = heapfit.prepare_root('esp32')
    run = heapfit.Run(heap, root, cycles=int(minutes * 60000 // period_ms), period_ms=period_ms)
    res = run.run()
    tele = [(t, json.loads(p)) for topic, p, t in run.msgs if topic == 'bess/fit1/telemetry']
    t0 = tele[0][0] if tele else 0
    # heap_free 0: the first record, captured before the first sample was taken (reporting.py)
    samples = [(t - t0, r['heap_free']) for t, r in tele if isinstance(r.get('heap_free'), int)
               and r['heap_free'] > 0]
    late = [s for s in samples if s[0] >= 60] or samples
    seqs = [r['seq'] for _, r in tele]
    lost = max(seqs) - min(seqs) + 1 - len(set(seqs)) if seqs else None
    dup = len(seqs) - len(set(seqs)) if seqs else None
    heap_v = [v for _, v in samples]
    slope = slope_per_min(late)
    note = ('%d cycles at %d ms on the 32-bit fixed heap (%d B), %d heap samples: free min %s, max %s, '
            'slope %s B/min after the first minute; heapfit verdict: %s' % (
                run.cycles, period_ms, heap, len(samples),
                min(heap_v) if heap_v else '-', max(heap_v) if heap_v else '-',
                '%.1f' % slope if slope is not None else '-',
                'FAIL: ' + '; '.join(res['problems']) if res['problems'] else
                'pass (no MemoryError, every cycle completed, telemetry without gaps)'))
    return row('soak %g min, heap samples' % minutes, 1, None, None, note, lost=lost, dup=dup,
               heap_min=min(heap_v) if heap_v else None, heap_max=max(heap_v) if heap_v else None,
               heap_slope_b_per_min=slope, met=bool(res['pass']), problems=res['problems'])
