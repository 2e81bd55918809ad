# Capacity reserve from a commitment (issue 11 groundwork; docs/schedule.md, "Reserve").
#
# Pure integer arithmetic (lib/bess_config.py's reserve_bp, which the device runs on every
# config with a commitment it validates; here its arguments are checked, for the host tools: the planner), never
# per cycle: the products below exceed 2**30 for MW-scale commitments, which is
# fine outside the control path. Units: W, s, Wh, SoC and shares in basis points (bp, 0.01 %).

from bess_core import is_int
from bess_config import SOC_FULL_BP, energy_wh, reserve_bp

__all__ = ('SOC_FULL_BP', 'energy_wh', 'reserve_soc_bp')


def reserve_soc_bp(committed_w, event_duration_s, capacity_wh, derate_bp=0, availability_bp=SOC_FULL_BP,
                   min_soc_bp=0):
    """SoC (bp of the rated capacity) to hold so that an event can be delivered in full.

    capacity_wh: rated (nameplate) capacity; derate_bp: capacity lost to ageing (2000 = the
    battery holds 80 % of its rating); availability_bp: share of the fleet's capacity that can be
    counted on (a single site: 10000); min_soc_bp: the floor the event may discharge down to.
    The seed's example: 2 MW for 1 h over 5 MWh = 40 %; with 20 % ageing 50 %, and 95 %
    availability 52.63 % -> 5264 bp (the "50-55 %" working reserve). Rounded up: never short.
    Raises ValueError when the commitment cannot be held at all (reserve above 100 %)."""
    for name, v in (('committed_w', committed_w), ('event_duration_s', event_duration_s),
                    ('capacity_wh', capacity_wh), ('derate_bp', derate_bp),
                    ('availability_bp', availability_bp), ('min_soc_bp', min_soc_bp)):
        if not is_int(v):
            raise ValueError('%s must be an integer, got %r' % (name, v))
    if committed_w < 0 or event_duration_s < 0:
        raise ValueError('committed_w and event_duration_s must be >= 0')
    if capacity_wh <= 0:
        raise ValueError('capacity_wh must be > 0')
    if not 0 <= derate_bp < SOC_FULL_BP or not 0 < availability_bp <= SOC_FULL_BP:
        raise ValueError('derate_bp must be 0..9999 and availability_bp 1..10000')
    if not 0 <= min_soc_bp < SOC_FULL_BP:
        raise ValueError('min_soc_bp must be 0..9999')
    r = reserve_bp(committed_w, event_duration_s, capacity_wh, derate_bp, availability_bp, min_soc_bp)
    if r > SOC_FULL_BP:
        raise ValueError('the commitment needs %d Wh, more than the usable capacity holds above min SoC '
                         '(reserve %d.%02d %% > 100 %%)' % (energy_wh(committed_w, event_duration_s), r // 100,
                                                             r % 100))
    return r
