# Memory housekeeping (docs/resources.md). Code loaded on demand and dropped again: the command
# path, HA discovery, device identification. A module leaves the heap once it is out of sys.modules and nothing
# refers to it (no resident object of a class it defines, no resident import of it).


def unload(names):
    import sys
    for m in names:
        if m in sys.modules:
            del sys.modules[m]


def heap_text():
    """'heap N bytes free of M' after a collection: what every out-of-memory message says."""
    import gc
    gc.collect()
    return 'heap %d bytes free of %d' % (gc.mem_free(), gc.mem_free() + gc.mem_alloc())
