"""The q8 variant's prefill GEMM (foundry_c/src/cpu/gemm.c) and the policies' to_i8 hooks it is
built on.  Every policy of the registry that has the hook is tested; the references are the
policies' dequantize and the NumPy stage references, not the code under test.

* to_i8: scale * q + min (per 16 elements) equals the policy's dequantize on random blocks, to
  float rounding of that expression (bit-exact for every format whose decode is that
  expression; int8 moves 128 * scale into the min, a rounding-level difference).
* matmul, q8 variant, M >= 2 (prefill shapes): the bounds of tests/test_stages.py (normalized
  error <= tolerances["q8"] against the float64 reference; relative L2 <= 1e-5 against the
  reference on the activations quantized and dequantized in the dot_type), with K not a
  multiple of 64 where the block size allows, N not a multiple of the 16-row tile, and bias,
  activation and accumulate.
* the GEMM against the per-token vec_dot path (M = 1 calls stacked): relative L2 <= 1e-5.
* every CPU tier (portable, AVX2, all) and every thread count: the same numbers (tiers to
  rounding, thread counts bit for bit).
* the AVX2 tier's two micro-kernels (vpmaddubsw on u8 codes for tiles whose codes span at most
  32 values, int16 widening for the others; PYFOUNDRY_GEMM_I16=1 forces the latter): the same
  bits, on random codes, Gaussian weights and the int16 sums' worst case.
"""
import numpy as np
import pytest

import pyfoundry as pf
from pyfoundry import _core
from pyfoundry.reference import stages as R

from conftest import ALL_POLICIES, CPU_TIERS, policy_ids

U = 2.0 ** -24
TO_I8 = [p for p in ALL_POLICIES if p.has_to_i8]
WEIGHTS = [p for p in TO_I8 if not p.is_activation and p.dot_type
           and pf.policy(p.dot_type).has_to_i8]
TIERS = list(CPU_TIERS.values())
TIER_IDS = list(CPU_TIERS)


def rel_l2(a, b):
    b = np.asarray(b, np.float64)
    n = np.linalg.norm(b)
    d = np.linalg.norm(np.asarray(a, np.float64) - b)
    return d / n if n else d


def k_for(p, mult=3):
    """a row length the policy and its dot_type tile: odd multiples of 32 (not of 64) where
    the block sizes allow"""
    be = max(p.block_elems, pf.policy(p.dot_type).block_elems if p.dot_type else 1, 32)
    return be * mult


def weight(p, N, K, seed, random_codes=False):
    """quantized Gaussian weights (as tests/test_stages.py), or random blocks: every code,
    extreme ones included (int8 -128, 5- and 6-bit ends), with scales over the format's range"""
    rng = np.random.default_rng(seed)
    if p.can_quantize and not random_codes:
        return pf.Tensor.from_numpy(rng.standard_normal((N, K)).astype(np.float32), p, "w")
    t = pf.testing.random_blocks(p, N, K, rng, max_abs=8.0)
    return pf.Tensor("w", (N, K), p, t.raw)


def acts(M, K, seed):
    return np.random.default_rng(seed).standard_normal((M, K)).astype(np.float32)


def emulated_x(p, x):
    a = pf.policy(p.dot_type)
    return a.dequantize(a.quantize(x))


def check_q8(y, x, wd, p, what, **kw):
    ref = R.matmul(x, wd, **kw)
    x2 = np.atleast_2d(x).astype(np.float64)
    norms = np.linalg.norm(x2, axis=1)[:, None] * np.linalg.norm(wd.astype(np.float64), axis=1)
    e = np.max(np.abs(np.asarray(y, np.float64) - ref) / norms)
    assert e <= p.tolerances["q8"], f"{what}: q8 normalized error {e:.3g}"
    emu = R.matmul(emulated_x(p, x), wd, **kw)
    assert rel_l2(y, emu) <= 1e-5, f"{what}: vs emulated integer dot {rel_l2(y, emu):.3g}"


