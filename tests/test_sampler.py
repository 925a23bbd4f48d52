"""The C sampler against pyfoundry.reference.sampling: each transformation alone, the whole
chain, greedy, the draw (its definition, its determinism, its empirical distribution), bad
input, and cost on a 150k vocabulary.

Bound: the C chain works in double and rounds the final probabilities to float32, the
reference in float64, so where both keep the same tokens |p - p_ref| <= 2**-23 p_ref (+ the
float32 subnormal step).  The kept sets must agree exactly wherever the reference gives a
probability float32 can hold.
"""
import threading
import time

import numpy as np
import pytest

import pyfoundry as pf
from pyfoundry.reference import sampling as R

VOCABS = [1, 2, 1000, 150000]
KINDS = ["normal", "ties", "equal", "neginf"]
# every transformation off: each test switches on the one it checks
OFF = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
           presence_penalty=0.0, frequency_penalty=0.0, penalty_last_n=0)


def make_logits(V, kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal(V) * 3
    elif kind == "ties":      # few distinct values: ties everywhere, at every boundary
        x = rng.integers(-4, 5, V).astype(np.float64)
    elif kind == "equal":
        x = np.full(V, 0.25)
    elif kind == "neginf":    # banned tokens, never all of them
        x = rng.standard_normal(V) * 2
        x[rng.random(V) < 0.3] = -np.inf
        x[rng.integers(V)] = 1.0
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


def assert_same_dist(got, ref):
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=2.0 ** -23, atol=1e-44)
    assert not ((got > 0) & (ref == 0)).any(), "kept a token the reference removes"
    holdable = ref > 1e-37
    assert ((got > 0) == (ref > 0))[holdable].all(), "removed a token the reference keeps"


def off_grid(p, V, kind):
    """top_p away from the cumulative sums of equal probabilities (k / V), where float
    rounding alone would decide the boundary"""
    return min(1.0, p + 0.3 / V) if kind == "equal" else p


def sampler(**kw):
    return pf.Sampler(**{**OFF, "seed": 0, **kw})


# ---- each transformation alone --------------------------------------------------------------

@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1, 2, 5, 40, 999, 10 ** 6])
def test_top_k_matches_reference(V, kind, k):
    x = make_logits(V, kind, seed=k)
    assert_same_dist(sampler(top_k=k).probs(x), R.softmax(R.top_k(x, k)))


@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.95, 0.999])
def test_top_p_matches_reference(V, kind, p):
    x = make_logits(V, kind, seed=int(p * 1000))
    p = off_grid(p, V, kind)
    assert_same_dist(sampler(top_p=p).probs(x), R.softmax(R.top_p(x, p)))


@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("p", [0.01, 0.05, 0.3, 1.0])
def test_min_p_matches_reference(V, kind, p):
    x = make_logits(V, kind, seed=int(p * 100))
    assert_same_dist(sampler(min_p=p).probs(x), R.softmax(R.min_p(x, p)))


@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", [0.05, 0.5, 1.0, 2.0, 100.0])
def test_temperature_matches_reference(V, kind, t):
    x = make_logits(V, kind, seed=3)
    assert_same_dist(sampler(temperature=t).probs(x), R.softmax(R.temperature(x, t)))


PENALTIES = [
    dict(repeat_penalty=1.3),
    dict(repeat_penalty=0.7),
    dict(presence_penalty=0.5),
    dict(presence_penalty=-0.3),
    dict(frequency_penalty=0.2),
    dict(repeat_penalty=1.1, presence_penalty=0.4, frequency_penalty=0.1),
]


