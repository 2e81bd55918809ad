"""tools/heapmap.py's reading of a MicroPython heap map (the tool itself builds and runs a tagged
image: a measuring command, not part of make test)."""
import pytest

import heapmap

DUMP = ['HEAPMAP-START', 'mem: total=1, current=1, peak=1', 'GC: total: 2048, used: 224, free: 1824',
        'GC memory layout; from 0:',
        '00000000: hh==Q===.q=BSY.hI..' + '.' * 45,
        '       (1 lines all free)',
        'qstr pool: n_pool=1, n_qstr=3, n_str_data_bytes=20, n_total_bytes=80']


def test_a_map_is_read_block_by_block():
    kinds, q, big, hs = heapmap.parse(DUMP)
    assert kinds['h'] == [16 + 48 + 16, 3] and kinds['Q'] == [64, 1] and kinds['q'] == [32, 1]
    assert kinds['B'] == [16, 1] and kinds['S'] == [16, 1] and kinds['Y'] == [16, 1] and kinds['I'] == [16, 1]
    assert kinds['free'][0] == 16 * (4 + 45 + 64)
    assert q.startswith('qstr pool: n_pool=1') and big[0] == (64, 'Q') and hs == [(16, 2), (48, 1)]


def test_no_map_is_a_clear_error():
    with pytest.raises(RuntimeError, match='no heap map'):
        heapmap.parse(['done: 300 cycles'])


def test_what_a_phase_left_behind_is_what_lies_where_the_heap_was_free():
    a = ['X-START', '00000000: hh==......S.' + '.' * 52, 'X-END']
    b = ['X-START', '00000000: hh==h=.S..S.' + '.' * 52, 'X-END']
    kept, ra, rb = heapmap.left_behind(heapmap.blocks(a, 'X'), heapmap.blocks(b, 'X'))
    assert kept == {'h': 32, 'S': 16} and ra[0] == 16 * 53 and rb[:2] == [16 * 53, 32]
    with pytest.raises(RuntimeError, match='no Y map'):
        heapmap.blocks(a, 'Y')
