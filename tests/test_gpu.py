"""Every stage x every policy on the CUDA backend against the NumPy references (the bounds of
tests/test_stages.py, tolerances from the policy descriptors).  Outputs are poisoned (NaN) on
the device before every launch, so an unwritten element fails.  Skipped cleanly without a
CUDA driver, device or NVRTC."""
import numpy as np
import pytest

import pyfoundry as pf
from pyfoundry.reference import stages as R

from conftest import ALL_POLICIES, policy_ids
from test_stages import (U, acts, check_f32, check_q8, q8_normalized_error, rel_l2,
                         weight_tensor)

pytestmark = pytest.mark.skipif(not pf.cuda_available(),
                                reason="no CUDA device (pf.cuda_available() is False)")

SHAPES = [(1, 32, 256), (5, 17, 512), (1, 1, 256), (7, 3, 256 * 33), (40, 70, 512)]


@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_cuda_matmul_matches_reference(p):
    step = pf.compile("matmul", policy=p, backend="cuda")
    for i, (M, N, K) in enumerate(SHAPES):
        w = weight_tensor(p, N, K, seed=i)
        wd = w.dequantize()
        x = acts(M, K, seed=100 + i)
        y = step(x[0] if M == 1 else x, w)
        ref = R.matmul(x, wd).reshape(y.shape)
        what = f"{p.name} M={M} N={N} K={K}"
        check_f32(y, x, wd, ref, what)
        assert rel_l2(y, ref) <= p.tolerances["f32"], what


@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_cuda_matmul_bias_activation_accumulate(p):
    N, K = 24, 256
    w = weight_tensor(p, N, K, 3)
    wd = w.dequantize()
    rng = np.random.default_rng(4)
    b = rng.standard_normal(N).astype(np.float32)
    for M in (1, 6):
        x = acts(M, K, 5)
        for act in ("silu", "gelu", "relu"):
            res = rng.standard_normal((M, N)).astype(np.float32)
            y = pf.compile("matmul", policy=p, backend="cuda", activation=act,
                           accumulate=True)(x, w, b, out=res.copy())
            ref = R.matmul(x, wd, bias=b, activation=act, residual=res)
            assert rel_l2(y, ref) <= max(p.tolerances["f32"], 1e-6), (p.name, M, act)


@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_cuda_fused_rmsnorm_matmul(p):
    N, K = 20, 512
    w = weight_tensor(p, N, K, 11)
    g = (1 + 0.1 * np.random.default_rng(13).standard_normal(K)).astype(np.float32)
    for M in (1, 4, 33):
        x = acts(M, K, 12)
        y = pf.compile("rmsnorm_matmul", policy=p, backend="cuda", eps=1e-6)(x, g, w)
        ref = R.rmsnorm_matmul(x, g, w.dequantize(), eps=1e-6)
        assert rel_l2(y, ref) <= max(p.tolerances["f32"], 2e-6), (p.name, M)


@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_cuda_fused_qkv_mixed_policies(p):
    i = ALL_POLICIES.index(p)
    ps = [p, ALL_POLICIES[(i + 1) % len(ALL_POLICIES)], ALL_POLICIES[(i + 5) % len(ALL_POLICIES)]]
    K = 256
    ws = [weight_tensor(q, n, K, seed=20 + j) for j, (q, n) in enumerate(zip(ps, (32, 16, 16)))]
    bs = [np.random.default_rng(30 + j).standard_normal(w.shape[0]).astype(np.float32)
          for j, w in enumerate(ws)]
    g = np.ones(K, np.float32)
    for M in (1, 3):
        x = acts(M, K, 14)
        for n_parts in (2, 3):
            step = pf.compile("rmsnorm_qkv", policy=ps[:n_parts], backend="cuda")
            kw = dict(zip(("bq", "bk", "bv"), bs[:n_parts]))
            outs = step(x, g, *ws[:n_parts], **kw)
            refs = R.rmsnorm_qkv(x, g, [w.dequantize() for w in ws[:n_parts]],
                                 biases=bs[:n_parts])
            for q, o, r in zip(ps, outs, refs):
                assert rel_l2(o, r) <= max(q.tolerances["f32"], 2e-6), (q.name, M, n_parts)


