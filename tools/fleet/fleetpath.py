"""The fleet scripts' one sys.path setup: tools/fleet (run as a script it is there already) and
tools/ on sys.path, and through tools/paths.py lib/ and firmware/. `from fleetpath import ...`
before the project's own modules."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.dirname(HERE)
ROOT = os.path.dirname(TOOLS)
for _p in (TOOLS, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)
import paths  # noqa: E402,F401 (lib/ and firmware/ on sys.path)
