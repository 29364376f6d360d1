"""Fast subset of the fault catalogue: planted porting faults must be detected and localised.

Runs each fault of ``FAST_SUBSET`` (graph break, eval(), numerics, BN family, structure, init, loss) through
the full aligner on GOLD-YOLO-N at a small input (and the REGRESSIONS below), plus the unmodified port at the
same size, which must give no error finding. The torch reference is captured once and shared (it does not see
Jittor faults).
"""
from __future__ import annotations

import pytest

from aligner.faults import FAST_SUBSET, catalogue, get_fault, location_matches
from aligner.records import FindingType

SIZE = 100  # maps 50/25/13/7/4: not a multiple of 32 (non-divisible pools), so all faults share one reference
# faults once missed or mislocalised, run here too: the port's own init hidden by the weight transfer, BN running
# statistics after the forward, and a block run without autograd graph blamed on its consumer
REGRESSIONS = ("head_reinit", "biased_running_var", "requires_grad_block")


def test_catalogue_is_well_formed() -> None:
    faults = catalogue()
    names = [f.name for f in faults]
    assert len(faults) >= 24
    assert len(set(names)) == len(names)
    assert {f.category for f in faults} == {"graph", "numerics", "structure", "init", "loss"}
    for f in faults:
        assert all(isinstance(t, FindingType) for t in f.types), f.name
        assert f.description and f.description_zh, f.name
    assert any(f.steps > 0 for f in faults), "multi-step faults are part of the catalogue"
    assert set(FAST_SUBSET) <= set(names) and set(REGRESSIONS) <= set(names)
    assert all(get_fault(n).steps == 0 for n in REGRESSIONS)  # visible without optimizer steps
    assert {get_fault(n).category for n in FAST_SUBSET} == {"graph", "numerics", "structure", "init", "loss"}


def test_location_rule() -> None:
    assert location_matches("neck.Rep_p4", "neck.Rep_p4")
    assert location_matches("neck.Rep_p4", "neck.Rep_p4.conv1.rbr_dense")
    assert not location_matches("neck.Rep_p4", "neck.Rep_p3")
    assert not location_matches("neck.Rep_p", "neck.Rep_p4")
    assert location_matches("", "") and not location_matches("", "backbone")
    assert location_matches("*.running_var", "neck.Rep_p3.conv1.rbr_dense.bn.running_var")
    assert location_matches("loss", "loss.iou") and not location_matches("loss", "loss_total")


def test_planting_restores_the_port() -> None:
    import jittor_impl.layers as jl
    import jittor_impl.loss as jloss
    import jittor_impl.model as jm
    import jittor_impl.neck as jn

    watched = [(jn, "adaptive_avg_pool2d"), (jn, "_interpolate_bilinear"), (jm, "initialize_weights"),
               (jm.Model, "__init__"), (jl.SimConv, "__init__"), (jl.RepVGGBlock, "execute"),
               (jl.BatchNorm2d, "_update_running_stats"), (jloss.ComputeLoss, "__call__"),
               (jloss.ComputeLoss, "__init__"), (jloss.VarifocalLoss, "execute"), (jn.RepGDNeck, "__init__"),
               (jn.RepGDNeck, "execute")]
    before = [(o, n, vars(o).get(n, None)) for o, n in watched]
    for f in catalogue():
        with f.planted():
            pass
    for o, n, v in before:
        assert vars(o).get(n, None) is v, f"{getattr(o, '__name__', o)}.{n} was not restored"


@pytest.fixture(scope="module")
def runs() -> tuple[dict, object, object]:
    from aligner.faults.run import References, fault_size, run_clean, run_fault

    names = FAST_SUBSET + REGRESSIONS
    refs = References()
    clean = {s: run_clean(s, "float32", references=refs)
             for s in sorted({fault_size(get_fault(n), SIZE) for n in names})}
    outcomes = {n: run_fault(get_fault(n), img_size=SIZE, baseline=clean[fault_size(get_fault(n), SIZE)].errors,
                             references=refs)
                for n in names}
    return outcomes, clean[SIZE], refs


@pytest.mark.parametrize("name", FAST_SUBSET + REGRESSIONS)
def test_fault_is_detected_and_localised(runs: tuple[dict, object, object], name: str) -> None:
    o = runs[0][name]
    assert o.crashed is None, o.crashed
    assert o.applied, f"{name}: the planted code never ran"
    assert o.detected, f"{name}: no error finding of type {o.expected_type}; first error: {o.first}"
    assert o.localised, (f"{name}: first error finding {o.first} is not {o.expected_type} at "
                         f"{o.expected_location!r} (accepted finding ranked {o.rank})")


def test_correct_port_has_no_error_finding(runs: tuple[dict, object, object]) -> None:
    clean = runs[1]
    assert clean.crashed is None, clean.crashed
    assert clean.n_errors == 0, clean.errors


def test_torch_side_captured_once_per_configuration(runs: tuple[dict, object, object]) -> None:
    """Every configuration's reference served all its runs: one capture per state, plus one per state of the
    float64 reference (noise floor), however many faults ran against it."""
    rows = runs[2].captures()
    assert rows and all(r["references"] == 1 for r in rows), rows
    assert all(r["torch_captures"] == 2 * 2 for r in rows), rows  # states init + perturbed, x2 precisions
