"""Make tests/data/quant_golden.npz: golden vectors from llama.cpp's ggml for the weight formats
the gguf package cannot quantize (K-quants, IQ4_NL, IQ4_XS, Q8_1, Q8_K).

Needs the llama-cpp-python package (it ships ggml as llama_cpp/lib/libggml-base.so); the test
suite only reads the committed npz, so CI does not.  ggml is called through ctypes:

    void   quantize_row_<t>_ref(const float *x, void *y, int64_t k)
    size_t ggml_quantize_chunk(enum ggml_type type, const float *src, void *dst,
                               int64_t start, int64_t nrows, int64_t n_per_row,
                               const float *imatrix)
    void   dequantize_row_<t>(const void *x, float *y, int64_t k)

For each format <name> the npz holds
    <name>.input    float32 (rows, n)          seeded test rows (edge cases + Gaussian)
    <name>.bytes    uint8   (rows, row_bytes)  ggml's quantizer output
    <name>.dequant  float32 (rows, n)          ggml's dequantize_row_* of those bytes
                                               (Q8_1: NumPy d * q, ggml has no dequantizer)
and meta.version records the llama-cpp-python and ggml versions.

Quantizer used per format: quantize_row_<t>_ref, except IQ4_NL, which takes
ggml_quantize_chunk without an importance matrix (= quantize_iq4_nl, the quantizer GGUF files
are made with); ggml's quantize_row_iq4_nl_ref is a cheaper variant without the scale search.

Usage:
    python tools/make_quant_golden.py            # write tests/data/quant_golden.npz
    python tools/make_quant_golden.py --check N  # compare pyfoundry with ggml on N random
                                                 # rows per format and scale (no file written)
"""
import argparse
import ctypes
import os
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "quant_golden.npz"

# name: (ggml type id, block elems, block bytes, quantizer, dequantizer symbol or None)
FORMATS = {
    "q8_1": (9, 32, 36, "quantize_row_q8_1_ref", None),
    "q2_k": (10, 256, 84, "quantize_row_q2_K_ref", "dequantize_row_q2_K"),
    "q3_k": (11, 256, 110, "quantize_row_q3_K_ref", "dequantize_row_q3_K"),
    "q4_k": (12, 256, 144, "quantize_row_q4_K_ref", "dequantize_row_q4_K"),
    "q5_k": (13, 256, 176, "quantize_row_q5_K_ref", "dequantize_row_q5_K"),
    "q6_k": (14, 256, 210, "quantize_row_q6_K_ref", "dequantize_row_q6_K"),
    "q8_k": (15, 256, 292, "quantize_row_q8_K_ref", "dequantize_row_q8_K"),
    "iq4_nl": (20, 32, 18, "chunk", "dequantize_row_iq4_nl"),
    "iq4_xs": (23, 256, 136, "quantize_row_iq4_xs_ref", "dequantize_row_iq4_xs"),
}


def load_ggml():
    import llama_cpp
    lib_dir = pathlib.Path(llama_cpp.__file__).parent / "lib"
    lib = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
    fp, vp, i64 = ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_int64
    for name, (_, _, _, q, dq) in FORMATS.items():
        if q != "chunk":
            getattr(lib, q).argtypes = [fp, vp, i64]
            getattr(lib, q).restype = None
        if dq:
            getattr(lib, dq).argtypes = [vp, fp, i64]
            getattr(lib, dq).restype = None
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, fp, vp, i64, i64, i64, fp]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_version.restype = ctypes.c_char_p
    lib.ggml_commit.restype = ctypes.c_char_p
    version = (f"llama-cpp-python {llama_cpp.__version__}, ggml {lib.ggml_version().decode()} "
               f"(commit {lib.ggml_commit().decode()})")
    return lib, version


