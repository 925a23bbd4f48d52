"""Every stage x every policy (from the registry) against the NumPy references.

Bounds (float32 unit roundoff u = 2**-24, gamma(n) = n*u / (1 - n*u)):

* f32 variant, weight stages: elementwise |y - y_ref| <= gamma(K + 2) * sum_k |w_nk x_mk|
  (+ the same for bias and activation), where y_ref is the float64 reference on the same
  dequantized weights -- the classic bound of a float32 dot product of length K, whatever the
  summation order; and relative L2 <= the policy's tolerances["f32"].
* q8 variant: max |y - y_ref| / (||x_m|| ||w_n||) <= tolerances["q8"] against the float64
  reference on the unquantized activations (a bound on the effect of quantizing the
  activations, see q8_normalized_error); and, to hold the integer kernels to exact arithmetic, relative L2
  <= 1e-5 against the float64 reference computed on the activations quantized and
  dequantized in the policy's dot_type (what llama.cpp's integer dots compute).
* stages without weights: float32 rounding bounds stated at each test.
"""
import numpy as np
import pytest

import pyfoundry as pf
from pyfoundry.reference import stages as R

from conftest import ALL_POLICIES, CPU_TIERS, U, gamma, policy_ids


def rel_l2(a, b):
    b = np.asarray(b, np.float64)
    d = np.linalg.norm(np.asarray(a, np.float64) - b)
    n = np.linalg.norm(b)
    return d / n if n else d


def weight_tensor(p, N, K, seed):
    """A (N, K) Tensor in policy p: quantized Gaussian weights, or for dequantize-only formats
    random blocks re-drawn until they decode to finite, moderate values."""
    rng = np.random.default_rng(seed)
    if p.can_quantize:
        return pf.Tensor.from_numpy(rng.standard_normal((N, K)).astype(np.float32), p, "w")
    t = pf.testing.random_blocks(p, N, K, rng, max_abs=1e3)
    return pf.Tensor("w", (N, K), p, t.raw)


def acts(M, K, seed):
    return np.random.default_rng(seed).standard_normal((M, K)).astype(np.float32)


def check_f32(y, x, wd, ref, what, bias=None):
    """elementwise float32 dot-product bound and the relative L2 tolerance"""
    K = x.shape[-1]
    mag = np.abs(np.atleast_2d(x)).astype(np.float64) @ np.abs(wd).astype(np.float64).T
    if bias is not None:
        mag = mag + np.abs(bias)
    bound = gamma(K + 2) * mag.reshape(np.shape(ref)) + 4 * U * np.abs(ref) + 1e-30
    err = np.abs(np.asarray(y, np.float64) - ref)
    assert (err <= bound).all(), f"{what}: max err/bound {np.max(err / bound):.3g}"


def q8_emulated_x(p, x):
    """the activations as the q8 variant sees them: quantized and dequantized in dot_type"""
    if p.dot_type is None:
        return x
    a = pf.policy(p.dot_type)
    if x.shape[-1] % a.block_elems:
        return x
    return a.dequantize(a.quantize(x))


def q8_normalized_error(y, x, wd, ref):
    """max over outputs of |y - ref| / (||x_m|| ||w_n||): quantizing the activations to e = xq - x
    changes a dot by w.e, |w.e| <= ||w|| ||e||, so this is at most the activation format's
    relative quantization error (times the activation's Lipschitz constant, <= 1.13)"""
    x2 = np.atleast_2d(x).astype(np.float64)
    norms = np.linalg.norm(x2, axis=1)[:, None] * np.linalg.norm(wd.astype(np.float64), axis=1)[None, :]
    err = np.abs(np.asarray(y, np.float64).reshape(norms.shape) - np.reshape(ref, norms.shape))
    return float(np.max(err / np.maximum(norms, 1e-30)))  # a zero row (and its exact 0) gives 0


def check_q8(y, x, wd, p, what, **kw):
    ref = R.matmul(x, wd, **kw)
    e = q8_normalized_error(y, x, wd, ref)
    assert e <= p.tolerances["q8"], f"{what}: q8 normalized error {e:.3g}"
    emu = R.matmul(q8_emulated_x(p, x), wd, **kw)
    assert rel_l2(y, emu) <= 1e-5, f"{what}: q8 vs emulated integer dot {rel_l2(y, emu):.3g}"


