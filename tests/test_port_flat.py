"""A user's own GOLD-YOLO-N port in a flat layout (tests/ports/flat_port: one Sequential of index-named stages, fused
helpers instead of small modules, a dict output and its own loss behind a --port-loss adapter), aligned through the
CLI.

The correct port must pass with no error finding. With every planted deviation on at once, each must be named at
its reference module with the expected finding type, and no error finding may point anywhere
else; locating the deviations behind the first forward divergence needs module isolation (reference inputs
fed to each port module).
"""
from __future__ import annotations

from pathlib import Path

from ports.harness import ROOT, errors, run_port, unexplained

PORT_DIR = ROOT / "tests" / "ports" / "flat_port"
IMG_SIZE = 100  # maps 13/7/4: the bottom-up pools (13 -> 7, 7 -> 4) are not divisible, so pool_size shows

# (planted deviation, finding type, reference location) — every one must be reported as an error
EXPECTED = [
    ("bn_momentum", "mode_mismatch", "backbone"),
    ("no_residual", "module_deviation", "backbone.ERBlock_3.1.conv1"),
    ("pool_size", "module_deviation", "neck.LAF_n4"),
    ("pool_size", "module_deviation", "neck.LAF_n5"),
    ("head_act", "module_deviation", "detect.stems.0"),
    ("head_act", "module_deviation", "detect.stems.1"),
    ("head_act", "module_deviation", "detect.stems.2"),
    ("vfl_weight", "loss_divergence", "loss"),
    ("assigner_batch", "assigner_mismatch", "assigner"),
]
DEVIATIONS = sorted({name for name, _, _ in EXPECTED})



def _run(out: Path, deviations: list[str]) -> list[dict]:
    # one state keeps it short: "perturbed" has non-zero prediction convs, so gradients reach every module
    return run_port(out, img_size=IMG_SIZE, port=f"{PORT_DIR / 'gold_yolo_flat.py'}:build",
                    map_file=PORT_DIR / "map.json", port_args={"deviations": deviations, "output": "dict"},
                    port_loss=f"{PORT_DIR / 'loss_adapter.py'}:build_loss",
                    port_loss_args={"num_classes": 20, "img_size": IMG_SIZE, "deviations": deviations},
                    extra=("--state", "perturbed"))


def test_correct_flat_port_has_no_error(tmp_path: Path) -> None:
    findings = _run(tmp_path / "clean", [])
    assert not errors(findings), errors(findings)
    assert not [f for f in findings if f["type"] in ("weight_transfer", "missing_parameter", "extra_parameter")]


def test_every_planted_deviation_is_named_at_its_module(tmp_path: Path) -> None:
    findings = _run(tmp_path / "all", DEVIATIONS)
    missing, stray = unexplained(errors(findings), EXPECTED)
    assert not missing, f"not reported: {missing}; errors: {errors(findings)}"
    assert not stray, stray