@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("last_n", [0, 1, 7, 64, -1])
@pytest.mark.parametrize("pen", PENALTIES, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_penalties_match_reference(V, last_n, pen):
    rng = np.random.default_rng(V + last_n)
    x = make_logits(V, "normal", seed=5)
    # repeats, tokens out of this vocabulary (ignored) and a long history
    hist = list(rng.integers(0, min(V, 30), 150)) + [V, V + 7, V] + list(rng.integers(0, V, 20))
    s = sampler(penalty_last_n=last_n, **pen)
    for t in hist:
        s.accept(int(t))
    assert s.history == [int(t) for t in hist]
    params = {**OFF, "penalty_last_n": last_n, **pen}
    ref = R.probs(x, hist, **params)
    np.testing.assert_allclose(ref, R.softmax(R.apply_penalties(x, hist, **{
        k: params[k] for k in ("repeat_penalty", "presence_penalty", "frequency_penalty",
                               "penalty_last_n")})))
    assert_same_dist(s.probs(x), ref)


def test_penalties_change_the_distribution():
    """guard against a reference and a kernel that both ignore the penalties"""
    x = make_logits(100, "normal")
    s = sampler(repeat_penalty=1.5, frequency_penalty=0.5, penalty_last_n=-1)
    before = s.probs(x)
    top = int(np.argmax(x))
    for _ in range(3):
        s.accept(top)
    after = s.probs(x)
    assert after[top] < before[top] * 0.5


# ---- the chain --------------------------------------------------------------------------

def chain_cases():
    rng = np.random.default_rng(42)
    for i in range(40):
        V = VOCABS[i % len(VOCABS)]
        kind = KINDS[(i // len(VOCABS)) % len(KINDS)]
        params = dict(temperature=float(rng.choice([0.1, 0.7, 1.0, 1.5])),
                      top_k=int(rng.choice([0, 1, 5, 40, 500])),
                      top_p=off_grid(float(rng.choice([0.5, 0.9, 0.95, 1.0])), V, kind),
                      min_p=float(rng.choice([0.0, 0.02, 0.1])),
                      repeat_penalty=float(rng.choice([1.0, 1.1, 1.3])),
                      presence_penalty=float(rng.choice([0.0, 0.3])),
                      frequency_penalty=float(rng.choice([0.0, 0.1])),
                      penalty_last_n=int(rng.choice([0, 16, 64, -1])))
        yield pytest.param(V, kind, params, i, id=f"{i}-V{V}-{kind}")


@pytest.mark.parametrize("V,kind,params,seed", list(chain_cases()))
def test_chain_matches_reference(V, kind, params, seed):
    rng = np.random.default_rng(seed)
    x = make_logits(V, kind, seed=seed)
    hist = [int(t) for t in rng.integers(0, V, 100)]
    s = pf.Sampler(**params, seed=seed)
    for t in hist:
        s.accept(t)
    p = s.probs(x)
    assert_same_dist(p, R.probs(x, hist, **params))
    assert abs(float(p.sum(dtype=np.float64)) - 1) < 1e-5
    for _ in range(5):
        assert p[s.sample(x)] > 0


def test_default_parameters_match_reference_defaults():
    x = make_logits(1000, "normal")
    s = pf.Sampler(seed=1)
    assert_same_dist(s.probs(x), R.probs(x))


# ---- greedy -----------------------------------------------------------------------------

@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("kind", KINDS)
def test_greedy_is_argmax(V, kind):
    x = make_logits(V, kind, seed=V)
    g = pf.Sampler.greedy()
    want = int(np.argmax(x))             # numpy: the first maximum, i.e. the lowest id
    assert g.sample(x) == want
    onehot = np.zeros(V, np.float32)
    onehot[want] = 1
    np.testing.assert_array_equal(g.probs(x), onehot)
    # temperature 0 ignores the filters: the argmax always survives them
    assert pf.Sampler(temperature=0, top_k=3, top_p=0.1, min_p=0.5).sample(x) == want


def test_greedy_ties_go_to_the_lowest_id():
    x = np.array([0, 3, 1, 3, 3], np.float32)
    assert pf.Sampler.greedy().sample(x) == 1
    assert pf.Sampler.greedy().sample(np.zeros(7, np.float32)) == 0


def test_greedy_after_penalties():
    x = np.array([5.0, 4.0, 1.0, -2.0], np.float32)
    g = pf.Sampler.greedy(repeat_penalty=2.0, penalty_last_n=-1)
    g.accept(0)
    assert g.sample(x) == 1                      # 5 / 2 < 4
    want = int(np.argmax(R.apply_penalties(x, [0], repeat_penalty=2.0, penalty_last_n=-1)))
    assert want == 1
    assert g.history == [0]


# ---- the draw ---------------------------------------------------------------------------

def splitmix64(state):
    """the generator of foundry_c/src/sampler.c: returns (new state, uniform in [0, 1))"""
    M = (1 << 64) - 1
    state = (state + 0x9E3779B97F4A7C15) & M
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    z ^= z >> 31
    return state, (z >> 11) * 2.0 ** -53


def test_draw_follows_its_definition():
    """token = the lowest id whose cumulative probability (in id order) exceeds u, with u the
    splitmix64 stream of the seed: the same tokens on every platform"""
    x = np.array([0.5, -1.0, 2.0, 0.0, 1.0, -np.inf, 1.5, 0.2], np.float32)
    params = dict(temperature=0.9, top_k=6, top_p=0.97, min_p=0.02)
    seed = 12345
    s = pf.Sampler(**params, seed=seed)
    cdf = np.cumsum(R.probs(x, **params, penalty_last_n=0))
    state, got, want = seed, [], []
    for _ in range(500):
        state, u = splitmix64(state)
        want.append(int(np.argmax(cdf > u)))
        got.append(s.sample(x))
    assert got == want
    assert len(set(got)) > 3


def draw_sequence(s, n, V=1000, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = s.sample(rng.standard_normal(V).astype(np.float32))
        s.accept(t)
        out.append(t)
    return out


def test_same_seed_same_tokens_different_seed_different_tokens():
    params = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.1)
    a = draw_sequence(pf.Sampler(**params, seed=7), 60)
    b = draw_sequence(pf.Sampler(**params, seed=7), 60)
    c = draw_sequence(pf.Sampler(**params, seed=8), 60)
    assert a == b
    assert a != c


def test_reset_replays_and_probs_draws_nothing():
    s = pf.Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=3)
    a = draw_sequence(s, 30)
    assert len(s.history) == 30
    s.reset()
    assert s.history == []
    x = make_logits(1000, "normal")
    s.probs(x)                                   # consumes no random number
    assert draw_sequence(s, 30) == a


def test_seed_none_draws_one_and_records_it():
    s = pf.Sampler(seed=None)
    assert isinstance(s.seed, int) and 0 <= s.seed < 2 ** 64
    again = pf.Sampler(seed=s.seed)
    assert draw_sequence(s, 20) == draw_sequence(again, 20)
    assert f"seed={s.seed}" in repr(s)


@pytest.mark.parametrize("V,params", [
    (20, dict(temperature=1.0, top_k=15, top_p=0.95, min_p=0.01)),
    (150000, dict(temperature=0.7, top_k=8, top_p=1.0, min_p=0.0)),
    (50, dict(temperature=1.3, top_k=0, top_p=0.9, min_p=0.0)),
])
def test_empirical_distribution_matches_probs(V, params):
    x = make_logits(V, "normal", seed=V)
    s = pf.Sampler(**params, seed=2024)
    p = s.probs(x).astype(np.float64)
    n = 20000 if V < 1000 else 4000
    counts = np.bincount([s.sample(x) for _ in range(n)], minlength=V)
    assert counts[p == 0].sum() == 0, "drew a removed token"
    kept = p > 0
    expected = n * p[kept]
    chi2 = float(((counts[kept] - expected) ** 2 / expected).sum())
    df = int(kept.sum()) - 1
    # chi-square with df degrees of freedom: mean df, sd sqrt(2 df); 5 sd is far in the tail
    assert chi2 < df + 5 * np.sqrt(2 * df), (chi2, df)


# ---- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2 ** 40), "top_k"),
    (dict(top_k=1.5), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(min_p=1.01), "min_p"),
    (dict(repeat_penalty=0.0), "repeat_penalty"),
    (dict(repeat_penalty=-1.0), "repeat_penalty"),
    (dict(repeat_penalty=float("inf")), "repeat_penalty"),
    (dict(presence_penalty=float("nan")), "presence_penalty"),
    (dict(frequency_penalty=float("inf")), "frequency_penalty"),
    (dict(penalty_last_n=-2), "penalty_last_n"),
    (dict(seed=-1), "seed"),
    (dict(seed=2 ** 64), "seed"),
])
def test_bad_parameters_raise_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        pf.Sampler(**kw)


