"""The f32 variant's decode GEMV on CPUs with AMX (policies/simd_amx.h): the activation as
exact integers (fdy_amx_prepare: four base-256 digits of a 32-bit fixed point per block of
32), the weights in the AMX layout (pack_amx), the int8 tile kernel (vec_dot_f32_amx).

* the activation's digits and scales against a NumPy construction of the same fixed point
  (the digits recombine to round(x * 2^S) and that is within half a unit of x * 2^S);
* the kernel against the float64 dot of the weights dequantized by the gguf package (an
  independent decoder): within the float32 dot-product bound the other f32 kernels are held
  to, plus the fixed point's own error (2^-30 of the block's largest |x| per element); odd
  block counts (padding), one block, several groups per call, codes of every value, scales of
  very different sizes, zero blocks and huge and tiny activations;
* non-finite activations are refused (the plain kernels then run);
* pf.Model: the f32 decode with the AMX copies against the same model with AMX disabled, with
  row counts that are and are not multiples of 16, and the copies' bytes in packed_bytes.
The kernels need a CPU with AMX-INT8 (Sapphire Rapids and later Xeons); elsewhere the kernel
tests skip, and the hooks' presence and the refusals are still checked.
"""
import zlib

import numpy as np
import pytest

import pyfoundry as pf

from conftest import U, gamma
from test_vec_dot_kquants import c_policy, lib  # noqa: F401  (the cffi fixture)

AMX_POLICIES = ["q4_0", "q4_1", "q8_0"]
HAS_AMX = "amx" in pf.cpu_features()["detected"]
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="this CPU (or OS) has no AMX-INT8")


def test_amx_hooks_are_the_listed_formats():
    assert sorted(p.name for p in pf.policies if p.amx_chunk_bytes) == AMX_POLICIES
    # the layout's bytes per 16 rows x 64 elements: the same bytes per weight as the blocks
    for n in AMX_POLICIES:
        p = pf.policy(n)
        assert p.amx_chunk_bytes == 16 * 2 * p.block_bytes


def test_amx_feature_flag():
    f = pf.cpu_features()
    if "amx" in f["detected"]:
        assert "avx512" in f["detected"]  # detected only with AVX-512
    try:
        pf.set_cpu_features([n for n in f["detected"] if n != "amx"])
        assert "amx" not in pf.cpu_features()["enabled"]
    finally:
        pf.set_cpu_features(None)
    assert pf.cpu_features()["enabled"] == f["detected"]


def prepare(lib, x):
    ffi, C = lib
    buf = np.zeros(C.fdy_amx_bytes(len(x)) + 64, np.uint8)
    off = (-buf.ctypes.data) % 64
    buf = buf[off:]
    a = ffi.new("fdy_amx_act *")
    rc = C.fdy_amx_prepare(ffi.from_buffer("float[]", x), len(x), ffi.from_buffer(buf), a)
    return rc, a, buf


def act_arrays(lib, a, nb):
    ffi, _ = lib
    nc = a.n_chunks
    digits = np.frombuffer(ffi.buffer(a.digits, nc * 512), np.int8).reshape(nc, 8, 64)
    arr = {k: np.frombuffer(ffi.buffer(getattr(a, k), 4 * 2 * nc), np.float32).copy()
           for k in ("scale", "scale16", "sum")}
    return digits, arr


