# Runs the control-core corpus and prints every output, on CPython and on MicroPython alike.
#
# usage: corpus_runner.py LIBDIR CORPUS
# On MicroPython each episode's steps run under micropython.heap_lock(): any allocation inside
# step() (or the input/output copying around it) raises MemoryError, reported as
# "ALLOC <episode> <step>" with exit status 3. Output: "E <n>" per episode, then one line of
# output integers per step, then "DONE <vectors>". Outputs of all runtimes must be identical.
import sys

LIB = sys.argv[1]
CORPUS = sys.argv[2]
sys.path.insert(0, LIB)

from array import array     # noqa: E402
import json                 # noqa: E402
import bess_core            # noqa: E402

try:
    import micropython
    heap_lock = micropython.heap_lock
    heap_unlock = micropython.heap_unlock
except ImportError:         # CPython: nothing to lock, same outputs
    heap_lock = heap_unlock = None

NV = 29     # fields per input vector, in tools/corpus.py VEC_FIELDS order
NO = 15     # outputs recorded per step


def run_episode(cfg, vec, n, out, pos):
    ctl = bess_core.Controller(cfg)
    inp = ctl.inp
    o = ctl.out
    step = ctl.step                 # bound methods cached before the lock, as a timer would
    start = ctl.start_dispatch
    stop = ctl.stop_dispatch
    ostart = ctl.start_override
    ostop = ctl.stop_override
    k = 0
    j = 0
    q = 0
    if heap_lock:
        heap_lock()
    try:
        while k < n:
            pos[0] = k
            inp.gcp_w = vec[j]
            inp.gcp_l1_w = vec[j + 1]
            inp.gcp_l2_w = vec[j + 2]
            inp.gcp_l3_w = vec[j + 3]
            inp.phases_valid = vec[j + 4]
            inp.meter_valid = vec[j + 5]
            inp.meter_age_ms = vec[j + 6]
            inp.bat_w = vec[j + 7]
            inp.soc_bp = vec[j + 8]
            inp.bat_valid = vec[j + 9]
            inp.bat_age_ms = vec[j + 10]
            inp.bms_max_chg_w = vec[j + 11]
            inp.bms_max_dis_w = vec[j + 12]
            inp.dt_ms = vec[j + 13]
            cmd = vec[j + 14]
            if cmd == 1:
                start(vec[j + 15], vec[j + 16])
            elif cmd == 2:
                stop()
            elif cmd == 3:
                ostart(vec[j + 15], vec[j + 16])
            elif cmd == 4:
                ostop()
            ctl.plan_obj = vec[j + 17]
            ctl.plan_reserve_bp = vec[j + 18]
            ctl.plan_soc_min_bp = vec[j + 19]
            ctl.plan_soc_max_bp = vec[j + 20]
            ctl.plan_import_w = vec[j + 21]
            ctl.plan_target_bp = vec[j + 22]
            ctl.plan_power_w = vec[j + 23]
            ctl.plan_firm = vec[j + 24]
            ctl.plan_export = vec[j + 25]
            ctl.plan_left_s = vec[j + 26]
            ctl.plan_protect_import_w = vec[j + 27]
            ctl.plan_protect_phase_w = vec[j + 28]
            step()
            out[q] = o.setpoint_w
            out[q + 1] = o.state
            out[q + 2] = o.binding
            out[q + 3] = o.flags
            out[q + 4] = o.avail_chg_w
            out[q + 5] = o.avail_dis_w
            out[q + 6] = o.net_w
            out[q + 7] = o.req_w
            out[q + 8] = o.phase_excess_w
            out[q + 9] = o.phase_cost_w
            out[q + 10] = o.target_w
            out[q + 11] = o.dispatch_left_ms
            out[q + 12] = o.override_left_ms
            out[q + 13] = o.reserve_bp
            out[q + 14] = o.ev_limit_w
            k += 1
            j += NV
            q += NO
    finally:
        if heap_unlock:
            heap_unlock()


def flush(ep, cfg_line, rows):
    n = len(rows) // NV
    vec = array('i', rows)
    out = array('i', [0] * (n * NO))
    pos = [0]
    try:
        run_episode(json.loads(cfg_line), vec, n, out, pos)
    except MemoryError:
        print('ALLOC', ep, pos[0])
        sys.exit(3)
    print('E', ep)
    for k in range(n):
        print(' '.join([str(x) for x in out[k * NO:(k + 1) * NO]]))
    return n


def main():
    ep = -1
    cfg_line = None
    rows = []
    total = 0
    with open(CORPUS) as f:
        for line in f:
            if line.startswith('E '):
                if cfg_line is not None:
                    total += flush(ep, cfg_line, rows)
                ep += 1
                cfg_line = line[2:]
                rows = []
            elif line.strip():
                rows.extend([int(x) for x in line.split()])
    if cfg_line is not None:
        total += flush(ep, cfg_line, rows)
    print('DONE', total)


main()
