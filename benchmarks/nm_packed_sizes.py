"""Size of N:M weights in nm-packed form (values + bit-packed in-group indices) vs dense.

Packs a random 1024x1024 weight per pattern and dtype with nmrl.export.packed and checks the round
trip; prints packed bytes vs the same weight dense in its own type and dense in fp32 (int8 values
are what an int8 Q/DQ policy packs). Run: python benchmarks/nm_packed_sizes.py
"""

from __future__ import annotations

import numpy as np

from nmrl.export.packed import pack_weight, unpack_weight
from nmrl.sparsity.pattern import NMPattern


def random_nm(rows: int, cols: int, pattern: NMPattern, dtype: type, rng: np.random.Generator) -> np.ndarray:
    weight = (rng.standard_normal((rows, cols)) * 20 + 60).clip(1, 127).astype(dtype)  # nonzero, int8-safe
    groups = weight.reshape(rows, cols // pattern.m, pattern.m)
    drop = np.argsort(rng.random(groups.shape), axis=-1)[..., pattern.n :]
    np.put_along_axis(groups, drop, 0, axis=-1)
    return groups.reshape(rows, cols)


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'pattern':<8} {'dtype':<8} {'dense B':>10} {'packed B':>10} {'ratio':>7} {'vs fp32':>8}")
    for pattern in (NMPattern(2, 4), NMPattern(1, 4), NMPattern(2, 8), NMPattern(1, 8)):
        for dtype in (np.float32, np.float16, np.int8):
            weight = random_nm(1024, 1024, pattern, dtype, rng)
            packed = pack_weight(weight, 1, pattern)
            assert np.array_equal(unpack_weight(packed), weight)
            print(
                f"{pattern!s:<8} {np.dtype(dtype).name:<8} {weight.nbytes:>10,} {packed.nbytes:>10,} "
                f"{packed.nbytes / weight.nbytes:>7.4f} {packed.nbytes / (weight.size * 4):>8.4f}"
            )


if __name__ == "__main__":
    main()