@needs_amx
@pytest.mark.parametrize("K", [32, 96, 576, 1536])
def test_activation_digits_are_the_fixed_point(lib, K):
    rng = np.random.default_rng(K)
    x = (rng.standard_normal(K) * np.repeat(10.0 ** rng.uniform(-6, 6, K // 32), 32))
    x = x.astype(np.float32)
    x[32:64] = 0.0 if K >= 64 else x[32:64]
    rc, a, keep = prepare(lib, x)
    assert rc == 0
    nb = K // 32
    assert a.n_chunks == (nb + 1) // 2
    digits, arr = act_arrays(lib, a, nb)
    for b in range(nb):
        c, h = divmod(b, 2)
        d = digits[c, h::2, 32 * h:32 * h + 32].astype(np.int64)  # rows 2p + h, p = 0..3
        assert not digits[c, h::2, 32 * (1 - h):32 * (1 - h) + 32].any()  # the other half
        X = d[0] + 256 * d[1] + 65536 * d[2] + 16777216 * d[3]
        assert (np.abs(d) <= 128).all() and (d >= -128).all() and (d <= 127).all()
        xb = x[32 * b:32 * b + 32].astype(np.float64)
        s = arr["scale"][b]
        m = np.abs(xb).max()
        if m == 0:
            assert not X.any() and arr["sum"][b] == 0
            continue
        assert s > 0 and np.log2(s) == np.round(np.log2(s))  # a power of two
        assert arr["scale16"][b] == s / 16
        # |x| / s < 2^30 and the largest uses at least 2^28: X = round(x / s)
        assert m / s < 2 ** 30 and m / s >= 2 ** 28
        assert (np.abs(X - xb / s) <= 0.5).all()
        assert arr["sum"][b] == np.float32(X.sum() * np.float64(s))
    if nb % 2:  # the padding block: zero digits and scales
        assert not digits[-1, 1::2].any()
        assert arr["scale"][nb] == arr["scale16"][nb] == arr["sum"][nb] == 0


@needs_amx
def test_nonfinite_activation_is_refused(lib):
    for bad in (np.inf, -np.inf, np.nan):
        x = np.ones(96, np.float32)
        x[70] = bad
        assert prepare(lib, x)[0] == -1
    assert prepare(lib, np.ones(48, np.float32))[0] == -1  # not whole blocks


def gguf_dequant(name, raw, shape):
    gguf = pytest.importorskip("gguf")
    qt = getattr(gguf.GGMLQuantizationType, name.upper())
    return gguf.quants.dequantize(np.asarray(raw, np.uint8).reshape(shape[0], -1),
                                  qt).astype(np.float64).reshape(shape)


def weights(name, rows, K, rng, kind):
    p = pf.policy(name)
    if kind == "gaussian":
        w = rng.standard_normal((rows, K)) * rng.uniform(1e-3, 1e3, (rows, 1))
        raw = np.asarray(p.quantize(w.astype(np.float32))).reshape(rows, -1)
    else:  # random bytes: every code, scales of any size
        raw = np.asarray(pf.testing.random_blocks(p, rows, K, rng, max_abs=1e3).raw)
        raw = raw.reshape(rows, -1)
    return raw, gguf_dequant(name, raw, (rows, K))


def run_amx(lib, name, raw, K, x, groups_per_call):
    ffi, C = lib
    p = c_policy(lib, name)
    rows = raw.shape[0]
    nc = (K // 32 + 1) // 2
    gb = nc * p.amx_chunk_bytes
    packed = np.zeros(rows // 16 * gb, np.uint8)
    for g in range(rows // 16):
        p.pack_amx(ffi.from_buffer(raw[16 * g]), raw.shape[1], ffi.from_buffer(packed[g * gb:]), K)
    rc, a, keep = prepare(lib, x)
    assert rc == 0
    out = np.full(rows, np.nan, np.float32)
    for g in range(0, rows // 16, groups_per_call):
        ng = min(groups_per_call, rows // 16 - g)
        p.vec_dot_f32_amx(ffi.from_buffer(packed[g * gb:]), gb, a,
                          ffi.from_buffer("float[]", out[16 * g:]), ng)
    return out


def assert_within_bound(name, y, wd, x, what):
    xd = x.astype(np.float64)
    ref = wd @ xd
    mag = np.abs(wd) @ np.abs(xd)
    # the fixed point: at most 2^-30 of the block's largest |x| per element
    bmax = np.repeat(np.abs(xd).reshape(-1, 32).max(axis=1), 32)
    fix = 2.0 ** -30 * (np.abs(wd) @ bmax)
    bound = gamma(wd.shape[1] + 2) * mag + 4 * U * np.abs(ref) + fix + 1e-30
    err = np.abs(y.astype(np.float64) - ref)
    assert np.isfinite(y).all(), f"{name} {what}"
    assert (err <= bound).all(), f"{name} {what}: err/bound {np.max(err / bound):.3g}"


@needs_amx
@pytest.mark.parametrize("kind", ["gaussian", "random"])
@pytest.mark.parametrize("name", AMX_POLICIES)
def test_amx_kernel_within_f32_bound(lib, name, kind):
    rng = np.random.default_rng(zlib.crc32(f"{name} {kind}".encode()))
    for K, rows, per in ((32, 16, 1), (96, 48, 2), (576, 80, 3), (1536, 32, 16), (4096, 48, 1)):
        raw, wd = weights(name, rows, K, rng, kind)
        x = rng.standard_normal(K).astype(np.float32)
        y = run_amx(lib, name, raw, K, x, per)
        assert_within_bound(name, y, wd, x, f"{kind} K={K}")
        rel = np.linalg.norm(y - wd @ x) / np.linalg.norm(wd @ x)
        assert rel <= pf.policy(name).tolerances["f32"], f"{name} K={K}: rel L2 {rel:.3g}"


@needs_amx
@pytest.mark.parametrize("name", AMX_POLICIES)
def test_amx_kernel_activation_magnitudes(lib, name):
    """zero blocks, blocks of very different sizes, huge and tiny values"""
    rng = np.random.default_rng(7)
    K, rows = 352, 32  # 11 blocks: an odd count
    raw, wd = weights(name, rows, K, rng, "gaussian")
    for scale in ("mixed", 1e30, 1e-30):
        if scale == "mixed":
            x = rng.standard_normal(K) * np.repeat(10.0 ** rng.uniform(-20, 20, K // 32), 32)
            x[64:96] = 0.0
        else:
            x = rng.standard_normal(K) * scale
        x = x.astype(np.float32)
        y = run_amx(lib, name, raw, K, x, 2)
        assert_within_bound(name, y, wd, x, f"x scale {scale}")


@needs_amx
def test_model_decode_with_amx_copies_matches_plain(tmp_path_factory):
    """pf.Model's f32 decode through the AMX copies (made at the first one-token f32 forward)
    against the same model with AMX disabled (the plain f32 kernels): the weights' rows in
    whole groups of 16 and a leftover (vocab 509), the logits within float rounding"""
    from test_model import synth
    for name in AMX_POLICIES:
        path = synth(tmp_path_factory, "llama", pf.policy(name), vocab_size=509)
        tokens = list(np.random.default_rng(2).integers(3, 500, 10))
        m = pf.Model(path, variant="f32")
        m.forward(tokens[:3], 0)
        assert m.packed_bytes == 0  # a prefill makes no copy
        m.reset()
        a = np.stack([m.forward([t], logits="last") for t in tokens])
        with pf.open(path) as f:
            mm = {n: t for n, t in f.tensors.items()
                  if len(t.shape) == 2 and t.policy.name == name}
            if "output.weight" in f.tensors:
                mm.pop("token_embd.weight", None)
        chunk = pf.policy(name).amx_chunk_bytes
        want = sum(-(-(t.shape[0] // 16 * ((t.shape[1] // 32 + 1) // 2) * chunk) // 4096) * 4096
                   for t in mm.values() if t.shape[0] >= 16)
        assert m.packed_bytes == want > 0
        try:
            pf.set_cpu_features([f for f in pf.cpu_features()["detected"] if f != "amx"])
            plain = pf.Model(path, variant="f32")
            b = np.stack([plain.forward([t], logits="last") for t in tokens])
            assert plain.packed_bytes == 0
        finally:
            pf.set_cpu_features(None)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
        assert not np.array_equal(a, b), "the AMX kernels did not run"
        assert (a.argmax(axis=1) == b.argmax(axis=1)).all()


def test_no_amx_copy_without_amx(tmp_path_factory):
    from test_model import synth
    path = synth(tmp_path_factory, "llama", pf.policy("q4_0"), vocab_size=509)
    try:
        pf.set_cpu_features([f for f in pf.cpu_features()["detected"] if f != "amx"])
        m = pf.Model(path, variant="f32")
        m.forward([5], 0)
        assert m.packed_bytes == 0
    finally:
        pf.set_cpu_features(None)
