"""The integer dot kernels (vec_dot) of the formats whose dot_type is Q8_K, on every CPU tier
this processor has: exact integer arithmetic on every code and scale pattern (random weight
bytes), extreme codes against extreme activations (int16 saturation), zero scales, rows of
many super-blocks; and the vectorized Q8_K activation quantizer against the reference bytes.

Exactness is checked where float rounding cannot hide an error: super-scales of 1.0 and
activations whose Q8_K scale is exactly -1 (integers in [-127, 127] with a 127 in every
block), so that the result is an integer and every partial sum a kernel forms stays below
2**24 in magnitude; the result must then equal the float64 reference exactly."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import pyfoundry as pf

from conftest import ROOT

FORMATS = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_k", "iq4_xs", "tq1_0", "tq2_0"]

# byte offsets of the float super-scales (d, and dmin where the format has mins)
SUPER_SCALES = {
    "q2_k": [(80, "f16"), (82, "f16")],
    "q3_k": [(108, "f16")],
    "q4_k": [(0, "f16"), (2, "f16")],
    "q5_k": [(0, "f16"), (2, "f16")],
    "q6_k": [(208, "f16")],
    "q8_k": [(0, "f32")],
    "iq4_xs": [(0, "f16")],
    "tq1_0": [(52, "f16")],
    "tq2_0": [(64, "f16")],
}

BASE = ["avx2", "fma", "f16c"]
TIERS = {"portable": [], "avx2": BASE, "avx512": BASE + ["avx512"],
         "avx512vnni": BASE + ["avx512", "avx512vnni"]}


def tiers():
    have = set(pf.cpu_features()["detected"])
    return [t for t, f in TIERS.items() if set(f) <= have]


def with_scales(p, raw, value):
    """blocks (nb, block_bytes) with every super-scale set to `value`"""
    raw = raw.copy()
    for off, kind in SUPER_SCALES[p.name]:
        if kind == "f16":
            raw[:, off:off + 2] = np.full(len(raw), value, np.float16).view(np.uint8).reshape(-1, 2)
        else:
            raw[:, off:off + 4] = np.full(len(raw), value, np.float32).view(np.uint8).reshape(-1, 4)
    return raw


def integer_acts(rng, M, K, nonzero):
    """(M, K) integers in [-127, 127], `nonzero` random entries per block plus a 127 (of either
    sign) first in every block: the Q8_K scale is -1 or 1 and the codes are exactly -x or x"""
    x = np.zeros((M, K // 256, 256), np.float32)
    for m in range(M):
        for b in range(K // 256):
            pos = rng.choice(np.arange(1, 256), nonzero, replace=False)
            x[m, b, pos] = rng.integers(-127, 128, nonzero)
            x[m, b, 0] = 127 * rng.choice([-1, 1])
    return x.reshape(M, K)


def q8(p, x, raw, K, tier):
    w = pf.Tensor("w", (len(raw) * p.block_elems // K, K), p, raw.reshape(-1, p.row_bytes(K)))
    try:
        pf.set_cpu_features(TIERS[tier])
        return pf.compile("matmul", policy=p, variant="q8")(x, w)
    finally:
        pf.set_cpu_features(None)


def reference(p, x, raw, K):
    wd = p.dequantize(raw.reshape(-1, p.row_bytes(K)), (len(raw) * p.block_elems // K, K))
    return x.astype(np.float64) @ wd.astype(np.float64).T


@pytest.mark.parametrize("tier", tiers())
@pytest.mark.parametrize("name", FORMATS)
def test_every_code_pattern_exact(name, tier):
    """random bytes (all codes and sub-block scales, zeros included), sparse activations over
    the full code range: one block per row keeps every partial sum below 2**24"""
    p = pf.policy(name)
    rng = np.random.default_rng(1)
    K, N, M = 256, 96, 8
    raw = with_scales(p, rng.integers(0, 256, (N * K // 256, p.block_bytes), dtype=np.uint8), 1.0)
    x = integer_acts(rng, M, K, nonzero=7)
    y = q8(p, x, raw, K, tier)
    np.testing.assert_array_equal(y, reference(p, x, raw, K), err_msg=f"{name} {tier}")


def extreme_blocks(p, nb):
    """weight blocks of constant bytes (codes and scales all at their extremes) and random"""
    rows = [np.full(p.block_bytes, v, np.uint8) for v in (0x00, 0xFF, 0x55, 0xAA, 0x0F, 0xF0,
                                                         0x80, 0x7F)]
    rng = np.random.default_rng(2)
    while len(rows) < nb:
        rows.append(rng.integers(0, 256, p.block_bytes, dtype=np.uint8))
    return np.stack(rows[:nb])


def pair_acts(rng, M, K, pairs):
    """like integer_acts, with `pairs` adjacent pairs (2j, 2j+1) per block at +-127 of equal
    sign: the largest two-product sums that vpmaddubsw forms, still exact in float"""
    x = np.zeros((M, K // 256, 256), np.float32)
    for m in range(M):
        for b in range(K // 256):
            pos = 2 * rng.choice(np.arange(1, 128), pairs, replace=False)
            v = 127 * rng.choice([-1, 1], pairs)
            x[m, b, pos] = v
            x[m, b, pos + 1] = v
            x[m, b, 0] = x[m, b, 1] = 127 * rng.choice([-1, 1])
    return x.reshape(M, K)


@pytest.mark.parametrize("tier", tiers())
@pytest.mark.parametrize("name", FORMATS)
def test_extreme_codes_exact(name, tier):
    """codes and scales at their extremes (constant bytes) against pairs of +-127: an int16
    saturation of vpmaddubsw would show as an inexact result"""
    p = pf.policy(name)
    rng = np.random.default_rng(2)
    K = 256
    raw = with_scales(p, extreme_blocks(p, 24), 1.0)
    x = pair_acts(rng, 24, K, pairs=3)
    y = q8(p, x, raw, K, tier)
    np.testing.assert_array_equal(y, reference(p, x, raw, K), err_msg=f"{name} {tier}")


@pytest.mark.parametrize("tier", tiers())
@pytest.mark.parametrize("name", FORMATS)
def test_extreme_codes_dense_activations(name, tier):
    """dense activations of +-127 against extreme codes: the int16 partial sums of the ternary
    kernels at their largest (exact: small integers), and no gross error elsewhere (sums past
    2**24 round in float)"""
    p = pf.policy(name)
    K = 256 * 2
    raw = with_scales(p, extreme_blocks(p, 16), 1.0)
    e = np.arange(K)
    x = np.stack([np.full(K, 127.0), np.full(K, -127.0), np.where(e % 2, 127.0, -127.0),
                  np.where(e % 3, -127.0, 127.0), np.where(e % 64 < 32, 127.0, -127.0)])
    x = x.astype(np.float32)
    y = q8(p, x, raw, K, tier).astype(np.float64)
    ref = reference(p, x, raw, K)
    mag = np.abs(x).astype(np.float64) @ np.abs(p.dequantize(raw, (8, K))).astype(np.float64).T
    assert (np.abs(y - ref) <= 1e-6 * mag + 512).all(), f"{name} {tier}"
    if name.startswith("tq"):
        np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("name", FORMATS)
def test_zero_scales(name):
    """sub-block scales (and mins) that encode zero give exactly zero on every tier"""
    p = pf.policy(name)
    if name in ("q8_k", "tq1_0", "tq2_0"):
        pytest.skip("no sub-block scales")
    rng = np.random.default_rng(3)
    raw = with_scales(p, rng.integers(0, 256, (4, p.block_bytes), dtype=np.uint8), 1.0)
    zero = {"q2_k": [(0, 16, 0x00)], "q3_k": [(96, 8, 0x00), (104, 4, 0xAA)],
            "q4_k": [(4, 12, 0x00)], "q5_k": [(4, 12, 0x00)], "q6_k": [(192, 16, 0x00)],
            "iq4_xs": [(2, 2, 0xAA), (4, 4, 0x00)]}[name]
    for off, cnt, v in zero:
        raw[:, off:off + cnt] = v
    x = integer_acts(rng, 3, 256, nonzero=50)
    assert not reference(p, x, raw, 256).any()
    for t in tiers():
        assert not q8(p, x, raw, 256, t).any(), f"{name} {t}"


@pytest.mark.parametrize("name", FORMATS)
def test_many_superblocks_tiers_agree(name):
    """rows of 48 super-blocks: quantized Gaussian weights and activations, every tier within
    float rounding of the float64 reference on the Q8_K activations and of each other"""
    p = pf.policy(name)
    rng = np.random.default_rng(4)
    K, N, M = 256 * 48, 24, 3
    w = pf.Tensor.from_numpy(rng.standard_normal((N, K)).astype(np.float32), p, "w")
    x = rng.standard_normal((M, K)).astype(np.float32)
    a = pf.policy("q8_k")
    xa = a.dequantize(a.quantize(x)).astype(np.float64)
    wd = w.dequantize().astype(np.float64)
    ref = xa @ wd.T
    mag = np.abs(xa) @ np.abs(wd).T
    ys = {}
    for t in tiers():
        try:
            pf.set_cpu_features(TIERS[t])
            ys[t] = pf.compile("matmul", policy=p, variant="q8")(x, w).astype(np.float64)
        finally:
            pf.set_cpu_features(None)
        assert (np.abs(ys[t] - ref) <= 1e-5 * mag).all(), f"{name} {t}"


# ---- direct calls through the C library: the activation quantizer and -128 activations ----

POLICY_STRUCT = """
struct fdy_policy {
    const char *name; int32_t type; int32_t block_elems; int32_t block_bytes;
    int32_t sub_elems; uint32_t flags; const char *dot_type;
    float tol_roundtrip; float tol_f32; float tol_q8;
    void *decode; void *dequantize_fast;
    void (*quantize)(const float *, void *, int64_t);
    float (*vec_dot)(const void *, const void *, int64_t);
    void (*quantize_act)(const float *, void *, int64_t);
    void *to_i8; void *vec_dot_f32;
    void (*vec_dot_rows)(const void *, size_t, const void *, int64_t, float *, int64_t);
    int32_t pack_rows;
    void (*pack)(const void *, size_t, void *, int64_t);
    void (*vec_dot_packed)(const void *, size_t, const void *, int64_t, float *, int64_t);
    void (*vec_dot_f32_rows)(const void *, size_t, const float *, int64_t, float *, int64_t);
    int32_t amx_chunk_bytes;
    int (*pack_amx)(const void *, size_t, void *, int64_t);
    void (*vec_dot_f32_amx)(const void *, size_t, const void *, float *, int64_t);
};
typedef struct fdy_amx_act {
    const int8_t *digits; const float *scale; const float *scale16; const float *sum;
    int64_t n_chunks;
} fdy_amx_act;
size_t fdy_amx_bytes(int64_t n);
int fdy_amx_prepare(const float *x, int64_t n, void *buf, fdy_amx_act *a);
"""


def header_cdef():
    """foundry.h without preprocessor lines (integer #defines kept) or C++ guards"""
    out, skip = [], 0
    for line in (ROOT / "foundry_c" / "include" / "foundry.h").read_text().splitlines():
        s = line.strip()
        if s.startswith("#ifdef __cplusplus"):
            skip = 1
            continue
        if skip:
            if s.startswith("#endif"):
                skip = 0
            continue
        m = re.match(r"#define\s+(\w+)\s+(\d+)\s*$", s)
        if m:
            out.append(f"#define {m.group(1)} {m.group(2)}")
            continue
        if s.startswith("#"):
            continue
        out.append(re.sub(r"(\d+)u\b", r"\1", line))
    return "\n".join(out)


@pytest.fixture(scope="module")
def lib():
    cffi = pytest.importorskip("cffi")
    path = os.environ.get("PYFOUNDRY_CFFI_LIB")
    if not path:
        if not shutil.which("make") or not shutil.which(os.environ.get("CC", "cc")):
            pytest.skip("make or a C compiler is missing")
        r = subprocess.run(["make", "-s", "build/libfoundry.so"], cwd=ROOT, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        path = str(ROOT / "build" / "libfoundry.so")
    ffi = cffi.FFI()
    ffi.cdef(header_cdef() + POLICY_STRUCT)
    C = ffi.dlopen(path)
    yield ffi, C
    C.fdy_cpu_set_feature_mask(0xFFFFFFFF)


def c_policy(lib, name):
    ffi, C = lib
    p = ffi.cast("const struct fdy_policy *", C.fdy_policy_by_name(name.encode()))
    # the struct above must match policy.h
    assert ffi.string(p.name).decode() == name
    assert p.block_bytes == pf.policy(name).block_bytes
    return p


def set_tier(lib, tier):
    ffi, C = lib
    mask = 0
    for f in TIERS[tier]:
        mask |= getattr(C, "FDY_CPU_" + f.upper())
    C.fdy_cpu_set_feature_mask(mask)


def activation_rows():
    rng = np.random.default_rng(5)
    rows = [rng.standard_normal(256 * 4) * s for s in (1.0, 1e-3, 1e4, 1e-30)]
    r = rng.standard_normal(256 * 4)
    r[[3, 300, 600, 900]] = [5.0, -7.0, 7.0, -7.0]  # ties of magnitude, first one wins
    rows.append(r)
    r = rng.standard_normal(256 * 4)
    r[:256] = 0.0
    r[256:512] = -0.0
    r[512:768] *= 1e-42  # subnormals
    rows.append(r)
    r = rng.standard_normal(256 * 4)
    r[[1, 257, 700]] = np.nan
    r[512:768] = np.nan  # a block of NaN only
    r[800] = np.inf
    r[900] = -np.inf
    rows.append(r)
    rows.append(np.round(rng.standard_normal(256 * 4) * 40) + 0.5)  # halves: ties to even
    return np.stack(rows).astype(np.float32)


def test_q8_k_quantize_act_bytes_equal_reference(lib):
    ffi, C = lib
    p = c_policy(lib, "q8_k")
    assert p.quantize_act != ffi.NULL
    x = activation_rows()
    nb = x.shape[1] // 256 * 292
    ref = np.zeros((len(x), nb), np.uint8)
    for i, row in enumerate(x):
        p.quantize(ffi.from_buffer("float[]", row), ffi.from_buffer(ref[i]), row.size)
    for t in tiers():
        set_tier(lib, t)
        got = np.full((len(x), nb), 0xCD, np.uint8)
        for i, row in enumerate(x):
            p.quantize_act(ffi.from_buffer("float[]", row), ffi.from_buffer(got[i]), row.size)
        C.fdy_cpu_set_feature_mask(0xFFFFFFFF)
        bad = np.argwhere(got != ref)
        assert not len(bad), f"{t}: {len(bad)} bytes differ, first at {bad[:3].tolist()}"


@pytest.mark.parametrize("name", FORMATS)
def test_minus_128_activations_are_defined(name, lib):
    """an activation byte of -128 never comes from the quantizer; a hand-made block holding it
    must still give a finite result on every tier (exact on the portable path)"""
    ffi, C = lib
    p = c_policy(lib, name)
    pol = pf.policy(name)
    rng = np.random.default_rng(6)
    raw = with_scales(pol, extreme_blocks(pol, 8), 1.0)
    act = np.zeros((8, 292), np.uint8)
    for b in range(8):
        qs = rng.choice(np.array([-128, 127, -127, 0], np.int8), 256)
        qs[: 32 * b] = -128
        act[b, :4] = np.array([1.0], np.float32).view(np.uint8)
        act[b, 4:260] = qs.view(np.uint8)
        act[b, 260:] = qs.astype(np.int32).reshape(16, 16).sum(1).astype(np.int16).view(np.uint8)
    wd = pol.dequantize(raw, (8, 256)).astype(np.float64)
    ad = act[:, 4:260].view(np.int8).astype(np.float64)
    for t in tiers():
        set_tier(lib, t)
        for b in range(8):
            y = p.vec_dot(ffi.from_buffer(raw[b]), ffi.from_buffer(act[b]), 256)
            assert np.isfinite(y), f"{name} {t}"
            if t == "portable":
                ref = wd[b] @ ad[b]
                bound = 1e-6 * (np.abs(wd[b]) @ np.abs(ad[b]))
                assert abs(y - ref) <= bound, f"{name}: {y} vs {ref}"
    C.fdy_cpu_set_feature_mask(0xFFFFFFFF)


ROWS_POLICIES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl", "mxfp4"]


def test_has_vec_dot_rows_lists_the_hooked_formats():
    assert sorted(p.name for p in pf.policies if p.has_vec_dot_rows) == sorted(ROWS_POLICIES)


@pytest.mark.parametrize("name", ROWS_POLICIES)
def test_vec_dot_rows_equals_vec_dot_bit_for_bit(lib, name):
    """the rows hook (the decode GEMV's call) against the one-row kernel, row by row, on every
    tier this CPU has: the same bits, over more rows than one call of the driver takes and a
    row length with a tail after the unrolled blocks"""
    ffi, C = lib
    p = c_policy(lib, name)
    assert p.vec_dot_rows != ffi.NULL
    d = c_policy(lib, ffi.string(p.dot_type).decode())
    K, R = p.block_elems * 11, 70
    rng = np.random.default_rng(len(name))
    w = (rng.standard_normal((R, K)) * rng.uniform(0.1, 10, (R, 1))).astype(np.float32)
    rb = K // p.block_elems * p.block_bytes
    wq = np.zeros((R, rb), np.uint8)
    for r in range(R):
        p.quantize(ffi.from_buffer("float[]", w[r]), ffi.from_buffer(wq[r]), K)
    x = rng.standard_normal(K).astype(np.float32)
    xq = np.zeros(K // d.block_elems * d.block_bytes, np.uint8)
    d.quantize(ffi.from_buffer("float[]", x), ffi.from_buffer(xq), K)
    try:
        for tier in tiers():
            set_tier(lib, tier)
            out = np.full(R, np.nan, np.float32)
            p.vec_dot_rows(ffi.from_buffer(wq), rb, ffi.from_buffer(xq), K,
                           ffi.from_buffer("float[]", out), R)
            one = np.array([p.vec_dot(ffi.from_buffer(wq[r]), ffi.from_buffer(xq), K)
                            for r in range(R)], np.float32)
            assert np.array_equal(out.view(np.uint32), one.view(np.uint32)), (name, tier)
            assert np.isfinite(out).all()
    finally:
        C.fdy_cpu_set_feature_mask(0xFFFFFFFF)


# q8_0's copy was dropped: on the Zen 3 machine the row kernel streamed the 1B model's rows
# faster (docs/CPU_NOTES.md item 33)
PACK_POLICIES = ["q4_0", "q4_1"]


def test_pack_hooks_are_the_listed_formats():
    assert sorted(p.name for p in pf.policies if p.pack_rows) == PACK_POLICIES
    assert all(pf.policy(n).pack_rows == 8 for n in PACK_POLICIES)


@pytest.mark.parametrize("name", PACK_POLICIES)
def test_vec_dot_packed_matches_vec_dot_row_by_row(lib, name):
    """the interleaved layout (pack) and its kernel (vec_dot_packed) against the one-row
    vec_dot, row by row: the same integer block sums, so equal up to the float accumulation
    order (a bound of a few ulps of the sum of |terms|); the same bits on every tier this CPU
    has (portable and AVX2 accumulate alike); several groups per call, a row length past the
    kernel's precomputed blocks too (long rows)"""
    ffi, C = lib
    p = c_policy(lib, name)
    assert p.pack != ffi.NULL and p.vec_dot_packed != ffi.NULL and p.pack_rows == 8
    d = c_policy(lib, ffi.string(p.dot_type).decode())
    for K in (p.block_elems * 18, p.block_elems * 300):
        G, R = 5, 8
        rng = np.random.default_rng(K)
        w = (rng.standard_normal((G * R, K)) * rng.uniform(0.1, 10, (G * R, 1))).astype(np.float32)
        rb = K // p.block_elems * p.block_bytes
        wq = np.zeros((G * R, rb), np.uint8)
        for r in range(G * R):
            p.quantize(ffi.from_buffer("float[]", w[r]), ffi.from_buffer(wq[r]), K)
        packed = np.zeros_like(wq)
        for g in range(G):
            p.pack(ffi.from_buffer(wq[g * R]), rb, ffi.from_buffer(packed[g * R]), K)
        assert not np.array_equal(packed, wq)
        x = rng.standard_normal(K).astype(np.float32)
        xq = np.zeros(K // d.block_elems * d.block_bytes, np.uint8)
        d.quantize(ffi.from_buffer("float[]", x), ffi.from_buffer(xq), K)
        one = np.array([p.vec_dot(ffi.from_buffer(wq[r]), ffi.from_buffer(xq), K)
                        for r in range(G * R)], np.float64)
        # the sum of |d_w d_a block sum| bounds the accumulation's rounding
        wd = pf.policy(name).dequantize(wq, (G * R, K)).astype(np.float64)
        xd = pf.policy(ffi.string(p.dot_type).decode()).dequantize(
            xq, (1, K)).astype(np.float64)[0]
        mag = np.abs(wd * xd).sum(axis=1)
        outs = {}
        try:
            for tier in tiers():
                set_tier(lib, tier)
                out = np.full(G * R, np.nan, np.float32)
                p.vec_dot_packed(ffi.from_buffer(packed), R * rb, ffi.from_buffer(xq), K,
                                 ffi.from_buffer("float[]", out), G)
                assert np.isfinite(out).all(), (name, tier)
                assert (np.abs(out - one) <= 1e-6 * mag).all(), (name, K, tier)
                outs[tier] = out
        finally:
            C.fdy_cpu_set_feature_mask(0xFFFFFFFF)
        first = next(iter(outs.values()))
        for tier, out in outs.items():
            assert np.array_equal(out.view(np.uint32), first.view(np.uint32)), (name, tier)
