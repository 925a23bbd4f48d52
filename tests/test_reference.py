"""The NumPy stage references, checked against independent formulations (loops, einsum,
algebraic properties), never against themselves."""
import math

import numpy as np
import pytest

from pyfoundry.reference import stages as S

DTYPES = [np.float32, np.float64]


def rng(seed=0):
    return np.random.default_rng(seed)


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# embedding, rmsnorm, activations


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding(dtype):
    table = rng().standard_normal((10, 6))
    ids = np.array([3, 0, 9, 3])
    y = S.embedding(table, ids, dtype=dtype)
    assert y.dtype == dtype and y.shape == (4, 6)
    for i, t in enumerate(ids):
        np.testing.assert_array_equal(y[i], table[t].astype(dtype))


def test_embedding_errors():
    with pytest.raises(ValueError, match="ids"):
        S.embedding(np.zeros((4, 3)), np.array([4]))
    with pytest.raises(ValueError, match="ids"):
        S.embedding(np.zeros((4, 3)), np.array([0.5]))
    with pytest.raises(ValueError, match="table"):
        S.embedding(np.zeros(4), np.array([0]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm_vs_loop(dtype):
    x = rng(1).standard_normal((5, 16)) * 3
    w = rng(2).standard_normal(16)
    eps = 1e-6
    y = S.rmsnorm(x, w, eps, dtype=dtype)
    assert y.dtype == dtype and y.shape == x.shape
    for m in range(5):
        ss = sum(float(v) ** 2 for v in x[m]) / 16
        want = [float(x[m, j]) / math.sqrt(ss + eps) * float(w[j]) for j in range(16)]
        np.testing.assert_allclose(y[m], want, **tol(dtype))
    # 1-D x is one row
    np.testing.assert_allclose(S.rmsnorm(x[2], w, eps, dtype=dtype), y[2], **tol(dtype))


def test_rmsnorm_errors():
    with pytest.raises(ValueError, match="weight"):
        S.rmsnorm(np.ones((2, 4)), np.ones(3))
    with pytest.raises(ValueError, match="x"):
        S.rmsnorm(np.ones((2, 2, 4)), np.ones(4))
    with pytest.raises(ValueError, match="dtype"):
        S.rmsnorm(np.ones(4), np.ones(4), dtype=np.float16)


def test_activations_pointwise():
    xs = [-30.0, -3.0, -0.5, 0.0, 0.7, 2.0, 25.0]
    x = np.array(xs)
    np.testing.assert_allclose(S.silu(x), [v / (1 + math.exp(-v)) for v in xs], rtol=1e-14)
    # gelu tanh approximation vs the exact erf gelu: close, not equal
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in xs])
    g = S.gelu(x)
    np.testing.assert_allclose(g, exact, atol=1e-3)
    want = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
            for v in xs]
    np.testing.assert_allclose(g, want, rtol=1e-14)
    np.testing.assert_array_equal(S.relu(x), [max(v, 0.0) for v in xs])
    for name, fn in [("silu", S.silu), ("gelu", S.gelu), ("relu", S.relu)]:
        np.testing.assert_array_equal(S.activation(x, name), fn(x))
    for name in (None, "none"):
        np.testing.assert_array_equal(S.activation(x, name), x)
    with pytest.raises(ValueError, match="activation"):
        S.activation(x, "tanh")


def test_silu_no_overflow_warning_float32():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = S.silu(np.array([-200.0, 200.0], np.float32), dtype=np.float32)
    assert y.dtype == np.float32 and y[0] == 0 and y[1] == 200


