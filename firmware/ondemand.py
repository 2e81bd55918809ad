# Memory housekeeping (docs/resources.md). Code loaded on demand and dropped again: the command
# path, HA discovery, device identification. A module leaves the heap once it is out of sys.modules and nothing
# refers to it (no resident object of a class it defines, no resident import of it).

import gc
import sys


def load(name):
    """The module name, imported if it is not loaded. A collection comes first, so that its code
    fills the lowest free blocks. Left to the collection a failing allocation starts, its first
    pieces would land above the garbage of the moment, and once that garbage is gone the holes it
    leaves lie below code that stays loaded: the heap is cut where the next load needs it whole
    (docs/resources.md). Raises MemoryError when it does not fit."""
    m = sys.modules.get(name)
    if m is None:
        gc.collect()
        m = __import__(name)
    return m


def unload(names):
    for m in names:
        if m in sys.modules:
            del sys.modules[m]


def heap_text():
    """'heap N bytes free of M' after a collection: what every out-of-memory message says."""
    gc.collect()
    return 'heap %d bytes free of %d' % (gc.mem_free(), gc.mem_free() + gc.mem_alloc())
