"""The Metal host (foundry_c/src/gpu/metal.m) and its bindings, checked on any machine.

What this is: a syntax and type check.  metal.m is compiled with
``clang -x objective-c -fsyntax-only -fobjc-arc`` against tests/c/objc_metal_stub.h, a
declaration header of the part of Foundation, Metal and CommonCrypto it uses (written after
Apple's headers), in place of the SDK; pyfoundry/_ext/metal_bind.c is compiled with
-fsyntax-only against metal.h.  What it is not: nothing is compiled with Apple's SDK, linked
or run on an Apple GPU here.  On a macOS build with a Metal device the stage tests would need
their own backend parametrization (tests/test_gpu.py runs on CUDA only).

Off macOS, backend="metal" must fail cleanly with a reason.
"""
import re
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import pyfoundry as pf
from pyfoundry import gpu

from conftest import ALL_POLICIES, ROOT

CLANG = shutil.which("clang")
CC = shutil.which("cc") or shutil.which("gcc") or CLANG
STUB = ROOT / "tests" / "c" / "objc_metal_stub.h"
METAL_M = ROOT / "foundry_c" / "src" / "gpu" / "metal.m"
INCLUDES = [f"-I{ROOT / d}" for d in ("foundry_c/include", "foundry_c/src", "foundry_c/src/gpu")]
OBJC = ["-x", "objective-c", "-fsyntax-only", "-fobjc-arc", "-fobjc-runtime=macosx-13.0",
        "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror"]


def _clang_objc_arc() -> bool:
    """clang is there and takes Objective-C with ARC (a one-line probe)."""
    if CLANG is None:
        return False
    probe = "@class X; static X *x; int f(void) { return x == (void *)0; }\n"
    r = subprocess.run([CLANG] + OBJC + ["-"], input=probe, capture_output=True, text=True)
    return r.returncode == 0


needs_objc = pytest.mark.skipif(not _clang_objc_arc(),
                                reason="no clang with Objective-C (ARC) support")


def objc_check(source_text: str):
    r = subprocess.run([CLANG] + OBJC + ["-include", str(STUB)] + INCLUDES + ["-"],
                       input=source_text, capture_output=True, text=True, cwd=METAL_M.parent)
    return r.returncode, r.stderr


@needs_objc
def test_metal_host_compiles_as_objc_arc_against_the_stub():
    rc, err = objc_check(METAL_M.read_text())
    assert rc == 0, err[:4000]


@needs_objc
@pytest.mark.parametrize("bad, good", [("[cb commit]", "[cb commitNow]"),
                                       ("setBytes:&a->v.i", "setBytes:a->v.i"),
                                       ("MTLSizeMake(block, 1, 1)", "MTLSizeMake(block, 1)")])
def test_stub_check_rejects_a_wrong_selector_or_type(bad, good):
    # the check has teeth: an unknown selector or a wrong argument type fails it
    text = METAL_M.read_text()
    assert bad in text
    rc, _ = objc_check(text.replace(bad, good, 1))
    assert rc != 0


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_metal_bindings_type_check_against_metal_h():
    py = sysconfig.get_paths()["include"]
    r = subprocess.run([CC, "-std=c11", "-fsyntax-only", "-Wall", "-Wno-unused-parameter",
                        "-Werror", "-DFDY_METAL_SYNTAX_CHECK", f"-I{py}",
                        f"-I{np.get_include()}"] + INCLUDES +
                       [str(ROOT / "pyfoundry" / "_ext" / "metal_bind.c")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[:4000]


def test_every_kernel_binds_argument_i_at_index_i():
    # the Metal host binds launch argument i at [[buffer(i)]]; the launches pass arguments in
    # the kernels' parameter order
    arg = re.compile(r"FDY_BUFFER\(.*?,\s*(\d+)\)|FDY_SCALAR\(\w+,\s*\w+,\s*(\d+)\)", re.S)
    n = 0
    for f in sorted((ROOT / "metal").glob("*.metal")):
        text = f.read_text()
        for k in re.finditer(r"FDY_KERNEL\s+(\w+)\((.*?)FDY_KERNEL_INDICES", text, re.S):
            idx = [int(a.group(1) or a.group(2)) for a in arg.finditer(k.group(2))]
            assert idx == list(range(len(idx))), (f.name, k.group(1), idx)
            assert len(idx) <= 31, (f.name, k.group(1))    # Metal's buffer slots
            n += 1
    assert n >= len(gpu.templates())


def test_metal_sources_compose_for_every_step():
    p = ALL_POLICIES[0]
    for op in ("matmul", "rmsnorm_qkv", "ffn", "embedding", "rope", "attention", "rmsnorm"):
        src = gpu.step_source(op, [p] * 3, "metal")
        assert "target metal" in src and "#define FDY_METAL 1" in src, op
        assert "#define FDY_CUDA" not in src, op


def test_backends_differ_only_where_the_templates_do():
    c, m = gpu.get_backend("cuda"), gpu.get_backend("metal")
    assert (c.target, m.target) == ("cuda", "metal")
    assert c.graphs and not m.graphs
    for N in (1, 5, 4096, 3 * 4096, 10 ** 5):
        gx, bits, threads = m.gemv(N)      # the portable fdy_gemv: 4 SIMD groups, one row each
        assert (gx, bits, threads) == (-(-N // gpu.GEMV_ROWS), 0, 32 * gpu.GEMV_ROWS)
        assert c.gemv(N) == gpu.gemv_geometry(N) + (gpu.GEMV_THREADS,)
    with pytest.raises(ValueError, match="vulkan"):
        gpu.get_backend("vulkan")


@pytest.mark.skipif(pf.metal_available(), reason="a Metal device is present")
def test_metal_unavailable_is_clean(tmp_path):
    why = gpu.metal_error()
    assert why
    if sys.platform != "darwin":
        assert not hasattr(pf._core, "metal_init")
        assert "macOS" in why
    x, w = np.ones((1, 8), np.float32), np.ones(8, np.float32)
    with pytest.raises(pf.FoundryNotImplementedError, match="metal"):
        pf.compile("rmsnorm", backend="metal")(x, w)
    path = pf.testing.synthetic_model(tmp_path / "m.gguf", "llama", "q8_0", n_layers=1)
    with pytest.raises(pf.FoundryNotImplementedError):
        pf.Model(path, backend="metal")
    with pytest.raises(pf.FoundryNotImplementedError):
        gpu.DeviceBuffer(16, "metal")
