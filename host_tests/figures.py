"""Measured figures the tests record for the docs and closing notes: out/<name>_figures.json."""
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(name, **kw):
    """Merge kw into out/<name>_figures.json (created on first use)."""
    path = os.path.join(ROOT, 'out', '%s_figures.json' % name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        d = {}
    d.update(kw)
    with open(path, 'w') as f:
        json.dump(d, f, indent=1, sort_keys=True)