SHAPES = [(1, 32, 256), (5, 17, 512), (1, 1, 256), (7, 3, 256 * 33)]  # (M, N, K)


@pytest.mark.parametrize("variant", ["f32", "q8"])
@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_matmul_matches_reference(p, variant):
    step = pf.compile("matmul", policy=p, variant=variant)
    for i, (M, N, K) in enumerate(SHAPES):
        w = weight_tensor(p, N, K, seed=i)
        wd = w.dequantize()
        x = acts(M, K, seed=100 + i)
        y = step(x[0] if M == 1 else x, w)
        assert y.shape == ((N,) if M == 1 else (M, N))
        what = f"{p.name} {variant} M={M} N={N} K={K}"
        if variant == "f32":
            ref = R.matmul(x, wd).reshape(y.shape)
            check_f32(y, x, wd, ref, what)
            assert rel_l2(y, ref) <= p.tolerances["f32"], what
        else:
            check_q8(y.reshape(M, N), x, wd, p, what)


@pytest.mark.parametrize("variant", ["f32", "q8"])
@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_matmul_bias_activation_and_accumulate(p, variant):
    M, N, K = 3, 24, 512
    w = weight_tensor(p, N, K, seed=7)
    wd = w.dequantize()
    x = acts(M, K, 8)
    bias = np.random.default_rng(9).standard_normal(N).astype(np.float32)
    residual = np.random.default_rng(10).standard_normal((M, N)).astype(np.float32)
    for act in ("silu", "gelu", "relu"):
        step = pf.compile("matmul", policy=p, variant=variant, activation=act, accumulate=True)
        out = residual.copy()
        y = step(x, w, bias=bias, out=out)
        assert y is out
        kw = dict(bias=bias, activation=act, residual=residual)
        if variant == "f32":
            ref = R.matmul(x, wd, **kw)
            assert rel_l2(y, ref) <= max(p.tolerances["f32"], 1e-6), f"{p.name} {act}"
        else:
            check_q8(y, x, wd, p, f"{p.name} {act}", **kw)


@pytest.mark.parametrize("variant", ["f32", "q8"])
@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_fused_rmsnorm_matmul_matches_reference_and_unfused(p, variant):
    M, N, K = 4, 20, 512
    w = weight_tensor(p, N, K, seed=11)
    wd = w.dequantize()
    x = acts(M, K, 12)
    g = (1 + 0.1 * np.random.default_rng(13).standard_normal(K)).astype(np.float32)
    fused = pf.compile("rmsnorm_matmul", policy=p, variant=variant, eps=1e-6)
    y = fused(x, g, w)
    xn = pf.compile("rmsnorm", eps=1e-6)(x, g)
    y2 = pf.compile("matmul", policy=p, variant=variant)(xn, w)
    np.testing.assert_allclose(y, y2, rtol=1e-6, atol=1e-6 * np.abs(y2).max())
    ref = R.rmsnorm_matmul(x, g, wd, eps=1e-6)
    if variant == "f32":
        assert rel_l2(y, ref) <= p.tolerances["f32"]
    else:
        xn64 = R.rmsnorm(x, g, eps=1e-6)
        assert q8_normalized_error(y, xn64, wd, ref) <= p.tolerances["q8"]


