"""Shared fixtures: the registry of policies (tests iterate over it, never over a hand-written
list), paths to ../shared/testdata (skip when absent), and the gguf package oracle."""
import pathlib

import numpy as np
import pytest

import pyfoundry as pf

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
TESTDATA = SHARED / "testdata"


def shared_file(name):
    p = TESTDATA / name
    if not p.exists():
        pytest.skip(f"{name} not available (../shared/testdata missing)")
    return p


@pytest.fixture
def stories_path():
    return shared_file("stories260K.gguf")


@pytest.fixture
def tiny_llama_path():
    return shared_file("llama-2-tiny-random.gguf")


def gguf_qtype(p):
    """The gguf package's GGMLQuantizationType for a policy, or None."""
    gguf = pytest.importorskip("gguf")
    try:
        return gguf.GGMLQuantizationType(p.gguf_type)
    except ValueError:
        return None


# feature sets for pf.set_cpu_features that select each CPU kernel tier: portable code, the
# AVX2 + FMA + F16C kernels, and everything this CPU has (None)
CPU_TIERS = {"portable": [], "avx2": ["avx2", "fma", "f16c"], "all": None}


@pytest.fixture(params=list(CPU_TIERS), ids=list(CPU_TIERS))
def cpu_tier(request):
    """each CPU_TIERS entry in turn (skipped where this CPU lacks it), enabled for the test and
    reset after it; the value is the tier's name"""
    feats = CPU_TIERS[request.param]
    if feats and not set(feats) <= set(pf.cpu_features()["detected"]):
        pytest.skip(f"this CPU lacks {feats}")
    pf.set_cpu_features(feats)
    yield request.param
    pf.set_cpu_features(None)


# unit roundoff of float32, and the dot-product error factor gamma(n) = n u / (1 - n u)
U = 2.0 ** -24


def gamma(n):
    return n * U / (1 - n * U)

ALL_POLICIES = list(pf.policies)
QUANTIZABLE = [p for p in ALL_POLICIES if p.can_quantize]


def policy_ids(ps):
    return [p.name for p in ps]


def random_rows(p, rows=8, blocks=4, seed=0, scale=1.0):
    """Gaussian rows whose length is a whole number of blocks (and at least 256)."""
    rng = np.random.default_rng(seed)
    n = max(p.block_elems * blocks, 256)
    n = (n + p.block_elems - 1) // p.block_elems * p.block_elems
    return (rng.standard_normal((rows, n)) * scale).astype(np.float32)
