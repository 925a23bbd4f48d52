"""Writes the notebooks in notebooks/ from the cell sources below (so they stay reviewable
as code).  Run: python tools/make_notebooks.py"""
import pathlib

import nbformat as nbf

ROOT = pathlib.Path(__file__).resolve().parent.parent


def notebook(cells):
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    for kind, src in cells:
        nb.cells.append(nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src))
    return nb


FUSED = [
    ("md", "# Fused RMSNorm + GEMV: error per weight format\n\n"
           "Runs the fused `rmsnorm_matmul` stage for every policy in the registry, in both compute "
           "variants, and compares it with the NumPy float64 reference on the *dequantized* weights "
           "(the kernel's own error) and on the original float weights (the kernel's error plus "
           "the format's quantization error).  Weights: the real `stories260K` FFN weights when "
           "`../shared/testdata` is there (tiled to a row length every format accepts), else "
           "synthetic heavy-tailed weights."),
    ("code", "import pathlib\nimport numpy as np\nimport matplotlib\nmatplotlib.use('Agg')\n"
             "import matplotlib.pyplot as plt\nimport pyfoundry as pf\nfrom pyfoundry.reference import stages as R\n\n"
             "rng = np.random.default_rng(0)\n"
             "p = pathlib.Path('../../shared/testdata/stories260K.gguf')\n"
             "if not p.exists():\n    p = pathlib.Path('../shared/testdata/stories260K.gguf')\n"
             "if p.exists():\n"
             "    with pf.open(p) as f:\n"
             "        w_real = f.tensors['blk.0.ffn_down.weight'].dequantize()   # (64, 172)\n"
             "    # tile real rows to K = 1024 so every block size divides it\n"
             "    W = np.tile(w_real, (4, 6))[:, :1024].astype(np.float32)\n"
             "    source = 'stories260K blk.0.ffn_down (tiled)'\n"
             "else:\n"
             "    W = (rng.standard_t(5, size=(256, 1024)) * 0.05).astype(np.float32)\n"
             "    source = 'synthetic Student-t weights'\n"
             "x = rng.standard_normal((4, W.shape[1])).astype(np.float32)\n"
             "g = (1 + 0.1 * rng.standard_normal(W.shape[1])).astype(np.float32)\n"
             "print(source, W.shape)"),
    ("code", "rows = []\n"
             "ref_float = R.rmsnorm_matmul(x, g, W, eps=1e-5)\n"
             "for pol in pf.policies:\n"
             "    if W.shape[1] % pol.block_elems:\n        continue\n"
             "    if pol.can_quantize:\n        t = pf.Tensor.from_numpy(W, pol)\n"
             "    else:\n        continue  # dequantize-only formats have no quantizer for these weights\n"
             "    wd = t.dequantize()\n"
             "    ref = R.rmsnorm_matmul(x, g, wd, eps=1e-5)\n"
             "    for variant in ('f32', 'q8'):\n"
             "        y = pf.compile('rmsnorm_matmul', policy=pol, variant=variant, eps=1e-5)(x, g, t)\n"
             "        c = pf.drift.compare(y, ref)\n"
             "        q = pf.drift.compare(y, ref_float)\n"
             "        rows.append((pol.name, variant, c.rel_l2, c.max_abs, c.max_ulp, q.rel_l2))\n"
             "print(f\"{'policy':<8} {'variant':<7} {'relL2 vs deq':>13} {'max abs':>10} {'max ulp':>9} {'relL2 vs float W':>17}\")\n"
             "for r in rows:\n"
             "    print(f'{r[0]:<8} {r[1]:<7} {r[2]:13.3e} {r[3]:10.3e} {r[4]:9d} {r[5]:17.3e}')"),
    ("code", "names = sorted({r[0] for r in rows}, key=[r[0] for r in rows].index)\n"
             "fig, ax = plt.subplots(figsize=(11, 4))\n"
             "xs = np.arange(len(names))\n"
             "for i, variant in enumerate(('f32', 'q8')):\n"
             "    vals = [next(r[2] for r in rows if r[0] == n and r[1] == variant) for n in names]\n"
             "    ax.bar(xs + (i - 0.5) * 0.4, np.maximum(vals, 1e-12), 0.4, label=f'{variant} vs float64 ref (dequantized W)')\n"
             "qerr = [next(r[5] for r in rows if r[0] == n and r[1] == 'f32') for n in names]\n"
             "ax.plot(xs, qerr, 'k.', label='f32 vs float W (includes quantization)')\n"
             "ax.set_yscale('log'); ax.set_xticks(xs); ax.set_xticklabels(names, rotation=60)\n"
             "ax.set_ylabel('relative L2 error'); ax.legend(fontsize=8); fig.tight_layout()\n"
             "fig.savefig('fused_rmsnorm_gemv.png', dpi=80)\n"
             "assert all(r[2] < 1e-2 for r in rows)"),
]


