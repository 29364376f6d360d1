"""`aligner map` on three independently written GOLD-YOLO-N ports against their hand-made, verified map files.

Each port names and groups the layers its own way (nested body/fpn/heads with convs one level deeper, one flat
index-named Sequential, registries with string keys). The proposal is expanded to every reference tensor
through :func:`aligner.match.rename` and compared with the committed map expanded the same way. What the
proposer cannot pair must stay unpaired (null), never paired with another shape.
"""
from __future__ import annotations

import pytest

import aligner.env  # noqa: F401 - must precede jittor
from aligner.adapters import get_adapter
from aligner.mapping import propose_map, shapes_of
from aligner.match import load_mapping, rename
from aligner.pairs import get_pair
from aligner.port_loader import build_port
from ports.harness import ROOT

PORTS = ROOT / "tests" / "ports"

# port -> (factory, factory arguments, committed map, least share of the 772 reference tensors the proposal must
# pair as the committed map does). Measured: nested 727, flat 727, gd 476 (its stages registered together, its
# SPPF and head towers in another order: left null); none paired otherwise than the committed map.
CASES = {
    "nested": ("nested_port/model.py:build", {}, "nested_port/map.json", 0.93),
    "flat": ("flat_port/gold_yolo_flat.py:build", {"output": "dict"}, "flat_port/map.json", 0.93),
    "gd": ("gd_port/nets.py:build", {}, "gd_port/map.json", 0.60),
}


@pytest.fixture(scope="module")
def reference_shapes() -> dict[str, tuple[int, ...]]:
    return shapes_of(get_adapter("torch").inventory(get_pair("gold_yolo-n", num_classes=20).build_torch())[0])


@pytest.mark.parametrize("port", list(CASES))
def test_proposal_agrees_with_the_committed_map(port: str, reference_shapes) -> None:
    factory, args, map_file, least_share = CASES[port]
    path, _, name = factory.partition(":")
    port_shapes = shapes_of(get_adapter("jittor").inventory(build_port(f"{PORTS / path}:{name}", args))[0])
    truth = load_mapping(PORTS / map_file)
    ts = reference_shapes
    assert len(ts) == 772
    assert all(port_shapes.get(rename(t, truth) or t) == s for t, s in ts.items())  # the ground truth is whole

    proposal = propose_map(ts, port_shapes)
    proposed = {t: rename(t, proposal.module_map) or t for t in proposal.tensor_map}  # what the written file says
    assert proposed == proposal.tensor_map
    assert proposal.different_shape == []
    assert [t for t, j in proposed.items() if port_shapes.get(j) != ts[t]] == []
    agree = [t for t, j in proposed.items() if j == (rename(t, truth) or t)]
    disagree = [t for t in proposed if t not in agree]
    assert len(agree) >= least_share * len(ts), (port, len(agree))
    assert disagree == [], (port, disagree[:8])  # what cannot be told apart stays null, not guessed
    assert sorted(proposal.unmapped_torch) == sorted(t for t in ts if t not in proposed)
    assert len(set(proposed.values())) == len(proposed)  # no port tensor taken twice
