# The runtime's console lines that are not needed on a running site (on demand): the per-cycle
# line of commissioning mode (site key log_cycles; it allocates, so never on by default) and the
# summary after a run with a cycle count (tests, tools). Kept out of the resident cycle module.
import bess_core as bc


def line(rt, us):
    i, o = rt.ctl.inp, rt.ctl.out
    print('cyc t=%d gcp=%d l1=%d l2=%d l3=%d bat=%d soc=%d sp=%d state=%s bind=%s flags=%d '
          'us=%d merr=%d berr=%d' % (
              rt.t_last, i.gcp_w, i.gcp_l1_w, i.gcp_l2_w, i.gcp_l3_w, i.bat_w, i.soc_bp, o.setpoint_w,
              bc.STATE_NAMES[o.state], bc.BINDING_NAMES[o.binding], o.flags, us,
              rt.meter.failed_calls(), rt.battery.failed_calls()))


def summary(rt):
    import json
    print('done: %d cycles, max cycle %d us, %d overruns, meter failed calls %d, battery failed calls %d, '
          'setpoint write errors %d, cycle errors %d' % (rt.cycles, rt.max_cycle_us, rt.overruns,
                                                         rt.meter.failed_calls(), rt.battery.failed_calls(),
                                                         rt.write_errors, rt.cycle_errors))
    print('stats ' + json.dumps({'meter': rt.meter.dev.stats(), 'battery': rt.battery.dev.stats()}))
