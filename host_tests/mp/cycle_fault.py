# A cycle that raises (a bug) must fail safe: the loop goes on, 0 W is commanded, the watchdog is
# not fed for that cycle. Run on the unix port: cycle_fault.py SITE.json ROOT [alloc]
# alloc: the fault is an allocation inside cycles 4..6 (a list), and the site config has
# check_alloc: the whole-cycle heap_lock must catch it (negative control of the heap-fit proof).
import sys
import startup
ALLOC = len(sys.argv) > 3 and sys.argv[3] == 'alloc'

site = startup.load_json(sys.argv[1], 'site')
board = startup.load_json('%s/boards/unix.json' % sys.argv[2], 'board')
rt = startup.runtime(site, board, startup.load_profile(sys.argv[2], site['meter']['profile']),
                     startup.load_profile(sys.argv[2], site['battery']['profile']), site['control'])
real_step = rt.ctl.step
n = [0]


def step():
    n[0] += 1
    real_step()
    if 4 <= n[0] <= 6:
        if ALLOC:
            return [n[0]]               # allocates: MemoryError under heap_lock
        raise ValueError('injected fault in cycle %d' % n[0])


rt.ctl.step = step


class Wdt:
    fed = 0

    def feed(self):
        Wdt.fed += 1


rt.run(Wdt(), cycles=10)
print('RESULT cycles=%d cycle_errors=%d fed=%d' % (rt.cycles, rt.cycle_errors, Wdt.fed))
