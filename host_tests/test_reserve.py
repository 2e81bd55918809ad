"""lib/reserve.py: the capacity reserve from a commitment (the seed's arithmetic)."""
import random

import pytest

import reserve


def test_the_seed_example():
    # 2 MW committed for a one-hour event over a 5 MWh fleet
    assert reserve.energy_wh(2000000, 3600) == 2000000
    assert reserve.reserve_soc_bp(2000000, 3600, 5000000) == 4000                     # 40 %
    assert reserve.reserve_soc_bp(2000000, 3600, 5000000, derate_bp=2000) == 5000     # 20 % ageing
    assert reserve.reserve_soc_bp(2000000, 3600, 5000000, 2000, 9500) == 5264         # "50-55 %"
    assert reserve.reserve_soc_bp(2000000, 3600, 5000000, min_soc_bp=1000) == 5000    # on top of min SoC


def test_never_short_and_monotonic():
    rng = random.Random(11)
    for _ in range(2000):
        w, s = rng.randint(0, 5000000), rng.randint(0, 4 * 3600)
        cap = rng.randint(1000, 50000000)
        der, av, mn = rng.randint(0, 5000), rng.randint(5000, 10000), rng.randint(0, 3000)
        try:
            r = reserve.reserve_soc_bp(w, s, cap, der, av, mn)
        except ValueError:
            continue
        # the energy above min SoC, counted at the derated, available capacity, covers the event
        held = (r - mn) * cap * (10000 - der) * av
        assert held >= reserve.energy_wh(w, s) * 10000 ** 3
        # and is at most one basis point more than needed
        assert (r - 1 - mn) * cap * (10000 - der) * av < reserve.energy_wh(w, s) * 10000 ** 3 or r == mn
        assert reserve.reserve_soc_bp(w + 1000, s, cap, der, av, mn) >= r if w + 1000 <= 5000000 else True


@pytest.mark.parametrize('args, needle', [
    ((2000000, 3600, 1000000), 'more than the usable capacity'),
    ((1000, 3600, 0), 'capacity_wh'),
    ((-1, 3600, 1000), '>= 0'),
    ((1000, 3600, 1000, 10000), 'derate_bp'),
    ((1000, 3600, 1000, 0, 0), 'availability_bp'),
    ((1000.0, 3600, 1000), 'integer'),
    ((True, 3600, 1000), 'integer'),
])
def test_bad_input_says_why(args, needle):
    with pytest.raises(ValueError) as e:
        reserve.reserve_soc_bp(*args)
    assert needle in str(e.value)
