"""A catalogue of realistic PyTorch-to-Jittor porting faults and the aligner's measured detection rate.

Each fault is a small, named variant applied to the correct ``jittor_impl`` at run time (a monkeypatch
inside a context manager that always restores the original), with the finding type and location the
aligner should report. ``python -m aligner.faults.run`` runs the catalogue and writes the table.
"""
from __future__ import annotations

from .catalogue import FAST_SUBSET, Fault, catalogue, get_fault, location_matches

__all__ = ["FAST_SUBSET", "Fault", "catalogue", "get_fault", "location_matches"]
