"""GPU benchmark: device-to-device copy bandwidth, then GEMV (M = 1) on an N x K weight in
several formats as GB/s of weight bytes and as a fraction of the copy bandwidth measured in
the same run.  Timed with device events around graph replays of many launches (launch gaps
excluded), rotating among weight copies so the L2 cache does not serve them.

    python benchmarks/bench_gpu.py [--n 8192] [--k 8192] [--formats f16,q8_0,q4_0,q4_k,q6_k]
        [--models q4_k,q8_0] [--gguf path ...] [--variants f32,q8] [--sweep]

Kernels: 'dot hook' (the f32 variant's GEMV through the policy's float dot hook), 'staged'
(the generic fdy_gemv), 'integer' (the q8 variant's fdy_gemv_doti through the policy's
integer hook, on activations quantized beforehand) and 'quant+int' (the q8 variant as the
stages run it: fdy_quantize_act then fdy_gemv_doti, both inside the timed step).  The copy
bandwidth counts read + write; a kernel that only reads can exceed it.

Then whole models on pf.Model(backend="cuda"): prefill (512 tokens, one call) and decode
(M = 1, a replayed CUDA graph) tokens/s, beside the bandwidth bound of decode: weight bytes
read per token (every matmul's weights, one embedding row) + the KV cache read at the mean
position, over the copy bandwidth, for each of --variants.  --models builds synthetic ~1B llama-shaped models
(dim 2048, 16 layers, 32 heads / 8 kv heads, ffn 8192, vocab 32000) in each format, in a
temporary directory; --gguf adds real files.
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


def gemv_sweep(fmt, N, K, copies, warps=(4,), integer=False):
    """the dot-hook GEMV (integer: the q8 variant's fdy_gemv_doti on device-quantized
    activations) for unroll depths U and rows per warp R (table of GB/s)"""
    p = pf.policy(fmt)
    row = K // p.block_elems * p.block_bytes
    rng = np.random.default_rng(0)
    ws = [gpu.DeviceBuffer.from_array(rng.integers(0, 256, (N, row), dtype=np.uint8))
          for _ in range(copies)]
    x = gpu.DeviceBuffer.from_array(rng.standard_normal(K).astype(np.float32))
    y = gpu.DeviceBuffer(N * 4)
    x4 = None
    if integer:
        G = gpu.act_group(p)
        xq, x4 = gpu.DeviceBuffer(K), gpu.DeviceBuffer(K // G * 4)
        gpu.launch_quantize_act(gpu.module("matmul", [p]), x, xq, x4, None, 1, K, G)
        x = xq
    kern = "fdy_gemv_doti" if integer else "fdy_gemv_dotf"
    out = {}
    for nw in warps:
        for u in (1, 2, 3, 4, 8):
            src = gpu.compose("matmul", [p], "cuda",
                              f"#define FDY_G{'I' if integer else 'D'}_U {u}\n"
                              f"#define FDY_GD_WARPS {nw}")
            gpu.cuda_init()
            mod = gpu.Module(src)
            for r in (1, 2, 4):
                st = {"i": 0}

                def launch():
                    w = ws[st["i"] % copies]
                    st["i"] += 1
                    mod.launch(f"{kern}{r}", (-(-N // r), 1), 32 * nw,
                               [gpu.P(w), gpu.P(x), gpu.P(None), gpu.P(y), gpu.P(x4),
                                gpu.I(N), gpu.I(K), gpu.I(0), gpu.I(0), gpu.F(0.0)])
                ms = timed(launch, 12 * copies)
                out[(nw, u, r)] = N * row / ms / 1e6
    return out


def gemv_bandwidth(fmt, N, K, copies, kernel="dot hook"):
    """GB/s of weight bytes and ms per GEMV.  kernel: 'dot hook' (what the f32 stages launch:
    the policy's dot hook where it has one), 'staged' (the generic fdy_gemv), 'integer' (the q8
    variant's fdy_gemv_doti on activations quantized beforehand), 'quant+int' (the q8 variant
    as the stages run it: fdy_quantize_act, then fdy_gemv_doti, both timed)."""
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
    if kernel in ("integer", "quant+int"):
        G = gpu.act_group(p)
        xq, xs = gpu.DeviceBuffer(K), gpu.DeviceBuffer(K // G * 4)
        gpu.launch_quantize_act(mod, x, xq, xs, None, 1, K, G)

    def launch():
        w = ws[state["i"] % copies]
        state["i"] += 1
        args = [gpu.P(w), gpu.P(x), gpu.P(None), gpu.P(y), gpu.P(None), gpu.I(N), gpu.I(K),
                gpu.I(0), gpu.I(0), gpu.F(0.0)]
        if kernel in ("integer", "quant+int"):
            if kernel == "quant+int":
                gpu.launch_quantize_act(mod, x, xq, xs, None, 1, K, G)
            gpu.launch_gemv_doti(mod, N, 1, K, w, xq, xs, None, y, 0, 0)
        elif kernel == "staged":      # the generic kernel (policy decode from shared memory)
            gx, rbits = gpu.gemv_geometry(N)
            args[7] = gpu.I(rbits)
            mod.launch("fdy_gemv", (gx, 1), gpu.GEMV_THREADS, args)
        else:           # what the stages and pf.Model launch: the dot hook where one exists
            gpu.launch_gemv(mod, p, N, 1, args, 0)
    ms = timed(launch, 12 * copies)
    return raw.nbytes / ms / 1e6, ms


def model_bytes_per_token(m, pos):
    """weight bytes a decode step reads, plus the KV cache at position pos"""
    plan, total = m.plan, 0
    for ins in plan.instructions:
        w = plan.weights[ins["weight"]][1] if ins["weight"] >= 0 else None
        if ins["op"] == "matmul":
            total += w.raw.nbytes
        elif ins["op"] == "embedding":
            total += w.raw.nbytes // w.shape[0]
    return total + 2 * m.n_layers * pos * plan.kv_width * 4


def bench_model(path, label, bw, n_prefill=512, n_decode=128, variant="f32"):
    import time
    m = pf.Model(path, backend="cuda", variant=variant, context_length=n_prefill + n_decode + 8)
    label = f"{label} {variant}"
    rng = np.random.default_rng(0)
    toks = rng.integers(3, m.vocab_size, n_prefill + n_decode).tolist()
    m.forward(toks[:32], 0, logits="last")          # compile, allocate
    best = 1e9
    for _ in range(3):
        m.reset()
        t0 = time.perf_counter()
        m.forward(toks[:n_prefill], 0, logits="last")
        best = min(best, time.perf_counter() - t0)
    prefill = n_prefill / best
    m.forward([toks[n_prefill]], logits="last")     # captures the decode graph
    t0 = time.perf_counter()
    for t in toks[n_prefill + 1:n_prefill + n_decode]:
        m.forward([t], logits="last")
    dt = (time.perf_counter() - t0) / (n_decode - 1)
    # GPU time of one decode step: events around graph replays
    g = m._core._graph
    a = _core.cuda_event_record()
    for _ in range(20):
        _core.cuda_graph_launch(g)
    b = _core.cuda_event_record()
    gpu_ms = _core.cuda_event_elapsed(a, b) / 20
    _core.cuda_event_free(a)
    _core.cuda_event_free(b)
    # where the decode step's GPU time goes: one graph per kind of instruction
    core, names = m._core, {v: k for k, v in {"embedding": 1, "rmsnorm": 2, "matmul": 3,
                                               "rope": 4, "attention": 5, "swiglu": 6,
                                               "add": 7}.items()}
    kinds = {}
    for ins in core.prog:
        key = names[int(ins["op"])]
        if key == "matmul":
            t, _, N, K = core.w[ins["weight"]]
            key = f"matmul {N}x{K}"
        kinds.setdefault(key, []).append(int(ins["op"]))
    parts = []
    for key in kinds:
        def only(ins, key=key):
            k = names[int(ins["op"])]
            if k == "matmul":
                _, _, N, K = core.w[ins["weight"]]
                k = f"matmul {N}x{K}"
            return k == key
        _core.cuda_capture_begin()
        core._run(1, True, only=only, variant=1 if variant == "q8" else 0)
        gk = _core.cuda_capture_end()
        _core.cuda_graph_launch(gk)
        a = _core.cuda_event_record()
        for _ in range(10):
            _core.cuda_graph_launch(gk)
        b = _core.cuda_event_record()
        parts.append((key, len(kinds[key]), _core.cuda_event_elapsed(a, b) / 10))
        _core.cuda_event_free(a)
        _core.cuda_event_free(b)
        _core.cuda_graph_free(gk)
    print("   decode step by kind: " + ", ".join(f"{k} x{n} {ms * 1e3:.0f} us"
                                                 for k, n, ms in parts), flush=True)
    nbytes = model_bytes_per_token(m, n_prefill + n_decode // 2)
    bound = bw * 1e9 / nbytes
    r = {"model": label, "prefill_tok_s": prefill, "decode_tok_s": 1 / dt,
         "decode_gpu_ms": gpu_ms, "decode_wall_ms": dt * 1e3, "bytes_per_token": nbytes,
         "bound_tok_s": bound, "decode_parts_ms": parts}
    print(f"{label:28} prefill {prefill:8.0f} tok/s   decode {1 / dt:7.1f} tok/s "
          f"(wall {dt * 1e3:.2f} ms, GPU {gpu_ms:.2f} ms, host+launch "
          f"{max(0.0, 1 - gpu_ms / (dt * 1e3)):.0%})   bound {bound:7.1f} tok/s "
          f"({nbytes / 1e6:.0f} MB/token) -> {1 / dt / bound:.0%} of bound", flush=True)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--formats", default="f16,q8_0,q4_0,q4_k,q6_k")
    ap.add_argument("--json", default=None)
    ap.add_argument("--models", default="", help="synthetic ~1B llama formats, e.g. q4_k,q8_0")
    ap.add_argument("--gguf", nargs="*", default=[])
    ap.add_argument("--layers", type=int, default=16, help="layers of the synthetic models")
    ap.add_argument("--variants", default="f32,q8",
                    help="compute variants of the model runs (q8: integer hooks at decode)")
    ap.add_argument("--sweep", action="store_true",
                    help="also time the dot-hook GEMV for unroll depths U x rows per warp R")
    ap.add_argument("--sweep-warps", default="4",
                    help="warps per block W to sweep too, e.g. 4,8 (the kernels use 4)")
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
        kernels = (["dot hook", "staged"] if gpu.has_dotf(p) else ["staged"]) + \
            (["integer", "quant+int"] if gpu.has_doti(p) else [])
        for kname in kernels:
            gbs, ms = gemv_bandwidth(fmt, a.n, a.k, copies, kname)
            rows.append({"format": fmt, "kernel": kname, "ms": ms, "GB/s": gbs,
                         "fraction": gbs / bw})
    print(f"\nGEMV {a.n}x{a.k}, M=1 (kernel: 'dot hook' = fdy_gemv_dotf through the policy's "
          f"FDY_<NAME>_DOTF hook, 'staged' = the generic fdy_gemv, 'integer' = the q8 "
          f"variant's fdy_gemv_doti, 'quant+int' = fdy_quantize_act + fdy_gemv_doti):")
    print(f"{'format':8} {'kernel':9} {'us':>8} {'GB/s':>8} {'of copy bw':>10}")
    for r in rows:
        print(f"{r['format']:8} {r['kernel']:9} {r['ms'] * 1e3:8.1f} {r['GB/s']:8.0f} "
              f"{r['fraction']:10.1%}")
    if a.sweep:
        print("\ndot-hook GEMV sweep, % of copy bw (W = warps per block, U = blocks per lane per "
              "step, R = rows per block):")
        for fmt in a.formats.split(","):
            if not gpu.has_dotf(fmt):
                continue
            p = pf.policy(fmt)
            wbytes = a.n * (a.k // p.block_elems) * p.block_bytes
            for integer in ((False, True) if gpu.has_doti(fmt) else (False,)):
                res = gemv_sweep(fmt, a.n, a.k, max(2, -(-(200 << 20) // wbytes)),
                                 tuple(int(w) for w in a.sweep_warps.split(",")), integer)
                best = max(res, key=res.get)
                label = fmt + (" int" if integer else "")
                print(f"{label:8} best W{best[0]}U{best[1]}R{best[2]} {res[best] / bw:6.1%}:  " +
                      "  ".join(f"W{w}U{u}R{r} {v / bw:5.1%}"
                                for (w, u, r), v in sorted(res.items())))
    models = []
    if a.models or a.gguf:
        import tempfile
        print("\nmodels (pf.Model backend='cuda'):")
        variants = a.variants.split(",")
        for path in a.gguf:
            for v in variants:
                models.append(bench_model(path, os.path.basename(path), bw, variant=v))
        with tempfile.TemporaryDirectory() as d:
            for fmt in filter(None, a.models.split(",")):
                path = os.path.join(d, f"llama1b-{fmt}.gguf")
                pf.testing.synthetic_model(path, "llama", fmt, dim=2048, n_layers=a.layers,
                                           n_heads=32, n_kv_heads=8, ffn_dim=8192,
                                           vocab_size=32000, context_length=4096)
                for v in variants:
                    models.append(bench_model(path, f"synthetic-{a.layers}L-{fmt}", bw,
                                              variant=v))
                os.remove(path)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": name, "copy_GBs": bw, "gemv": rows, "models": models}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
