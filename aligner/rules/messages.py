"""English and Chinese text of every generic finding, as templates keyed by (finding type, variant).

The text is data, in ``messages.toml`` next to this module (one table per finding type; its keys are the
default variant ``""``, its sub-tables the other variants). Rule code passes values only; :func:`render`
fills a template into the keyword arguments of a :class:`~aligner.analysis_records.Finding` (``message``,
``message_zh``, ``likely_cause``, ``likely_cause_zh``; a variant may set only some of them). Values are
formatted with ``str.format``. A pair keeps its own text in the same form (:func:`load_templates`). The
report's own labels are in :mod:`aligner.report.i18n`.
"""
from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib.resources import files
from types import MappingProxyType
from typing import Any, NamedTuple

from aligner.records import FindingType

__all__ = ["Text", "Templates", "TEMPLATES", "PHRASES", "load_templates", "render", "phrase"]


class Text(NamedTuple):
    """One variant's text; an empty field is left to another variant (a message and its cause)."""
    message: str = ""
    message_zh: str = ""
    likely_cause: str = ""
    likely_cause_zh: str = ""


Templates = Mapping[tuple[FindingType, str], Text]


def load_templates(package: str, resource: str) -> tuple[Templates, Mapping[str, tuple[str, str]]]:
    """(templates, phrases) of a TOML resource of ``package``: ``[<type>]`` / ``[<type>.<variant>]``
    tables of :class:`Text` fields, and ``[phrases]``: ``key = [en, zh]``."""
    doc = tomllib.loads(files(package).joinpath(resource).read_text(encoding="utf-8"))
    phrases = {k: (str(v[0]), str(v[1])) for k, v in doc.pop("phrases", {}).items()}
    templates: dict[tuple[FindingType, str], Text] = {}
    for ftype, table in doc.items():
        own = {k: v for k, v in table.items() if isinstance(v, str)}
        if own:
            templates[(FindingType(ftype), "")] = Text(**own)
        for variant, sub in table.items():
            if isinstance(sub, dict):
                templates[(FindingType(ftype), variant)] = Text(**sub)
    return MappingProxyType(templates), MappingProxyType(phrases)


TEMPLATES, PHRASES = load_templates(__package__ or "aligner.rules", "messages.toml")


def render(ftype: FindingType, variant: str = "", templates: Templates = TEMPLATES, **values: Any) -> dict[str, str]:
    """The filled, non-empty fields of one template, as ``Finding`` keyword arguments."""
    text = templates[(ftype, variant)]
    return {k: v.format(**values) for k, v in text._asdict().items() if v}


def phrase(key: str) -> tuple[str, str]:
    """(en, zh) of a short phrase."""
    return PHRASES[key]