@pytest.mark.parametrize("variant", ["f32", "q8"])
@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_fused_qkv_with_mixed_policies(p, variant):
    # q in p, k and v in the next policies of the registry: mixed formats in one step
    i = ALL_POLICIES.index(p)
    ps = [p, ALL_POLICIES[(i + 1) % len(ALL_POLICIES)], ALL_POLICIES[(i + 5) % len(ALL_POLICIES)]]
    M, K = 3, 256
    ws = [weight_tensor(q, n, K, seed=20 + j) for j, (q, n) in enumerate(zip(ps, (32, 16, 16)))]
    bs = [np.random.default_rng(30 + j).standard_normal(w.shape[0]).astype(np.float32)
          for j, w in enumerate(ws)]
    x = acts(M, K, 14)
    g = np.ones(K, np.float32)
    for n_parts in (2, 3):
        step = pf.compile("rmsnorm_qkv", policy=ps[:n_parts], variant=variant, eps=1e-5)
        outs = step(x, g, *ws[:n_parts], *bs[:n_parts]) if n_parts == 3 else \
            step(x, g, ws[0], ws[1], bq=bs[0], bk=bs[1])
        assert len(outs) == n_parts
        refs = R.rmsnorm_qkv(x, g, [w.dequantize() for w in ws[:n_parts]], eps=1e-5,
                             biases=bs[:n_parts])
        for q, o, r, w, b in zip(ps, outs, refs, ws, bs):
            single = pf.compile("rmsnorm_matmul", policy=q, variant=variant, eps=1e-5)(x, g, w, b)
            np.testing.assert_allclose(o, single, rtol=1e-6, atol=1e-6 * np.abs(single).max())
            if variant == "f32":
                assert rel_l2(o, r) <= q.tolerances["f32"], f"{q.name} in qkv"
            else:
                xn64 = R.rmsnorm(x, g, eps=1e-5)
                e = q8_normalized_error(o, xn64, w.dequantize(), r)
                assert e <= q.tolerances["q8"], f"{q.name} in qkv: {e:.3g}"


@pytest.mark.parametrize("variant", ["f32", "q8"])
@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_fused_ffn_matches_reference(p, variant):
    M, K, F = 3, 256, 512
    wg, wu, wd_ = (weight_tensor(p, F, K, 40), weight_tensor(p, F, K, 41),
                   weight_tensor(p, K, F, 42))
    x = acts(M, K, 43)
    g = np.ones(K, np.float32)
    y = pf.compile("ffn", policy=p, variant=variant, eps=1e-5)(x, g, wg, wu, wd_)
    ref = R.ffn(x, g, wg.dequantize(), wu.dequantize(), wd_.dequantize(), eps=1e-5)
    if variant == "f32":
        assert rel_l2(y, ref) <= p.tolerances["f32"]
    else:
        # first order: gate and up each carry <= tol (normalized), swiglu = silu(g) * u adds
        # them (product rule), the down projection adds its own: <= 3 tol, measured on the
        # down projection with the reference hidden activations h
        n = R.rmsnorm(x, g, eps=1e-5)
        h = R.swiglu(n @ wg.dequantize().T.astype(np.float64), n @ wu.dequantize().T)
        e = q8_normalized_error(y - x, h, wd_.dequantize(), ref - x)
        assert e <= 3 * p.tolerances["q8"], e
    # unfused pieces agree
    gate, up = pf.compile("rmsnorm_qkv", policy=[p, p], variant=variant)(x, g, wg, wu)
    h = pf.compile("swiglu")(gate, up)
    y2 = pf.compile("matmul", policy=p, variant=variant, accumulate=True)(h, wd_, out=x.copy())
    np.testing.assert_allclose(y, y2, rtol=1e-5, atol=1e-5 * np.abs(y2).max())


@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_embedding_is_exact_dequantized_rows(p):
    V, K = 40, 256
    t = weight_tensor(p, V, K, 50)
    ids = np.array([0, 39, 7, 7, 12], np.int64)
    y = pf.compile("embedding", policy=p)(t, ids)
    np.testing.assert_array_equal(y, R.embedding(t.dequantize(), ids, dtype=np.float32))
    with pytest.raises(ValueError, match="ids"):
        pf.compile("embedding", policy=p)(t, [V])


# ---- stages without weights -----------------------------------------------------------------

def test_rmsnorm_matches_reference():
    step = pf.compile("rmsnorm", eps=1e-5)
    for M, K in [(1, 8), (7, 64), (3, 4096)]:
        x = acts(M, K, M) * 3
        w = acts(1, K, K)[0]
        y = step(x, w)
        ref = R.rmsnorm(x, w, eps=1e-5)
        # two float32 roundings per element (x * scale, * w) after an exact-ish scale
        np.testing.assert_allclose(y, ref, rtol=4 * U, atol=0)
    x = acts(1, 16, 0)[0]
    assert step(x, np.ones(16, np.float32)).shape == (16,)


