# Boot-only methods out of the resident classes (docs/resources.md), loaded on demand once:
# cycle.run_job calls strip() when the last object of these classes has been built (boot, the
# schedule side, the telemetry ring) and then drops this module. A method's code stays in the heap
# as long as its class holds it; constructors run once per object, so after boot they are dead
# weight: about 3.7 KB of a 32-bit heap. Each becomes None in its class: the code is freed, and
# building such an object or calling such a method after boot raises TypeError (loud, never a
# half-built object; nothing does it: host_tests/test_boot_strip.py checks the table against the
# source and that every call of stripped code runs before the strip). A frozen image keeps its code
# in flash: little to free there, no harm done.

STRIP = (
    ('rtu', 'RtuMaster', ('__init__',)),
    ('bus', 'Bus', ('__init__',)),
    ('cycle', 'Group', ('__init__',)),
    ('cycle', 'Poller', ('__init__',)),
    ('cycle', 'Runtime', ('__init__',)),
    ('cycle', 'Job', ('__init__',)),
    ('mqtt_link', 'MqttLink', ('__init__', '_ssl_params')),   # not alloc_ring nor Ring(): poll() falls back on them
    ('reporting', 'Reporter', ('__init__', 'start')),
    ('reporting', 'CommandHandler', ('__init__',)),
    ('wallclock', 'Clock', ('__init__',)),
    ('plan_side', 'PlanSide', ('__init__',)),
    ('plan', 'Plan', ('__init__',)),
    ('bess_core', 'Inputs', ('__init__',)),
    ('bess_core', 'Outputs', ('__init__',)),
    ('bess_core', 'Controller', ('__init__',)),
    ('profile_model', 'Block', ('__init__',)),
    ('profile_model', 'Point', ('__init__',)),
    ('profile_model', 'Write', ('__init__',)),
    ('profile_model', 'Plan', ('__init__',)),
    ('profile_model', 'Freshness', ('__init__',)),
    ('profile_model', 'Profile', ('__init__',)),
    ('telemetry', 'Stats', ('__init__',)),
)


def strip():
    import sys
    for mod, cls, names in STRIP:
        m = sys.modules.get(mod)
        k = getattr(m, cls, None) if m is not None else None
        if k is None:
            continue                    # not loaded on this site (no schedule side, no MQTT)
        for n in names:
            # None, not del: a deleted slot of MicroPython's map keeps its value (the code would
            # stay), and a late call of None fails loudly
            setattr(k, n, None)
