# Code loaded on demand and dropped again (docs/resources.md): the command path, HA discovery,
# device identification. A module leaves the heap once it is out of sys.modules and nothing
# refers to it (no resident object of a class it defines, no resident import of it).


def unload(names):
    import sys
    for m in names:
        if m in sys.modules:
            del sys.modules[m]
