import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmrl.errors import NmrlError
from nmrl.sparsity import DENSE, NMPattern, fits_2of4


def test_parse_valid_patterns():
    assert NMPattern.parse("2:4") == NMPattern(2, 4)
    assert NMPattern.parse(" 1 : 8 ") == NMPattern(1, 8)
    assert NMPattern.parse("dense") is DENSE
    assert NMPattern.parse("Dense").is_dense
    assert str(NMPattern(2, 4)) == "2:4" and str(DENSE) == "dense"
    assert NMPattern(1, 4).density == 0.25


@pytest.mark.parametrize("text", ["0:4", "5:4", "2:0", "a:b", "2/4", "", "2:4:8", "-1:4", "2.0:4"])
def test_parse_rejects_bad_patterns_with_a_clear_error(text):
    with pytest.raises(NmrlError, match="pattern"):
        NMPattern.parse(text)


def test_known_2of4_fits():
    assert fits_2of4(NMPattern(2, 4)) and fits_2of4(NMPattern(1, 4))
    assert fits_2of4(NMPattern(2, 8)) and fits_2of4(NMPattern(1, 8))
    assert not fits_2of4(NMPattern(4, 8)) and not fits_2of4(NMPattern(3, 4))
    assert not fits_2of4(DENSE)


def _is_nm(bits: tuple[int, ...], n: int, m: int) -> bool:
    return all(sum(bits[start : start + m]) <= n for start in range(0, len(bits), m))


def _every_nm_row_is_2of4(n: int, m: int, width: int) -> bool:
    """Brute force: enumerate every 0/1 row of this width; every N:M one must be 2:4."""
    return all(_is_nm(bits, 2, 4) for bits in itertools.product((0, 1), repeat=width) if _is_nm(bits, n, m))


@settings(deadline=None, max_examples=40)
@given(n=st.integers(1, 8), m=st.integers(1, 8))
def test_fits_2of4_matches_brute_force(n, m):
    if n > m:
        return
    # Width 12 spans a whole period lcm(4, M) of the two groupings for every M here except 5, 7
    # (whose violations, when they exist, already show within 12 columns).
    assert fits_2of4(NMPattern(n, m)) == _every_nm_row_is_2of4(n, m, 12)