@pytest.mark.parametrize("logits,match", [
    (np.zeros(0, np.float32), "empty"),
    (np.zeros((2, 3), np.float32), "1-D"),
    (np.array([0.0, np.nan, 1.0], np.float32), r"logits\[1\] is NaN"),
    (np.array([0.0, np.inf], np.float32), r"logits\[1\] is \+inf"),
    (np.full(4, -np.inf, np.float32), "every logit is -inf"),
])
@pytest.mark.parametrize("method", ["sample", "probs"])
def test_bad_logits_raise_value_error(logits, match, method):
    s = pf.Sampler(seed=0)
    with pytest.raises(ValueError, match=match):
        getattr(s, method)(logits)
    with pytest.raises(ValueError, match=match):
        getattr(pf.Sampler.greedy(), method)(logits)


def test_bad_tokens_raise_value_error():
    s = pf.Sampler(seed=0)
    with pytest.raises(ValueError, match="token"):
        s.accept(-1)
    with pytest.raises(ValueError, match="token"):
        s.accept(2 ** 31)
    with pytest.raises(ValueError, match="token"):
        s.accept(1.5)
    assert s.history == []


def test_penalties_that_overflow_raise():
    s = pf.Sampler(temperature=1.0, repeat_penalty=1e-300, penalty_last_n=-1, seed=0)
    s.accept(0)
    with pytest.raises(ValueError, match="penalties"):
        s.sample(np.array([1e30, 0.0], np.float32))