LAYERWISE = [
    ("md", "# Layer-by-layer drift of a whole model\n\n"
           "Opens SmolLM2-135M-Instruct (Q4_1) when it can be fetched, else a synthetic llama-shaped "
           "model, runs a prompt through the C engine (both compute variants) and through the "
           "NumPy float64 reference, and shows where the error starts and how it grows."),
    ("code", "import pathlib, subprocess, tempfile\nimport numpy as np\nimport matplotlib\n"
             "matplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nimport pyfoundry as pf\n\n"
             "def find_model():\n"
             "    for base in (pathlib.Path('../../shared'), pathlib.Path('../shared')):\n"
             "        script = base / 'tools' / 'fetch-model.sh'\n"
             "        if script.exists():\n"
             "            r = subprocess.run(['bash', str(script), 'smollm2'], capture_output=True, text=True)\n"
             "            if r.returncode == 0 and r.stdout.strip():\n"
             "                return r.stdout.strip().splitlines()[-1], 'SmolLM2-135M-Instruct Q4_1'\n"
             "    tmp = tempfile.mkdtemp()\n"
             "    return pf.testing.synthetic_model(tmp + '/synthetic.gguf', 'llama', 'q4_k', n_layers=6), 'synthetic llama q4_k'\n\n"
             "path, label = find_model()\n"
             "model = pf.Model(path, variant='f32')\n"
             "print(label, model)"),
    ("code", "tokens = [1] + list(np.random.default_rng(0).integers(3, model.vocab_size, 15))\n"
             "ref = pf.reference.Model(model.file, dtype=np.float64)\n"
             "_, ref_trace = ref.forward(tokens, capture='all')\n"
             "_, trace = model.forward(tokens, capture='all')\n"
             "report = pf.drift.layerwise(trace, ref_trace, title=f'{label}: f32 vs float64 reference')\n"
             "report"),
    ("code", "q8 = pf.Model(model.file, variant='q8')\n"
             "_, trace_q8 = q8.forward(tokens, capture='all')\n"
             "report_q8 = pf.drift.layerwise(trace_q8, ref_trace, title=f'{label}: q8 vs float64 reference')\n"
             "print(report_q8.table())\n"
             "print('first layer over 1e-2:', report_q8.first_layer_exceeding(1e-2))"),
    ("code", "fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True)\n"
             "report.plot(ax=axes[0]); report_q8.plot(ax=axes[1])\n"
             "fig.tight_layout(); fig.savefig('layerwise_drift.png', dpi=70)\n"
             "assert report.logits.top1_agreement == 1.0"),
]


def main():
    out = ROOT / "notebooks"
    out.mkdir(exist_ok=True)
    nbf.write(notebook(FUSED), out / "fused_rmsnorm_gemv.ipynb")
    nbf.write(notebook(LAYERWISE), out / "layerwise_drift.ipynb")


if __name__ == "__main__":
    main()
