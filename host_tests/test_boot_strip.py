"""firmware/boot_strip.py takes boot-only methods out of the resident classes once the loop
starts. The table must name methods that exist, and every call of a stripped constructor (or
method) must sit in code that runs before the strip: boot-only modules, or stripped methods
themselves. A new call site elsewhere would build an object without its attributes."""
import ast
import os

from mqtt_fixtures import ROOT

import boot_strip

# code that runs before cycle.run_job strips: whole boot-only modules, and (module, function)
BOOT_MODULES = {'startup', 'safe_state', 'sched_boot', 'profile_compiled', 'devprofile', 'net'}
BOOT_FUNCTIONS = {('cycle', 'run_job')}     # before its boot_strip.strip() line: Reporter.start()
DEVICE_DIRS = ('firmware', 'lib')
HOST_ONLY = {'schedule_host', 'reserve'}        # lib modules the device never loads


def _path(mod):
    for d in DEVICE_DIRS:
        p = os.path.join(ROOT, d, mod + '.py')
        if os.path.exists(p):
            return p
    raise AssertionError('no module %s' % mod)


def _sources():
    for d in DEVICE_DIRS:
        for f in sorted(os.listdir(os.path.join(ROOT, d))):
            if f.endswith('.py') and f[:-3] not in HOST_ONLY:
                with open(os.path.join(ROOT, d, f)) as fh:
                    yield f[:-3], ast.parse(fh.read())


def test_the_table_names_methods_that_exist():
    for mod, cls, names in boot_strip.STRIP:
        tree = ast.parse(open(_path(mod)).read())
        c = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
        assert c, (mod, cls)
        defs = {n.name for n in c[0].body if isinstance(n, ast.FunctionDef)}
        assert set(names) <= defs, (mod, cls, set(names) - defs)


def test_stripped_code_is_only_called_before_the_strip():
    stripped = {}                       # class -> stripped names; __init__ = the constructor
    for mod, cls, names in boot_strip.STRIP:
        stripped.setdefault(cls, set()).update(names)
    ctors = {c for c, n in stripped.items() if '__init__' in n}
    methods = {n for ns in stripped.values() for n in ns if n != '__init__'}
    bad = []
    strip_line = {}                     # (module, function) -> the line of its boot_strip.strip() call
    for mod, tree in _sources():
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef) and (mod, fn.name) in BOOT_FUNCTIONS:
                lines = [c.lineno for c in ast.walk(fn) if isinstance(c, ast.Call)
                         and isinstance(c.func, ast.Attribute) and c.func.attr == 'strip'
                         and isinstance(c.func.value, ast.Name) and c.func.value.id == 'boot_strip']
                assert len(lines) == 1, (mod, fn.name, lines)
                strip_line[(mod, fn.name)] = lines[0]
    assert set(strip_line) == BOOT_FUNCTIONS
    for mod, tree in _sources():
        if mod in BOOT_MODULES:
            continue

        def walk(node, where):
            for ch in ast.iter_child_nodes(node):
                w = where
                if isinstance(ch, (ast.FunctionDef, ast.ClassDef)):
                    w = where + (ch.name,)
                if isinstance(ch, ast.Call):
                    f = ch.func
                    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
                    if name in ctors or name in methods:
                        # allowed: inside a stripped method of a stripped class (boot-time itself)
                        inside = len(w) >= 2 and w[-2] in stripped and w[-1] in stripped[w[-2]]
                        before = (mod,) + w[:1] in strip_line and ch.lineno < strip_line[(mod,) + w[:1]]
                        if not inside and not before:
                            bad.append('%s.%s: %s()' % (mod, '.'.join(w) or '<module>', name))
                walk(ch, w)
        walk(tree, ())
    assert not bad, bad
