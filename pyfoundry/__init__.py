"""pyfoundry: a C engine for quantized LLM inference, with a NumPy reference for every stage.

Open GGUF files, inspect and (de)quantize tensors in every weight format, and write GGUF
files::

    import pyfoundry as pf
    with pf.open("model.gguf") as f:
        print(f.architecture, len(f.tensors))
        w = f.tensors["blk.0.attn_q.weight"].dequantize()     # float32, (out, in)
    t = pf.Tensor.from_numpy(w, policy="q4_k")                 # quantize
    pf.write_gguf("out.gguf", [t], metadata={"general.architecture": "llama"})
    tok = pf.open("model.gguf").tokenizer                      # encode / decode / stream
"""
from ._errors import (FoundryError, FoundryIndexError, FoundryIOError, FoundryMemoryError,
                      FoundryNotImplementedError, FoundryStateError, GGUFError, ShapeError)
from . import _core
from .policy import Policy, policies, policy
from .gguf import GGUFFile, Tensor, infer_type, open, write_gguf
from .tokenizer import Tokenizer, TokenStream
from .steps import Step, compile
from .model import Model, Plan, Trace, load_spec
from .sampler import Sampler
from . import reference, drift, steps, testing, gpu
from .gpu import cuda_available, metal_available

__version__ = _core.version

_CPU_FLAGS = ["avx2", "fma", "f16c", "avx512", "avx512vnni", "avxvnni", "neon", "dotprod",
              "amx"]


def cpu_features():
    """The SIMD extensions the processor has and those the kernels may use, and how far ahead
    (bytes) the decode kernels prefetch the weights they stream:
    ``{"detected": [...], "enabled": [...], "prefetch_ahead": n, "prefetch_near": m}``.
    The names: avx2, fma, f16c, avx512 (F, BW, VL and DQ), avx512vnni, avxvnni, neon,
    dotprod, and amx (AMX-TILE and AMX-INT8 with AVX-512, the OS having granted this process
    the tile state: the f32 variant's decode then multiplies Q4_0, Q4_1 and Q8_0 weights on the
    tile unit; :attr:`pyfoundry.Model.packed_bytes`).  Each block a kernel reads asks for the bytes ``prefetch_ahead`` past it into the L2 cache
    and those ``prefetch_near`` past it into the L1.  The far distance is 16384 on Intel CPUs
    and 4096 on others; the near one is 2048 on Intel CPUs and the far distance on others (one
    level).  ``PYFOUNDRY_PREFETCH_AHEAD=n`` and ``PYFOUNDRY_PREFETCH_NEAR=n`` (0 to 1048576)
    set them and ``PYFOUNDRY_NO_PREFETCH=1`` makes both 0, all read when the library first
    detects the CPU (tuning switches: results do not depend on them)."""
    det, en, ahead, near = _core.cpu_features()
    return {"detected": [n for i, n in enumerate(_CPU_FLAGS) if det >> i & 1],
            "enabled": [n for i, n in enumerate(_CPU_FLAGS) if en >> i & 1],
            "prefetch_ahead": ahead, "prefetch_near": near}


def set_num_threads(n: int) -> None:
    """Size of the persistent thread pool the CPU kernels run on (the caller included).
    The default is PYFOUNDRY_NUM_THREADS, else the number of online CPUs."""
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    return _core.get_num_threads()


def set_cpu_features(names=None):
    """Restrict the SIMD paths kernels may use to ``names`` (None: all detected).  Tests use
    this to force each path; the portable path is ``set_cpu_features([])``."""
    if names is None:
        _core.set_cpu_feature_mask(0xFFFFFFFF)
        return
    mask = 0
    for n in names:
        if n not in _CPU_FLAGS:
            raise ShapeError(f"unknown CPU feature {n!r}; known: {', '.join(_CPU_FLAGS)}")
        mask |= 1 << _CPU_FLAGS.index(n)
    _core.set_cpu_feature_mask(mask)


__all__ = ["FoundryError", "GGUFError", "ShapeError", "FoundryMemoryError", "FoundryIOError",
           "FoundryNotImplementedError", "FoundryIndexError", "FoundryStateError",
           "Policy", "policies", "policy", "GGUFFile", "Tensor", "open", "write_gguf",
           "Tokenizer", "TokenStream",
           "infer_type", "cpu_features", "set_cpu_features", "set_num_threads",
           "get_num_threads", "Step", "compile", "Model", "Plan", "Trace", "load_spec", "Sampler",
           "reference", "drift", "steps", "testing", "gpu", "cuda_available", "metal_available",
           "__version__"]
