"""Port "C" of GOLD-YOLO-N (tests/ports/gd_port): registries of modules, its own attention and RepVGG units, a list
output [stem_feats, scores, distri] and its own criterion behind a --port-loss adapter, aligned through the CLI.

The correct port must give no error finding. With every planted deviation on at once, each must be named with its
finding type at its reference module, and no error finding may point anywhere else.
Finding the deviations that sit behind the first forward divergence needs module isolation (each port module fed
the reference's own inputs).
"""
from __future__ import annotations

from pathlib import Path

from ports.harness import ROOT, errors, run_port, unexplained

PORT_DIR = ROOT / "tests" / "ports" / "gd_port"
IMG_SIZE = 128

# (planted deviation, finding type, reference location): each must be an error finding
EXPECTED = [
    ("backbone_act", "module_deviation", "backbone.ERBlock_3.0"),
    ("attn_softmax_dim", "module_deviation", "neck.high_IFM.transformer_blocks.0.attn"),
    ("drop_path", "mode_mismatch", "neck.high_IFM.transformer_blocks.1.drop_path"),
    ("head_reg_scale", "module_deviation", "detect.reg_preds.0"),  # the stride scale is planted in every level
    ("head_reg_scale", "module_deviation", "detect.reg_preds.1"),
    ("head_reg_scale", "module_deviation", "detect.reg_preds.2"),
    ("siou_angle", "loss_divergence", "loss"),
    ("assigner_alpha_beta", "assigner_mismatch", "assigner"),
]
# drop path is random in train mode: the transformer layer holding it may deviate as a whole
ALSO = [("module_deviation", "neck.high_IFM.transformer_blocks.1")]


def _run(out: Path, deviations: list[str], *extra: str) -> list[dict]:
    return run_port(out, img_size=IMG_SIZE, port=f"{PORT_DIR / 'nets.py'}:build", map_file=PORT_DIR / "map.json",
                    port_args={"deviations": deviations}, port_loss=f"{PORT_DIR / 'criterion.py'}:build_loss",
                    port_loss_args={"deviations": deviations}, extra=extra)


def test_correct_port_has_no_error(tmp_path: Path) -> None:
    findings = _run(tmp_path / "clean", [], "--state", "perturbed")
    assert not errors(findings), errors(findings)
    assert not [f for f in findings if f["type"] in ("weight_transfer", "missing_parameter", "extra_parameter")]


def test_every_planted_deviation_is_named_at_its_module(tmp_path: Path) -> None:
    # the perturbed state only: at init the attention output norms and the prediction convs are zero, which hides
    # the attention and head deviations
    findings = _run(tmp_path / "all", sorted({name for name, _, _ in EXPECTED}), "--state", "perturbed")
    missing, stray = unexplained(errors(findings), EXPECTED, ALSO)
    assert not missing, f"not reported: {missing}; errors: {errors(findings)}"
    assert not stray, stray
