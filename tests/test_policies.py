"""Every policy in the registry against independent oracles:

* the gguf package (``gguf.quants``): bit-exact dequantize, and bit-exact quantize where it
  can quantize;
* golden vectors made once with llama.cpp's ggml (tests/data/quant_golden.npz, made by
  tools/make_quant_golden.py): bit-exact quantize and dequantize for the formats gguf-py
  cannot quantize (K-quants, IQ4_NL/IQ4_XS, Q8_1, Q8_K);
* NumPy references in pyfoundry.reference.quants for the formats GGUF lacks (Int8, NF4).

Parametrized over pf.policies: a new policy file is covered with no change here.
"""
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

import pyfoundry as pf
from pyfoundry.reference import quants as refq

from conftest import (ALL_POLICIES, CPU_TIERS, QUANTIZABLE, ROOT, gguf_qtype, policy_ids,
                      random_rows)

GOLDEN_PATH = pathlib.Path(__file__).parent / "data" / "quant_golden.npz"
GOLDEN = dict(np.load(GOLDEN_PATH)) if GOLDEN_PATH.exists() else {}


def gguf_can(p, what):
    """True when gguf.quants can quantize/dequantize this policy's format."""
    gguf = pytest.importorskip("gguf")
    qt = gguf_qtype(p)
    if qt is None:
        return False
    if qt in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return True
    trait = gguf.quants._type_traits.get(qt)
    if trait is None:
        return False
    probe = np.zeros((1, p.block_elems), np.float32) + 0.5
    try:
        if what == "quantize":
            gguf.quants.quantize(probe, qt)
        else:
            gguf.quants.dequantize(np.zeros((1, p.block_bytes), np.uint8), qt)
    except NotImplementedError:
        return False
    return True


def assert_bits_equal(a, b, what):
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    if a.dtype.kind == "f":
        both_nan = np.isnan(a) & np.isnan(b)
        ai = a.view(np.uint32 if a.dtype == np.float32 else np.uint16)
        bi = b.view(ai.dtype)
        bad = (ai != bi) & ~both_nan
    else:
        bad = a != b
    if bad.any():
        idx = np.argwhere(bad)[:5]
        raise AssertionError(f"{what}: {int(bad.sum())} of {a.size} elements differ, first at "
                             f"{idx.tolist()}: {a[tuple(idx[0])]!r} vs {b[tuple(idx[0])]!r}")


