"""The q8 variant's integer dot kernels (vec_dot) of the 32-element block formats and the fast
activation quantizers (quantize_act) of q8_0 / q8_1, called directly through cffi on the plain
shared library (make -> build/libfoundry.so), on every CPU tier the machine has: portable,
AVX2, AVX2 + AVX-VNNI, AVX-512 and AVX-512 + VNNI.

* vec_dot against the exact dot product of the codes, computed from the raw blocks in float64:
  with unit scales every float step of a kernel is exact, so any code pattern (all codes at
  their extremes, -128 weights, random bytes) must give the integer result exactly -- this
  catches int16 saturation in the maddubs paths and wrong nibble / bit order; with random
  scales, the float32 dot-product bound.
* quantize_act must give the bytes of the reference quantize (ties, near-ties, zeros, tiny and
  huge blocks).
"""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import ROOT

cffi = pytest.importorskip("cffi")

FORMATS = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "mxfp4"]
DOT_TYPE = {"q4_1": "q8_1", "q5_1": "q8_1"}  # the others pair with q8_0
TIERS = {
    "portable": [],
    "avx2": ["AVX2", "FMA", "F16C"],
    "avxvnni": ["AVX2", "FMA", "F16C", "AVXVNNI"],
    "avx512": ["AVX2", "FMA", "F16C", "AVX512"],
    "avx512vnni": ["AVX2", "FMA", "F16C", "AVX512", "AVX512VNNI"],
}
U = 2.0 ** -24


def header_cdef():
    """foundry.h without preprocessor lines (integer #defines kept) or C++ guards, plus the
    policy descriptor of foundry_c/src/policy.h (its function pointers are what is tested)."""
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
    src = re.sub(r"/\*.*?\*/", "", (ROOT / "foundry_c" / "src" / "policy.h").read_text(),
                 flags=re.S)
    out += re.findall(r"typedef struct fdy_\w+ \{[^}]*\} fdy_\w+;", src)  # the hooks' types
    out += re.findall(r"typedef \w+ \(\*fdy_\w+_fn\)\([^;]*\);", src)
    out.append(re.search(r"struct fdy_policy \{.*?\};", src, re.S).group(0))
    return "\n".join(out)


@pytest.fixture(scope="module")
def lib():
    path = os.environ.get("PYFOUNDRY_CFFI_LIB")
    if not path:
        if not shutil.which("make") or not shutil.which(os.environ.get("CC", "cc")):
            pytest.skip("make or a C compiler is missing")
        so = ROOT / "build" / "libfoundry.so"
        # the Makefile's prerequisites leave out policies/*.h (simd_legacy.h): rebuild when
        # one of them is newer than the library
        stale = so.exists() and any(h.stat().st_mtime > so.stat().st_mtime
                                    for h in (ROOT / "policies").glob("*.h"))
        r = subprocess.run(["make", "-s"] + (["-B"] if stale else []) + ["build/libfoundry.so"],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        path = str(ROOT / "build" / "libfoundry.so")
    ffi = cffi.FFI()
    ffi.cdef(header_cdef())
    return ffi, ffi.dlopen(path)


def policy(lib, name):
    ffi, C = lib
    p = C.fdy_policy_by_name(name.encode())
    assert p != ffi.NULL
    return ffi.cast("const struct fdy_policy *", p)


class tier:
    """with tier(lib, name): the kernels see only that tier's CPU features"""

    def __init__(self, lib, name):
        _, self.C = lib
        self.mask = 0
        for f in TIERS[name]:
            self.mask |= getattr(self.C, "FDY_CPU_" + f)
        if self.C.fdy_cpu_features() & self.mask != self.mask:
            pytest.skip(f"this CPU lacks the {name} tier")

    def __enter__(self):
        self.C.fdy_cpu_set_feature_mask(self.mask)

    def __exit__(self, *exc):
        self.C.fdy_cpu_set_feature_mask(0xFFFFFFFF)


# ---- the formats, decoded from raw blocks in NumPy -----------------------------------------

IQ4_NL_GRID = np.array([-127, -104, -83, -65, -49, -35, -22, -10,
                        1, 13, 25, 38, 53, 69, 89, 113], np.int64)
MXFP4_K = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int64)
BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24, "iq4_nl": 18,
               "mxfp4": 17, "q8_1": 36}
