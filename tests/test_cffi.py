"""The C core as a plain shared library (make -> build/libfoundry.so), loaded with cffi in ABI
mode: the GGUF and policy functions of foundry_c/include/foundry.h called directly, without
the Python extension."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import pyfoundry as pf

from conftest import ROOT

cffi = pytest.importorskip("cffi")


def header_cdef():
    """foundry.h without preprocessor lines (integer #defines kept) or C++ guards."""
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
    path = os.environ.get("PYFOUNDRY_CFFI_LIB")
    if not path:
        if not shutil.which("make") or not shutil.which(os.environ.get("CC", "cc")):
            pytest.skip("make or a C compiler is missing")
        r = subprocess.run(["make", "-s", "build/libfoundry.so"], cwd=ROOT, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        path = str(ROOT / "build" / "libfoundry.so")
    ffi = cffi.FFI()
    ffi.cdef(header_cdef())
    return ffi, ffi.dlopen(path)


def test_policy_registry_through_c(lib):
    ffi, C = lib
    assert C.fdy_policy_count() == len(pf.policies)
    for i, p in enumerate(pf.policies):
        cp = C.fdy_policy_at(i)
        assert ffi.string(C.fdy_policy_name(cp)).decode() == p.name
        assert C.fdy_policy_type(cp) == p.gguf_type
        assert C.fdy_policy_block_bytes(cp) == p.block_bytes
        assert C.fdy_policy_by_name(p.name.upper().encode()) == cp
        assert C.fdy_policy_by_type(p.gguf_type) == cp
    assert C.fdy_policy_by_name(b"nope") == ffi.NULL


def test_quantize_and_dequantize_through_c(lib):
    ffi, C = lib
    rng = np.random.default_rng(0)
    for p in pf.policies:
        if not p.can_quantize:
            continue
        n = max(256, p.block_elems * 2)
        x = rng.standard_normal(n).astype(np.float32)
        raw = np.zeros(p.row_bytes(n), np.uint8)
        cp = C.fdy_policy_by_type(p.gguf_type)
        st = C.fdy_policy_quantize(cp, ffi.from_buffer("float[]", x), ffi.from_buffer(raw), n)
        assert st == C.FDY_OK
        np.testing.assert_array_equal(raw, p.quantize(x))
        y = np.zeros(n, np.float32)
        assert C.fdy_policy_dequantize(cp, ffi.from_buffer(raw), ffi.from_buffer("float[]", y), n) == 0
        np.testing.assert_array_equal(y, p.dequantize(raw))
    q = C.fdy_policy_by_name(b"q8_0")
    assert C.fdy_policy_row_bytes(q, 33) == -1
    assert b"multiple of the block size" in ffi.string(C.fdy_last_error())


def test_gguf_reader_through_c(lib, stories_path):
    ffi, C = lib
    g = ffi.new("fdy_gguf **")
    assert C.fdy_gguf_open(str(stories_path).encode(), g) == C.FDY_OK
    g = g[0]
    try:
        assert C.fdy_gguf_version(g) == 3
        i = C.fdy_gguf_find_kv(g, b"llama.block_count")
        v = C.fdy_gguf_kv_value(g, i)
        assert v.type == C.FDY_GGUF_UINT32 and v.v.u64 == 5
        assert C.fdy_gguf_n_tensors(g) == 48
        ti = C.fdy_gguf_tensor(g, C.fdy_gguf_find_tensor(g, b"token_embd.weight"))
        assert list(ti.ne)[:2] == [64, 512] and ti.nbytes == 512 * 64 * 4
        row = np.frombuffer(ffi.buffer(ti.data, 64 * 4), np.float32)
        with pf.open(stories_path) as f:
            np.testing.assert_array_equal(row, f.tensors["token_embd.weight"].view()[0])
        assert C.fdy_gguf_find_tensor(g, b"missing") == -1
    finally:
        C.fdy_gguf_close(g)


def test_gguf_errors_through_c(lib):
    ffi, C = lib
    g = ffi.new("fdy_gguf **")
    bad = b"GGUF" + (7).to_bytes(4, "little") + b"\0" * 16
    buf = ffi.from_buffer(bad)
    assert C.fdy_gguf_open_memory(buf, len(bad), g) == C.FDY_ERR_FORMAT
    assert g[0] == ffi.NULL
    assert b"unsupported GGUF version 7" in ffi.string(C.fdy_last_error())
    assert C.fdy_last_error_offset() == 4
    assert C.fdy_gguf_open(b"/nonexistent/x.gguf", g) == C.FDY_ERR_IO


def test_gguf_writer_through_c(lib, tmp_path):
    ffi, C = lib
    w = ffi.new("fdy_gguf_writer **")
    assert C.fdy_gguf_writer_new(w) == 0
    w = w[0]
    try:
        s = ffi.new("char[]", b"llama")
        v = ffi.new("fdy_value *")
        v.type = C.FDY_GGUF_STRING
        v.v.str.ptr = s
        v.v.str.len = 5
        assert C.fdy_gguf_writer_add_kv(w, b"general.architecture", v) == 0
        data = np.arange(32, dtype=np.float32)
        ne = ffi.new("int64_t[]", [32])
        assert C.fdy_gguf_writer_add_tensor(w, b"x", 1, ne, 0, ffi.from_buffer(data), 128) == 0
        assert C.fdy_gguf_writer_add_tensor(w, b"x", 1, ne, 0, ffi.from_buffer(data), 128) != 0
        assert C.fdy_gguf_writer_write(w, str(tmp_path / "c.gguf").encode()) == 0
    finally:
        C.fdy_gguf_writer_free(w)
    with pf.open(tmp_path / "c.gguf") as f:
        assert f.architecture == "llama"
        np.testing.assert_array_equal(f.tensors["x"].view(), data)
