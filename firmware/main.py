# Boot entry. On a board: runs with the defaults (/site.json, boards/ and profiles/ at the root).
# On the unix port: MICROPYPATH=firmware/unix:firmware:lib:build/vendor \
#     micropython firmware/main.py SITE.json ROOT [CYCLES]
import sys

import app

_a = sys.argv[1:] if hasattr(sys, 'argv') else []
app.main(_a[0] if _a else '/site.json', _a[1] if len(_a) > 1 else '', int(_a[2]) if len(_a) > 2 else 0)
