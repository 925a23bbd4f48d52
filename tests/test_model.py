"""Whole models: golden greedy text, engine vs NumPy reference layer by layer (real and synthetic
models in every policy), batched/chunked prefill at any start position, KV cache growth, mixed
formats, tied embeddings, rope frequency factors, the real SmolLM2 model when it can be fetched,
and the ``pyfoundry parity`` / ``info`` commands."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import pyfoundry as pf
from pyfoundry import drift

from conftest import ALL_POLICIES, SHARED, policy_ids, shared_file


def decode_piece(tokens, prev, tok):
    """SentencePiece piece -> bytes: U+2581 is a space, <0xXX> a raw byte; the first piece
    after BOS drops its leading space (as llama2.c's run.c prints)."""
    piece = tokens[tok]
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    s = piece.replace("\u2581", " ")
    if prev == 1 and s.startswith(" "):
        s = s[1:]
    return s.encode()


def greedy(model, steps):
    vocab = model.file.metadata["tokenizer.ggml.tokens"]
    tok, out = 1, b""
    for pos in range(steps):
        nxt = int(np.argmax(model.forward([tok], pos, logits="last")))
        if nxt == 1:
            break
        out += decode_piece(vocab, tok, nxt)
        tok = nxt
    return out


def test_stories260k_greedy_200_reproduces_golden_text(stories_path):
    golden = shared_file("stories260K.greedy200.txt").read_bytes()
    for variant in ("f32", "q8"):
        assert greedy(pf.Model(stories_path, variant=variant), 200) == golden


def max_rel(report, skip=("embeddings",)):
    return max(r.rel_l2 for r in report.rows if r.name not in skip)


def engine_vs_reference(path, tokens, variant="f32"):
    m = pf.Model(path, variant=variant)
    r = pf.reference.Model(m.file, dtype=np.float64)
    a, ta = m.forward(tokens, capture="all")
    b, tb = r.forward(tokens, capture="all")
    assert set(ta) == set(tb)
    return m, drift.layerwise(ta, tb)


def model_tolerance(model, what="f32"):
    return max(w.policy.tolerances[what] for _, w in model.plan.weights if isinstance(w, pf.Tensor))


@pytest.mark.parametrize("name", ["stories260K.gguf", "llama-2-tiny-random.gguf"])
def test_real_model_f32_matches_float64_reference_every_layer(name):
    path = shared_file(name)
    m, rep = engine_vs_reference(path, [1, 300, 25, 71, 99, 4, 87])
    tol = model_tolerance(m)
    for r in rep.rows:
        assert r.rel_l2 <= tol, f"{name}: layer {r.layer} {r.name} rel L2 {r.rel_l2:.3g} > {tol}"
    assert rep.logits.top1_agreement == 1.0


SYNTH = {}


def synth(tmp_path_factory, arch, p, **kw):
    key = (arch, p.name, tuple(sorted(kw.items())))
    if key not in SYNTH:
        d = tmp_path_factory.mktemp("synth")
        SYNTH[key] = pf.testing.synthetic_model(d / f"{arch}-{p.name}.gguf", arch, p, **kw)
    return SYNTH[key]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_synthetic_model_every_policy_within_tolerance(tmp_path_factory, arch, p):
    path = synth(tmp_path_factory, arch, p)
    tokens = [1, 17, 300, 4, 255, 99, 3, 400, 12]
    m, rep = engine_vs_reference(path, tokens, "f32")
    tol = p.tolerances["f32"]
    for r in rep.rows:
        assert r.rel_l2 <= tol, f"{p.name} {arch}: {r.layer} {r.name} {r.rel_l2:.3g}"
    # q8: every stage quantizes its activations; the report is bounded by the policy's q8
    # tolerance times the number of quantized matmuls a value has passed through (7 per layer)
    m, rep = engine_vs_reference(path, tokens, "q8")
    n_mm = 7 * m.n_layers + 1
    for r in rep.rows:
        assert r.rel_l2 <= p.tolerances["q8"] * n_mm, f"{p.name} q8: {r.layer} {r.name}"


def test_prefill_in_one_call_chunks_or_tokens_gives_same_logits(tmp_path_factory):
    path = synth(tmp_path_factory, "llama", pf.policy("q4_k"))
    tokens = list(np.random.default_rng(0).integers(3, 500, 40))
    for variant in ("f32", "q8"):
        m = pf.Model(path, variant=variant)
        full = m.forward(tokens, 0)
        m.reset()
        chunks = [m.forward(tokens[a:b]) for a, b in ((0, 7), (7, 8), (8, 31), (31, 40))]
        np.testing.assert_allclose(np.concatenate(chunks), full, rtol=2e-5, atol=2e-5)
        m.reset()
        one = np.stack([m.forward([t], logits="last") for t in tokens])
        np.testing.assert_allclose(one, full, rtol=2e-5, atol=2e-5)
        # start_pos > 0 after a rewind: positions 20.. recomputed on top of the cached 0..19
        last = m.forward(tokens[20:], 20)
        np.testing.assert_allclose(last, full[20:], rtol=2e-5, atol=2e-5)
        assert m.n_past == 40


def test_q8_decode_with_interleaved_weights_matches_plain_kernels(tmp_path_factory, monkeypatch):
    """The q8 decode GEMV on the interleaved copies (pack_rows formats, made at the first q8
    forward where the CPU has AVX2, FMA and F16C) against the plain kernels
    (PYFOUNDRY_NO_PACK=1) and against the one-call prefill: the same integer sums, only the
    float accumulation order differs.  The model's matrices have row counts that are and are
    not multiples of 8 (vocab 509), so whole groups and leftover rows both run."""
    for name in [n for n in pf.policies if pf.policy(n).pack_rows]:
        path = synth(tmp_path_factory, "llama", pf.policy(name), vocab_size=509)
        tokens = list(np.random.default_rng(1).integers(3, 500, 12))
        monkeypatch.delenv("PYFOUNDRY_NO_PACK", raising=False)
        packed = pf.Model(path, variant="q8")
        assert packed.packed_bytes == 0  # made by the first q8 forward
        full = packed.forward(tokens, 0)
        packed.reset()
        a = np.stack([packed.forward([t], logits="last") for t in tokens])
        monkeypatch.setenv("PYFOUNDRY_NO_PACK", "1")
        plain = pf.Model(path, variant="q8")
        b = np.stack([plain.forward([t], logits="last") for t in tokens])
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * np.abs(b).max())
        np.testing.assert_allclose(a, full, rtol=2e-5, atol=2e-5 * np.abs(full).max())
        assert (a.argmax(axis=1) == b.argmax(axis=1)).all()
        feats = set(pf.cpu_features()["enabled"])
        assert plain.packed_bytes == 0
        if {"avx2", "fma", "f16c"} <= feats:
            assert not np.array_equal(a, b), "the interleaved kernels did not run"
            # Model.packed_bytes: the whole groups of 8 rows of every matmul weight in this
            # format, in whole pages, from the file's shapes
            with pf.open(path) as f:
                mm = {n: t for n, t in f.tensors.items()
                      if len(t.shape) == 2 and t.policy.name == pf.policy(name).name}
                if "output.weight" in f.tensors:
                    mm.pop("token_embd.weight", None)
            R = pf.policy(name).pack_rows
            want = sum(-(-(t.shape[0] // R * R * (t.nbytes // t.shape[0])) // 4096) * 4096
                       for t in mm.values())
            assert packed.packed_bytes == want > 0
        else:
            assert packed.packed_bytes == 0
        monkeypatch.delenv("PYFOUNDRY_NO_PACK", raising=False)
        f32 = pf.Model(path, variant="f32")
        f32.forward(tokens[:2], 0)
        assert f32.packed_bytes == 0  # the f32 variant streams the file's layout



_DECODE_SCRIPT = """
import sys, numpy as np, pyfoundry as pf
m = pf.Model(sys.argv[1], variant="q8")
m.forward([1, 2, 3], 0)
out = np.stack([m.forward([t], logits="last") for t in (4, 5, 6, 7)])
np.save(sys.argv[2], out)
"""


@pytest.mark.parametrize("name", ["q4_0", "q4_1", "q5_0", "q8_0", "q4_k", "q5_k", "q6_k"])
def test_weight_prefetch_switch_changes_no_result(tmp_path_factory, tmp_path, name):
    """The decode kernels' software prefetch (PYFOUNDRY_NO_PREFETCH=1 turns it off, read when
    the library first detects the CPU, hence a process each) leaves every logit's bits as they
    are; the rows are long enough (dim 512) for the 4 KB distance to fall inside the weights."""
    path = synth(tmp_path_factory, "llama", pf.policy(name), dim=512, ffn_dim=1024)
    outs = []
    for flag in ("0", "1"):
        env = dict(os.environ, PYFOUNDRY_NO_PREFETCH=flag)
        dst = tmp_path / f"out{flag}.npy"
        subprocess.run([sys.executable, "-c", _DECODE_SCRIPT, str(path), str(dst)], env=env,
                       check=True, timeout=300)
        outs.append(np.load(dst))
    assert np.isfinite(outs[0]).all() and np.abs(outs[0]).max() > 0
    assert np.array_equal(outs[0], outs[1])

def test_kv_cache_grows_on_demand_up_to_the_context_length(tmp_path):
    path = pf.testing.synthetic_model(tmp_path / "m.gguf", "llama", "q8_0", n_layers=1,
                                      context_length=300)
    m = pf.Model(path)
    m.forward([1])
    cap0 = m._core.kv_capacity
    m.forward(list(range(3, 203)))
    assert m._core.kv_capacity > cap0 and m.n_past == 201
    m.forward(list(range(3, 102)))
    assert m.n_past == 300
    with pytest.raises(ValueError, match="context length"):
        m.forward([5])
    m.truncate(10)
    assert m.n_past == 10
    with pytest.raises(ValueError, match="start_pos"):
        m.forward([5], start_pos=11)


def test_mixed_formats_and_tied_embeddings(tmp_path):
    path = pf.testing.synthetic_model(tmp_path / "mixed.gguf", "qwen2", "q4_k",
                                      embedding_policy="q8_0", tied_embeddings=True)
    with pf.open(path) as f:
        assert "output.weight" not in f.tensors
        assert {t.policy.name for t in f.tensors.values()} == {"q4_k", "q8_0", "f32"}
    m, rep = engine_vs_reference(path, [1, 2, 3, 4])
    assert max_rel(rep) <= 1e-5
    last_matmul = [i for i in m.plan.instructions if i["op"] == "matmul"][-1]
    assert m.plan.weights[last_matmul["weight"]][0] == "token_embd.weight"


def test_rope_frequency_factors_are_applied(tmp_path):
    base = pf.testing.synthetic_model(tmp_path / "a.gguf", "llama", "q8_0", n_layers=1)
    with pf.open(base) as f:
        hd = f.metadata["llama.rope.dimension_count"]
        ff = pf.Tensor.from_numpy(np.linspace(1, 8, hd // 2).astype(np.float32), "f32",
                                  "rope_freqs.weight")
        out = tmp_path / "b.gguf"
        pf.write_gguf(out, list(f.tensors.values()) + [ff], metadata=f.metadata,
                      types=f.metadata_types)
    toks = [1, 5, 9, 200, 7, 7, 3]
    m, rep = engine_vs_reference(out, toks)
    assert max_rel(rep) <= 1e-5
    assert not np.allclose(pf.Model(base).forward(toks), pf.Model(out).forward(toks))


def test_forward_rejects_bad_input(stories_path):
    m = pf.Model(stories_path)
    with pytest.raises(ValueError, match="vocabulary"):
        m.forward([1, 512])
    with pytest.raises(ValueError, match="1-D"):
        m.forward([[1, 2]])
    with pytest.raises(ValueError, match="unknown capture"):
        m.forward([1], capture=["nope"])
    with pytest.raises(NotImplementedError):
        pf.Model(stories_path, backend="cuda")
    logits, tr = m.forward([1, 2], 0, capture=["q", (0, "residual")])
    assert (0, "q") in tr and (4, "q") in tr and (0, "residual") in tr and (1, "residual") not in tr
    assert tr[(0, "q")].shape == (2, 64)


def test_captures_of_last_only_logits(stories_path):
    m = pf.Model(stories_path)
    lg, tr = m.forward([1, 2, 3], capture=["logits", "residual"], logits="last")
    assert lg.shape == (512,) and tr[(None, "logits")].shape == (1, 512)
    assert tr[(4, "residual")].shape == (3, 64)


# ---- the real SmolLM2 model ----------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    script = SHARED / "tools" / "fetch-model.sh"
    if not script.exists():
        pytest.skip("fetch-model.sh not available")
    r = subprocess.run(["bash", str(script), "smollm2"], capture_output=True, text=True,
                       timeout=900)
    if r.returncode != 0 or not r.stdout.strip():
        pytest.skip("SmolLM2 could not be fetched")
    return pathlib.Path(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_smollm2_final_logits_within_1e_4_of_reference(smollm2):
    tokens = [1, 504, 3458, 282, 253, 1345, 28, 45, 6151, 30]
    m = pf.Model(smollm2, variant="f32")
    ref = pf.reference.Model(m.file, dtype=np.float64)
    a, ta = m.forward(tokens, capture="all")
    b, tb = ref.forward(tokens, capture="all")
    rep = drift.layerwise(ta, tb, title="SmolLM2 f32")
    assert drift.compare(a, b).rel_l2 <= 1e-4, rep.table()
    q = pf.Model(m.file, variant="q8")
    aq, tq = q.forward(tokens, capture="all")
    repq = drift.layerwise(tq, tb, title="SmolLM2 q8")
    print(repq.table())  # shown with -s: the q8 variant's drift
    assert repq.logits.top1_agreement >= 0.8


# ---- command line ------------------------------------------------------------------------

def run_cli(*args):
    r = subprocess.run([sys.executable, "-m", "pyfoundry.cli", *args], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_cli_parity_default_synthetic_model(tmp_path):
    out = run_cli("parity", "--layers", "2", "--plot", str(tmp_path / "p.png"))
    assert "residual" in out and "logits: top-1 agreement 1.0000" in out
    assert (tmp_path / "p.png").stat().st_size > 1000
    js = json.loads(run_cli("parity", "--arch", "qwen2", "--policy", "q8_0", "--layers", "2",
                            "--variant", "q8", "--reference", "float32", "--json"))
    assert js["rows"] and js["logits"]["top1_agreement"] >= 0.5


def test_cli_parity_and_info_on_a_real_file(stories_path):
    out = run_cli("parity", str(stories_path), "--tokens", "1,300,25")
    assert "no intermediate exceeds" in out
    info = run_cli("info", str(stories_path))
    assert "architecture  llama" in info and "blk.4.ffn_down.weight" in info and "total" in info
