"""Schedule format v1: validation and compilation on the host (lib/schedule_host.py, through
lib/schedule.py's entry points) and the compiled form (lib/schedule.py)."""
import copy

import pytest

import schedule as sc

T0 = 1764300000
COMM = {'min_soc_bp': 1000, 'max_soc_bp': 9500, 'import_limit_w': 60000}
GOOD = {
    'v': 1, 'id': 'depot-7/2026-11-28', 'version': 3, 'created': T0, 'valid_until': T0 + 86400,
    'default': {'objective': 'ss', 'reserve_soc_bp': 4000},
    'intervals': [
        {'start': T0 + 3600, 'duration_s': 3600, 'reserve_soc_bp': 5500, 'target_soc_bp': 6000},
        {'start': T0 + 7200, 'duration_s': 3600, 'objective': 'gce', 'power_w': 20000, 'firm': True,
         'import_limit_w': 50000, 'export': False},
    ],
}


def test_a_valid_schedule_compiles_to_offsets_and_fields():
    s = sc.compile_(copy.deepcopy(GOOD), COMM, last_version=2)
    assert (s.id, s.version, s.n, s.base_s) == ('depot-7/2026-11-28', 3, 2, T0)
    assert list(s.start) == [3600, 7200] and list(s.end) == [7200, 10800]
    assert s.at(0) == 2 and s.at(3600) == 0 and s.at(7199) == 0 and s.at(7200) == 1 and s.at(10800) == 2
    assert s.at(86400) == -1 and s.at(-1) == -1                            # expired / not yet
    assert s.get('objective', 1) == sc.OBJECTIVES.index('gce')
    assert s.get('objective', 0) == sc.NOT_SET                            # left to the default block
    assert s.get('objective', 2) == sc.OBJECTIVES.index('ss')
    assert s.get('power_w', 1) == 20000 and s.get('firm', 1) == 1 and s.get('export', 1) == 0
    assert s.get('reserve_soc_bp', 2) == 4000


def test_minus_one_watt_is_a_value_not_unset():
    d = copy.deepcopy(GOOD)
    d['intervals'][1]['power_w'] = -1
    assert sc.compile_(d, COMM).get('power_w', 1) == -1


def _bad(mutate):
    d = copy.deepcopy(GOOD)
    mutate(d)
    return d


@pytest.mark.parametrize('mutate, needle', [
    (lambda d: d.update(v=2), 'v must be 1'),
    (lambda d: d.update(version=2), 'not newer than the accepted 2'),
    (lambda d: d.update(version=True), 'version must be an integer'),
    (lambda d: d.update(version=2 ** 30), 'version must be an integer 1..1073741823'),
    (lambda d: d.update(valid_until=T0), 'valid_until must be after created'),
    (lambda d: d.update(valid_until=T0 + 8 * 86400), 'at most'),
    (lambda d: d.update(intervals=[dict(GOOD['intervals'][0])] * 97), 'at most 96'),
    (lambda d: d['intervals'][1].update(start=T0 + 3700), 'no overlap'),
    (lambda d: d['intervals'][0].update(start=T0 - 10), 'outside created'),
    (lambda d: d['intervals'][0].update(soc_min_bp=500), 'below the commissioned min_soc_bp'),
    (lambda d: d['intervals'][0].update(soc_max_bp=9800), 'above the commissioned max_soc_bp'),
    (lambda d: d['intervals'][1].update(import_limit_w=70000), 'above the commissioned import_limit_w'),
    (lambda d: d['intervals'][0].update(power_w=100), 'exclude each other'),
    (lambda d: d['intervals'][0].update(objective='max'), "is not one of"),
    (lambda d: d['intervals'][0].update(firm=1), 'true or false'),
    (lambda d: d['intervals'][0].update(colour='red'), "unknown key 'colour'"),
    (lambda d: d.pop('default'), 'default must be an object'),
    (lambda d: d['default'].update(power_w=1000), 'default.power_w: only an interval may set it'),
    (lambda d: d['default'].update(target_soc_bp=5000), 'default.target_soc_bp: only an interval may set it'),
    (lambda d: d['default'].update(firm=False), 'default.firm: only an interval may set it'),
    (lambda d: d['intervals'][0].update(protect_import_w=-1), 'protect_import_w: must be an integer 0..10000000'),
    (lambda d: d['intervals'][0].update(protect_phase_w=10000001), 'protect_phase_w: must be an integer 0..10000000'),
    (lambda d: d['default'].update(protect_phase_w=True), 'protect_phase_w: must be an integer'),
    (lambda d: d.update(id=''), 'id must be'),
])
def test_an_invalid_schedule_says_why_and_changes_nothing(mutate, needle):
    d = _bad(mutate)
    before = copy.deepcopy(d)
    with pytest.raises(sc.ScheduleError) as e:
        sc.compile_(d, COMM, last_version=2)
    assert needle in str(e.value), str(e.value)
    assert d == before                                  # the input is not touched


