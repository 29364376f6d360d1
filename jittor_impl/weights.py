"""Load a PyTorch GOLD-YOLO state_dict into the Jittor port, strictly, in place, and verify it.

Jittor's own `load_state_dict` never raises: missing keys keep their random init silently, unknown keys and
shape mismatches are only logged. `load_torch_state_dict` instead checks the whole key set first and raises
`StateDictMismatchError` (listing every missing key, unexpected key and shape mismatch) before writing
anything. Loading writes every value into the existing Var objects (so an optimizer built earlier stays valid),
in the model's own dtype (a float64 model stays float64), and keeps each Var's stop_grad state. Afterwards every
tensor is read back and compared with its source.

Torch's `num_batches_tracked` has no Jittor counterpart and is ignored (reported in the summary).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import jittor_impl.env  # noqa: F401  (must precede the jittor import)
import jittor as jt

IGNORED_SUFFIXES = ("num_batches_tracked",)


class StateDictMismatchError(ValueError):
    """The state_dict does not fit the model; nothing was loaded.

    Attributes: `missing` (model keys absent from the state_dict), `unexpected` (state_dict keys the model does
    not have), `shape_mismatches` (list of `(key, model_shape, state_dict_shape)`).
    """

    def __init__(self, missing: list[str], unexpected: list[str],
                 shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> None:
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.shape_mismatches = list(shape_mismatches)
        super().__init__(self._message())

    def _message(self) -> str:
        lines = ["state_dict does not match the model (nothing was loaded):"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        for key, want, got in self.shape_mismatches:
            lines.append(f"  shape mismatch for {key}: model {list(want)}, state_dict {list(got)}")
        return "\n".join(lines)


class WeightVerificationError(RuntimeError):
    """A tensor read back after loading differs from its source (or changed dtype / stop_grad state)."""


def _to_numpy(value: Any) -> np.ndarray:
    """torch.Tensor / jt.Var / numpy / list -> numpy, without importing torch here."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, jt.Var):
        return value.numpy()
    if type(value).__module__.startswith("torch"):
        t = value.detach().cpu()
        try:
            return t.numpy()
        except TypeError:  # bfloat16 and friends have no numpy dtype
            return t.float().numpy()
    return np.asarray(value)


def _read_path(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """State dict from a file: .npz (numpy), .pt/.pth/.bin (torch.load weights_only, else jt.load), other: jt.load."""
    p = Path(path)
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if p.suffix in (".pt", ".pth", ".bin"):
        try:
            import torch
        except ImportError:  # jt.load parses torch zip checkpoints without torch
            return jt.load(str(p))
        return torch.load(str(p), map_location="cpu", weights_only=True)
    return jt.load(str(p))


def _as_state_dict(source: Any) -> dict[str, np.ndarray]:
    """Normalise any accepted source to {key: numpy array}; unwraps {'model': sd} / {'state_dict': sd}."""
    if isinstance(source, (str, os.PathLike)):
        source = _read_path(source)
    if not isinstance(source, Mapping):
        raise TypeError(f"expected a state_dict mapping or a path, got {type(source).__name__}")
    for wrapper in ("state_dict", "model"):
        inner = source.get(wrapper)
        if isinstance(inner, Mapping) and len(source) <= 8:
            source = inner
            break
    out = {}
    for key, value in source.items():
        if not isinstance(key, str):
            raise TypeError(f"state_dict keys must be strings, got {key!r}")
        out[key] = _to_numpy(value)
    return out


def _ignored(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in IGNORED_SUFFIXES


def load_torch_state_dict(model: jt.Module, state_dict: Any) -> dict[str, Any]:
    """Load `state_dict` (torch state_dict, path, or {key: numpy array}) into `model` strictly and in place.

    Raises `StateDictMismatchError` on any missing / unexpected key or shape mismatch (before writing anything),
    and `WeightVerificationError` if a value read back differs from its source cast to the model's dtype.
    Returns a summary: `loaded` (tensor count), `numel`, `ignored` / `ignored_keys` (num_batches_tracked), `dtypes`
    (model dtype -> count), `max_abs_diff` (over all re-read tensors; 0.0 when exact), `verified` (count).
    """
    source = _as_state_dict(state_dict)
    ignored = sorted(k for k in source if _ignored(k))
    source = {k: v for k, v in source.items() if not _ignored(k)}
    targets: dict[str, jt.Var] = dict(model.state_dict())

    missing = [k for k in targets if k not in source]
    unexpected = [k for k in source if k not in targets]
    shape_mismatches = [(k, tuple(targets[k].shape), tuple(source[k].shape)) for k in targets
                        if k in source and tuple(targets[k].shape) != tuple(source[k].shape)]
    if missing or unexpected or shape_mismatches:
        raise StateDictMismatchError(missing, unexpected, shape_mismatches)

    expected: dict[str, np.ndarray] = {}
    before = {k: (str(v.dtype), v.is_stop_grad()) for k, v in targets.items()}
    for key, var in targets.items():
        dtype = before[key][0]
        value = np.ascontiguousarray(source[key]).astype(dtype, copy=False)
        expected[key] = value
        # update() writes into the same Var (optimizers keep working); jt.array(..., dtype) keeps float64
        # (a bare jt.array would turn float64 into float32)
        var.update(jt.array(value, dtype))
    jt.sync_all()
    return _verify(targets, expected, before, ignored)


def _verify(targets: dict[str, jt.Var], expected: dict[str, np.ndarray],
            before: dict[str, tuple[str, bool]], ignored: list[str]) -> dict[str, Any]:
    """Re-read every tensor and compare with its source; check dtype and stop_grad state were kept."""
    max_abs = 0.0
    bad: list[str] = []
    dtypes: dict[str, int] = {}
    numel = 0
    for key, var in targets.items():
        dtype, stopped = before[key]
        got = var.numpy()
        if str(var.dtype) != dtype or var.is_stop_grad() != stopped:
            bad.append(f"{key}: dtype/stop_grad changed ({dtype}, {stopped}) -> ({var.dtype}, {var.is_stop_grad()})")
            continue
        diff = float(np.abs(got.astype(np.float64) - expected[key].astype(np.float64)).max()) if got.size else 0.0
        if not diff == 0.0:  # also catches NaN
            bad.append(f"{key}: max abs diff {diff}")
        max_abs = max(max_abs, diff) if diff == diff else float("nan")
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
        numel += got.size
    if bad:
        raise WeightVerificationError("weights differ after loading:\n  " + "\n  ".join(bad))
    return {"loaded": len(targets), "verified": len(targets), "numel": numel, "ignored": len(ignored),
            "ignored_keys": ignored, "dtypes": dtypes, "max_abs_diff": max_abs}
