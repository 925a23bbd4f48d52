"""NumPy reference implementations: the executable specification of every stage and format.

``pyfoundry.reference.stages``: every stage (float32 or float64 accumulation);
``pyfoundry.reference.quants``: the formats GGUF lacks;
``pyfoundry.reference.sampling``: the token sampler's transformations.
"""
from . import quants, sampling, stages  # noqa: F401
from .model import Model  # noqa: F401
