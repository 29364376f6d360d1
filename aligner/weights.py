"""Weight transfer torch -> Jittor by name, verified tensor by tensor.

Jittor's own ``load_state_dict`` never raises: missing keys keep their random init silently and bad
shapes are only logged (docs/jittor-notes.md, "Saving and loading weights"). Here every problem is returned as a
:class:`~aligner.records.WeightProblem` (the analysis turns them into ``weight_transfer`` findings),
and every loaded tensor is read back and compared. Framework access goes through the adapters.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from .match import rename
from .records import TORCH_ONLY, WeightProblem, WeightProblemKind

__all__ = ["DEFAULT_IGNORE", "compare_state", "transfer_arrays", "jittor_name", "untransferred_modules"]

# torch-only bookkeeping Jittor has no counterpart for (docs/jittor-notes.md, "Names, parameters and buffers")
DEFAULT_IGNORE: tuple[str, ...] = TORCH_ONLY
# machine epsilon by float size (np.finfo warns about subnormals once torch/jittor set flush-to-zero)
_EPS = {2: 2.0 ** -10, 4: 2.0 ** -23, 8: 2.0 ** -52}


def _ignored(name: str, ignore: Iterable[str]) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return any(leaf == pat or name == pat for pat in ignore)


def jittor_name(name: str, name_map: Mapping[str, str]) -> str:
    """The Jittor name of torch tensor ``name``: renamed by the longest map key equal to it or a dotted
    prefix of it (a module key renames its whole subtree), else unchanged."""
    return (rename(name, name_map) or name) if name_map else name


def compare_state(src: dict[str, np.ndarray], dst: dict[str, np.ndarray], *,
                  name_map: Mapping[str, str] | None = None, ignore: Iterable[str] = DEFAULT_IGNORE,
                  optional: Iterable[str] = ()) -> list[WeightProblem]:
    """Pure check that ``dst`` (Jittor names) holds ``src`` (torch names) exactly.

    ``optional`` torch names (plain tensor constants) may be absent on the Jittor side.
    """
    ignore, optional = tuple(ignore), set(optional)
    name_map = name_map or {}
    problems: list[WeightProblem] = []
    mapped: set[str] = set()
    for name, a in src.items():
        if _ignored(name, ignore):
            continue
        jname = jittor_name(name, name_map)
        mapped.add(jname)
        if jname not in dst:
            if name not in optional:
                problems.append(WeightProblem(WeightProblemKind.MISSING, name, jname, tuple(a.shape), None,
                                              str(a.dtype), None, None,
                                              f"{name}: no Jittor tensor {jname!r}; it was not transferred"))
            continue
        b = dst[jname]
        if tuple(a.shape) != tuple(b.shape):
            problems.append(WeightProblem(WeightProblemKind.SHAPE, name, jname, tuple(a.shape), tuple(b.shape),
                                          str(a.dtype), str(b.dtype), None,
                                          f"{name}: torch shape {list(a.shape)} vs Jittor {list(b.shape)}"))
            continue
        if a.dtype != b.dtype and not (a.dtype.kind in "iu" and b.dtype.kind in "iu"):
            problems.append(WeightProblem(WeightProblemKind.DTYPE, name, jname, tuple(a.shape), tuple(b.shape),
                                          str(a.dtype), str(b.dtype), None,
                                          f"{name}: torch {a.dtype} became Jittor {b.dtype}"))
        diff = _max_abs(a, b)
        exact = a.dtype == b.dtype
        # same dtype must be bit-exact; a dtype change may round to the narrower type only
        tol = 0.0
        if not exact and b.dtype.kind == "f" and a.size:
            tol = _EPS.get(b.dtype.itemsize, 2.0 ** -10) * float(np.abs(a.astype(np.float64)).max())
        if diff is None or diff > tol:
            problems.append(WeightProblem(WeightProblemKind.VALUE, name, jname, tuple(a.shape), tuple(b.shape),
                                          str(a.dtype), str(b.dtype), diff,
                                          f"{name}: Jittor values differ after the load (max |diff| {diff})"))
    for jname in dst:
        if jname not in mapped and not _ignored(jname, ignore):
            b = dst[jname]
            problems.append(WeightProblem(WeightProblemKind.EXTRA, jname, jname, None, tuple(b.shape), None,
                                          str(b.dtype), None,
                                          f"{jname}: Jittor tensor without a torch source keeps its own init"))
    return problems


def _max_abs(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.size == 0:
        return 0.0
    d = np.abs(a.astype(np.float64) - np.asarray(b).astype(np.float64))
    if np.isnan(d).any():
        same_nan = np.isnan(a.astype(np.float64)) & np.isnan(np.asarray(b).astype(np.float64))
        if not np.array_equal(np.isnan(d), same_nan):
            return None
        d = np.where(same_nan, 0.0, d)
    return float(d.max())


def transfer_arrays(src: dict[str, np.ndarray], dst_adapter: Any, dst_model: Any, *,
                    name_map: Mapping[str, str] | None = None, ignore: Iterable[str] = DEFAULT_IGNORE,
                    optional: Iterable[str] = ()) -> list[WeightProblem]:
    """Load ``src`` (torch names -> arrays) into ``dst_model`` in place, then verify every tensor."""
    ignore, name_map = tuple(ignore), name_map or {}
    before = dst_adapter.state_arrays(dst_model)
    load: dict[str, np.ndarray] = {}
    for name, a in src.items():
        jname = jittor_name(name, name_map)
        if not _ignored(name, ignore) and jname in before and tuple(before[jname].shape) == tuple(a.shape):
            load[jname] = a
    dst_adapter.load_arrays(dst_model, load)
    return compare_state(src, dst_adapter.state_arrays(dst_model), name_map=name_map, ignore=ignore,
                         optional=optional)


# problems after which a Jittor tensor holds no torch values (DTYPE: loaded, only the dtype differs)
_NOT_LOADED = (WeightProblemKind.EXTRA, WeightProblemKind.SHAPE, WeightProblemKind.VALUE)


def untransferred_modules(problems: Iterable[WeightProblem], jittor_names: Iterable[str]) -> list[str]:
    """Jittor modules none of whose tensors received torch values, highest such module only, in model order.

    ``jittor_names`` are all the Jittor model's tensor names (model order). A module whose every tensor is
    extra, of another shape or failed to load keeps its own initialisation as a whole; its submodules are
    not listed again. Tensors directly at the root count towards no module.
    """
    names = list(jittor_names)
    bad = {p.jittor_name for p in problems if p.kind in _NOT_LOADED and p.jittor_name}
    all_bad: dict[str, bool] = {}
    first: dict[str, int] = {}
    for i, n in enumerate(names):
        parts = n.split(".")[:-1]
        for k in range(1, len(parts) + 1):
            m = ".".join(parts[:k])
            all_bad[m] = all_bad.get(m, True) and n in bad
            first.setdefault(m, i)
    out = [m for m, b in all_bad.items() if b and not all_bad.get(m.rpartition(".")[0], False)]
    return sorted(out, key=lambda m: first[m])
