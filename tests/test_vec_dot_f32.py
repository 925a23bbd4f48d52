"""The f32 variant's fused GEMV kernels (policy hook vec_dot_f32: decode + multiply-add of one
weight row against float x), on every CPU path (portable, AVX2, all detected features).

* Policy.vec_dot_f32 (a debug binding of the hook) against the float64 dot of the NumPy-side
  dequantized weights: |y - ref| <= gamma(K + 2) * sum |w x| + 4u |ref| (the float32
  dot-product bound, whatever the summation order; the kernels form each weight with at most
  one extra rounding, covered by the +2), for quantized Gaussian rows and for random blocks
  (any code pattern), with K not a multiple of 256 where the block allows; and the relative
  L2 error over many rows within the policy's tolerances["f32"].
* Policy.vec_dot_f32_rows (the row-range form the matmul stages run: the format's own kernel
  where it has one, which rearranges x once per call) against the same bound, with rows past
  the kernel's batch of 64 and its span of 8192 elements, and each row's result independent of
  the other rows of the call.
* the f32-variant matmul stage for M <= 4 (the fused path) and M = 5 (the float GEMM,
  tests/test_f32_gemm.py) against the reference, as tests/test_stages.py.
"""
import numpy as np
import pytest

import pyfoundry as pf
from pyfoundry.reference import stages as R

from conftest import U, gamma

REQUIRED = {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl", "iq4_xs", "q2_k", "q3_k", "q4_k",
            "q5_k", "q6_k"}
HOOKED = [p for p in pf.policies if p.has_vec_dot_f32]


def ks(p):
    be = p.block_elems
    out = {be, 3 * be, 4096, 16 * be + be}
    if be < 256:
        out |= {288, 576}  # not multiples of 256
    return sorted(k for k in out if k % be == 0)


def test_required_formats_have_the_hook():
    assert REQUIRED <= {p.name for p in HOOKED}


def assert_within_f32_bound(p, y, wd, x, what):
    """y (one dot per row of wd) within the float32 dot-product bound of the float64 wd @ x,
    and within the policy's f32 tolerance (relative L2)"""
    ref = wd @ x.astype(np.float64)
    mag = np.abs(wd) @ np.abs(x.astype(np.float64))
    bound = gamma(wd.shape[1] + 2) * mag + 4 * U * np.abs(ref) + 1e-30
    err = np.abs(np.asarray(y, np.float64) - ref)
    assert (err <= bound).all(), f"{p.name} {what}: err/bound {np.max(err / bound):.3g}"
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert rel <= p.tolerances["f32"], f"{p.name} {what}: rel L2 {rel:.3g}"


def rows_for(p, rows, K, rng, kind):
    if kind == "quantized" and p.can_quantize:
        raw = p.quantize(rng.standard_normal((rows, K)).astype(np.float32))
    else:
        raw = pf.testing.random_blocks(p, rows, K, rng, max_abs=1e3).raw
    raw = np.asarray(raw).reshape(rows, -1)
    return raw, p.dequantize(raw).astype(np.float64).reshape(rows, K)


@pytest.mark.parametrize("kind", ["quantized", "random"])
@pytest.mark.parametrize("p", HOOKED, ids=[p.name for p in HOOKED])
def test_vec_dot_f32_matches_float64_dot(p, kind, cpu_tier):
    rng = np.random.default_rng(hash((p.name, kind)) % 2**32)
    for K in ks(p):
        rows = 8
        raw, wd = rows_for(p, rows, K, rng, kind)
        x = rng.standard_normal(K).astype(np.float32)
        y = np.array([p.vec_dot_f32(raw[r], x) for r in range(rows)])
        assert_within_f32_bound(p, y, wd, x, f"{kind} K={K} {cpu_tier}")


ROWS_HOOKED = {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl", "iq4_xs", "q2_k", "q3_k", "q4_k",
               "q5_k", "q6_k"}
# formats whose AVX-512 row-range kernel gives each row its one-row kernel's bits
AVX512_ROWS_SAME_BITS = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl"]


def test_row_range_kernels_are_the_listed_formats():
    assert {p.name for p in pf.policies if p.has_vec_dot_f32_rows} == ROWS_HOOKED
    assert all(p.has_vec_dot_f32 for p in pf.policies if p.has_vec_dot_f32_rows)


def rows_ks(p):
    be = p.block_elems
    out = {be, 9 * be, 2048, 8192 + 3 * be, 16384}  # odd block counts, one and three spans
    return sorted(k for k in out if k % be == 0 and k <= 16384)


@pytest.mark.parametrize("kind", ["quantized", "random"])
@pytest.mark.parametrize("p", HOOKED, ids=[p.name for p in HOOKED])
def test_vec_dot_f32_rows_matches_float64_dot(p, kind, cpu_tier):
    rng = np.random.default_rng(hash((p.name, kind, "rows")) % 2**32)
    for K in rows_ks(p):
        rows = 67 if K <= 2048 else 5  # past one batch of 64, an odd last row
        raw, wd = rows_for(p, rows, K, rng, kind)
        x = rng.standard_normal(K).astype(np.float32)
        x[::7] = 0.0
        x[3::11] *= np.float32(1e-20)  # small, still scaled exactly
        y = p.vec_dot_f32_rows(raw, x).astype(np.float64)
        assert y.shape == (rows,)
        assert_within_f32_bound(p, y, wd, x, f"{kind} K={K} {cpu_tier}")