def test_low_level_buffers_are_checked():
    s = pf._core.Sampler()
    with pytest.raises(ValueError, match="float32"):
        s.sample(np.zeros(4, np.float64))
    with pytest.raises(ValueError, match="out has 3 elements"):
        s.probs(np.zeros(4, np.float32), np.zeros(3, np.float32))
    read_only = np.zeros(4, np.float32)
    read_only.flags.writeable = False
    with pytest.raises((BufferError, ValueError), match="read-only|not writable"):
        s.probs(np.zeros(4, np.float32), read_only)
    assert s.sample(np.zeros(4, np.float32)) in range(4)


# ---- use ----------------------------------------------------------------------------------

def test_vocabulary_size_may_change_between_calls():
    s = pf.Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0)
    for V in [10, 150000, 3, 1000, 1]:
        x = make_logits(V, "normal", seed=V)
        assert_same_dist(s.probs(x), R.softmax(x))
        assert 0 <= s.sample(x) < V


def test_python_sequences_and_float64_logits_are_accepted():
    s = pf.Sampler.greedy()
    assert s.sample([0.0, 2.0, 1.0]) == 1
    assert s.probs(np.array([0.0, 2.0, 1.0])).dtype == np.float32


def test_one_sampler_used_from_threads_never_crashes():
    s = pf.Sampler(seed=0, top_k=0)
    x = make_logits(150000, "normal")
    errors = []

    def work():
        for _ in range(20):
            try:
                s.sample(x)
            except pf.FoundryStateError as e:     # the object is busy in another thread
                errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all("in use" in str(e) for e in errors)


@pytest.mark.parametrize("pattern", ["normal", "ascending", "descending", "equal", "spiky"])
@pytest.mark.parametrize("params", [dict(), dict(top_k=0), dict(top_k=0, top_p=0.999, min_p=0),
                                    dict(top_k=100000, top_p=1.0, min_p=0)],
                         ids=["default", "top_p", "top_p_flat", "big_k"])
def test_large_vocabulary_is_fast(pattern, params):
    """Not a benchmark: 150k tokens must cost a few milliseconds, not seconds (nothing
    quadratic, also on inputs that defeat a naive quickselect)"""
    V = 150000
    x = {"normal": make_logits(V, "normal"),
         "ascending": np.arange(V, dtype=np.float32) / V * 20,
         "descending": np.arange(V, 0, -1, dtype=np.float32) / V * 20,
         "equal": np.zeros(V, np.float32),
         "spiky": np.where(np.arange(V) % 1000 == 0, 10.0, 0.0).astype(np.float32)}[pattern]
    s = pf.Sampler(**params, seed=0)
    s.sample(x)
    t0 = time.perf_counter()
    for _ in range(10):
        s.sample(x)
    per_call = (time.perf_counter() - t0) / 10
    assert per_call < 0.25, f"{per_call * 1e3:.1f} ms per 150k-token sample"