# ---------------------------------------------------------------------------------------------
# matmul and fused variants


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [None, "silu", "gelu", "relu"])
def test_matmul_vs_einsum(dtype, act):
    r = rng(3)
    x, w = r.standard_normal((4, 12)), r.standard_normal((7, 12))
    bias, res = r.standard_normal(7), r.standard_normal((4, 7))
    ref_act = {None: lambda v: v, "relu": lambda v: np.where(v > 0, v, 0.0),
               "silu": lambda v: v / (1 + np.exp(-v)),
               "gelu": lambda v: np.vectorize(lambda t: 0.5 * t * (1 + math.tanh(
                   math.sqrt(2 / math.pi) * (t + 0.044715 * t ** 3))))(v)}[act]
    lin = np.einsum("mk,nk->mn", x, w)
    y = S.matmul(x, w, dtype=dtype, activation=act)
    assert y.dtype == dtype and y.shape == (4, 7)
    np.testing.assert_allclose(y, ref_act(lin), **tol(dtype))
    y = S.matmul(x, w, bias=bias, activation=act, residual=res, dtype=dtype)
    np.testing.assert_allclose(y, res + ref_act(lin + bias), **tol(dtype))
    # 1-D x gives 1-D y
    y1 = S.matmul(x[1], w, bias=bias, activation=act, residual=res[1], dtype=dtype)
    assert y1.shape == (7,)
    np.testing.assert_allclose(y1, res[1] + ref_act(lin[1] + bias), **tol(dtype))


