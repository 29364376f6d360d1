"""English and Chinese labels and message templates for the report, summary, CLI and fix log.

The texts live in ``labels.toml`` beside this module.

Tables are read-only mappings (``MappingProxyType``); :func:`translator` returns a lookup bound to a
language that falls back to English, then to the key itself, so a missing label never breaks a report.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

LANGS = ("en", "zh")

_DATA = tomllib.loads((Path(__file__).with_name("labels.toml")).read_text(encoding="utf-8"))
_EN: dict[str, str] = _DATA["labels"]["en"]
_ZH: dict[str, str] = _DATA["labels"]["zh"]
# Finding type names (FindingType values) for headings and filters.
_TYPES_EN: dict[str, str] = _DATA["types"]["en"]
_TYPES_ZH: dict[str, str] = _DATA["types"]["zh"]

TABLES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {"en": MappingProxyType(_EN), "zh": MappingProxyType(_ZH)})
TYPE_NAMES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {"en": MappingProxyType(_TYPES_EN), "zh": MappingProxyType(_TYPES_ZH)})


def check_lang(lang: str) -> str:
    """Return ``lang`` if supported, else raise ValueError."""
    if lang not in LANGS:
        raise ValueError(f"unsupported language {lang!r}; choose one of {', '.join(LANGS)}")
    return lang


def translator(lang: str) -> Callable[..., str]:
    """``t(key, **fields)`` for ``lang``: label lookup with English fallback, then str.format."""
    table = TABLES[check_lang(lang)]

    def t(key: str, **fields: Any) -> str:
        text = table.get(key) or TABLES["en"].get(key) or key
        return text.format(**fields) if fields else text

    return t


def type_name(ftype: str, lang: str) -> str:
    """Human name of a finding type in ``lang`` (the raw value when unknown)."""
    return TYPE_NAMES[check_lang(lang)].get(ftype) or TYPE_NAMES["en"].get(ftype) or ftype


def state_label(state: str, lang: str) -> str:
    """A model state in ``lang``: "init" -> 初始化, "perturbed/step2" -> 扰动/第 2 步; unknown names stay."""
    t = translator(lang)
    base, sep, rest = state.partition("/")
    label = t(f"st_{base}")
    if rest.startswith("step") and rest[4:].isdigit():
        rest = t("step_n", n=rest[4:])
    return (label if label != f"st_{base}" else base) + sep + rest


def localized(item: Mapping[str, Any], field: str, lang: str) -> str:
    """``item[field + '_zh']`` for zh when present and non-empty, else ``item[field]``."""
    if lang == "zh":
        zh = item.get(f"{field}_zh")
        if zh:
            return str(zh)
    return str(item.get(field) or "")