def test_every_problem_is_listed_at_once():
    d = _bad(lambda d: (d.update(v=9, version=0), d['intervals'][0].update(colour=1)))
    errs = sc.validate(d, COMM)
    assert len(errs) == 3, errs


@pytest.mark.parametrize('runtime', ['unix', '32bit'])
def test_the_same_module_runs_on_micropython(runtime):
    """The device validates and compiles a schedule when it arrives (on demand): same results on
    the MicroPython unix port and the 32-bit WebAssembly port (epoch seconds are big ints there)."""
    import os
    import subprocess
    from paths import ROOT
    from test_profiles import MPY
    script = os.path.join(ROOT, 'host_tests', 'mp', 'schedule_mp.py')
    if runtime == 'unix':
        cmd = [MPY, script, os.path.join(ROOT, 'lib')]
    else:
        cmd = ['node', os.path.join(ROOT, 'tools', 'mp32', 'run.mjs'), '--put', os.path.join(ROOT, 'lib') + ':/lib',
               script]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split('\n')[:2] == ['0 -1 1 1 1', 'rejected 1'], r.stdout


def test_the_compiled_form_is_sparse_and_compact():
    """Only the fields some interval or the default sets get a column (n + 1 entries, the default
    block last); the others read NOT_SET without one. As few bytes a value as the values need: 1
    for codes and booleans, 2 for SoC in bp, 4 for the fields in W; interval times 4."""
    s = sc.compile_(copy.deepcopy(GOOD), COMM, last_version=2)
    assert sorted(s.fields) == ['export', 'firm', 'import_limit_w', 'objective', 'power_w', 'reserve_soc_bp',
                                'target_soc_bp']
    assert s.get('soc_min_bp', 0) == s.get('soc_max_bp', 2) == sc.NOT_SET
    assert all(len(a) == s.n + 1 for a in s.fields.values())
    assert {k: a.typecode for k, a in s.fields.items()} == {
        'export': 'b', 'firm': 'b', 'objective': 'b', 'reserve_soc_bp': 'h', 'target_soc_bp': 'h',
        'import_limit_w': 'i', 'power_w': 'i'}
    assert s.start.typecode == s.end.typecode == 'i'


def test_unset_reads_not_set_and_every_value_reads_back():
    """A 1- or 2-byte column holds UNSET_NARROW where unset (no value of those fields is
    negative), an 'i' column NOT_SET: get() returns NOT_SET for both; -1 W and -32768 W stay
    values."""
    d = copy.deepcopy(GOOD)
    d['intervals'][0].update(power_w=-32768, protect_import_w=0, protect_phase_w=10000000)
    del d['intervals'][0]['target_soc_bp'], d['intervals'][0]['reserve_soc_bp']
    d['intervals'][1].update(reserve_soc_bp=0, power_w=-10000000)
    s = sc.compile_(d, COMM, last_version=2)
    assert s.fields['reserve_soc_bp'][0] == s.fields['export'][0] == sc.UNSET_NARROW
    assert s.fields['power_w'][2] == sc.NOT_SET
    assert [s.get('power_w', k) for k in range(3)] == [-32768, -10000000, sc.NOT_SET]
    d['intervals'][0]['power_w'] = -1
    assert sc.compile_(d, COMM, last_version=2).get('power_w', 0) == -1
    assert [s.get('reserve_soc_bp', k) for k in range(3)] == [sc.NOT_SET, 0, 4000]
    assert [s.get('protect_import_w', k) for k in range(3)] == [0, sc.NOT_SET, sc.NOT_SET]
    assert s.get('protect_phase_w', 0) == 10000000
    assert s.get('export', 0) == sc.NOT_SET and s.get('export', 1) == 0 and s.get('firm', 1) == 1


def test_protection_levels_in_an_interval_and_the_default_block():
    d = copy.deepcopy(GOOD)
    d['default'].update(protect_import_w=55000, protect_phase_w=20000)
    d['intervals'][1].update(protect_import_w=40000)
    assert sc.validate(d, COMM, 2) == []
    s = sc.compile_(d, COMM, 2)
    assert (s.get('protect_import_w', 1), s.get('protect_import_w', 0), s.get('protect_import_w', 2)) == \
        (40000, sc.NOT_SET, 55000)


def test_the_highest_version_is_a_small_int_on_32_bit_boards():
    d = copy.deepcopy(GOOD)
    d['version'] = 2 ** 30 - 1
    assert sc.compile_(d, COMM, 2).version == 2 ** 30 - 1


def test_bounds_out_of_range_without_a_commissioned_config_are_reported():
    d = _bad(lambda d: d['intervals'][0].update(soc_min_bp=-5, soc_max_bp=10001))
    errs = sc.validate(d, None)
    assert 'intervals[0].soc_min_bp: -5 is below the commissioned min_soc_bp 0' in errs
    assert 'intervals[0].soc_max_bp: 10001 is above the commissioned max_soc_bp 10000' in errs

