"""Seeded inputs and targets for the zoo (numpy only, shared by both frameworks)."""
from __future__ import annotations

import numpy as np

BATCH = 2
NUM_GT = 3  # ground-truth boxes per image of the detection pair


def image(size: int, seed: int, batch: int = BATCH) -> np.ndarray:
    """(batch, 3, size, size) float32 image, U[0, 1) from ``default_rng(seed)``."""
    return np.random.default_rng(seed).random((batch, 3, size, size), dtype=np.float32)


def det_targets(num_classes: int, seed: int, batch: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth of the detection pair: boxes (B, G, 4) as normalised (cx, cy, w, h), one-hot labels (B, G, C)."""
    rng = np.random.default_rng([seed, 1])
    centre = rng.uniform(0.1, 0.9, (batch, NUM_GT, 2))
    wh = rng.uniform(0.1, 0.4, (batch, NUM_GT, 2))
    labels = rng.integers(0, num_classes, (batch, NUM_GT))
    return (np.concatenate([centre, wh], -1).astype(np.float32),
            np.eye(num_classes, dtype=np.float32)[labels])


def anchor_centres(h: int, w: int) -> np.ndarray:
    """Normalised (x, y) centres of an h x w grid, row-major (the flatten order of an NCHW map)."""
    ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], 1)
