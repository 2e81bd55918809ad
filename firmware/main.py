# Boot entry (the only source file on a board: everything else is .mpy or data).
#
# On a board: /site.json, /boards/<board>.json and /profiles/ at the filesystem root.
# On the unix port the filesystem root is the current directory (a Linux gateway's install dir,
# or the virtual board of the deploy tests): site.json, boards/, profiles/ relative to it.
# Boot-only modules (startup, net, devprofile, ...) are unloaded before the resident loop runs
# (firmware/cycle.py; docs/resources.md). Explicit paths (firmware-in-the-loop rig):
#     MICROPYPATH=firmware/unix:firmware:lib:build/vendor micropython firmware/main.py SITE.json ROOT [CYCLES]
#
# Deploy hold: `make deploy` writes HOLD and resets the board, so that the firmware (and its
# watchdog, which a soft reset does not stop) stays off while files are copied; deploy removes it
# once every file is in place. An interrupted deploy therefore leaves the board held (saying so),
# never running a mix of old and new modules. A firmware that cannot even be imported (a broken or
# partial install) says so and stays idle: no watchdog is armed yet, so no reset loop.
import os
import sys

HOLD = 'deploy_hold'
_job = None                 # bound now: a new global costs heap, and an out-of-memory handler
_msg = None                 # below must not need any


def _held():
    try:
        os.stat(HOLD)
    except OSError:
        return False
    return True


_a = sys.argv[1:] if hasattr(sys, 'argv') else []
_unix = sys.platform in ('linux', 'darwin')


def _stay(msg):
    import time
    while True:
        print('main.py: ' + msg)
        time.sleep(10)


def _free_all():
    """Out of memory: drop every loaded module (what a message needs is then free again)."""
    import gc
    while sys.modules:
        sys.modules.popitem()
    gc.collect()


def _oom_stay(msg, e=None):
    """Nothing fits: say so with the figures, forever (no watchdog is armed yet). msg is
    formatted with e only after every module is dropped: formatting needs heap too."""
    _free_all()
    if e is not None:
        msg = msg % (e,)
    import gc
    _stay('%s; heap %d bytes free of %d; the battery is not commanded (its own revert timer applies)'
          % (msg, gc.mem_free(), gc.mem_free() + gc.mem_alloc()))


if _held():
    print('main.py: deploy hold: firmware not started (a deploy is copying files, or one was '
          'interrupted: run make deploy again)')
else:
    try:
        import gc
        # the resident modules first: their code lies together at the bottom of the heap, and
        # what boot leaves behind (unloaded below) is free space above it, not holes between
        import cycle
        import reporting
        import mqtt_link
        import profile_model
        import bus
        del cycle, reporting, mqtt_link, profile_model, bus
        gc.collect()
        import net
        import startup
    except MemoryError as e:
        _oom_stay('OUT OF MEMORY loading the firmware (%r): the build does not fit this board '
                  '(docs/resources.md)', e)
    except Exception as e:
        _stay('FIRMWARE INCOMPLETE (%r): run make deploy again; the battery is not commanded (its own '
              'revert timer applies)' % (e,))
    _cfg = _a[0] if _a else ('site.json' if _unix else '/site.json')
    _root = _a[1] if len(_a) > 1 else ('.' if _unix else '')
    _n = int(_a[2]) if len(_a) > 2 else 0
    net.start_from_files(_cfg, _root)
    try:
        _job = startup.boot(_cfg, _root, _n)
    except MemoryError as e:
        # even the safe state ran out of memory while boot's modules were loaded: drop them all,
        # then try the safe state alone (it commands 0 W when it can), saying what happened
        _free_all()
        startup = None
        _msg = ('OUT OF MEMORY while starting (%r): the build does not fit this board\'s heap '
                '(docs/resources.md)' % (e,))
        try:
            import startup
            startup.safe(_msg, _cfg, _root, _n)
        except MemoryError:
            _oom_stay(_msg)
    startup.unload()                    # boot-only code leaves the heap before the loop starts
    del startup, net
    gc.collect()
    if _job is not None:
        _job.run(_n)
