"""A user's own GOLD-YOLO-N port as a multi-file package (tests/ports/nested_port: body/fpn/heads, conv cells one
wrapper level deeper, its own batch norm, outputs as (scores, distri, stems, fpn maps) and its own loss signature
behind a --port-loss adapter), aligned through the CLI.

The correct port must pass with no error finding. With every planted deviation on at once, each must be named at
its module with the expected finding type, and no error finding may point anywhere else.
All but the first deviation sit behind the first forward divergence, so naming them needs module isolation (the
reference's own inputs fed to each port module) and the port's own loss.
"""
from __future__ import annotations

from pathlib import Path

from ports.harness import ROOT, errors, run_port, unexplained

PORT_DIR = ROOT / "tests" / "ports" / "nested_port"
IMG_SIZE = 128

# (planted deviation, finding type, location) — every one must be reported as an error. Locations are reference
# module names, except for a tensor only the port has, which is named where it lives in the port.
EXPECTED = [
    ("stem_bn_eps", "mode_mismatch", "backbone.stem.rbr_dense.bn"),
    ("stem_bn_eps", "module_deviation", "backbone.stem.rbr_dense.bn"),
    ("neck_act", "module_deviation", "neck.Rep_p3.block.0"),
    ("attn_scale", "module_deviation", "neck.high_IFM.transformer_blocks.0.attn"),
    ("head_stem_bias", "extra_parameter", "heads.levels.1.stem.block.conv"),
    ("head_stem_bias", "param_count_drift", "detect.stems.1.conv"),
    ("head_stem_bias", "module_deviation", "detect.stems.1.conv"),
    ("loss_iou_weight", "loss_divergence", "loss"),
    ("loss_iou_weight", "loss_divergence", "loss.iou"),
    ("assigner_topk", "assigner_mismatch", "assigner"),
]
# Errors allowed exactly here besides the planted places and what lies below them: the extra bias's parameter
# count drift rolled up to the head.
ALSO_ALLOWED = [("param_count_drift", "detect")]
DEVIATIONS = sorted({name for name, _, _ in EXPECTED})



def _run(out: Path, deviations: list[str], *extra: str) -> list[dict]:
    return run_port(out, img_size=IMG_SIZE, port=f"{PORT_DIR / 'model.py'}:build", map_file=PORT_DIR / "map.json",
                    port_args={"deviations": deviations}, port_loss=f"{PORT_DIR / 'adapter.py'}:build_loss",
                    port_loss_args={"deviations": deviations, "num_classes": 20, "img_size": IMG_SIZE},
                    extra=("--state", "perturbed", *extra))


def test_correct_nested_port_has_no_error(tmp_path: Path) -> None:
    # isolation always: every module of a correct port replayed must not deviate (by default a state that
    # matches end to end is not replayed)
    findings = _run(tmp_path / "clean", [], "--isolate", "always")
    assert not errors(findings), errors(findings)
    assert not [f for f in findings if f["type"] in ("weight_transfer", "missing_parameter", "extra_parameter")]


def test_every_planted_deviation_is_named_at_its_module(tmp_path: Path) -> None:
    findings = _run(tmp_path / "all", DEVIATIONS)
    missing, stray = unexplained(errors(findings), EXPECTED, ALSO_ALLOWED)
    assert not missing, f"not reported: {missing}; errors: {errors(findings)}"
    assert not stray, stray
