"""GPU benchmark: device-to-device copy bandwidth, then GEMV (M = 1) on an N x K weight in
several formats as GB/s of weight bytes and as a fraction of the copy bandwidth measured in
the same run.  Timed with device events around graph replays of many launches (launch gaps
excluded), rotating among weight copies so the L2 cache does not serve them.

    python benchmarks/bench_gpu.py [--n 8192] [--k 8192] [--formats f16,q8_0,q4_0,q4_k,q6_k]
"""
import argparse
import json
import os
import sys

import numpy as np

import pyfoundry as pf
from pyfoundry import _core, gpu


def timed(fn, reps):
    """device ms per call of fn (graph-captured, replayed 5 times, median)"""
    _core.cuda_capture_begin()
    for _ in range(reps):
        fn()
    g = _core.cuda_capture_end()
    _core.cuda_graph_launch(g)
    _core.cuda_sync()
    times = []
    for _ in range(5):
        a = _core.cuda_event_record()
        _core.cuda_graph_launch(g)
        b = _core.cuda_event_record()
        times.append(_core.cuda_event_elapsed(a, b) / reps)
        _core.cuda_event_free(a)
        _core.cuda_event_free(b)
    _core.cuda_graph_free(g)
    return float(np.median(times))


def copy_bandwidth(nbytes=1 << 30):
    a, b = gpu.DeviceBuffer(nbytes), gpu.DeviceBuffer(nbytes)
    _core.cuda_fill(a.ptr, 0x3F800000, nbytes // 4)
    ms = timed(lambda: _core.cuda_copy(b.ptr, a.ptr, nbytes), 10)
    return 2 * nbytes / ms / 1e6  # GB/s, read + write


def gemv_bandwidth(fmt, N, K, copies):
    p = pf.policy(fmt)
    row = p.row_bytes(K) if hasattr(p, "row_bytes") else K // p.block_elems * p.block_bytes
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (N, row), dtype=np.uint8)
    if p.block_elems == 1:                     # floats: finite values
        raw = rng.standard_normal((N, K)).astype(np.float32).astype(
            {"f16": np.float16, "f32": np.float32}.get(fmt, np.float32)).view(np.uint8)
        if fmt == "bf16":
            raw = (rng.standard_normal((N, K)).astype(np.float32).view(np.uint32) >> 16) \
                .astype(np.uint16).view(np.uint8)
    ws = [gpu.DeviceBuffer.from_array(raw) for _ in range(copies)]
    x = gpu.DeviceBuffer.from_array(rng.standard_normal(K).astype(np.float32))
    y = gpu.DeviceBuffer(N * 4)
    mod = gpu.module("matmul", [p])
    state = {"i": 0}

    def launch():
        w = ws[state["i"] % copies]
        state["i"] += 1
        mod.launch("fdy_gemv", (-(-N // gpu.GEMV_ROWS), 1), 32 * gpu.GEMV_ROWS,
                   [gpu.P(w), gpu.P(x), gpu.P(None), gpu.P(y), gpu.P(None), gpu.I(N), gpu.I(K),
                    gpu.I(0), gpu.I(0), gpu.F(0.0)])
    ms = timed(launch, 12 * copies)
    return raw.nbytes / ms / 1e6, ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--formats", default="f16,q8_0,q4_0,q4_k,q6_k")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if not pf.cuda_available():
        print("no CUDA device:", gpu.cuda_error())
        return 0
    name, arch, drv = gpu.cuda_init()
    bw = copy_bandwidth()
    print(f"device: {name} (sm_{arch}, driver {drv})")
    print(f"device-to-device copy: {bw:.0f} GB/s (read + write)")
    rows = []
    for fmt in a.formats.split(","):
        p = pf.policy(fmt)
        wbytes = a.n * (a.k // p.block_elems) * p.block_bytes
        copies = max(2, -(-(200 << 20) // wbytes))   # > 200 MB in rotation: beyond L2
        gbs, ms = gemv_bandwidth(fmt, a.n, a.k, copies)
        rows.append({"format": fmt, "ms": ms, "GB/s": gbs, "fraction": gbs / bw})
    print(f"\nGEMV {a.n}x{a.k}, M=1:")
    print(f"{'format':8} {'us':>8} {'GB/s':>8} {'of copy bw':>10}")
    for r in rows:
        print(f"{r['format']:8} {r['ms'] * 1e3:8.1f} {r['GB/s']:8.0f} {r['fraction']:10.1%}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": name, "copy_GBs": bw, "gemv": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
