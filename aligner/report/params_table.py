"""Parameter inventory table (torchinfo-like) for ``aligner params MODEL``.

Duck-typed on a torch-style module (``named_modules``, ``parameters``, ``buffers``): no framework
import here. Each row counts its subtree with every tensor object once (tied weights), and the totals
come from the root, never from summing rows (torchinfo #322/#377).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from aligner.report.i18n import translator

__all__ = ["ParamRow", "module_rows", "totals", "format_table"]


@dataclass(frozen=True)
class ParamRow:
    name: str
    type: str
    depth: int
    trainable: int
    frozen: int
    buffers: int
    tensors: int


def _count(module: Any) -> tuple[int, int, int, int]:
    trainable = frozen = tensors = 0
    seen: set[int] = set()
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        tensors += 1
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    bufs = {id(b): b for b in module.buffers()}
    return trainable, frozen, sum(b.numel() for b in bufs.values()), tensors


def module_rows(model: Any, max_depth: int = 2) -> list[ParamRow]:
    """One row per module down to ``max_depth`` (root = depth 0), in definition order."""
    rows = []
    for name, mod in model.named_modules():
        depth = 0 if not name else name.count(".") + 1
        if depth > max_depth:
            continue
        rows.append(ParamRow(name or "(model)", type(mod).__name__, depth, *_count(mod)))
    return rows


def totals(model: Any) -> ParamRow:
    """Counts of the whole model from the root."""
    return ParamRow("(total)", type(model).__name__, 0, *_count(model))


def format_table(rows: Sequence[ParamRow], total: ParamRow, *, lang: str = "en") -> str:
    """Fixed-width text table plus the totals block."""
    t = translator(lang)
    head = (t("module"), t("col_type"), t("trainable"), t("param_frozen"), t("buffers"))
    body = [("  " * r.depth + r.name.rpartition(".")[2] if r.depth > 1 else r.name, r.type, f"{r.trainable:,}",
             f"{r.frozen:,}", f"{r.buffers:,}") for r in rows]
    widths = [max(len(str(x[i])) for x in (head, *body)) for i in range(5)]
    sep = "-" * (sum(widths) + 8)
    fmt = lambda x: "  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w)  # noqa: E731
                              for i, (v, w) in enumerate(zip(x, widths)))
    lines = [sep, fmt(head), sep, *map(fmt, body), sep,
             f"{t('params_total')}: {total.trainable + total.frozen:,} ({total.tensors} {t('tensors')})",
             f"{t('trainable').capitalize()}: {total.trainable:,}",
             f"{t('param_frozen').capitalize()}: {total.frozen:,}",
             f"{t('buffers').capitalize()}: {total.buffers:,}", sep]
    return "\n".join(lines)
