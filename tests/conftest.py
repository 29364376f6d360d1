"""Fixtures of the golden GOLD-YOLO-N data, shared by the tests of both ports (loaded once per test module).

``golden`` (tests/golden.py) imports torch, so it is imported inside the fixtures: tests that use none of them
load no framework through this file.
"""
from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True, scope="session")
def _reference_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Reference traces cached by the runs of this session go to a temporary directory, never the user's
    ``~/.cache`` (the CLI subprocesses inherit the variable)."""
    import os
    os.environ["ALIGNER_CACHE_DIR"] = str(tmp_path_factory.mktemp("reference-cache"))


@pytest.fixture(scope="module")
def gold() -> Any:
    """The golden arrays of the N reference (``gold_yolo_n_nc20_dfl_500``)."""
    from golden import load_golden_n
    return load_golden_n()


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    """The golden run's manifest (recipe, tolerances, counts)."""
    from golden import load_golden_n_manifest
    return load_golden_n_manifest()


@pytest.fixture(scope="module")
def gold_atss() -> Any:
    """The ATSS (warm-up assigner) arrays of the same golden run."""
    import numpy as np
    from golden import GOLDEN_N_DIR, require_golden
    require_golden(GOLDEN_N_DIR)
    return np.load(GOLDEN_N_DIR / "atss.npz", allow_pickle=False)