HALF_ONE, HALF_MINUS_TWO = 0x3C00, 0xC000


def half_at(raw, off):
    return raw[:, off:off + 2].copy().view(np.float16)[:, 0].astype(np.float64)


def set_half(raw, off, h):
    raw[:, off:off + 2] = np.asarray(h, np.uint16).astype("<u2").reshape(-1, 1).view(np.uint8)


def nibbles(qs):
    return np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.int64)


def bits5(qh):
    v = qh.copy().view("<u4")[:, 0].astype(np.int64)
    return ((v[:, None] >> np.arange(32)) & 1) << 4


def decode(fmt, raw):
    """(codes (nb, 32) int64, d (nb,), m (nb,) or None) of raw blocks (nb, block_bytes)"""
    if fmt in ("q8_0", "q8_1"):
        off = 2 if fmt == "q8_0" else 4
        return raw[:, off:].view(np.int8).astype(np.int64), half_at(raw, 0), None
    if fmt == "q4_0":
        return nibbles(raw[:, 2:]) - 8, half_at(raw, 0), None
    if fmt == "q4_1":
        return nibbles(raw[:, 4:]), half_at(raw, 0), half_at(raw, 2)
    if fmt == "q5_0":
        return (nibbles(raw[:, 6:]) | bits5(raw[:, 2:6])) - 16, half_at(raw, 0), None
    if fmt == "q5_1":
        return nibbles(raw[:, 8:]) | bits5(raw[:, 4:8]), half_at(raw, 0), half_at(raw, 2)
    if fmt == "iq4_nl":
        return IQ4_NL_GRID[nibbles(raw[:, 2:])], half_at(raw, 0), None
    if fmt == "mxfp4":
        return MXFP4_K[nibbles(raw[:, 1:])], np.ldexp(1.0, raw[:, 0].astype(np.int64) - 128), None
    raise ValueError(fmt)


def exact_dot(fmt, w, a):
    """the dot in float64 from the codes, and the magnitude sum of |terms| for error bounds"""
    cw, dw, mw = decode(fmt, w)
    ca, da, _ = decode(DOT_TYPE.get(fmt, "q8_0"), a)
    terms = dw * da * (cw * ca).sum(1)
    mag = np.abs(dw * da) * np.abs(cw * ca).sum(1)
    if mw is not None:
        terms = terms + mw * da * ca.sum(1)
        mag = mag + np.abs(mw * da) * np.abs(ca).sum(1)
    return terms.sum(), mag.sum()


def random_halves(rng, nb, lo=-12, hi=4):
    """finite halves of random sign and magnitude 2^lo .. 2^hi, some zeros"""
    v = rng.standard_normal(nb) * np.exp2(rng.integers(lo, hi, nb))
    v[rng.random(nb) < 0.05] = 0.0
    return v.astype(np.float16).view(np.uint16)


def weight_rows(fmt, nb, rng, unit):
    raw = rng.integers(0, 256, (nb, BLOCK_BYTES[fmt]), dtype=np.uint8)
    if fmt == "mxfp4":
        raw[:, 0] = 128 if unit else rng.integers(100, 150, nb)
        return raw
    set_half(raw, 0, np.full(nb, HALF_ONE) if unit else random_halves(rng, nb))
    if fmt in ("q4_1", "q5_1"):
        set_half(raw, 2, np.full(nb, HALF_MINUS_TWO) if unit else random_halves(rng, nb))
    return raw


def act_rows(fmt, nb, rng, unit):
    """activation blocks as the quantizers make them: codes in [-127, 127], d >= 0"""
    raw = np.zeros((nb, BLOCK_BYTES[fmt]), np.uint8)
    off = 2 if fmt == "q8_0" else 4
    raw[:, off:] = rng.integers(-127, 128, (nb, 32)).astype(np.int8).view(np.uint8)
    set_half(raw, 0, np.full(nb, HALF_ONE) if unit else np.abs(random_halves(rng, nb, -8, 2)))
    if fmt == "q8_1":
        set_half(raw, 2, random_halves(rng, nb))  # s: not read by the kernels
    return raw


