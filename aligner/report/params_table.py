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


# BatchNorm's step counters: buffers, but not state a port must reproduce; results.json leaves them out.
COUNTER_BUFFER = "num_batches_tracked"


@dataclass(frozen=True)
class ParamRow:
    name: str
    type: str
    depth: int
    trainable: int
    frozen: int
    buffers: int            # elements, BN step counters left out (as in the report)
    tensors: int
    trainable_tensors: int = 0
    counters: int = 0       # num_batches_tracked buffers


def _count(module: Any) -> tuple[int, int, int, int, int, int]:
    trainable = frozen = tensors = trainable_tensors = 0
    seen: set[int] = set()
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        tensors += 1
        if p.requires_grad:
            trainable += p.numel()
            trainable_tensors += 1
        else:
            frozen += p.numel()
    bufs = {id(b): (n, b) for n, b in module.named_buffers()}
    counters = [b for n, b in bufs.values() if n.rpartition(".")[2] == COUNTER_BUFFER]
    elements = sum(b.numel() for _, b in bufs.values()) - sum(b.numel() for b in counters)
    return trainable, frozen, elements, tensors, trainable_tensors, len(counters)


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
             f"{t('trainable').capitalize()}: {total.trainable:,} ({total.trainable_tensors} {t('tensors')})",
             f"{t('param_frozen').capitalize()}: {total.frozen:,} ({total.tensors - total.trainable_tensors} "
             f"{t('tensors')})",
             f"{t('buffers').capitalize()}: {total.buffers:,}"
             + (f" ({t('params_counters', n=total.counters)})" if total.counters else ""), sep]
    return "\n".join(lines)
