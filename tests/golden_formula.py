"""The formula weights of the S/M/L golden references (`shared/golden/formula_320/README.md`).

Every state_dict entry is a pure function of its official key and shape, so the weights are rebuilt here
with NumPy alone; `keys.json` carries the SHA-256 of the exact bytes to check against.
"""
from __future__ import annotations

import hashlib
import zlib
from typing import Any, Sequence

import numpy as np


def formula_base(name: str, n: int) -> np.ndarray:
    """`sin((j*0.7071067811865476 + ((j*j) mod 10007)*0.001) + (crc32(name) mod 10007)*0.001)`, float64."""
    seed = zlib.crc32(name.encode("utf-8"))
    j = np.arange(n, dtype=np.int64)
    q = ((j * j) % 10007).astype(np.float64)
    return np.sin((j.astype(np.float64) * 0.7071067811865476 + q * 0.001) + (seed % 10007) * 0.001)


def formula_rule(name: str, shape: Sequence[int], dtype: str) -> str:
    """Which rule of the README table applies to this entry."""
    parts = name.split(".")
    if name in ("detect.proj", "detect.proj_conv.weight"):
        return "keep_official"
    if not dtype.startswith("float"):
        return "keep_int"
    if len(parts) >= 2 and parts[-2] in ("bn", "rbr_identity"):
        return "bn_" + parts[-1]
    if len(shape) >= 2:
        return "conv_weight"
    if parts[-1] == "alpha":
        return "alpha"
    return "other_1d"


def formula_value(name: str, shape: Sequence[int], dtype: str = "float32") -> np.ndarray:
    """The formula value of one entry (float32, or int64 zeros for num_batches_tracked)."""
    shape = tuple(int(d) for d in shape)
    rule = formula_rule(name, shape, dtype)
    if rule == "keep_official":
        return np.arange(17, dtype=np.float32).reshape(shape)
    if rule == "keep_int":
        return np.zeros(shape, dtype=np.int64)
    b = formula_base(name, int(np.prod(shape, dtype=np.int64)))
    if rule == "conv_weight":
        v = b * np.sqrt(1.0 / int(np.prod(shape[1:], dtype=np.int64)))
    elif rule in ("bn_weight", "alpha"):
        v = 1.0 + 0.1 * b
    elif rule == "bn_running_var":
        v = 1.0 + 0.25 * (b + 1.0)
    else:  # bn_bias, bn_running_mean, other_1d
        v = 0.1 * b
    return v.astype(np.float32).reshape(shape)


def sha256_of(array: np.ndarray) -> str:
    """SHA-256 of the C-order little-endian bytes (the `keys.json` convention)."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def formula_state_dict(keys_json: dict[str, Any]) -> dict[str, np.ndarray]:
    """Formula state_dict (in `keys.json` order) from a loaded `keys.json`."""
    return {e["name"]: formula_value(e["name"], e["shape"], e["dtype"]) for e in keys_json["keys"]}
