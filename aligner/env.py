"""Framework environment, set once before Jittor is imported.

Every module of the aligner that imports jittor imports this module first (``import aligner.env``), so
the user never has to export anything. The settings themselves belong to the Jittor port
(:mod:`jittor_impl.env`: nvcc_path, oneDNN / use_mkl, log level), which applies them when imported;
this module re-exports its functions for the aligner's setup script and the doctor.
"""
from __future__ import annotations

from jittor_impl.env import (ONEDNN_DIR, SLOW_WARNING, configure, link_system_onednn, onednn_linked,
                             system_onednn_library)

__all__ = ["ONEDNN_DIR", "SLOW_WARNING", "system_onednn_library", "onednn_linked", "link_system_onednn",
           "configure"]
