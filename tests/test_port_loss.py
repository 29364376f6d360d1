"""The port's own loss (``--port-loss``): checked alone on the reference's head outputs and on the stress input,
and used for the port's capture.

The loss under test is tests/port_loss/own_loss.py: a loss with its own signature (a dict of predictions in, a
dict of terms out) around jittor_impl's loss, which is correct, and the few-line adapter the contract asks for.
Its switches plant one fault each: another IoU weight, another TAL top-k, every target given to image 0, a BCE
without the reference's log clamp. GOLD-YOLO-N (official: no DFL, SIoU), 64 px, batch 2, 20 classes.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
IMG, NC = 64, 20


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    """The pair, and the reference head outputs of both states (numpy)."""
    import aligner.env  # noqa: F401 - Jittor settings before the import
    import jittor  # noqa: F401
    from aligner.adapters.loss_check import reference_head
    from aligner.capture import reference_model, reference_states
    from aligner.pairs import get_pair

    sys.path.insert(0, str(HERE / "port_loss"))
    pair = get_pair("gold_yolo-n", num_classes=NC, img_size=IMG, batch=2)
    model, _ = reference_model(pair, init=False)
    weights = reference_states(pair, model, list(pair.states))
    return {"pair": pair, "heads": {s: reference_head(pair, model, weights[s]) for s in pair.states}}


def _check(setup: dict[str, Any], state: str, **faults: Any) -> tuple[list[Any], dict[str, Any]]:
    import own_loss
    from aligner.adapters.loss_check import isolate_loss
    from aligner.rules.loss_check import loss_check_findings
    from aligner.tolerances import Tolerances

    pair = setup["pair"]
    make = functools.partial(own_loss.make_loss, num_classes=NC, image_size=IMG, **faults)
    inputs = isolate_loss(pair, setup["heads"][state], make)
    return loss_check_findings(state, inputs, Tolerances.defaults("float32"), pair.item_names)


def _errors(findings: list[Any]) -> list[Any]:
    return [f for f in findings if f.severity.value == "error"]


@pytest.mark.parametrize("state", ["init", "perturbed"])
def test_correct_port_loss_has_no_error(setup: dict[str, Any], state: str) -> None:
    findings, block = _check(setup, state)
    assert not _errors(findings), [f.message for f in findings]
    assert set(block) == {"reference", "stress"}
    for name in ("reference", "stress"):
        items = {c["item"]: c for c in block[name]["items"]}
        assert set(items) == {"total", "iou", "dfl", "cls"}
        assert all(c["rel"] <= 1e-6 for c in items.values()), items
        assert {g["grad"] for g in block[name]["grads"]} == {"pred_scores", "pred_distri"}
        assign = block[name]["assigner"]
        assert assign["torch"]["fg_per_image"] == assign["port"]["fg_per_image"]
        assert min(assign["torch"]["fg_per_image"]) > 0  # targets on every image, positives on every image
    # the stress input reaches the reference's BCE clamp: a loss thousands of times the plain one
    ref_total = {c["item"]: c["torch"] for c in block["reference"]["items"]}["total"]
    stress_total = {c["item"]: c["torch"] for c in block["stress"]["items"]}["total"]
    assert stress_total > 1000 * ref_total


def test_stress_input_is_saturated_degenerate_and_inverted(setup: dict[str, Any]) -> None:
    pair = setup["pair"]
    head = setup["heads"]["perturbed"]
    feats, scores, distri = pair.stress_head(head, pair.make_inputs().targets)
    assert [f.shape for f in feats] == [f.shape for f in head[0]]
    assert set(np.unique(scores)) == {0.0, 1.0}  # every probability exactly saturated
    width = distri[..., 0] + distri[..., 2]   # (l, t, r, b) distances: x2 - x1 = l + r (reg_max 0)
    height = distri[..., 1] + distri[..., 3]
    assert ((width == 0) & (height == 0)).sum() > 0   # zero-size boxes
    assert (width < 0).sum() > 0                      # inverted: x2 < x1
    assert np.array_equal(distri[width > 0], head[2][width > 0])  # the other anchors keep the reference's boxes


def test_iou_weight_change_names_iou(setup: dict[str, Any]) -> None:
    findings, _ = _check(setup, "perturbed", iou_weight=2.0)
    errors = _errors(findings)
    assert {(f.type.value, f.location) for f in errors} == {("loss_divergence", "loss")}
    for f in errors:
        assert "iou" in f.evidence["differs"] and "pred_distri" in f.evidence["differs"]
        assert "cls" not in f.evidence["differs"] and "dfl" not in f.evidence["differs"]
        iou = next(c for c in f.evidence["checks"] if c.get("item") == "iou")
        assert iou["port"] == pytest.approx(iou["torch"] * 2.0 / 2.5, rel=1e-9)  # the weight, 2.0 for 2.5
        assert "iou torch" in f.message
    assert {f.evidence["loss_input"] for f in errors} == {"reference", "stress"}


def test_topk_change_is_an_assigner_mismatch(setup: dict[str, Any]) -> None:
    findings, block = _check(setup, "perturbed", topk=10)
    mism = [f for f in _errors(findings) if f.type.value == "assigner_mismatch"]
    assert mism and all(f.location == "assigner" for f in mism)
    ref = block["reference"]["assigner"]["torch"]["fg_per_image"]
    port = block["reference"]["assigner"]["port"]["fg_per_image"]
    # fewer candidates per GT box: never more positives, fewer on some image
    assert all(p <= r for p, r in zip(port, ref)) and port != ref
    f = next(f for f in mism if f.evidence["loss_input"] == "reference")
    for i, (r, p) in enumerate(zip(ref, port)):
        assert (f"image {i} {r} vs {p}" in f.message) == (r != p)


def test_batch_index_bug_is_an_assigner_mismatch(setup: dict[str, Any]) -> None:
    findings, block = _check(setup, "perturbed", images_to_first=True)
    mism = [f for f in _errors(findings) if f.type.value == "assigner_mismatch"]
    ref = block["reference"]["assigner"]["torch"]["fg_per_image"]
    port = block["reference"]["assigner"]["port"]["fg_per_image"]
    assert port[1] == 0 < ref[1]  # image 1 lost its targets to image 0
    f = next(f for f in mism if f.evidence["loss_input"] == "reference")
    assert f"image 1 {ref[1]} vs 0" in f.message


def test_missing_clamp_differs_only_at_the_stress_input(setup: dict[str, Any]) -> None:
    for state in ("init", "perturbed"):
        findings, block = _check(setup, state, naive_bce=True)
        errors = _errors(findings)
        assert [(f.type.value, f.location, f.evidence["loss_input"]) for f in errors] == \
            [("loss_divergence", "loss", "stress")], [f.message for f in findings]
        assert "cls" in errors[0].evidence["differs"] and "iou" not in errors[0].evidence["differs"]
        cls = next(c for c in errors[0].evidence["checks"] if c.get("item") == "cls")
        assert np.isfinite(cls["torch"]) and not np.isfinite(cls["port"])
        grad = {g["grad"]: g for g in block["stress"]["grads"]}["pred_scores"]
        assert grad["nonfinite_port_only"] > 0 and grad["nonfinite_torch_only"] == 0
        assert "stress input" in errors[0].message


def test_run_trains_the_port_on_its_own_loss(tmp_path: Path) -> None:
    """Through api.run_pair: the port's capture uses its own loss (the normal loss rule sees the IoU weight),
    and the loss alone is checked and reported in results.json."""
    from aligner import api
    from aligner.runconfig import Port

    sys.path.insert(0, str(HERE / "port_loss"))
    import own_loss

    make = functools.partial(own_loss.make_loss, num_classes=NC, image_size=IMG, iou_weight=2.0)
    res = api.run_pair("gold_yolo-n", num_classes=NC, img_size=IMG, batch=2, states=["perturbed"],
                       noise_floor=False, isolate=False, port=Port(loss=make), out_dir=tmp_path)
    errors = [(f.type.value, f.location, f.evidence.get("loss_input")) for f in res.findings
              if f.severity.value == "error"]
    assert ("loss_divergence", "loss.iou", None) in errors         # the capture's own loss rule
    assert ("loss_divergence", "loss", "reference") in errors      # the loss alone
    assert ("loss_divergence", "loss", "stress") in errors
    t, j = res.loss["perturbed"]["torch"]["items"], res.loss["perturbed"]["jittor"]["items"]
    assert j[0] / t[0] == pytest.approx(2.0 / 2.5, rel=0.05)  # the port's model differs only by rounding
    assert set(res.run["loss_check"]["perturbed"]) == {"reference", "stress"}


@pytest.mark.parametrize(("args", "needle"), [
    (["--port-loss", "no_colon"], "--port-loss expects PATH.py:FACTORY"),
    (["--port-loss", "missing.py:make"], "port file not found"),
    (["--port-loss-args", "{}"], "--port-loss-args needs --port-loss"),
    (["--port-loss", "own_loss.py:make_loss", "--port-loss-args", "[1]"], "--port-loss-args must be a JSON object"),
])
def test_port_loss_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                                needle: str) -> None:
    from click.testing import CliRunner

    from aligner.cli import cli

    monkeypatch.chdir(HERE / "port_loss")
    r = CliRunner().invoke(cli, ["run", "--model", "gold_yolo-n", "--img-size", "64", "--out",
                                 str(tmp_path / "out"), *args])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert any(needle in ln for ln in lines), r.output


def test_port_loss_factory_must_return_a_callable(tmp_path: Path) -> None:
    from aligner.errors import UsageError
    from aligner.port_loader import build_port_loss

    (tmp_path / "notaloss.py").write_text("def make():\n    return 3\n", encoding="utf-8")
    with pytest.raises(UsageError, match="not a callable L"):
        build_port_loss(f"{tmp_path / 'notaloss.py'}:make")


def _run(fg: list[int], boxes: list[list[float]], scores: list[float], iou: float, n_anchor: int = 8) -> Any:
    """A LossRun of one image: positives at anchors ``fg`` with these boxes and target scores."""
    from aligner.rules.loss_check import LossRun

    m = np.zeros((1, n_anchor), bool)
    bx = np.zeros((1, n_anchor, 4))
    sc = np.zeros((1, n_anchor, 2))
    for a, b, s in zip(fg, boxes, scores):
        m[0, a], bx[0, a], sc[0, a, 1] = True, b, s
    return LossRun(total=iou + 1.0, items=np.array([iou, 0.0, 1.0]), grads={},
                   assign={"fg_mask": m, "target_bboxes": bx, "target_scores": sc})


def test_tied_positives_at_other_anchors_are_a_warning() -> None:
    """Same boxes and scores at other anchors (a top-k tie broken otherwise): warnings, the loss ones included."""
    from aligner.rules.loss_check import IsolatedInput, loss_check_findings
    from aligner.tolerances import Tolerances

    box = [[0, 0, 4, 4], [2, 2, 6, 6]]
    ref = _run([1, 2], box, [0.5, 0.7], iou=1.0)
    tied = _run([1, 5], box, [0.5, 0.7], iou=1.01)
    other = _run([1, 5], [[0, 0, 4, 4], [2, 2, 6, 7]], [0.5, 0.7], iou=1.01)
    tol = Tolerances.defaults("float32")
    found, _ = loss_check_findings("init", [IsolatedInput("reference", ref, None, tied)], tol, ("iou", "dfl", "cls"))
    assert sorted((f.severity.value, f.type.value) for f in found) == [
        ("warning", "assigner_mismatch"), ("warning", "loss_divergence")]
    found, _ = loss_check_findings("init", [IsolatedInput("reference", ref, None, other)], tol, ("iou", "dfl", "cls"))
    assert sorted((f.severity.value, f.type.value) for f in found) == [
        ("error", "assigner_mismatch"), ("error", "loss_divergence")]
    no_assign = _run([1, 2], box, [0.5, 0.7], iou=1.0)
    no_assign.assign = {}
    found, block = loss_check_findings("init", [IsolatedInput("reference", ref, None, no_assign)], tol)
    assert found == [] and "note" in block["reference"]["assigner"]
