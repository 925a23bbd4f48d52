"""The GPU kernel sources, checked on any machine (no GPU needed).

Every kernel template is composed for every policy (weight templates: the policy in slot 0,
and for the multi-weight templates the next policies of the registry in the other slots, so
mixed formats meet in one source) for both targets, and compiled as C++ with -fsyntax-only
against a declaration header of the target's names (tests/c/cuda_stub.hpp,
tests/c/metal_stub.hpp).  Where nvcc exists, every template is also compiled for real.
"""
import shutil
import os
import subprocess

import numpy as np
import pytest

import pyfoundry as pf
from pyfoundry import gpu

from conftest import ALL_POLICIES, ROOT, policy_ids

CXX = shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")
STUBS = {"cuda": ROOT / "tests" / "c" / "cuda_stub.hpp",
         "metal": ROOT / "tests" / "c" / "metal_stub.hpp"}


def compile_cpp(src, target):
    r = subprocess.run([CXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Werror",
                        "-Wno-attributes", "-Wno-unused-function", "-Wno-unused-variable",
                        "-include", str(STUBS[target]), "-x", "c++", "-"],
                       input=src, capture_output=True, text=True)
    return r.returncode, r.stderr


def compositions(p):
    """(template, policies) of every template that takes weights, around policy p"""
    i = ALL_POLICIES.index(p)
    nxt = [ALL_POLICIES[(i + k) % len(ALL_POLICIES)] for k in (1, 5)]
    out = []
    for name in gpu.templates():
        n = gpu.TEMPLATE_SLOTS.get(name, 0)
        if n:
            out.append((name, [p] + nxt[:n - 1]))
    return out


def test_every_template_has_a_known_slot_count():
    assert set(gpu.templates()) <= set(gpu.TEMPLATE_SLOTS)


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
@pytest.mark.parametrize("target", ["cuda", "metal"])
@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_every_kernel_composes_and_compiles_for_every_policy(p, target):
    for name, ps in compositions(p):
        src = gpu.compose(name, ps, target=target)
        assert f"fdy_decode_{p.name}" in src
        rc, err = compile_cpp(src, target)
        assert rc == 0, f"{target} {name} {[q.name for q in ps]}:\n{err[:4000]}"


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
@pytest.mark.parametrize("target", ["cuda", "metal"])
def test_templates_without_weights_compile(target):
    for name in gpu.templates():
        if gpu.TEMPLATE_SLOTS[name] == 0:
            rc, err = compile_cpp(gpu.compose(name, [], target=target), target)
            assert rc == 0, f"{target} {name}:\n{err[:4000]}"


def test_templates_never_name_a_format():
    names = [p.name for p in ALL_POLICIES]
    for f in (ROOT / "metal").glob("*.metal"):
        text = f.read_text()
        for n in names:
            assert f"_{n}(" not in text and f"fdy_block_{n}" not in text, (f.name, n)


def test_composition_pastes_each_policy_once_and_binds_slots():
    src = gpu.compose("qkv", ["q4_k", "q4_k", "q6_k"])
    assert src.count("typedef struct fdy_block_q4_k") == 1
    assert src.count("typedef struct fdy_block_q6_k") == 1
    assert "#define FDY_W0_DECODE fdy_decode_q4_k" in src
    assert "#define FDY_W2_DECODE fdy_decode_q6_k" in src
    assert "#ifdef FDY_HOST" not in src      # device parts only


def test_compose_rejects_bad_requests():
    with pytest.raises(ValueError, match="template"):
        gpu.compose("nope", [])
    with pytest.raises(ValueError, match="policy"):
        gpu.compose("matmul", ["q9_z"])
    with pytest.raises(ValueError, match="target"):
        gpu.compose("matmul", ["q4_0"], target="vulkan")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc")
