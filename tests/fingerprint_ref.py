"""The stats fingerprint as its definition states it (aligner/fused_kernel.py, FINGERPRINT), written
independently of the product's kernel and numpy twin: Python integers, modulo 2^64."""
from __future__ import annotations

import numpy as np

STEP, MUL, MASK = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, (1 << 64) - 1


def fingerprint(a: np.ndarray) -> str:
    flat = np.ascontiguousarray(a).reshape(-1)
    words = flat.view(f"u{flat.itemsize}").tolist()
    total = 0
    for i, w in enumerate(words):
        x = (w + i * STEP) & MASK
        x ^= x >> 29
        x = (x * MUL) & MASK
        total = (total + (x ^ (x >> 32))) & MASK
    return f"fp1:{total:016x}"
