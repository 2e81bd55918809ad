# Prints whether 2**30 - 1 and 2**30 fit a small int on this runtime (built from variables so the
# compiler cannot fold the constants). 32-bit MicroPython: the first is free, the second allocates.
import micropython

one = 1
base = (1 << 29) + ((1 << 29) - 1)      # 2**30 - 1, computed at run time


def probe(extra):
    micropython.heap_lock()
    try:
        base + extra
        return 'free'
    except MemoryError:
        return 'allocates'
    finally:
        micropython.heap_unlock()


print('2**30-1:', probe(0))
print('2**30:', probe(one))
