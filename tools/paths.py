"""Where things are in a checkout, for the host tools and the tests (one place, not a
sys.path.insert in every file). Tools run as scripts have tools/ on sys.path already; tests get it
from host_tests/conftest.py. `import paths` puts lib/ and firmware/ on sys.path (CPython)."""
import os
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
LIB = os.path.join(ROOT, 'lib')
FIRMWARE = os.path.join(ROOT, 'firmware')
PROFILES = os.path.join(FIRMWARE, 'profiles')
VENDOR = os.path.join(ROOT, 'build', 'vendor')
BIN = os.path.dirname(sys.executable)
# The firmware from source on the MicroPython unix port: the machine shim first (it replaces the
# built-in `machine`), '.frozen' last as on a board (the unix port's frozen `ssl`).
MICROPYPATH = ':'.join([os.path.join(FIRMWARE, 'unix'), FIRMWARE, LIB, VENDOR, '.frozen'])

for _p in (LIB, FIRMWARE, TOOLS):
    if _p not in sys.path:
        sys.path.insert(1, _p)
