"""Shared access to the golden references in `../shared/golden` (next to the project root).

* `load_golden_n()`: the official GOLD-YOLO-N (nc 20, DFL 16, 500x500, batch 2) arrays, `data.npz`.
* `golden_n_model(perturbed)`: the reference N model with `sd/*` (and optionally `perturb/*`) loaded.
* `load_formula(size)`: `(keys.json, data.npz)` of the S/M/L formula references (320x320, batch 1).
* `formula_model(size)`: the reference S/M/L model with the formula state_dict loaded.

Tests that need the data call `require_golden()` first, which skips (never passes) when it is absent.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from golden_formula import formula_state_dict

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN_N_DIR = SHARED / "golden" / "gold_yolo_n_nc20_dfl_500"
FORMULA_DIR = SHARED / "golden" / "formula_320"
FORMULA_SIZES = ("s", "m", "l")


def require_golden(path: Path = GOLDEN_N_DIR) -> None:
    """Skip the calling test when a golden folder is missing (a skip is reported, not counted as a pass)."""
    if not path.is_dir():
        pytest.skip(f"golden data not found at {path}")


def scalar_rel(a: float, ref: float) -> float:
    """|a - ref| / |ref| for scalars (losses, loss items)."""
    return abs(float(a) - float(ref)) / abs(float(ref))


def norm_rel(a: np.ndarray, ref: np.ndarray) -> float:
    """||a - ref|| / ||ref|| in float64 (the golden READMEs' gradient measure)."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - ref) / np.linalg.norm(np.asarray(ref, np.float64)))


def check_pert64_loss(loss: float, items: Any, gold: Any, manifest: dict[str, Any]) -> tuple[list[str], set[str]]:
    """The float64 perturbed step's loss and loss items against the golden ones (<= 1e-6 relative; measured
    1.8e-16 for the reference). Returns the 365 gradient names the golden data stores and those of them its
    manifest calls mathematically zero."""
    assert scalar_rel(loss, gold["pert64/loss/total"]) <= 1e-6
    for got, ref in zip(items, gold["pert64/loss/items"]):
        assert scalar_rel(got, ref) <= 1e-6
    stored = [k[len("pert64/grad/"):] for k in gold.files if k.startswith("pert64/grad/")]
    assert len(stored) == 365
    return stored, set(manifest["grad_pert_accuracy"]["mathematically_zero"]["names"])


def check_float64_gradnorms(norms: dict[str, float], data: Any, float32_vs_float64: dict[str, Any]) -> list[float]:
    """Float64 gradient norms against the golden ones (``f64/gradnorm/*``), class by class as the manifest's
    ``float32_vs_float64`` section sorts them: exactly zero in both; mathematically zero (the manifest's own
    criterion: float64 norm < 1e-6 x the float32 norm); every other one within 1e-6 relative. Returns the
    relative errors of the last class."""
    exact_zero = set(float32_vs_float64["exactly_zero_gradients"]["names"])
    math_zero = set(float32_vs_float64["mathematically_zero"]["names"])
    rels = []
    for name, got in norms.items():
        ref = float(data[f"f64/gradnorm/{name}"])
        if name in exact_zero:
            assert got == 0.0 and ref == 0.0, name
        elif name in math_zero:
            assert got < 1e-6 * float(data[f"gradnorm/{name}"]), name
        else:
            rels.append(scalar_rel(got, ref))
            assert rels[-1] <= 1e-6, (name, rels[-1])
    return rels


def max_rel(a: np.ndarray | torch.Tensor, ref: np.ndarray) -> float:
    """max|a - ref| / max|ref| (the golden READMEs' measure)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(np.asarray(a, dtype=np.float64) - ref).max() / np.abs(ref).max())


def load_golden_n() -> np.lib.npyio.NpzFile:
    """The N reference arrays (lazy: each array is decompressed on access)."""
    require_golden(GOLDEN_N_DIR)
    return np.load(GOLDEN_N_DIR / "data.npz", allow_pickle=False)


def load_golden_n_manifest() -> dict[str, Any]:
    require_golden(GOLDEN_N_DIR)
    return json.loads((GOLDEN_N_DIR / "manifest.json").read_text())


def golden_n_state_dict(data: np.lib.npyio.NpzFile, perturbed: bool = False) -> dict[str, torch.Tensor]:
    """`sd/*` as tensors (official key order), with `perturb/*` applied when `perturbed`."""
    sd = {k[3:]: torch.from_numpy(data[k]) for k in data.files if k.startswith("sd/")}
    if perturbed:
        for k in data.files:
            if k.startswith("perturb/"):
                sd[k[len("perturb/"):]] = torch.from_numpy(data[k])
    return sd


def golden_n_model(data: np.lib.npyio.NpzFile, perturbed: bool = False) -> torch.nn.Module:
    """Reference N as the golden run built it (nc 20, DFL 16, drop_path 0), golden weights loaded strictly."""
    from reference_torch.model import build_model

    torch.manual_seed(0)
    model = build_model("gold_yolo-n", num_classes=20, use_dfl=True, reg_max=16, drop_path_rate=0.0)
    model.load_state_dict(golden_n_state_dict(data, perturbed), strict=True)
    return model


def load_formula(size: str) -> tuple[dict[str, Any], np.lib.npyio.NpzFile]:
    """`(keys.json, data.npz)` of `formula_320/gold_yolo_<size>`."""
    folder = FORMULA_DIR / f"gold_yolo_{size}"
    require_golden(folder)
    keys = json.loads((folder / "keys.json").read_text())
    return keys, np.load(folder / "data.npz", allow_pickle=False)


def formula_tensors(keys_json: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in formula_state_dict(keys_json).items()}


def formula_model(size: str, keys_json: dict[str, Any] | None = None) -> torch.nn.Module:
    """Reference S/M/L (80 classes, shipped head settings, drop_path 0) with the formula weights, float32."""
    from reference_torch.model import build_model

    if keys_json is None:
        keys_json = load_formula(size)[0]
    torch.manual_seed(0)
    model = build_model(f"gold_yolo-{size}", num_classes=80, drop_path_rate=0.0)
    model.load_state_dict(formula_tensors(keys_json), strict=True)
    return model