@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_cuda_fused_ffn(p):
    K, F = 256, 512
    wg, wu, wd_ = (weight_tensor(p, F, K, 40), weight_tensor(p, F, K, 41),
                   weight_tensor(p, K, F, 42))
    g = np.ones(K, np.float32)
    for M in (1, 3):
        x = acts(M, K, 43)
        y = pf.compile("ffn", policy=p, backend="cuda")(x, g, wg, wu, wd_)
        ref = R.ffn(x, g, wg.dequantize(), wu.dequantize(), wd_.dequantize())
        assert rel_l2(y, ref) <= max(p.tolerances["f32"], 2e-6), (p.name, M)


@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_cuda_embedding_is_exact(p):
    t = weight_tensor(p, 40, 256, 50)
    ids = np.array([0, 39, 7, 7, 12])
    y = pf.compile("embedding", policy=p, backend="cuda")(t, ids)
    np.testing.assert_array_equal(y, R.embedding(t.dequantize(), ids, dtype=np.float32))


def test_cuda_rmsnorm():
    step = pf.compile("rmsnorm", eps=1e-5, backend="cuda")
    for M, K in [(1, 8), (7, 64), (3, 4096)]:
        x = acts(M, K, M) * 3
        w = acts(1, K, K)[0]
        np.testing.assert_allclose(step(x, w), R.rmsnorm(x, w, eps=1e-5), rtol=16 * U, atol=0)