@pytest.mark.parametrize("p", HOOKED, ids=[p.name for p in HOOKED])
def test_vec_dot_f32_rows_a_row_does_not_depend_on_the_call(p, cpu_tier):
    """the bits of a row's result are the same alone, in any slice of rows and in any pairing
    (the kernels run two rows per pass and 64 per batch)"""
    rng = np.random.default_rng(3)
    K = 4 * max(p.block_elems, 64)
    raw, _ = rows_for(p, 70, K, rng, "random")
    x = rng.standard_normal(K).astype(np.float32)
    y = p.vec_dot_f32_rows(raw, x)
    for r in (0, 1, 63, 64, 69):
        assert p.vec_dot_f32_rows(raw[r:r + 1], x)[0] == y[r]
    assert np.array_equal(p.vec_dot_f32_rows(raw[1:], x), y[1:])
    assert np.array_equal(p.vec_dot_f32_rows(raw[5:68], x), y[5:68])


@pytest.mark.parametrize("name", AVX512_ROWS_SAME_BITS)
def test_avx512_row_range_kernels_give_the_one_row_bits(name):
    """with AVX-512, these formats' row-range kernels (four rows per pass, a rearranged x for
    the nibble formats without fifth bits) and the one-row kernel are the same arithmetic: the
    same bits for every row count (whole groups of four and the rows after them), odd and even
    block counts, one span of x and three"""
    if "avx512" not in pf.cpu_features()["detected"]:
        pytest.skip("no AVX-512 on this CPU")
    p = pf.policy(name)
    rng = np.random.default_rng(11)
    for rows, K in [(1, 32), (3, 96), (4, 64), (7, 576), (9, 1536), (5, 8192 + 96),
                    (67, 8192 + 64)]:
        raw, _ = rows_for(p, rows, K, rng, "random")
        x = rng.standard_normal(K).astype(np.float32)
        y = p.vec_dot_f32_rows(raw, x)
        one = np.array([p.vec_dot_f32(raw[r], x) for r in range(rows)], np.float32)
        assert np.array_equal(y.view(np.uint32), one.view(np.uint32)), (name, rows, K)


@pytest.mark.parametrize("p", HOOKED, ids=[p.name for p in HOOKED])
def test_vec_dot_f32_rows_rejects_bad_sizes(p):
    K = 2 * p.block_elems
    with pytest.raises(pf.ShapeError):
        p.vec_dot_f32_rows(np.zeros(3 * p.block_bytes, np.uint8), np.zeros(K, np.float32))
    with pytest.raises(pf.ShapeError):
        p.vec_dot_f32_rows(np.zeros((2, 2 * p.block_bytes), np.uint8),
                           np.zeros(K + 1, np.float32))


@pytest.mark.parametrize("p", HOOKED, ids=[p.name for p in HOOKED])
def test_vec_dot_f32_rejects_bad_sizes(p):
    x = np.zeros(p.block_elems + 1, np.float32)
    with pytest.raises(pf.ShapeError):
        p.vec_dot_f32(np.zeros(p.block_bytes, np.uint8), x)


def test_vec_dot_f32_unsupported_format():
    p = next((q for q in pf.policies if not q.has_vec_dot_f32 and q.block_elems == 32), None)
    if p is None:
        pytest.skip("every 32-element format has the hook")
    with pytest.raises(pf.FoundryNotImplementedError):
        p.vec_dot_f32(np.zeros(p.block_bytes, np.uint8), np.zeros(32, np.float32))


@pytest.mark.parametrize("p", HOOKED, ids=[p.name for p in HOOKED])
def test_f32_matmul_stage_fused_and_unfused(p, cpu_tier):
    rng = np.random.default_rng(7)
    step = pf.compile("matmul", policy=p, variant="f32")
    for M, N, K in [(1, 33, 4 * p.block_elems), (2, 9, 8 * p.block_elems), (4, 5, 256 * 3),
                    (5, 7, 512)]:
        if K % p.block_elems:
            continue
        if p.can_quantize:
            w = pf.Tensor.from_numpy(rng.standard_normal((N, K)).astype(np.float32), p, "w")
        else:
            t = pf.testing.random_blocks(p, N, K, rng, max_abs=1e3)
            w = pf.Tensor("w", (N, K), p, t.raw)
        wd = w.dequantize().astype(np.float64)
        x = rng.standard_normal((M, K)).astype(np.float32)
        y = np.asarray(step(x[0] if M == 1 else x, w), np.float64).reshape(M, N)
        ref = R.matmul(x, wd).reshape(M, N)
        mag = np.abs(x).astype(np.float64) @ np.abs(wd).T
        bound = gamma(K + 2) * mag + 4 * U * np.abs(ref) + 1e-30
        err = np.abs(y - ref)
        assert (err <= bound).all(), \
            f"{p.name} M={M} {cpu_tier}: err/bound {np.max(err / bound):.3g}"
        rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
        assert rel <= p.tolerances["f32"], f"{p.name} M={M} {cpu_tier}: rel L2 {rel:.3g}"