def random_block_bytes(p, n_blocks, seed):
    """Uniformly random block bytes: every code and scale pattern, including f16 scales that
    decode to inf or NaN (assert_bits_equal treats NaN == NaN)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n_blocks, p.block_bytes), dtype=np.uint8)
    return raw


# ---- every policy has an oracle ----------------------------------------------------------

@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_every_policy_has_an_independent_oracle(p):
    deq = gguf_can(p, "dequantize") or f"{p.name}.dequant" in GOLDEN or p.name in refq.REFERENCE
    assert deq, f"{p.name}: no dequantize oracle (gguf, golden vectors or NumPy reference)"
    if p.can_quantize:
        q = gguf_can(p, "quantize") or f"{p.name}.bytes" in GOLDEN or p.name in refq.REFERENCE
        assert q, f"{p.name}: no quantize oracle (gguf, golden vectors or NumPy reference)"


# ---- dequantize ---------------------------------------------------------------------------

@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_dequantize_random_blocks_matches_gguf(p):
    if not gguf_can(p, "dequantize"):
        pytest.skip(f"gguf.quants cannot dequantize {p.name}")
    import gguf
    n_blocks = 64 if p.block_elems > 1 else 4096
    raw = random_block_bytes(p, n_blocks, seed=p.gguf_type)
    rows = raw.reshape(4, -1)
    ours = p.dequantize(rows)
    ref = gguf.quants.dequantize(rows, gguf_qtype(p)).astype(np.float32)
    assert_bits_equal(ours, ref, f"{p.name} dequantize")


@pytest.mark.parametrize("p", QUANTIZABLE, ids=policy_ids(QUANTIZABLE))
def test_dequantize_of_quantized_data_matches_gguf(p):
    if not gguf_can(p, "dequantize"):
        pytest.skip(f"gguf.quants cannot dequantize {p.name}")
    import gguf
    x = random_rows(p, rows=6, blocks=8, seed=1)
    raw = p.quantize(x)
    assert_bits_equal(p.dequantize(raw),
                      gguf.quants.dequantize(raw, gguf_qtype(p)).astype(np.float32),
                      f"{p.name} dequantize")


@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_dequantize_matches_golden(p):
    key = f"{p.name}.dequant"
    if key not in GOLDEN:
        pytest.skip(f"no golden dequantize vectors for {p.name}")
    raw = GOLDEN[f"{p.name}.bytes"]
    assert_bits_equal(p.dequantize(raw), GOLDEN[key], f"{p.name} dequantize vs llama.cpp")


@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_dequantize_matches_numpy_reference(p):
    if p.name not in refq.REFERENCE:
        pytest.skip(f"no NumPy reference for {p.name}")
    x = random_rows(p, rows=4, blocks=4, seed=2)
    raw = p.quantize(x) if p.can_quantize else random_block_bytes(p, 16, 3).reshape(4, -1)
    assert_bits_equal(p.dequantize(raw), refq.REFERENCE[p.name].dequantize(raw),
                      f"{p.name} dequantize vs NumPy reference")


# ---- quantize -----------------------------------------------------------------------------

def edge_rows(p):
    """Rows that stress quantizers: zeros, constants, one outlier, tiny and huge values."""
    n = max(256, p.block_elems * 4)
    n = (n + p.block_elems - 1) // p.block_elems * p.block_elems
    rng = np.random.default_rng(7)
    rows = [np.zeros(n), np.full(n, 0.75), rng.standard_normal(n) * 1e-6,
            rng.standard_normal(n) * 300.0, rng.uniform(-1, 1, n)]
    spike = rng.standard_normal(n) * 0.01
    spike[n // 3] = 50.0
    rows.append(spike)
    neg = -np.abs(rng.standard_normal(n))
    rows.append(neg)
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("p", QUANTIZABLE, ids=policy_ids(QUANTIZABLE))
def test_quantize_matches_gguf(p):
    if not gguf_can(p, "quantize"):
        pytest.skip(f"gguf.quants cannot quantize {p.name}")
    import gguf
    for x in (random_rows(p, rows=8, blocks=8, seed=4), edge_rows(p)):
        ours = p.quantize(x)
        ref = np.asarray(gguf.quants.quantize(x, gguf_qtype(p)))
        assert_bits_equal(ours, ref.view(np.uint8).reshape(ours.shape), f"{p.name} quantize")


@pytest.mark.parametrize("p", QUANTIZABLE, ids=policy_ids(QUANTIZABLE))
def test_quantize_matches_golden(p):
    if f"{p.name}.bytes" not in GOLDEN:
        pytest.skip(f"no golden quantize vectors for {p.name}")
    x = GOLDEN[f"{p.name}.input"]
    assert_bits_equal(p.quantize(x), GOLDEN[f"{p.name}.bytes"], f"{p.name} quantize vs llama.cpp")


@pytest.mark.parametrize("p", QUANTIZABLE, ids=policy_ids(QUANTIZABLE))
def test_quantize_matches_numpy_reference(p):
    if p.name not in refq.REFERENCE:
        pytest.skip(f"no NumPy reference for {p.name}")
    for x in (random_rows(p, rows=4, blocks=4, seed=5), edge_rows(p)):
        assert_bits_equal(p.quantize(x), refq.REFERENCE[p.name].quantize(x),
                          f"{p.name} quantize vs NumPy reference")


@pytest.mark.parametrize("p", QUANTIZABLE, ids=policy_ids(QUANTIZABLE))
def test_roundtrip_error_within_descriptor_tolerance(p):
    x = random_rows(p, rows=16, blocks=8, seed=6)
    y = p.dequantize(p.quantize(x))
    rel = np.linalg.norm(y - x) / np.linalg.norm(x)
    assert rel <= p.tolerances["roundtrip"], f"{p.name}: roundtrip rel L2 {rel:.3g}"


# ---- shapes and errors --------------------------------------------------------------------

@pytest.mark.parametrize("p", [p for p in ALL_POLICIES if p.block_elems > 1],
                         ids=policy_ids([p for p in ALL_POLICIES if p.block_elems > 1]))
def test_row_not_multiple_of_block_raises(p):
    with pytest.raises(pf.ShapeError, match="multiple of the block size"):
        p.row_bytes(p.block_elems + 1)
    if p.can_quantize:
        with pytest.raises(ValueError, match="multiple"):
            p.quantize(np.zeros((2, p.block_elems + 1), np.float32))
    with pytest.raises(ValueError):
        p.dequantize(np.zeros(p.block_bytes + 1, np.uint8), (p.block_elems,))


@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_descriptor_is_consistent(p):
    assert p.block_elems % p.sub_elems == 0
    assert p.bits_per_weight == pytest.approx(8 * p.block_bytes / p.block_elems)
    assert pf.policy(p.name) is p and pf.policy(p.gguf_type) is p
    assert pf.policy(p.name.upper()) is p
    assert p.is_gguf == (p.gguf_type < 1000)
    for k in ("roundtrip", "f32", "q8"):
        assert p.tolerances[k] >= 0
    if p.is_gguf:
        gguf = pytest.importorskip("gguf")
        qt = gguf_qtype(p)
        assert qt is not None, f"{p.name}: type id {p.gguf_type} unknown to gguf"
        if p.is_activation and gguf.GGML_QUANT_SIZES[qt] != (p.block_elems, p.block_bytes):
            # gguf-py still sizes Q8_1 with its pre-2023 f32 scales (40 bytes); ggml's block
            # is {f16 d, f16 s, int8 qs[32]} = 36 bytes, the bytes the golden vectors hold
            assert p.block_bytes < gguf.GGML_QUANT_SIZES[qt][1]
        else:
            assert gguf.GGML_QUANT_SIZES[qt] == (p.block_elems, p.block_bytes)


def test_unknown_policy_name_raises():
    with pytest.raises(ValueError, match="unknown policy"):
        pf.policy("q3_14159")


def test_dequantize_only_policy_refuses_to_quantize():
    for p in ALL_POLICIES:
        if not p.can_quantize:
            with pytest.raises(NotImplementedError):
                p.quantize(np.zeros(p.block_elems, np.float32))


# ---- portability of the decode code -------------------------------------------------------

def policy_files():
    names = []
    for line in (ROOT / "policies" / "policies.def").read_text().splitlines():
        line = line.strip()
        if line.startswith("FDY_POLICY("):
            names.append(line[len("FDY_POLICY("):].split(",")[0].strip())
    return names


def test_registry_file_lists_every_policy():
    assert policy_files() == [p.name for p in ALL_POLICIES]


@pytest.mark.parametrize("name", policy_files())
def test_policy_decode_code_compiles_as_cpp_with_stub_prelude(name, tmp_path):
    cxx = shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")
    if not cxx:
        pytest.skip("no C++ compiler")
    src = ROOT / "policies" / f"{name}.c"
    assert src.exists(), f"policies.def names {name} but policies/{name}.c is missing"
    # device part only (no FDY_HOST): what CUDA and Metal compile
    r = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Werror",
                        "-Wno-unused-function", "-include",
                        str(ROOT / "tests" / "c" / "stub_prelude.hpp"), "-x", "c++", str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---- every SIMD path gives the portable path's bits ---------------------------------------

CPU_PATHS = CPU_TIERS


@pytest.mark.parametrize("path", list(CPU_PATHS))
@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_every_cpu_path_matches_portable_path(p, path):
    x = random_rows(p, rows=5, blocks=8, seed=11)
    x[1, 3] = np.nan if p.name in ("f16", "bf16", "f32") else x[1, 3]
    try:
        pf.set_cpu_features([])
        raw = p.quantize(x) if p.can_quantize else random_block_bytes(p, 40, 12).reshape(5, -1)
        ref = p.dequantize(raw)
        pf.set_cpu_features(CPU_PATHS[path])
        if p.can_quantize:
            assert_bits_equal(p.quantize(x), raw, f"{p.name} quantize on path {path}")
        assert_bits_equal(p.dequantize(raw), ref, f"{p.name} dequantize on path {path}")
    finally:
        pf.set_cpu_features(None)
