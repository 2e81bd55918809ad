"""Shared test setup: lib/ and tools/ on sys.path, paths to the built runtimes."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(ROOT, 'tools') not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
import paths  # noqa: E402,F401 (lib/, firmware/ and tools/ on sys.path: tools/paths.py)
