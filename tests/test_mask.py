import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmrl.errors import NmrlError
from nmrl.sparsity import NMPattern, check_nm, finest_nm, nm_mask
from nmrl.sparsity.cpu_kernel import cpu_mask
from nmrl.sparsity.mask import tensor_nm_mask

patterns = st.sampled_from(
    [
        NMPattern(1, 4),
        NMPattern(2, 4),
        NMPattern(3, 4),
        NMPattern(1, 8),
        NMPattern(2, 8),
        NMPattern(4, 8),
        NMPattern(1, 2),
        NMPattern(3, 16),
    ]
)


@st.composite
def weights(draw):
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 21))
    # Few distinct values so that ties (incl. exact zeros) are common.
    values = draw(
        st.lists(
            st.sampled_from([0.0, 0.5, -0.5, 1.0, -2.0, 3.0, 0.25]) | st.floats(-4, 4),
            min_size=rows * cols,
            max_size=rows * cols,
        )
    )
    return torch.tensor(values, dtype=torch.float32).reshape(rows, cols)


@settings(deadline=None, max_examples=200)
@given(weight=weights(), pattern=patterns)
def test_mask_properties(weight, pattern):
    mask = nm_mask(weight, pattern)
    assert mask.shape == weight.shape and mask.dtype == weight.dtype
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    magnitude = weight.abs()
    for row in range(weight.shape[0]):
        for start in range(0, weight.shape[1], pattern.m):
            kept = mask[row, start : start + pattern.m].bool()
            group = magnitude[row, start : start + pattern.m]
            # every group keeps exactly min(N, group length) entries
            assert int(kept.sum()) == min(pattern.n, group.numel())
            # the kept ones are the largest magnitudes
            if (~kept).any():
                assert group[kept].min() >= group[~kept].max()
            # ties go to the lower index: no dropped entry equal to a kept one sits before it
            for i in torch.nonzero(~kept).flatten().tolist():
                later_equal_kept = [j for j in torch.nonzero(kept).flatten().tolist() if j > i]
                assert all(group[j] != group[i] for j in later_equal_kept)
    # the masked weight is N:M and masking is idempotent
    masked = weight * mask
    assert check_nm(masked, pattern) == []
    assert torch.equal(nm_mask(masked, pattern) * masked, masked)
    assert torch.equal(nm_mask(weight, pattern), mask)  # deterministic


@settings(deadline=None, max_examples=200)
@given(
    weight=weights(),
    pattern=st.sampled_from([NMPattern(1, 4), NMPattern(2, 4), NMPattern(3, 4), NMPattern(1, 2), NMPattern(1, 8)]),
    double=st.booleans(),
)
def test_cpu_kernels_match_tensor_code(weight, pattern, double):
    """The compiled N:4 and 1:M kernels and the tensor code (GPUs, other dtypes) give the same mask."""
    weight = weight.double() if double else weight
    kernel_mask = cpu_mask(weight, pattern.n, pattern.m)
    assert kernel_mask is not None, "numba is a dependency: the CPU kernels must be available"
    assert kernel_mask.dtype == weight.dtype
    assert torch.equal(kernel_mask, tensor_nm_mask(weight, pattern))


def test_cpu_kernels_on_training_shapes():
    torch.manual_seed(0)
    for shape in [(256, 256), (256, 35), (8, 256), (1, 3)]:
        weight = torch.randn(shape)
        weight[:, :8] = 0.5  # ties across whole groups
        for pattern in (NMPattern(1, 4), NMPattern(2, 4), NMPattern(3, 4), NMPattern(1, 8), NMPattern(1, 16)):
            assert torch.equal(cpu_mask(weight, pattern.n, pattern.m), tensor_nm_mask(weight, pattern))
    # writing into a layer's mask buffer moves its version counter, as an in-place op does
    mask = torch.zeros(8, 8)
    version = mask._version
    assert nm_mask(torch.randn(8, 8), NMPattern(2, 4), out=mask) is mask
    assert mask._version > version and mask.sum() == 32
    # other devices and dtypes go to the tensor code
    assert cpu_mask(torch.randn(4, 8, dtype=torch.float16), 2, 4) is None
    assert cpu_mask(torch.randn(4, 8), 2, 8) is None  # 2:8 has no kernel


def test_without_numba_masks_come_from_the_tensor_code(monkeypatch):
    from nmrl.sparsity import cpu_kernel

    weight = torch.randn(16, 35)
    expected = tensor_nm_mask(weight, NMPattern(2, 4))
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    cpu_kernel._compile.cache_clear()
    try:
        assert cpu_mask(weight, 2, 4) is None
        assert torch.equal(nm_mask(weight, NMPattern(2, 4)), expected)
    finally:
        monkeypatch.undo()
        cpu_kernel._compile.cache_clear()  # later tests compile (or load) the real kernels again
    assert cpu_mask(weight, 2, 4) is not None


def test_tail_group_and_exact_values():
    weight = torch.tensor([[1.0, -5.0, 2.0, 0.5, 3.0, -4.0]])  # groups [1,-5,2,.5] and tail [3,-4]
    assert nm_mask(weight, NMPattern(2, 4)).tolist() == [[0, 1, 1, 0, 1, 1]]
    assert nm_mask(weight, NMPattern(1, 4)).tolist() == [[0, 1, 0, 0, 0, 1]]
    ties = torch.zeros(2, 8)
    assert nm_mask(ties, NMPattern(2, 4)).tolist() == [[1, 1, 0, 0, 1, 1, 0, 0]] * 2


def test_check_nm_reports_violating_groups():
    weight = torch.tensor([[1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]])
    violations = check_nm(weight, NMPattern(2, 4))
    assert [(v.row, v.group, v.nonzeros) for v in violations] == [(0, 0, 3), (1, 1, 4)]
    assert check_nm(weight, NMPattern(4, 4)) == []


def test_finest_nm():
    weight = torch.randn(16, 64)
    assert finest_nm(weight * nm_mask(weight, NMPattern(1, 8))) == NMPattern(1, 8)
    assert finest_nm(weight * nm_mask(weight, NMPattern(2, 4))) == NMPattern(2, 4)
    assert finest_nm(torch.ones(4, 64)) is None


def test_mask_rejects_non_2d_weight():
    with pytest.raises(NmrlError, match="2-D"):
        nm_mask(torch.ones(2, 3, 4), NMPattern(2, 4))
