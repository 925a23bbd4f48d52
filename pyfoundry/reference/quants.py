"""NumPy references of the weight formats that have no outside oracle.

GGUF formats are checked against the gguf package and llama.cpp golden vectors; the formats
GGUF lacks are specified here, in plain float32 NumPy, and the C policies are held to these
bit for bit.  ``REFERENCE`` maps a policy name to an object with ``quantize(x) -> uint8
blocks (..., row_bytes)`` and ``dequantize(raw) -> float32 (..., row_elems)``.
"""
from __future__ import annotations

import numpy as np

REFERENCE = {}