@pytest.mark.parametrize("neox", [False, True])
def test_cuda_rope(neox):
    rng = np.random.default_rng(0)
    for M, H, D, rot, start in [(1, 4, 64, 64, 0), (9, 2, 64, 32, 300), (5, 3, 8, 8, 17)]:
        x = rng.standard_normal((M, H, D)).astype(np.float32)
        pos = np.arange(start, start + M)
        ff = (1 + rng.random(rot // 2)).astype(np.float32)
        for freq in (None, ff):
            y = pf.compile("rope", rot_dims=rot, neox=neox, backend="cuda")(x, pos, freq)
            ref = R.rope(x, pos, rot_dims=rot, neox=neox, freq_factors=freq)
            np.testing.assert_allclose(y, ref, rtol=0, atol=4 * U * np.abs(x).max() * 2)


@pytest.mark.parametrize("M,start", [(1, 0), (1, 1), (1, 299), (7, 0), (33, 50), (300, 0)])
@pytest.mark.parametrize("H,Hkv,D", [(8, 2, 32), (4, 4, 64), (6, 2, 128)])
def test_cuda_attention(M, start, H, Hkv, D):
    C = 400
    rng = np.random.default_rng(M * 1000 + start)
    q = rng.standard_normal((M, H, D)).astype(np.float32)
    k = rng.standard_normal((C, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((C, Hkv, D)).astype(np.float32)
    y = pf.compile("attention", backend="cuda")(q, k, v, start)
    ref = R.attention(q, k, v, start)
    assert rel_l2(y, ref) <= (D + start + M) * U * 4


def test_cuda_softmax_swiglu_add():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((6, 1000)) * 10).astype(np.float32)
    np.testing.assert_allclose(pf.compile("softmax", backend="cuda")(x), R.softmax(x),
                               rtol=32 * U, atol=1e-12)
    a, b = rng.standard_normal((2, 3, 77)).astype(np.float32)
    np.testing.assert_allclose(pf.compile("swiglu", backend="cuda")(a, b), R.swiglu(a, b),
                               rtol=8 * U, atol=1e-7)
    np.testing.assert_array_equal(pf.compile("add", backend="cuda")(a, b),
                                  R.add(a, b, dtype=np.float32))


def test_cuda_step_source_and_key():
    s = pf.compile("rmsnorm_qkv", policy=["q4_k", "q6_k", "q8_0"], backend="cuda")
    assert "fdy_decode_q6_k" in s.source and "fdy_qkv" in s.source
    assert s.key != pf.compile("rmsnorm_qkv", policy=["q4_k", "q6_k", "q8_0"]).key


# ---- the q8 variant: activations quantized on the device in the policy's dot_type --------

Q8_SHAPES = SHAPES + [(1, 4100, 256), (1, 16400, 256)]   # the 2- and 4-row integer kernels


@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_cuda_q8_variant_matmul(p):
    """Both bounds of the CPU's q8 variant (tests/test_stages.py check_q8): against the
    reference on the unquantized activations within tolerances["q8"], and within 1e-5 of the
    reference on the activations quantized and dequantized by the CPU's dot_type quantizer, so
    the device quantizer and the integer hooks (q4_0, q4_k, q6_k at M = 1) are exact."""
    step = pf.compile("matmul", policy=p, backend="cuda", variant="q8")
    for i, (M, N, K) in enumerate(Q8_SHAPES):
        w = weight_tensor(p, N, K, seed=i)
        x = acts(M, K, seed=100 + i)
        y = step(x[0] if M == 1 else x, w)
        check_q8(y.reshape(M, N), x, w.dequantize(), p, f"{p.name} q8 M={M} N={N} K={K}")


@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_cuda_q8_variant_bias_activation_accumulate(p):
    N, K = 24, 512
    w = weight_tensor(p, N, K, 3)
    rng = np.random.default_rng(4)
    b = rng.standard_normal(N).astype(np.float32)
    for M in (1, 6):
        x = acts(M, K, 5)
        for act in ("silu", "relu"):
            res = rng.standard_normal((M, N)).astype(np.float32)
            y = pf.compile("matmul", policy=p, backend="cuda", variant="q8", activation=act,
                           accumulate=True)(x, w, b, out=res.copy())
            check_q8(y.reshape(M, N), x, w.dequantize(), p, f"{p.name} M={M} {act}",
                     bias=b, activation=act, residual=res)


@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_cuda_q8_variant_fused_stages(p):
    """rmsnorm_matmul, rmsnorm_qkv (mixed policies, each its own dot_type) and ffn in the q8
    variant, bounded as the CPU's (tests/test_stages.py)."""
    K = 256
    g = (1 + 0.1 * np.random.default_rng(13).standard_normal(K)).astype(np.float32)
    w = weight_tensor(p, 20, K, 11)
    for M in (1, 4):
        x = acts(M, K, 12)
        y = pf.compile("rmsnorm_matmul", policy=p, backend="cuda", variant="q8", eps=1e-6)(x, g, w)
        xn64 = R.rmsnorm(x, g, eps=1e-6)
        ref = R.rmsnorm_matmul(x, g, w.dequantize(), eps=1e-6)
        assert q8_normalized_error(y, xn64, w.dequantize(), ref) <= p.tolerances["q8"], (p.name, M)
    i = ALL_POLICIES.index(p)
    ps = [p, ALL_POLICIES[(i + 1) % len(ALL_POLICIES)], ALL_POLICIES[(i + 5) % len(ALL_POLICIES)]]
    ws = [weight_tensor(q, n, K, seed=20 + j) for j, (q, n) in enumerate(zip(ps, (32, 16, 16)))]
    for M in (1, 3):
        x = acts(M, K, 14)
        outs = pf.compile("rmsnorm_qkv", policy=ps, backend="cuda", variant="q8")(x, g, *ws)
        refs = R.rmsnorm_qkv(x, g, [q.dequantize() for q in ws])
        xn64 = R.rmsnorm(x, g)
        for q, o, r, wq in zip(ps, outs, refs, ws):
            e = q8_normalized_error(o, xn64, wq.dequantize(), r)
            assert e <= q.tolerances["q8"], (q.name, M, e)
    F = 512
    wg, wu, wdn = (weight_tensor(p, F, K, 40), weight_tensor(p, F, K, 41), weight_tensor(p, K, F, 42))
    for M in (1, 3):
        x = acts(M, K, 43)
        y = pf.compile("ffn", policy=p, backend="cuda", variant="q8")(x, g, wg, wu, wdn)
        ref = R.ffn(x, g, wg.dequantize(), wu.dequantize(), wdn.dequantize())
        n = R.rmsnorm(x, g)
        h = R.swiglu(n @ wg.dequantize().T.astype(np.float64), n @ wu.dequantize().T)
        e = q8_normalized_error(y - x, h, wdn.dequantize(), ref - x)
        assert e <= 3 * p.tolerances["q8"], (p.name, M, e)