@pytest.mark.parametrize("p", ["q4_k", "f16", "iq2_xxs"])
def test_cuda_sources_compile_with_nvcc(p, tmp_path):
    for name in gpu.templates():
        n = gpu.TEMPLATE_SLOTS[name]
        src = gpu.compose(name, [p] * n)
        f = tmp_path / f"{name}.cu"
        f.write_text(src)
        # the compiler runs without the sanitizer runtime that tools/asan_tests.sh preloads
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        r = subprocess.run(["nvcc", "-arch=sm_80", "-std=c++17", "-cubin", "-Werror",
                            "all-warnings", "-diag-suppress", "177", "-o",
                            str(tmp_path / f"{name}.cubin"), str(f)],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 0, f"{name} {p}:\n{r.stderr[:4000]}"


def test_cuda_unavailable_is_clean():
    # on a machine without a driver this is False and nothing raises; with one it is True
    assert pf.cuda_available() in (True, False)
    if not pf.cuda_available():
        with pytest.raises(pf.FoundryNotImplementedError):
            pf.compile("rmsnorm", backend="cuda")(
                __import__("numpy").ones((1, 8), "float32"),
                __import__("numpy").ones(8, "float32"))


# ---- the policies' GEMV dot hooks, run on the host ----------------------------------------

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
DOTF_POLICIES = [p.name for p in ALL_POLICIES
                 if f"FDY_{p.name.upper()}_DOTF_PARTS" in
                 (ROOT / "policies" / f"{p.name}.c").read_text()]


def test_dotf_hooks_exist_for_the_gemv_benchmark_formats():
    assert {"q4_0", "q4_1", "q8_0", "q4_k", "q6_k"} <= set(DOTF_POLICIES)


@pytest.mark.parametrize("p", DOTF_POLICIES)
def test_composer_binds_the_hook_and_its_unroll_depth(p):
    """The matmul composition binds the policy's hook to slot 0, and its optional unroll depth
    FDY_<NAME>_DOTF_U (which fdy_gemv_dotf takes as FDY_GD_U) under a guard, so it takes effect
    exactly when the policy text in the composition defines it."""
    up = p.upper()
    src = gpu.compose("matmul", [p], "cuda")
    assert f"#define FDY_W0_DOTF_LOAD fdy_dotf_load_{p}" in src
    assert f"#define FDY_W0_DOTF_CALC fdy_dotf_calc_{p}" in src
    assert f"#ifdef FDY_{up}_DOTF_U\n#define FDY_W0_DOTF_U FDY_{up}_DOTF_U\n#endif" in src
    has_u = f"#define FDY_{up}_DOTF_U " in (ROOT / "policies" / f"{p}.c").read_text()
    assert (f"#define FDY_{up}_DOTF_U " in src) == has_u
    assert src.index("#define FDY_W0_DOTF_U") < src.index("#ifdef FDY_W0_DOTF_U")


@pytest.mark.skipif(CC is None, reason="no C compiler")
@pytest.mark.parametrize("p", DOTF_POLICIES)
def test_dotf_hook_matches_the_dequantized_dot(p, tmp_path):
    """fdy_dotf_<p> (the device text, compiled for the host) summed over a block's parts equals
    the float64 dot of NumPy-side dequantized weights with x, block by block."""
    exe = tmp_path / "dotf"
    r = subprocess.run([CC, "-std=c11", "-O1", "-Wall", "-Werror", "-Wno-unused-function",
                        f"-DPNAME={p}", f"-DPUPPER={p.upper()}",
                        f"-I{ROOT / 'policies'}", f"-I{ROOT / 'metal'}",
                        str(ROOT / "tests" / "c" / "dotf_check.c"), "-o", str(exe), "-lm"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pol = pf.policy(p)
    rng = np.random.default_rng(7)
    nb = 300
    t = pf.testing.random_blocks(pol, 1, nb * pol.block_elems, rng)
    raw = np.ascontiguousarray(t.raw).reshape(-1)
    x = rng.standard_normal(nb * pol.block_elems).astype(np.float32)
    stdin = np.int32(nb).tobytes() + raw.tobytes() + x.tobytes()
    out = subprocess.run([str(exe)], input=stdin, capture_output=True, check=True).stdout
    got = np.array(out.split(), dtype=np.float64)
    w = pol.dequantize(raw.reshape(nb, pol.block_bytes), (nb, pol.block_elems)).astype(np.float64)
    want = (w * x.reshape(nb, -1).astype(np.float64)).sum(axis=1)
    scale = np.abs(w * x.reshape(nb, -1)).sum(axis=1) + 1e-30
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= 1e-6 * scale), np.max(np.abs(got - want) / scale)


DOTI_POLICIES = [p for p in DOTF_POLICIES
                 if f"#define FDY_{p.upper()}_DOTI " in (ROOT / "policies" / f"{p}.c").read_text()]
ACT_TYPES = sorted({pf.policy(p.name).dot_type for p in ALL_POLICIES
                    if pf.policy(p.name).dot_type})


def test_integer_hooks_and_activation_quantizers_are_bound():
    """The q8 variant's device code: the formats named in the GPU notes have an integer hook,
    every dot_type has a device quantizer, and the composer binds both to the slot (and the
    dot_type's device part is pasted once, after the slot's policy)."""
    assert {"q4_0", "q4_1", "q8_0", "q4_k", "q6_k"} <= set(DOTI_POLICIES)
    assert ACT_TYPES == ["q8_0", "q8_1", "q8_k"]
    for p in ALL_POLICIES:
        dt = pf.policy(p.name).dot_type
        src = gpu.compose("matmul", [p.name], "cuda")
        if dt is None:
            assert "#define FDY_W0_ACT_GROUP" not in src and gpu.act_group(p.name) is None
            continue
        assert src.count(f"(policies/{dt}.c, device part)") == 1, p.name
        assert f"#define FDY_W0_ACT_SCALE fdy_actq_scale_{dt}" in src
        assert gpu.act_group(p.name) == pf.policy(dt).block_elems
        assert gpu.has_doti(p.name) == (p.name in DOTI_POLICIES), p.name
        if p.name in DOTI_POLICIES:
            assert f"#define FDY_W0_DOTI_CALC fdy_doti_calc_{p.name}" in src


@pytest.mark.skipif(CC is None, reason="no C compiler")
@pytest.mark.parametrize("p", DOTI_POLICIES + ["q8_1", "q8_k"])
def test_activation_quantizer_and_integer_hook_on_the_host(p, tmp_path):
    """The device text of the q8 variant, compiled for the host: the dot_type's quantizer
    (driven as fdy_quantize_act drives it) gives exactly the CPU quantizer's values
    (pf.policy(dot_type).dequantize(quantize(x)), bit for bit), and the integer hook summed
    over a block's parts equals the float64 dot of the dequantized weights with them."""
    pol = pf.policy(p)
    a = pf.policy(pol.dot_type)
    exe = tmp_path / "doti"
    hook = p in DOTI_POLICIES
    defs = [f"-DPNAME={p if hook else a.name}", f"-DPUPPER={(p if hook else 'q4_k').upper()}",
            f"-DANAME={a.name}", f"-DAUPPER={a.name.upper()}"]
    if not hook:  # quantizer only: pair it with a hooked weight format of the same group
        w_name = "q4_0" if a.block_elems == 32 else "q4_k"
        defs[0], defs[1] = f"-DPNAME={w_name}", f"-DPUPPER={w_name.upper()}"
        pol = pf.policy(w_name)
    if pol.dot_type == a.name and pol.name == a.name:
        defs.append("-DSAME_POLICY")
    r = subprocess.run([CC, "-std=c11", "-O1", "-Wall", "-Werror", "-Wno-unused-function",
                        *defs, f"-I{ROOT / 'policies'}", f"-I{ROOT / 'metal'}",
                        str(ROOT / "tests" / "c" / "doti_check.c"), "-o", str(exe), "-lm"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rng = np.random.default_rng(8)
    nb = 200
    ne = nb * pol.block_elems
    t = pf.testing.random_blocks(pol, 1, ne, rng)
    raw = np.ascontiguousarray(t.raw).reshape(-1)
    x = rng.standard_normal(ne).astype(np.float32)
    x[5 * a.block_elems: 6 * a.block_elems] = 0.0              # an all-zero group
    x[7 * a.block_elems + 3] = 4.0                             # a tie of magnitudes, signs differ
    x[7 * a.block_elems + 9] = -4.0
    x[9 * a.block_elems + 2] = -5.0
    x[9 * a.block_elems + 11] = 5.0
    out = subprocess.run([str(exe)], input=np.int32(nb).tobytes() + raw.tobytes() + x.tobytes(),
                         capture_output=True, check=True).stdout
    got = np.frombuffer(out, np.float32)
    assert got.size == ne + nb
    xf, sums = got[:ne], got[ne:].astype(np.float64)
    want_x = a.dequantize(a.quantize(x.reshape(1, -1))).reshape(-1)
    np.testing.assert_array_equal(xf, want_x)
    if hook:
        w = pol.dequantize(raw.reshape(nb, pol.block_bytes), (nb, pol.block_elems)).astype(np.float64)
        xe = xf.reshape(nb, -1).astype(np.float64)
        want = (w * xe).sum(axis=1)
        scale = np.abs(w * xe).sum(axis=1) + 1e-30
        assert np.all(np.abs(sums - want) <= 1e-6 * scale), np.max(np.abs(sums - want) / scale)
