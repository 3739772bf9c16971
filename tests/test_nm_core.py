"""The one N:M counting core and the one 2:4 verdict, and the callers that must agree on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from deploy_support import gemm_model, nm_along
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nmrl.deploy.onnx_gemms import read_graph_info
from nmrl.export.packed import pack_weight, unpack_weight
from nmrl.export.verify import inspect_model
from nmrl.sparsity import NMLinear, check_nm, nm_mask
from nmrl.sparsity import semi_structured as ss
from nmrl.sparsity.nm_core import finest_nm, fits_2of4, nm_violations, violating_groups, weights_fit_2of4
from nmrl.sparsity.pattern import NMPattern
from nmrl.sparsity.two_four import (
    DTYPE,
    FOR_TENSORRT,
    FOR_TORCH_KERNELS,
    K_MULTIPLE_OF_4,
    STRUCTURE,
    TILE,
    verdict_of_pattern,
    verdict_of_weights,
)

PATTERNS = (NMPattern(1, 4), NMPattern(2, 4), NMPattern(3, 4), NMPattern(1, 8), NMPattern(2, 8), NMPattern(4, 16))


def _direct_violations(weight: np.ndarray, pattern: NMPattern) -> list[tuple[int, int, int]]:
    """The definition, read literally: row by row, slices of M along K (the last one as long as
    what is left), each holding at most N nonzeros."""
    found = []
    for row in range(weight.shape[0]):
        for group, start in enumerate(range(0, weight.shape[1], pattern.m)):
            nonzeros = sum(1 for value in weight[row, start : start + pattern.m] if value != 0)
            if nonzeros > pattern.n:
                found.append((row, group, nonzeros))
    return found


def _direct_finest(weight: np.ndarray, ms: tuple[int, ...] = (4, 8, 16)) -> NMPattern | None:
    """Every N:M with M in ``ms`` (M <= K) and N < M that the weight obeys; the sparsest, smaller M on ties."""
    obeyed = [
        NMPattern(n, m)
        for m in ms
        if m <= weight.shape[1]
        for n in range(1, m)
        if not _direct_violations(weight, NMPattern(n, m))
    ]
    return min(obeyed, key=lambda p: (p.density, p.m), default=None)


# Small integers: many exact zeros and many ties in magnitude; widths that leave short last groups.
weights = st.tuples(st.integers(1, 5), st.integers(1, 23), st.integers(0, 2**32 - 1)).map(
    lambda args: np.random.default_rng(args[2]).choice([-2.0, -1.0, 0.0, 0.0, 1.0, 2.0], size=args[:2])
)


@settings(max_examples=60, deadline=None)
@given(weight=weights)
def test_core_counts_as_the_direct_definition(weight: np.ndarray) -> None:
    for pattern in PATTERNS:
        direct = _direct_violations(weight, pattern)
        assert [(v.row, v.group, v.nonzeros) for v in violating_groups(weight, 1, pattern)] == direct
        assert nm_violations(weight, 1, pattern) == len(direct)
        assert nm_violations(weight.T, 0, pattern) == len(direct)  # the same groups, K on the other axis
        assert [(v.row, v.group, v.nonzeros) for v in check_nm(torch.from_numpy(weight), pattern)] == direct
        # a mask the trainer makes (ties broken by index) obeys its pattern by the core's count
        masked = weight * nm_mask(torch.from_numpy(weight), pattern).numpy()
        assert nm_violations(masked, 1, pattern) == 0
        # nm-packed storage takes exactly the weights the core says obey, and gives them back
        if direct:
            with pytest.raises(Exception, match="groups hold more than"):
                pack_weight(weight, 1, pattern)
        else:
            np.testing.assert_array_equal(unpack_weight(pack_weight(weight, 1, pattern)), weight)
    assert finest_nm(weight, 1) == _direct_finest(weight)
    assert finest_nm(weight.T, 0) == _direct_finest(weight)
    assert weights_fit_2of4(weight, 1) == (not _direct_violations(weight, NMPattern(2, 4)))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_fits_2of4_from_a_pattern_agrees_with_the_weights_it_allows(pattern: NMPattern) -> None:
    weight = nm_along((32, 48), axis=1, n=pattern.n, m=pattern.m)
    assert weights_fit_2of4(weight, 1) == fits_2of4(pattern)


def test_the_short_last_group_holds_at_most_n() -> None:
    # K = 6 under 2:4: columns 4-5 are the short last group; two nonzeros there are allowed,
    weight = np.array([[1.0, 1.0, 0.0, 0.0, 1.0, 1.0]])
    assert nm_violations(weight, 1, NMPattern(2, 4)) == 0
    # and under 1:4 the short group may hold only one.
    assert [(v.row, v.group, v.nonzeros) for v in violating_groups(weight, 1, NMPattern(1, 4))] == [
        (0, 0, 2),
        (0, 1, 2),
    ]


# ------------------------------------------------------------------------------------------
# The verdict, layer by layer, on hand-made weights


def test_a_2of4_fp16_weight_passes_every_layer() -> None:
    verdict = verdict_of_weights(nm_along((32, 64), 1, 2, 4, dtype=np.float16), 1, "float16")
    assert verdict.failures == () and verdict.fits()


def test_k_not_a_multiple_of_4_fails_that_layer() -> None:
    verdict = verdict_of_weights(nm_along((32, 62), 1, 2, 4), 1, "float16")
    assert [layer for layer, _ in verdict.failures] == [K_MULTIPLE_OF_4, TILE]
    assert verdict.reasons(FOR_TENSORRT) == ("K=62 not a multiple of 4",)
    assert verdict.fits((STRUCTURE,))


def test_fp32_has_no_sparse_form_but_fits_the_torch_kernels_question() -> None:
    verdict = verdict_of_weights(nm_along((32, 64), 1, 2, 4), 1, "float32")
    assert [layer for layer, _ in verdict.failures] == [DTYPE]
    assert verdict.reasons(FOR_TENSORRT) == ("float32: needs fp16/bf16/int8/fp8",)
    assert verdict.fits(FOR_TORCH_KERNELS)  # the selection runs the layer in fp16/bf16 itself


@pytest.mark.parametrize(
    ("shape", "dtype", "backend", "fits"),
    [
        ((16, 16), "float16", "cusparselt", True),
        ((8, 64), "float16", "cusparselt", False),  # an action head: 8 rows
        ((48, 24), "bfloat16", "cusparselt", False),  # K = 24: not a multiple of 16
        ((16, 32), "int8", "cusparselt", False),  # int8 tiles are 32 x 32
        ((32, 32), "int8", "cusparselt", True),
        ((256, 48), "float16", "cutlass", False),  # CUTLASS tiles are 32 x 64
        ((256, 64), "float16", "cutlass", True),
    ],
)
def test_tile_shape_layer(shape, dtype, backend, fits) -> None:
    verdict = verdict_of_weights(nm_along(shape, 1, 2, 4), 1, dtype, backend)
    assert verdict.fits((TILE,)) is fits
    assert verdict.fits((STRUCTURE, K_MULTIPLE_OF_4, DTYPE))  # the other layers hold: only the tile decides


def test_broken_structure_names_a_group_and_fails_only_that_layer() -> None:
    weight = nm_along((16, 16), 1, 2, 4).astype(np.float16)
    weight[3, 4:8] = 1.0
    verdict = verdict_of_weights(weight, 1, "float16")
    assert [layer for layer, _ in verdict.failures] == [STRUCTURE]
    assert verdict.reasons() == (
        "not 2:4 along K: 1 of 64 groups of 4 hold more than 2 nonzeros (e.g. row 3, K 4-7: 4)",
    )
    pattern_verdict = verdict_of_pattern(NMPattern(3, 4), (16, 16), "float16")
    assert pattern_verdict.reasons() == ("pattern 3:4 is not 2:4-compatible",)
    assert not verdict_of_pattern(NMPattern(1, 1), (16, 16), "float16").fits((STRUCTURE,))  # dense


# ------------------------------------------------------------------------------------------
# inspect, deploy build and the semi-structured selection ask the same verdict


def _cases() -> dict[str, np.ndarray]:
    broken = nm_along((32, 64), 1, 2, 4)
    broken[5, 8:12] = 2.0
    return {
        "2:4": nm_along((32, 64), 1, 2, 4),
        "1:8": nm_along((32, 64), 1, 1, 8),
        "4:8": nm_along((32, 64), 1, 4, 8, seed=1),
        "broken": broken,
        "dense": nm_along((32, 64), 1, 4, 4),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_inspect_build_and_selection_give_the_same_answer(tmp_path, name: str) -> None:
    weight = _cases()[name].astype(np.float16)
    path = tmp_path / "gemm.onnx"
    path.write_bytes(gemm_model(weight, trans_b=1).SerializeToString())
    (inspected,) = inspect_model(path).layers
    (built,) = read_graph_info(path).gemms
    linear = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
    selected = ss.layer_verdict(linear, "cusparselt")
    choice = ss.choose_layers([("layer", linear)], ss.SemiStructuredSupport(True, "test", backend="cusparselt"))[0]

    expected = not _direct_violations(weight, NMPattern(2, 4))
    assert inspected.pattern_2of4 is built.fits_2of4 is selected.fits((STRUCTURE,)) is choice.sparse is expected
    assert inspected.eligible_2of4 is expected  # fp16, K = 64
    assert inspected.reasons == built.reasons == selected.reasons(FOR_TENSORRT)
    if not expected:
        assert choice.reason == inspected.reasons[0]
    # An NMLinear is judged from its pattern, with the same answer when its weights are that pattern.
    if name in ("2:4", "1:8", "4:8"):
        layer = NMLinear(64, 32, NMPattern.parse(name))
        assert ss.layer_verdict(layer, "cusparselt").fits(FOR_TORCH_KERNELS) is expected
