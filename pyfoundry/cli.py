"""The ``pyfoundry`` command.

  pyfoundry parity [MODEL.gguf]  layer-by-layer drift of the C engine against the NumPy
                                 reference (no model: a built-in synthetic one, no download)
  pyfoundry generate MODEL -p T  generate text (greedy with --temp 0, llama.cpp-style sampling)
  pyfoundry chat MODEL           interactive multi-turn chat (streams; /reset, /quit)
  pyfoundry info MODEL.gguf      architecture, key metadata, tensors, totals per format
  pyfoundry policies             the weight formats, their layout and measured round-trip error
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import numpy as np

from . import gguf as _gguf
from .policy import policies


def _table(rows: List[List[str]], header: List[str], align: str) -> str:
    cols = [header] + rows
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]

    def fmt(r):
        return "  ".join(str(c).rjust(w) if a == "r" else str(c).ljust(w)
                         for c, w, a in zip(r, widths, align))
    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    return "\n".join(lines)


def cmd_policies(args) -> int:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4096)).astype(np.float32)
    rows = []
    for p in policies:
        err = "-"
        if p.can_quantize and x.shape[1] % p.block_elems == 0:
            y = p.dequantize(p.quantize(x))
            err = f"{np.linalg.norm(y - x) / np.linalg.norm(x):.2e}"
        rows.append([p.name, str(p.gguf_type) if p.is_gguf else f"{p.gguf_type} (not GGUF)",
                     str(p.block_elems), str(p.block_bytes), f"{p.bits_per_weight:.4g}",
                     "yes" if p.can_quantize else "dequant only", p.dot_type or "-", err])
    print(_table(rows, ["policy", "type id", "block", "bytes", "bits/w", "quantize",
                        "q8 pairs with", "roundtrip rel L2 (N(0,1))"], "lrrrrllr"))
    return 0


def _fmt_value(v, limit=60) -> str:
    if isinstance(v, list):
        head = ", ".join(_fmt_value(x, 20) for x in v[:4])
        return f"[{head}{', ...' if len(v) > 4 else ''}] ({len(v)} items)"
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def cmd_info(args) -> int:
    with _gguf.open(args.model) as f:
        print(f"file          {args.model}")
        print(f"GGUF version  {f.version}, alignment {f.alignment}, "
              f"{f.file_size:,} bytes")
        print(f"architecture  {f.architecture}")
        print()
        print("metadata:")
        for k, v in f.metadata.items():
            if args.all_metadata or not k.startswith("tokenizer.ggml.") or not isinstance(v, list):
                if f.metadata_types[k] == "float32":
                    v = float(f"{v:.7g}")
                print(f"  {k:<40} {f.metadata_types[k]:<16} {_fmt_value(v)}")
        print()
        rows, totals = [], {}
        for t in f.tensors.values():
            rows.append([t.name, t.policy.name, "x".join(map(str, t.shape)), f"{t.nbytes:,}"])
            n, b, c = totals.get(t.policy.name, (0, 0, 0))
            totals[t.policy.name] = (n + t.size, b + t.nbytes, c + 1)
        print(_table(rows, ["tensor", "format", "shape", "bytes"], "llrr"))
        print()
        trows = [[k, str(c), f"{n:,}", f"{b:,}", f"{8 * b / max(n, 1):.3f}"]
                 for k, (n, b, c) in totals.items()]
        tn = sum(v[0] for v in totals.values())
        tb = sum(v[1] for v in totals.values())
        trows.append(["total", str(len(f.tensors)), f"{tn:,}", f"{tb:,}",
                      f"{8 * tb / max(tn, 1):.3f}"])
        print(_table(trows, ["format", "tensors", "weights", "bytes", "bits/w"], "lrrrr"))
    return 0


def cmd_parity(args) -> int:
    import contextlib
    import tempfile

    from . import drift
    from .model import Model
    from .reference.model import Model as RefModel
    from .testing import synthetic_model

    with contextlib.ExitStack() as stack:
        if args.model is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            path = synthetic_model(f"{tmp}/synthetic-{args.arch}-{args.policy}.gguf",
                                   arch=args.arch, policy=args.policy, n_layers=args.layers,
                                   seed=args.seed)
            label = f"synthetic {args.arch} ({args.layers} layers, dim 256), {args.policy}"
        else:
            path = args.model
            label = args.model
        model = Model(path, variant=args.variant)
        if args.tokens:
            tokens = [int(t) for t in args.tokens.replace(",", " ").split()]
        else:
            if "tokenizer.ggml.tokens" not in model.file.metadata:
                raise SystemExit("pyfoundry: this model has no vocabulary; use --tokens")
            tokens = model.tokenizer.encode(args.prompt)
        ref = RefModel(model.file, dtype=np.float64 if args.reference == "float64" else np.float32)
        logits, trace = model.forward(tokens, capture="all")
        _, ref_trace = ref.forward(tokens, capture="all", progress=not args.json)
        title = (f"{label}: {args.variant} variant vs NumPy {args.reference} reference, "
                 f"{len(tokens)} tokens")
        report = drift.layerwise(trace, ref_trace, title=title)
        if args.plot:
            report.plot(path=args.plot)
        if args.json:
            print(report.to_json(indent=1))
        else:
            print(report.table())
            row = report.first_exceeding(args.threshold)
            print()
            if row is None:
                print(f"no intermediate exceeds relative L2 {args.threshold:g}")
            else:
                where = "global" if row.layer is None else f"layer {row.layer}"
                print(f"first intermediate over relative L2 {args.threshold:g}: "
                      f"{where}, {row.name} ({row.rel_l2:.3e})")
            if args.plot:
                print(f"plot written to {args.plot}")
    return 0


def _sampler(args):
    from .sampler import Sampler
    return Sampler(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                   repeat_penalty=args.repeat_penalty, presence_penalty=args.presence_penalty,
                   frequency_penalty=args.frequency_penalty, penalty_last_n=args.repeat_last_n,
                   seed=args.seed)


def _load_model(args):
    from . import set_num_threads
    from .model import Model
    if args.threads:
        set_num_threads(args.threads)
    return Model(args.model, variant=args.variant,
                 context_length=args.ctx if args.ctx else None)


def _speed(stats) -> str:
    pre = stats["prefill_tokens"] / stats["prefill_seconds"] if stats["prefill_seconds"] else 0
    dec = stats["decode_tokens"] / stats["decode_seconds"] if stats["decode_seconds"] else 0
    return (f"prefill {stats['prefill_tokens']} tokens, {pre:.1f} tok/s; decode "
            f"{stats['decode_tokens']} tokens, {dec:.1f} tok/s")


def cmd_generate(args) -> int:
    import json as _json
    model = _load_model(args)
    sess = model.session(sampler=_sampler(args))
    pieces = []
    for piece in sess.generate(args.prompt, max_tokens=args.n, stop=args.stop or ()):
        pieces.append(piece)
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if args.json:
        st = sess.stats
        print(_json.dumps({"prompt": args.prompt, "text": "".join(pieces),
                           "tokens": sess.tokens, "stop_reason": sess.stop_reason,
                           "seed": sess.sampler.seed,
                           "prefill_tokens": st["prefill_tokens"],
                           "prefill_seconds": st["prefill_seconds"],
                           "decode_tokens": st["decode_tokens"],
                           "decode_seconds": st["decode_seconds"]}, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        if args.verbose:
            print(f"[{sess.stop_reason}] {_speed(sess.stats)}", file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    model = _load_model(args)
    template = None
    if args.chat_template:
        with open(args.chat_template, encoding="utf-8") as f:
            template = f.read()
    sess = model.session(sampler=_sampler(args), chat_template=template, system=args.system)
    interactive = sys.stdin.isatty()

    def turn(text):
        try:
            for piece in sess.chat(text, max_tokens=args.n):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sess.stop_reason = "interrupted"
        sys.stdout.write("\n")
        if sess.stop_reason in ("context", "interrupted"):
            print(f"[{sess.stop_reason}]" + (": the context is full; /reset to start over"
                                             if sess.stop_reason == "context" else ""),
                  file=sys.stderr)
        sys.stdout.flush()

    for p in args.prompt or []:
        print(f"> {p}")
        turn(p)
    while True:
        try:
            if interactive:
                line = input("> ")
            else:
                line = sys.stdin.readline()
                if not line:
                    break
                line = line.rstrip("\n")
        except EOFError:
            break
        except KeyboardInterrupt:
            print()
            continue
        cmd = line.strip()
        if not cmd:
            continue
        if cmd == "/quit":
            break
        if cmd == "/reset":
            sess.reset()
            print("[conversation reset]")
            continue
        if not interactive:
            print(f"> {line}")
        turn(line)
    if args.verbose:
        print(_speed(sess.stats), file=sys.stderr)
    return 0


def _add_sampling(p):
    p.add_argument("-n", type=int, default=None, help="maximum tokens to generate")
    p.add_argument("--temp", type=float, default=0.8, help="temperature (0: greedy)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--variant", choices=["f32", "q8"], default="q8")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ctx", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--verbose", action="store_true", help="print prefill/decode tok/s")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="pyfoundry", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("parity", help="layer-by-layer drift against the NumPy reference")
    pp.add_argument("model", nargs="?", help="GGUF file (default: a synthetic model)")
    g = pp.add_mutually_exclusive_group()
    g.add_argument("--prompt", default="Once upon a time, in a land far away,",
                   help="text to run (encoded with the model's tokenizer)")
    g.add_argument("--tokens", help="token ids, comma or space separated")
    pp.add_argument("--variant", choices=["f32", "q8"], default="f32")
    pp.add_argument("--reference", choices=["float32", "float64"], default="float64")
    pp.add_argument("--json", action="store_true", help="print the report as JSON")
    pp.add_argument("--plot", metavar="FILE.png", help="save error-against-layer plot")
    pp.add_argument("--threshold", type=float, default=1e-3,
                    help="report the first intermediate whose relative L2 exceeds this")
    pp.add_argument("--arch", choices=["llama", "qwen2"], default="llama",
                    help="synthetic model architecture (no MODEL given)")
    pp.add_argument("--policy", default="q4_k", help="synthetic model weight format")
    pp.add_argument("--layers", type=int, default=4, help="synthetic model layers")
    pp.add_argument("--seed", type=int, default=0, help="synthetic model seed")
    pp.set_defaults(fn=cmd_parity)
    pg = sub.add_parser("generate", help="generate text from a prompt")
    pg.add_argument("model")
    pg.add_argument("-p", "--prompt", default="")
    pg.add_argument("--stop", action="append", help="stop string (repeatable)")
    pg.add_argument("--json", action="store_true")
    _add_sampling(pg)
    pg.set_defaults(fn=cmd_generate, n_default=128)
    pc = sub.add_parser("chat", help="interactive multi-turn chat")
    pc.add_argument("model")
    pc.add_argument("--prompt", action="append", help="a scripted user turn (repeatable)")
    pc.add_argument("--system", default=None, help="system message")
    pc.add_argument("--chat-template", metavar="FILE", help="jinja2 template overriding the file's")
    _add_sampling(pc)
    pc.set_defaults(fn=cmd_chat, n_default=512)
    sp = sub.add_parser("policies", help="list the weight formats")
    sp.set_defaults(fn=cmd_policies)
    si = sub.add_parser("info", help="describe a GGUF file")
    si.add_argument("model")
    si.add_argument("--all-metadata", action="store_true",
                    help="also print the long tokenizer arrays")
    si.set_defaults(fn=cmd_info)
    args = ap.parse_args(argv)
    if getattr(args, "n_default", None) is not None and args.n is None:
        args.n = args.n_default
    from ._errors import FoundryError
    try:
        return args.fn(args)
    except (FoundryError, OSError) as e:
        print(f"pyfoundry: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