def test_registry_has_the_hook_where_expected():
    names = {p.name for p in TO_I8}
    for n in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k", "q2_k", "q3_k",
              "iq4_nl", "iq4_xs", "mxfp4", "q8_1", "q8_k"):
        assert n in names, n
    for p in ALL_POLICIES:
        if p.dot_type and p.has_to_i8:
            assert pf.policy(p.dot_type).has_to_i8, f"{p.name}: dot_type {p.dot_type} lacks it"


@pytest.mark.parametrize("p", TO_I8, ids=policy_ids(TO_I8))
def test_to_i8_round_trip(p):
    rng = np.random.default_rng(1)
    rows, K = 6, p.block_elems * 4
    raw = np.ascontiguousarray(pf.testing.random_blocks(p, rows, K, rng, max_abs=1e3).raw)
    q, sc, mn = _core.to_i8(p.gguf_type, raw.reshape(-1), rows * K)
    assert q.dtype == np.int8 and q.shape == (rows * K,)
    assert sc.shape == mn.shape == (rows * K // 16,)
    s16, m16 = np.repeat(sc, 16), np.repeat(mn, 16)
    prod = (s16 * q.astype(np.float32)).astype(np.float32)
    v = (prod + m16).astype(np.float32)
    ref = p.dequantize(raw, (rows * K,))
    bound = 4 * U * (np.abs(prod) + np.abs(m16)) + 1e-38
    err = np.abs(v.astype(np.float64) - ref)
    assert (err <= bound).all(), f"{p.name}: max err/bound {np.max(err / bound):.3g}"
    if p.is_activation:
        assert (mn == 0).all()


def test_to_i8_rejects_bad_sizes():
    p = pf.policy("q4_0")
    with pytest.raises(ValueError):
        _core.to_i8(p.gguf_type, np.zeros(18, np.uint8), 64)
    with pytest.raises(ValueError):
        _core.to_i8(p.gguf_type, np.zeros(18, np.uint8), 31)


@pytest.mark.parametrize("p", WEIGHTS, ids=policy_ids(WEIGHTS))
def test_gemm_matches_reference_and_vec_dot(p):
    K, N = k_for(p), 37
    w = weight(p, N, K, 2)
    wd = w.dequantize()
    step = pf.compile("matmul", policy=p, variant="q8")
    for M in (2, 3, 5, 17, 64):
        x = acts(M, K, 100 + M)
        y = step(x, w)
        assert y.shape == (M, N)
        check_q8(y, x, wd, p, f"{p.name} M={M} K={K}")
        # the per-token vec_dot path (M = 1) on the same activations
        stacked = np.stack([step(x[i], w) for i in range(M)])
        assert rel_l2(y, stacked) <= 1e-5, f"{p.name} M={M}: vs M=1 rows {rel_l2(y, stacked):.3g}"


@pytest.mark.parametrize("p", WEIGHTS, ids=policy_ids(WEIGHTS))
def test_gemm_bias_activation_accumulate(p):
    K, N, M = k_for(p, 5), 21, 17
    w = weight(p, N, K, 3)
    wd = w.dequantize()
    x = acts(M, K, 4)
    bias = np.random.default_rng(5).standard_normal(N).astype(np.float32)
    residual = np.random.default_rng(6).standard_normal((M, N)).astype(np.float32)
    for act in ("silu", "gelu", "relu"):
        step = pf.compile("matmul", policy=p, variant="q8", activation=act, accumulate=True)
        out = residual.copy()
        y = step(x, w, bias=bias, out=out)
        assert y is out
        check_q8(y, x, wd, p, f"{p.name} {act}", bias=bias, activation=act, residual=residual)


@pytest.mark.parametrize("p", WEIGHTS, ids=policy_ids(WEIGHTS))
def test_gemm_every_cpu_tier_and_thread_count(p):
    K, N, M = k_for(p), 40, 19
    w = weight(p, N, K, 7, random_codes=True)
    wd = w.dequantize()
    x = acts(M, K, 8)
    step = pf.compile("matmul", policy=p, variant="q8")
    ys = []
    try:
        for path in TIERS:
            pf.set_cpu_features(path)
            ys.append(step(x, w))
    finally:
        pf.set_cpu_features(None)
    emu = R.matmul(emulated_x(p, x), wd)
    for y, tid in zip(ys, TIER_IDS):
        assert rel_l2(y, emu) <= 1e-5, f"{p.name} tier {tid}: vs emulated {rel_l2(y, emu):.3g}"
        assert rel_l2(y, ys[-1]) <= 1e-5, f"{p.name} tier {tid} vs all"
    n0 = pf.get_num_threads()
    try:
        res = []
        for n in (1, 2, 3):
            pf.set_num_threads(n)
            res.append(step(x, w))
    finally:
        pf.set_num_threads(n0)
    for r in res[1:]:
        np.testing.assert_array_equal(r, res[0])


AVX2 = {"avx2", "fma", "f16c"} <= set(pf.cpu_features()["detected"])


def _avx2_both_kernels(monkeypatch, step, x, w):
    """the AVX2 tier's result with the u8 tiles allowed, then with every tile as int16"""
    out = []
    try:
        pf.set_cpu_features(CPU_TIERS["avx2"])
        for flag in ("0", "1"):
            monkeypatch.setenv("PYFOUNDRY_GEMM_I16", flag)
            out.append(step(x, w))
    finally:
        pf.set_cpu_features(None)
        monkeypatch.delenv("PYFOUNDRY_GEMM_I16", raising=False)
    return out


@pytest.mark.skipif(not AVX2, reason="needs AVX2 + FMA + F16C")
@pytest.mark.parametrize("p", WEIGHTS, ids=policy_ids(WEIGHTS))
def test_gemm_avx2_u8_tiles_give_the_int16_bits(p, monkeypatch):
    K, N, M = k_for(p), 40, 19  # 40 rows: the last tile is partial (zero rows)
    x = acts(M, K, 11)
    x[3] *= 1e4
    step = pf.compile("matmul", policy=p, variant="q8")
    for random_codes in (True, False):
        if not random_codes and not p.can_quantize:
            continue
        w = weight(p, N, K, 12, random_codes=random_codes)
        u8, i16 = _avx2_both_kernels(monkeypatch, step, x, w)
        np.testing.assert_array_equal(u8, i16)
        assert np.isfinite(u8).all()


# rows whose codes sit at the top of the format's span but for element 2 of every 16, at the
# bottom: (value of the others, value of element 2, span of the codes)
EXTREME_ROWS = {"q4_0": (-7 / 8, 1.0, 15), "q4_1": (1.0, -1.0, 15), "q5_0": (-15 / 16, 1.0, 31),
                "q5_1": (1.0, -1.0, 31), "q6_k": (31 / 32, -1.0, 63)}


@pytest.mark.skipif(not AVX2, reason="needs AVX2 + FMA + F16C")
@pytest.mark.parametrize("name", list(EXTREME_ROWS))
def test_gemm_avx2_tiles_at_the_int16_bound(name, monkeypatch):
    """codes at the top of the span, activations at +-127: an int16 lane of the u8 kernel sums
    8 codes of a group, 8 * 31 * 127 for the 5-bit formats, just inside int16; q6_k's span (64
    values) would overflow it and must take the int16 widening"""
    p = pf.policy(name)
    K, N = 256, 32
    top, bottom, span = EXTREME_ROWS[name]
    row = np.full(K, top, np.float32)
    row[2::16] = bottom
    w = pf.Tensor.from_numpy(np.tile(row, (N, 1)), p, "w")
    q, _, _ = _core.to_i8(p.gguf_type, np.ascontiguousarray(w.raw).reshape(-1), N * K)
    assert int(q.max()) - int(q.min()) == span and (q == q.max()).sum() == N * K * 15 // 16
    x = np.repeat(np.array([[1.0], [-1.0]], np.float32), K, axis=1)
    x = np.concatenate([x] * 4)  # 8 rows: the GEMM runs from 4 (FDY_GEMM_MIN_M)
    step = pf.compile("matmul", policy=p, variant="q8")
    u8, i16 = _avx2_both_kernels(monkeypatch, step, x, w)
    np.testing.assert_array_equal(u8, i16)
    check_q8(u8, x, w.dequantize(), p, name)