def ggml_quantize(lib, name, x):
    tid, be, bb, q, _ = FORMATS[name]
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    # zero-filled: quantize_row_q8_K_ref leaves bsums of an all-zero block unwritten
    out = np.zeros((rows, n // be * bb), np.uint8)
    fp = x.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    if q == "chunk":
        size = lib.ggml_quantize_chunk(tid, fp, out.ctypes.data, 0, rows, n, None)
        assert size == out.size, (name, size, out.size)
    else:
        getattr(lib, q)(fp, out.ctypes.data, x.size)
    return out


def ggml_dequantize(lib, name, raw, n):
    _, be, bb, _, dq = FORMATS[name]
    rows = raw.shape[0]
    if dq is None:  # q8_1: {f16 d, f16 s, int8 qs[32]}
        blocks = raw.reshape(-1, bb)
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
        qs = blocks[:, 4:].copy().view(np.int8).astype(np.float32)
        with np.errstate(invalid="ignore"):  # inf scale * 0 (overflowing inputs)
            return (d * qs).reshape(rows, n)
    raw = np.ascontiguousarray(raw)
    out = np.empty((rows, n), np.float32)
    getattr(lib, dq)(raw.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                     out.size)
    if name == "q8_k":  # cross-check ggml against the obvious d * q
        blocks = raw.reshape(-1, bb)
        d = blocks[:, 0:4].copy().view(np.float32)
        qs = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
        assert np.array_equal((d * qs).reshape(rows, n).view(np.uint32), out.view(np.uint32))
    return out


def golden_rows(n=512, seed=20240601):
    """8 rows of n values: zero, constant, tiny, huge, spike, all-negative, Gaussian, and
    Gaussian groups of 16 with scales spread over 2^-8 .. 2^6 (some groups exactly zero)."""
    rng = np.random.default_rng(seed)
    const = np.full(n, 0.75)
    const[n // 2:] = -2.5
    spike = rng.standard_normal(n) * 0.01
    spike[n // 3] = 50.0
    spike[n // 2 + 77] = -80.0
    spread = rng.standard_normal(n) * np.repeat(2.0 ** rng.uniform(-8, 6, n // 16), 16)
    spread[16 * 5:16 * 6] = 0.0
    spread[16 * 20:16 * 21] = 0.0
    rows = [np.zeros(n), const, rng.standard_normal(n) * 1e-6, rng.standard_normal(n) * 300.0,
            spike, -np.abs(rng.standard_normal(n)), rng.standard_normal(n), spread]
    return np.stack(rows).astype(np.float32)


def assert_same(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f":
        bad = (a.view(np.uint32) != b.view(np.uint32)) & ~(np.isnan(a) & np.isnan(b))
    else:
        bad = a != b
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise AssertionError(f"{what}: {int(bad.sum())} of {a.size} differ, first at "
                             f"{idx.tolist()}: {a[tuple(idx)]!r} vs {b[tuple(idx)]!r}")


def check(lib, n_rows):
    """Compare pyfoundry with ggml on many random rows (development aid)."""
    sys.path.insert(0, str(ROOT))
    import pyfoundry as pf
    rng = np.random.default_rng(1234)
    for name in FORMATS:
        p = pf.policy(name)
        for scale in (1e-7, 1e-3, 1.0, 37.0, 3e4):
            x = (rng.standard_normal((n_rows, 1024)) * scale).astype(np.float32)
            x[: n_rows // 4] *= rng.uniform(-2, 2, (n_rows // 4, 1024)).astype(np.float32) ** 3
            x[n_rows // 4: n_rows // 2] = np.abs(x[n_rows // 4: n_rows // 2])
            x[n_rows // 2: n_rows // 2 + 4, ::7] = 0.0
            groups = x[-n_rows // 4:].reshape(-1, 16)
            groups *= (2.0 ** rng.uniform(-10, 10, (groups.shape[0], 1))).astype(np.float32)
            ref = ggml_quantize(lib, name, x)
            assert_same(p.quantize(x), ref, f"{name} quantize (scale {scale})")
            assert_same(p.dequantize(ref), ggml_dequantize(lib, name, ref, x.shape[1]),
                        f"{name} dequantize (scale {scale})")
        print(f"{name}: quantize and dequantize match ggml on {5 * n_rows} rows")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", type=int, metavar="N", help="compare pyfoundry with ggml")
    args = ap.parse_args()
    lib, version = load_ggml()
    if args.check:
        check(lib, args.check)
        return
    x = golden_rows()
    data = {"meta.version": np.array(version)}
    for name in FORMATS:
        raw = ggml_quantize(lib, name, x)
        data[f"{name}.input"] = x
        data[f"{name}.bytes"] = raw
        data[f"{name}.dequant"] = ggml_dequantize(lib, name, raw, x.shape[1])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT.relative_to(ROOT)} ({os.path.getsize(OUT)} bytes): {version}")


if __name__ == "__main__":
    main()
