"""The f32 variant's float GEMM (ops.c mm_rows_f32_gemm): the matmul path for more than 4
activation rows, in every format (up to 4 take the fused vec_dot_f32 kernels, or one dequantized
row and a float dot per token for formats without them).  The weight rows are dequantized one
K slice (512 elements, whole blocks) at a time and multiplied by the tile kernel (4 rows x 3
tokens; cpu/dot.c).

* every format, on every CPU path: the float32 dot-product bound against the float64 product
  of the NumPy-side dequantized weights, with M, N and K past the tile, panel and slice edges;
* a result's bits do not depend on the tile that computed it: the same with 1 and 2 threads
  (another split of the rows into tasks) and for a token in a batch of 7 or of 5 (another
  split of the tokens into tiles).
"""
import numpy as np
import pytest

import pyfoundry as pf
from pyfoundry.reference import stages as R

from conftest import ALL_POLICIES, U, gamma, policy_ids



def weight(p, N, K, rng):
    if p.can_quantize:
        return pf.Tensor.from_numpy(rng.standard_normal((N, K)).astype(np.float32), p, "w")
    t = pf.testing.random_blocks(p, N, K, rng, max_abs=1e3)
    return pf.Tensor("w", (N, K), p, t.raw)


def k_for(p):
    """three K slices, the last one short (and for 1-element blocks not a multiple of 8)"""
    be = p.block_elems
    return 1100 if be == 1 else 1024 + max(be, 96 // be * be)


@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_f32_gemm_within_the_float32_bound(p, cpu_tier):
    rng = np.random.default_rng(hash((p.name, "gemm")) % 2**32)
    K = k_for(p)
    w = weight(p, 70, K, rng)  # two panels of 32 and 6 rows; tiles of 4 and 2 rows
    wd = w.dequantize().astype(np.float64)
    step = pf.compile("matmul", policy=p, variant="f32")
    for M in (5, 7, 130):  # token tiles of 3 with 2 and 1 left over
        x = rng.standard_normal((M, K)).astype(np.float32)
        x[:, ::5] = 0.0
        y = np.asarray(step(x, w), np.float64).reshape(M, 70)
        ref = R.matmul(x, wd).reshape(M, 70)
        mag = np.abs(x).astype(np.float64) @ np.abs(wd).T
        bound = gamma(K + 2) * mag + 4 * U * np.abs(ref) + 1e-30
        err = np.abs(y - ref)
        assert (err <= bound).all(), \
            f"{p.name} M={M} {cpu_tier}: err/bound {np.max(err / bound):.3g}"
        rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
        assert rel <= p.tolerances["f32"], f"{p.name} M={M} {cpu_tier}: rel L2 {rel:.3g}"


@pytest.mark.parametrize("p", [pf.policy(n) for n in ("f32", "q4_0", "q4_k", "iq2_xs")],
                         ids=lambda q: q.name)
def test_f32_gemm_bits_do_not_depend_on_the_tile(p, cpu_tier):
    rng = np.random.default_rng(11)
    K = k_for(p)
    w = weight(p, 75, K, rng)
    x = rng.standard_normal((7, K)).astype(np.float32)
    step = pf.compile("matmul", policy=p, variant="f32")
    old = pf.get_num_threads()
    try:
        pf.set_num_threads(1)
        y1 = np.asarray(step(x, w))
        pf.set_num_threads(2)
        y2 = np.asarray(step(x, w))
    finally:
        pf.set_num_threads(old)
    assert np.array_equal(y1, y2)
    y5 = np.asarray(step(x[:5], w))
    assert np.array_equal(y5, y2.reshape(7, -1)[:5])
    y6 = np.asarray(step(x[1:7], w))  # token 1 .. 6: other tiles of 3
    assert np.array_equal(y6, y2.reshape(7, -1)[1:7])