def test_matmul_errors():
    x, w = np.ones((2, 4)), np.ones((3, 4))
    with pytest.raises(ValueError, match="w"):
        S.matmul(x, np.ones((3, 5)))
    with pytest.raises(ValueError, match="bias"):
        S.matmul(x, w, bias=np.ones(4))
    with pytest.raises(ValueError, match="residual"):
        S.matmul(x, w, residual=np.ones((2, 4)))
    with pytest.raises(ValueError, match="x"):
        S.matmul(np.ones((1, 2, 4)), w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm_matmul_and_qkv(dtype):
    r = rng(4)
    x, g = r.standard_normal((3, 8)), r.standard_normal(8)
    wq, wk, wv = r.standard_normal((8, 8)), r.standard_normal((4, 8)), r.standard_normal((4, 8))
    bq, bv = r.standard_normal(8), r.standard_normal(4)
    eps = 1e-5
    h = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * g
    y = S.rmsnorm_matmul(x, g, wq, eps, bias=bq, activation="relu", residual=x, dtype=dtype)
    np.testing.assert_allclose(y, x + np.maximum(np.einsum("mk,nk->mn", h, wq) + bq, 0),
                               **tol(dtype))
    q, k, v = S.rmsnorm_qkv(x, g, [wq, wk, wv], eps, biases=[bq, None, bv], dtype=dtype)
    assert q.dtype == k.dtype == v.dtype == dtype
    np.testing.assert_allclose(q, np.einsum("mk,nk->mn", h, wq) + bq, **tol(dtype))
    np.testing.assert_allclose(k, np.einsum("mk,nk->mn", h, wk), **tol(dtype))
    np.testing.assert_allclose(v, np.einsum("mk,nk->mn", h, wv) + bv, **tol(dtype))
    out = S.rmsnorm_qkv(x, g, [wq, wk], eps, dtype=dtype)
    assert isinstance(out, tuple) and len(out) == 2
    with pytest.raises(ValueError, match="weights"):
        S.rmsnorm_qkv(x, g, [wq], eps)
    with pytest.raises(ValueError, match="biases"):
        S.rmsnorm_qkv(x, g, [wq, wk], eps, biases=[None])


# ---------------------------------------------------------------------------------------------
# rope


def _qk(seed, M=5, H=3, D=8):
    return rng(seed).standard_normal((M, H, D))


@pytest.mark.parametrize("neox", [False, True])
def test_rope_preserves_pair_norms(neox):
    x = _qk(5)
    y = S.rope(x, np.arange(7, 12), neox=neox)
    if neox:
        pa, pb = (x[..., :4], x[..., 4:]), (y[..., :4], y[..., 4:])
    else:
        pa, pb = (x[..., 0::2], x[..., 1::2]), (y[..., 0::2], y[..., 1::2])
    np.testing.assert_allclose(np.hypot(*pb), np.hypot(*pa), rtol=1e-12)
    assert not np.allclose(y, x)


@pytest.mark.parametrize("neox", [False, True])
def test_rope_position_zero_is_identity(neox):
    x = _qk(6, M=1)
    np.testing.assert_array_equal(S.rope(x, np.array([0]), neox=neox), x)


def test_rope_explicit_single_pair():
    # D=2: one pair, angle = pos; rotate (1, 0) by pos radians
    x = np.zeros((3, 1, 2))
    x[..., 0] = 1
    pos = np.array([1, 2, 5])
    y = S.rope(x, pos, theta=123.0)
    np.testing.assert_allclose(y[:, 0, 0], np.cos(pos), rtol=1e-14)
    np.testing.assert_allclose(y[:, 0, 1], np.sin(pos), rtol=1e-14)


def test_rope_normal_vs_neox_permutation():
    D = 8
    x = _qk(7, D=D)
    pos = np.arange(3, 8)
    # interleaved index 2i, 2i+1 <-> split index i, i + D/2
    perm = np.concatenate([np.arange(0, D, 2), np.arange(1, D, 2)])  # neox[j] = normal[perm[j]]
    y_norm = S.rope(x, pos, neox=False)
    y_neox = S.rope(x[..., perm], pos, neox=True)
    np.testing.assert_allclose(y_neox, y_norm[..., perm], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("neox", [False, True])
def test_rope_partial_rot_dims(neox):
    x = _qk(8, D=10)
    pos = np.arange(2, 7)
    y = S.rope(x, pos, rot_dims=6, neox=neox)
    np.testing.assert_array_equal(y[..., 6:], x[..., 6:])
    # the rotated part equals rope of the 6-dim head alone
    np.testing.assert_allclose(y[..., :6], S.rope(x[..., :6], pos, neox=neox), rtol=1e-14)


def test_rope_freq_factors_rescale_angles():
    # pos * theta**(-2i/d) / f with f = c**(2i/d) equals rope with theta' = theta * c
    D, theta, c = 8, 10000.0, 3.0
    ff = c ** (2 * np.arange(D // 2) / D)
    x = _qk(9, D=D)
    pos = np.arange(0, 5) * 7
    np.testing.assert_allclose(S.rope(x, pos, theta=theta, freq_factors=ff),
                               S.rope(x, pos, theta=theta * c), rtol=1e-10, atol=1e-12)
    # a constant factor f acts as position / f
    y = S.rope(x, pos * 2, freq_factors=np.full(D // 2, 2.0))
    np.testing.assert_allclose(y, S.rope(x, pos), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("neox", [False, True])
def test_rope_relative_position(neox):
    D = 16
    q, k = rng(10).standard_normal(D), rng(11).standard_normal(D)

    def dot(m, n):
        qm = S.rope(q[None, None], np.array([m]), neox=neox)[0, 0]
        kn = S.rope(k[None, None], np.array([n]), neox=neox)[0, 0]
        return qm @ kn

    for delta in (0, 1, 5):
        vals = [dot(n + delta, n) for n in (0, 3, 17, 100)]
        np.testing.assert_allclose(vals, vals[0], rtol=1e-9)
    assert not np.isclose(dot(5, 0), dot(6, 0))


def test_rope_float32():
    x = _qk(12)
    pos = np.arange(1000, 1005)
    y32 = S.rope(x, pos, dtype=np.float32)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, S.rope(x, pos), rtol=1e-5, atol=1e-5)


def test_rope_errors():
    x = _qk(13, D=8)
    with pytest.raises(ValueError, match="rot_dims"):
        S.rope(x, np.arange(5), rot_dims=5)
    with pytest.raises(ValueError, match="rot_dims"):
        S.rope(x, np.arange(5), rot_dims=10)
    with pytest.raises(ValueError, match="positions"):
        S.rope(x, np.arange(4))
    with pytest.raises(ValueError, match="x"):
        S.rope(x[0], np.arange(1))
    with pytest.raises(ValueError, match="freq_factors"):
        S.rope(x, np.arange(5), freq_factors=np.ones(3))


# ---------------------------------------------------------------------------------------------
# softmax and attention


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax(dtype):
    x = rng(14).standard_normal((4, 9)) * 5
    p = S.softmax(x, dtype=dtype)
    assert p.dtype == dtype
    np.testing.assert_allclose(p.sum(-1), 1, **tol(dtype))
    np.testing.assert_allclose(S.softmax(x + 1000.0, dtype=dtype), p, **tol(dtype))
    e = np.exp(x)
    np.testing.assert_allclose(p, e / e.sum(-1, keepdims=True), **tol(dtype))
    assert np.all(np.isfinite(S.softmax(np.array([1e4, -1e4, 0.0]), dtype=dtype)))


def naive_attention(q, k, v, start_pos, scale):
    M, H, D = q.shape
    Hkv = k.shape[1]
    out = np.zeros((M, H, D))
    for h in range(H):
        kh = h // (H // Hkv)
        for i in range(M):
            scores = []
            for t in range(k.shape[0]):
                if t <= start_pos + i:
                    scores.append(scale * sum(q[i, h, d] * k[t, kh, d] for d in range(D)))
                else:
                    scores.append(-math.inf)
            mx = max(scores)
            w = [math.exp(s - mx) for s in scores]
            tot = sum(w)
            for t in range(k.shape[0]):
                out[i, h] += w[t] / tot * v[t, kh]
    return out


@pytest.mark.parametrize("H,Hkv", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("start_pos", [0, 3])
def test_attention_vs_naive(H, Hkv, start_pos):
    r = rng(15)
    M, D, C = 4, 8, 10
    q = r.standard_normal((M, H, D))
    k, v = r.standard_normal((C, Hkv, D)), r.standard_normal((C, Hkv, D))
    y = S.attention(q, k, v, start_pos)
    assert y.shape == (M, H, D) and y.dtype == np.float64
    # the naive loop sees only the rows the queries may reach
    want = naive_attention(q, k[:start_pos + M], v[:start_pos + M], start_pos, 1 / math.sqrt(D))
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    # rows beyond start_pos + M are ignored
    k2, v2 = k.copy(), v.copy()
    k2[start_pos + M:] = 1e3
    v2[start_pos + M:] = -1e3
    np.testing.assert_array_equal(S.attention(q, k2, v2, start_pos), y)
    # explicit scale
    np.testing.assert_allclose(S.attention(q, k, v, start_pos, scale=0.3),
                               naive_attention(q, k[:start_pos + M], v[:start_pos + M],
                                               start_pos, 0.3), rtol=1e-12, atol=1e-12)


def test_attention_decode_equals_prefill_last_row():
    r = rng(16)
    T, H, Hkv, D = 7, 4, 2, 8
    q = r.standard_normal((T, H, D))
    k, v = r.standard_normal((T, Hkv, D)), r.standard_normal((T, Hkv, D))
    full = S.attention(q, k, v, 0)
    for p in range(T):
        step = S.attention(q[p:p + 1], k, v, p)
        np.testing.assert_allclose(step[0], full[p], rtol=1e-12, atol=1e-12)


def test_attention_gqa_equals_repeated_kv():
    r = rng(17)
    M, H, Hkv, D = 3, 6, 2, 4
    q = r.standard_normal((M, H, D))
    k, v = r.standard_normal((5, Hkv, D)), r.standard_normal((5, Hkv, D))
    rep = H // Hkv
    kr, vr = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)   # head h -> kv head h // rep
    np.testing.assert_allclose(S.attention(q, k, v, 2), S.attention(q, kr, vr, 2),
                               rtol=1e-14, atol=1e-14)


def test_attention_first_position_returns_v0():
    r = rng(18)
    q = r.standard_normal((1, 2, 4))
    k, v = r.standard_normal((3, 2, 4)), r.standard_normal((3, 2, 4))
    np.testing.assert_allclose(S.attention(q, k, v, 0)[0], v[0], rtol=1e-14)


def test_attention_float32_close():
    r = rng(19)
    q = r.standard_normal((4, 4, 16))
    k, v = r.standard_normal((9, 2, 16)), r.standard_normal((9, 2, 16))
    y32 = S.attention(q, k, v, 5, dtype=np.float32)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, S.attention(q, k, v, 5), rtol=1e-5, atol=1e-5)


def test_attention_errors():
    q = np.zeros((2, 4, 8))
    kv = np.zeros((5, 3, 8))
    with pytest.raises(ValueError, match="multiple"):
        S.attention(q, kv, kv, 0)
    kv = np.zeros((5, 2, 8))
    with pytest.raises(ValueError, match="k_cache"):
        S.attention(q, kv, kv, 4)
    with pytest.raises(ValueError, match="k_cache"):
        S.attention(q, np.zeros((5, 2, 6)), np.zeros((5, 2, 6)), 0)
    with pytest.raises(ValueError, match="v_cache"):
        S.attention(q, kv, np.zeros((4, 2, 8)), 0)
    with pytest.raises(ValueError, match="q"):
        S.attention(q[0], kv, kv, 0)
    with pytest.raises(ValueError, match="start_pos"):
        S.attention(q, kv, kv, -1)


# ---------------------------------------------------------------------------------------------
# feed-forward, add


@pytest.mark.parametrize("dtype", DTYPES)
def test_ffn_vs_pieces(dtype):
    r = rng(20)
    M, K, F = 3, 8, 20
    x, g = r.standard_normal((M, K)), r.standard_normal(K)
    wg, wu, wd = r.standard_normal((F, K)), r.standard_normal((F, K)), r.standard_normal((K, F))
    eps = 1e-5
    y = S.ffn(x, g, wg, wu, wd, eps, dtype=dtype)
    assert y.dtype == dtype and y.shape == (M, K)
    # composed by hand, one row at a time
    for m in range(M):
        h = x[m] / math.sqrt(float(np.mean(x[m] ** 2)) + eps) * g
        gate = np.array([sum(h[j] * wg[f, j] for j in range(K)) for f in range(F)])
        up = np.array([sum(h[j] * wu[f, j] for j in range(K)) for f in range(F)])
        act = gate / (1 + np.exp(-gate)) * up
        want = x[m] + np.array([sum(act[f] * wd[kk, f] for f in range(F)) for kk in range(K)])
        np.testing.assert_allclose(y[m], want, rtol=1e-4 if dtype == np.float32 else 1e-11,
                                   atol=1e-4 if dtype == np.float32 else 1e-11)
    with pytest.raises(ValueError, match="w_down"):
        S.ffn(x, g, wg, wu, wd.T, eps)
    with pytest.raises(ValueError, match="w_up"):
        S.ffn(x, g, wg, wu[:-1], wd, eps)


def test_swiglu_and_add():
    r = rng(21)
    a, b = r.standard_normal(10), r.standard_normal(10)
    np.testing.assert_allclose(S.swiglu(a, b), [x / (1 + math.exp(-x)) * y for x, y in zip(a, b)],
                               rtol=1e-14)
    np.testing.assert_array_equal(S.add(a, b), a + b)
    assert S.add(a, b, dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="b"):
        S.add(a, b[:3])
    with pytest.raises(ValueError, match="up"):
        S.swiglu(a, b[:3])


def test_dtype_of_every_stage():
    r = rng(22)
    x = r.standard_normal((2, 4))
    for dtype in DTYPES:
        outs = [S.embedding(x, np.array([1]), dtype=dtype), S.rmsnorm(x, np.ones(4), dtype=dtype),
                S.silu(x, dtype=dtype), S.gelu(x, dtype=dtype), S.relu(x, dtype=dtype),
                S.activation(x, None, dtype=dtype), S.softmax(x, dtype=dtype),
                S.matmul(x, x, activation="gelu", dtype=dtype),
                S.rope(x[:, None], np.arange(2), dtype=dtype),
                S.swiglu(x, x, dtype=dtype), S.add(x, x, dtype=dtype)]
        assert all(o.dtype == dtype for o in outs), [o.dtype for o in outs]