def vec_dot(lib, fmt, w, a):
    ffi, _ = lib
    n = 32 * w.shape[0]
    w, a = np.ascontiguousarray(w), np.ascontiguousarray(a)
    return policy(lib, fmt).vec_dot(ffi.from_buffer(w), ffi.from_buffer(a), n)


def extreme_weight_patterns(fmt, nb):
    """raw bodies (after the scale fields) with every code at one extreme, or alternating"""
    body = {"q8_0": 32, "q4_0": 16, "q4_1": 16, "q5_0": 20, "q5_1": 20, "iq4_nl": 16,
            "mxfp4": 16}[fmt]
    pats = [0x00, 0xFF, 0x80, 0x7F, 0x0F, 0xF0, 0x88, 0x77]
    out = [np.full((nb, body), p, np.uint8) for p in pats]
    out.append(np.tile(np.array([0x00, 0xFF], np.uint8), (nb, body // 2)))
    return out


# ---- vec_dot -----------------------------------------------------------------------------

@pytest.mark.parametrize("tier_name", list(TIERS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_vec_dot_exact_with_unit_scales(lib, fmt, tier_name):
    """unit scales: every float step is exact, the result must be the integer dot itself --
    for random bytes (every code value, -128 included) and codes at their extremes"""
    rng = np.random.default_rng(FORMATS.index(fmt))
    afmt = DOT_TYPE.get(fmt, "q8_0")
    assert policy(lib, fmt).vec_dot != lib[0].NULL, f"{fmt} has no vec_dot"
    with tier(lib, tier_name):
        for nb in (1, 2, 3, 4, 5, 7, 8, 9, 16):
            for it in range(3):
                w, a = weight_rows(fmt, nb, rng, True), act_rows(afmt, nb, rng, True)
                want, _ = exact_dot(fmt, w, a)
                assert vec_dot(lib, fmt, w, a) == want, f"{fmt} nb={nb} random codes"
        nb = 13
        w = weight_rows(fmt, nb, rng, True)
        head = BLOCK_BYTES[fmt] - extreme_weight_patterns(fmt, 1)[0].shape[1]
        acts = [np.full((nb, 32), v, np.int8) for v in (127, -127)]
        acts.append(np.tile(np.array([127, -127], np.int8), (nb, 16)))
        for body in extreme_weight_patterns(fmt, nb):
            w[:, head:] = body
            for codes in acts:
                a = act_rows(afmt, nb, rng, True)
                a[:, BLOCK_BYTES[afmt] - 32:] = codes.view(np.uint8)
                want, _ = exact_dot(fmt, w, a)
                got = vec_dot(lib, fmt, w, a)
                assert got == want, \
                    f"{fmt} pattern {body[0, :2]} acts {codes[0, :2]}: {got} != {want}"


@pytest.mark.parametrize("tier_name", list(TIERS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_vec_dot_random_scales_within_float_bound(lib, fmt, tier_name):
    rng = np.random.default_rng(100 + FORMATS.index(fmt))
    afmt = DOT_TYPE.get(fmt, "q8_0")
    with tier(lib, tier_name):
        for nb in (1, 3, 4, 6, 33, 128):
            for it in range(4):
                w, a = weight_rows(fmt, nb, rng, False), act_rows(afmt, nb, rng, False)
                want, mag = exact_dot(fmt, w, a)
                got = vec_dot(lib, fmt, w, a)
                # float32: the product of the scales, the partial sums of the lanes and blocks
                bound = (nb + 40) * U * mag + 1e-37
                assert abs(got - want) <= bound, \
                    f"{fmt} nb={nb}: {got} vs {want} (bound {bound:.3g})"


# ---- quantize_act ------------------------------------------------------------------------

def activation_cases(rng):
    rows = [rng.standard_normal(32 * 33).astype(np.float32) * s
            for s in (1e-30, 1e-3, 1.0, 1e3, 1e30)]
    # amax 127 gives d = 1 and 1 / d = 1: x * id = x, so these are exact ties and near-ties
    k = np.arange(-127, 127, dtype=np.float32) + np.float32(0.5)
    ties = []
    for v in (k, np.nextafter(k, np.float32(np.inf)), np.nextafter(k, np.float32(-np.inf))):
        v = v.astype(np.float32)
        v = np.concatenate([v, np.zeros((-len(v)) % 31, np.float32)]).reshape(-1, 31)
        blocks = np.concatenate([v, np.where(np.arange(len(v))[:, None] % 2, 127, -127)
                                 .astype(np.float32)], axis=1)
        ties.append(blocks.ravel())
    rows += ties
    special = rng.standard_normal((6, 32)).astype(np.float32)
    special[0] = 0.0
    special[1] = -0.0
    special[2, :] = 0.0
    special[2, 5] = -3.0  # the largest magnitude is negative
    special[3] *= np.float32(1e-41)  # subnormal values in a block of normal amax
    special[3, 0] = 1.0
    special[4] = np.float32(0.49999997)
    special[4, 1] = 127.0
    rows.append(special.ravel())
    return rows


@pytest.mark.parametrize("tier_name", list(TIERS))
@pytest.mark.parametrize("afmt", ["q8_0", "q8_1"])
def test_quantize_act_gives_the_reference_bytes(lib, afmt, tier_name):
    ffi, _ = lib
    p = policy(lib, afmt)
    assert p.quantize_act != ffi.NULL, f"{afmt} has no quantize_act"
    for x in activation_cases(np.random.default_rng(7)):
        n = x.size
        ref = np.zeros(n // 32 * BLOCK_BYTES[afmt], np.uint8)
        p.quantize(ffi.from_buffer("float[]", x), ffi.from_buffer(ref), n)
        got = np.zeros_like(ref)
        with tier(lib, tier_name):
            p.quantize_act(ffi.from_buffer("float[]", x), ffi.from_buffer(got), n)
        bad = np.nonzero((got != ref).reshape(-1, BLOCK_BYTES[afmt]).any(axis=1))[0]
        assert not bad.size, \
            f"{afmt} blocks {bad[:5]} differ, e.g. {x[32 * bad[0]:32 * bad[0] + 32]}"


# ---- through the q8 matmul: every tier, rows with tails -------------------------------------

PF_TIERS = {k: [f.lower() for f in v] for k, v in TIERS.items()}


@pytest.mark.parametrize("tier_name", list(TIERS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_q8_matmul_matches_the_emulated_integer_dot(fmt, tier_name):
    """pf.compile("matmul", variant="q8") on each tier (quantize_act + vec_dot in the driver),
    for row lengths of 1 to 37 blocks (every tail of the 8-block loops), against the float64
    product with the activations quantized and dequantized in the dot type"""
    import pyfoundry as pf
    from pyfoundry.reference import stages as R

    names = PF_TIERS[tier_name]
    if not set(names) <= set(pf.cpu_features()["detected"]):
        pytest.skip(f"this CPU lacks the {tier_name} tier")
    p, a = pf.policy(fmt), pf.policy(DOT_TYPE.get(fmt, "q8_0"))
    rng = np.random.default_rng(FORMATS.index(fmt))
    for nb in (1, 2, 3, 7, 8, 9, 15, 16, 17, 37):
        K = 32 * nb
        w = pf.Tensor.from_numpy(rng.standard_normal((5, K)).astype(np.float32), p, "w")
        x = rng.standard_normal((3, K)).astype(np.float32)
        try:
            pf.set_cpu_features(names)
            y = pf.compile("matmul", policy=p, variant="q8")(x, w)
        finally:
            pf.set_cpu_features(None)
        ref = R.matmul(a.dequantize(a.quantize(x)), w.dequantize())
        err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
        assert err <= 1e-5, f"{fmt} {tier_name} K={K}: relative L2 {err:.3g}"
