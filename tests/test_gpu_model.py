"""pf.Model(path, backend="cuda"): the whole plan on the GPU against the CPU executor, layer
by layer (pf.drift.layerwise), for synthetic models in every policy, prefill in chunks vs
token by token (the decode step runs as a replayed CUDA graph), the stories260K greedy
golden text and SmolLM2 when present.  Skipped without a CUDA device; without one,
backend="cuda" raises FoundryNotImplementedError."""
import numpy as np
import pytest

import pyfoundry as pf
from pyfoundry import drift

from conftest import ALL_POLICIES, policy_ids, shared_file
from test_model import greedy, synth

HAVE_CUDA = pf.cuda_available()
cuda = pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA device (pf.cuda_available() is False)")


@pytest.mark.skipif(HAVE_CUDA, reason="a CUDA device is present")
def test_cuda_backend_without_a_device_raises(tmp_path):
    path = pf.testing.synthetic_model(tmp_path / "m.gguf", "llama", "q8_0", n_layers=1)
    with pytest.raises(pf.FoundryNotImplementedError):
        pf.Model(path, backend="cuda")


def cuda_vs_cpu(path, tokens):
    g = pf.Model(path, backend="cuda")
    c = pf.Model(g.file)
    a, ta = g.forward(tokens, capture="all")
    b, tb = c.forward(tokens, capture="all")
    assert set(ta) == set(tb)
    for key, v in ta.items():
        assert np.isfinite(v).all(), key
    return g, drift.layerwise(ta, tb, title=str(path)), a, b


TOKENS = [1, 17, 300, 4, 255, 99, 3, 400, 12]


@cuda
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_cuda_model_matches_cpu_every_layer(tmp_path_factory, arch, p):
    path = synth(tmp_path_factory, arch, p)
    g, rep, a, b = cuda_vs_cpu(path, TOKENS)
    # the same decoded weights, float32 sums in another order: far inside the policy's
    # tolerance against float64 (and 1e-4 for the exact formats)
    tol = max(p.tolerances["f32"], 1e-4)
    for r in rep.rows:
        assert r.rel_l2 <= tol, f"{p.name} {arch}: {r.layer} {r.name} {r.rel_l2:.3g}\n" + rep.table()
    assert rep.logits.top1_agreement == 1.0
    # decode after the prefill (graph path) continues the same sequence
    c = pf.Model(g.file)
    c.forward(TOKENS)
    for t in (5, 77, 301):
        x, y = g.forward([t], logits="last"), c.forward([t], logits="last")
        assert drift.compare(x, y).rel_l2 <= tol, (p.name, t)
    assert g.n_past == c.n_past == len(TOKENS) + 3


@cuda
def test_cuda_prefill_chunks_tokens_and_rewind_agree(tmp_path_factory):
    path = synth(tmp_path_factory, "llama", pf.policy("q4_k"))
    tokens = list(np.random.default_rng(0).integers(3, 500, 100))  # KV cache grows past 64
    m = pf.Model(path, backend="cuda")
    full = m.forward(tokens, 0)
    m.reset()
    chunks = [m.forward(tokens[a:b]) for a, b in ((0, 7), (7, 8), (8, 31), (31, 100))]
    np.testing.assert_allclose(np.concatenate(chunks), full, rtol=1e-4, atol=1e-4)
    m.reset()
    one = np.stack([m.forward([t], logits="last") for t in tokens])
    np.testing.assert_allclose(one, full, rtol=1e-4, atol=1e-4)
    last = m.forward(tokens[20:], 20)
    np.testing.assert_allclose(last, full[20:], rtol=1e-4, atol=1e-4)
    assert m.n_past == 100
    cpu = pf.Model(m.file).forward(tokens, 0)
    assert drift.compare(full, cpu).rel_l2 <= 1e-4


@cuda
def test_cuda_stories260k_greedy_200_reproduces_golden_text(stories_path):
    golden = shared_file("stories260K.greedy200.txt").read_bytes()
    assert greedy(pf.Model(stories_path, backend="cuda"), 200) == golden


@cuda
def test_cuda_stories260k_every_layer(stories_path):
    g, rep, a, b = cuda_vs_cpu(stories_path, [1, 300, 25, 71, 99, 4, 87])
    for r in rep.rows:
        assert r.rel_l2 <= 1e-4, rep.table()
    assert rep.logits.top1_agreement == 1.0


@cuda
@pytest.mark.slow
def test_cuda_smollm2_every_layer():
    import os
    path = os.environ.get("PF_SMOLLM2")
    if not path or not os.path.exists(path):
        pytest.skip("set PF_SMOLLM2 to the SmolLM2 .gguf")
    g, rep, a, b = cuda_vs_cpu(path, [1, 504, 3458, 282, 253, 1345, 28, 45, 6151, 30])
    print(rep.table())
    assert drift.compare(a, b).rel_l2 <= 1e-4, rep.table()
    assert rep.logits.top1_agreement == 1.0


@cuda
@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_cuda_q8_variant_model_every_layer(tmp_path_factory, p):
    """pf.Model(backend="cuda", variant="q8") (activations quantized on the device, integer
    hooks at M = 1) against the CPU executor's q8 variant, layer by layer: the same bound as
    the CPU's q8 run against the reference (tests/test_model.py), the q8 tolerance per
    quantized matmul a value has passed through; the decode step (graph) continues alike."""
    path = synth(tmp_path_factory, "llama", p)
    g = pf.Model(path, backend="cuda", variant="q8")
    c = pf.Model(g.file, variant="q8")
    a, ta = g.forward(TOKENS, capture="all")
    b, tb = c.forward(TOKENS, capture="all")
    rep = drift.layerwise(ta, tb, title=f"{p.name} q8 cuda vs cpu")
    n_mm = 7 * g.n_layers + 1
    for key, v in ta.items():
        assert np.isfinite(v).all(), key
    for r in rep.rows:
        assert r.rel_l2 <= p.tolerances["q8"] * n_mm, f"{p.name}: {r.layer} {r.name}\n" + rep.table()
    for t in (5, 77):
        x, y = g.forward([t], logits="last"), c.forward([t], logits="last")
        assert drift.compare(x, y).rel_l2 <= p.tolerances["q8"] * n_mm, (p.name, t)
    assert g.n_past == len(TOKENS) + 2
