"""The floating-point types refattn takes, and what it needs to know of each.

    float16, bfloat16   low precision: computed in float32 (softmax, sums); an implementation
                        may round P to the input type before P·V, as FlashAttention kernels do
    float32             computed in float32
    float64             computed in float64

bfloat16 arrays are NumPy arrays of `ml_dtypes.bfloat16` (the type JAX and TensorFlow use).
NumPy does not count it as a float kind ("V"), and np.finfo does not know it: ask here.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT_DTYPES = (np.dtype(np.float16), BFLOAT16, np.dtype(np.float32), np.dtype(np.float64))
LOW_PRECISION = (np.dtype(np.float16), BFLOAT16)
NAMES = "float16, bfloat16, float32 or float64"


def is_float(dtype) -> bool:
    """A floating-point dtype, bfloat16 included."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype == BFLOAT16


def finfo(dtype):
    """np.finfo, which also knows bfloat16."""
    dtype = np.dtype(dtype)
    return ml_dtypes.finfo(dtype) if dtype == BFLOAT16 else np.finfo(dtype)


def compute_dtype(dtype) -> np.dtype:
    """Softmax runs in at least float32: float16, bfloat16 and float32 inputs are computed in
    float32, float64 inputs in float64."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)