@pytest.mark.parametrize("neox", [False, True])
def test_rope_matches_reference(neox):
    rng = np.random.default_rng(0)
    for M, H, D, rot, start in [(1, 4, 64, 64, 0), (9, 2, 64, 32, 300), (5, 3, 8, 8, 17)]:
        x = rng.standard_normal((M, H, D)).astype(np.float32)
        pos = np.arange(start, start + M)
        ff = (1 + rng.random(rot // 2)).astype(np.float32)
        for freq in (None, ff):
            step = pf.compile("rope", theta=10000.0, rot_dims=rot, neox=neox)
            y = step(x, pos, freq_factors=freq)
            ref = R.rope(x, pos, theta=10000.0, rot_dims=rot, neox=neox, freq_factors=freq)
            # angles and rotation in float64, one rounding to float32
            np.testing.assert_allclose(y, ref, rtol=0, atol=2 * U * np.abs(x).max() * 2)
            if rot < D:
                np.testing.assert_array_equal(y[..., rot:], x[..., rot:])


@pytest.mark.parametrize("M,start", [(1, 0), (1, 1), (1, 299), (7, 0), (33, 50), (300, 0)])
@pytest.mark.parametrize("H,Hkv", [(8, 2), (4, 4)])
def test_attention_matches_reference(M, start, H, Hkv):
    D, C = 32, 400
    rng = np.random.default_rng(M * 1000 + start)
    q = rng.standard_normal((M, H, D)).astype(np.float32)
    k = rng.standard_normal((C, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((C, Hkv, D)).astype(np.float32)
    y = pf.compile("attention")(q, k, v, start)
    ref = R.attention(q, k, v, start)
    n = start + M
    # float32 scores (dot of length D), softmax and a weighted sum over n rows
    assert rel_l2(y, ref) <= (D + n) * U * 4, rel_l2(y, ref)


@pytest.mark.parametrize("tier", list(CPU_TIERS.values()), ids=list(CPU_TIERS))
@pytest.mark.parametrize("D", [13, 32, 64, 80, 128, 136])
def test_attention_every_cpu_tier_and_head_dim(D, tier):
    """each kernel (portable, AVX2 + FMA, AVX-512 where the CPU has it) on head sizes with and
    without a tail of fewer than 8 / 16 floats and with more than one 64-column chunk"""
    H, Hkv, M, start, C = 6, 2, 5, 37, 64
    rng = np.random.default_rng(D)
    q = rng.standard_normal((M, H, D)).astype(np.float32)
    k = rng.standard_normal((C, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((C, Hkv, D)).astype(np.float32)
    ref = R.attention(q, k, v, start)
    try:
        pf.set_cpu_features(tier)
        y = pf.compile("attention")(q, k, v, start)
    finally:
        pf.set_cpu_features(None)
    assert rel_l2(y, ref) <= (D + start + M) * U * 4, rel_l2(y, ref)


def test_attention_decode_equals_prefill_rows():
    H, Hkv, D, C = 4, 2, 16, 64
    rng = np.random.default_rng(3)
    q = rng.standard_normal((20, H, D)).astype(np.float32)
    k = rng.standard_normal((C, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((C, Hkv, D)).astype(np.float32)
    att = pf.compile("attention")
    full = att(q, k, v, 0)
    for i in (0, 5, 19):
        np.testing.assert_allclose(att(q[i:i + 1].copy(), k, v, i)[0], full[i], rtol=1e-6,
                                   atol=1e-6)


def test_softmax_swiglu_add_match_reference():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((6, 1000)) * 10).astype(np.float32)
    np.testing.assert_allclose(pf.compile("softmax")(x), R.softmax(x), rtol=16 * U, atol=1e-12)
    a, b = rng.standard_normal((2, 3, 77)).astype(np.float32)
    np.testing.assert_allclose(pf.compile("swiglu")(a, b), R.swiglu(a, b), rtol=8 * U, atol=1e-7)
    np.testing.assert_array_equal(pf.compile("add")(a, b), R.add(a, b, dtype=np.float32))


# ---- steps: keys, cache, argument errors ----------------------------------------------------

def test_step_cache_keys_differ_in_every_ingredient():
    base = dict(op="rmsnorm_matmul", policy="q4_k", variant="f32", eps=1e-5)
    s = pf.compile(base.pop("op"), **base)
    assert pf.compile("rmsnorm_matmul", policy="q4_k", variant="f32", eps=1e-5) is s
    others = [pf.compile("matmul", policy="q4_k"),
              pf.compile("rmsnorm_matmul", policy="q5_k", eps=1e-5),
              pf.compile("rmsnorm_matmul", policy="q4_k", variant="q8", eps=1e-5),
              pf.compile("rmsnorm_matmul", policy="q4_k", eps=1e-6),
              pf.compile("rmsnorm_matmul", policy="q4_k", eps=1e-5, activation="silu")]
    keys = {s.key} | {o.key for o in others}
    assert len(keys) == 1 + len(others)
    assert all(o is not s for o in others)
    assert len(s.key) == 64 and s.source is None and "q4_k" in repr(s)
    if not pf.cuda_available():
        with pytest.raises(NotImplementedError, match="backend"):
            pf.compile("matmul", policy="q4_k", backend="cuda")


def test_step_rejects_bad_arguments_naming_them():
    p = pf.policy("q8_0")
    step = pf.compile("matmul", policy=p)
    w = weight_tensor(p, 8, 64, 0)
    x = acts(2, 64, 0)
    with pytest.raises(ValueError, match="x must be float32"):
        step(x.astype(np.float64), w)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        step(np.asfortranarray(acts(4, 64, 1)), w)
    with pytest.raises(ValueError, match="x has 32 features"):
        step(acts(2, 32, 0), w)
    with pytest.raises(ValueError, match="w is a q4_0 tensor"):
        step(x, weight_tensor(pf.policy("q4_0"), 8, 64, 0))
    with pytest.raises(ValueError, match="out has shape"):
        step(x, w, out=np.zeros((2, 9), np.float32))
    with pytest.raises(ValueError, match="bias has 3 entries"):
        step(x, w, bias=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="needs out="):
        pf.compile("matmul", policy=p, accumulate=True)(x, w)
    with pytest.raises(ValueError, match="unknown parameter"):
        pf.compile("matmul", policy=p, eps=1.0)
    with pytest.raises(ValueError, match="unknown op"):
        pf.compile("matmol", policy=p)
    with pytest.raises(ValueError, match="unknown variant"):
        pf.compile("matmul", policy=p, variant="int4")
    with pytest.raises(ValueError, match="positions has 2 entries"):
        pf.compile("rope")(acts(3, 8, 0).reshape(3, 1, 8), [0, 1])
    with pytest.raises(ValueError, match="exceed the cache"):
        a = acts(4, 8, 0).reshape(4, 1, 8)
        pf.compile("attention")(a, a, a, 1)
    with pytest.raises(ValueError, match="not a multiple"):
        a = acts(4, 24, 0).reshape(4, 3, 8)
        kv = acts(4, 16, 0).reshape(4, 2, 8)
        pf.compile("attention")(a, kv, kv, 0)


def test_results_do_not_depend_on_thread_count():
    p = pf.policy("q4_k")
    w = weight_tensor(p, 300, 512, 1)
    x = acts(3, 512, 2)
    res = []
    n0 = pf.get_num_threads()
    try:
        for n in (1, 2, 3):
            pf.set_num_threads(n)
            assert pf.get_num_threads() == n
            res.append([pf.compile("matmul", policy=p, variant=v)(x, w) for v in ("f32", "q8")])
    finally:
        pf.set_num_threads(n0)
    for r in res[1:]:
        for a, b in zip(r, res[0]):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        pf.set_num_threads(0)


@pytest.mark.parametrize("path", [[], ["avx2", "fma", "f16c"], None], ids=["portable", "avx2", "all"])
@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_every_cpu_path_matches_reference(p, path):
    M, N, K = 2, 12, 512
    w = weight_tensor(p, N, K, 60)
    wd = w.dequantize()
    x = acts(M, K, 61)
    try:
        pf.set_cpu_features(path)
        yf = pf.compile("matmul", policy=p)(x, w)
        yq = pf.compile("matmul", policy=p, variant="q8")(x, w)
    finally:
        pf.set_cpu_features(None)
    check_f32(yf, x, wd, R.matmul(x, wd), f"{p.name} path {path}")
    check_q8(yq, x, wd, p, f"{p.name} q8 path {path}")
