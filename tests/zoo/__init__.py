"""A zoo of small PyTorch models and their Jittor ports, correct and with planted faults.

Each pair is written independently in both frameworks with the same attribute paths, so the aligner
matches it by name; ``benchmarks/zoo.py`` aligns every pair and fault and tabulates the verdicts.
"""
from .catalogue import (FAULTS, PAIRS, ZooFault, ZooPair, align_cell, build, get_fault, get_pair,
                        location_matches)

__all__ = ["FAULTS", "PAIRS", "ZooFault", "ZooPair", "align_cell", "build", "get_fault", "get_pair",
           "location_matches"]
