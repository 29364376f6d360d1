"""Two zoo pairs and two planted zoo faults through ``aligner.align`` in its default mode, at 64 px.

The correct ports (conv + BN with conv bias, residual blocks) must give no error finding; the planted
faults (wrong BatchNorm eps, a dropped shortcut) must be reported first at the module they were planted
in. The whole matrix (every pair at 64/128/320, every fault) is ``python -m benchmarks.zoo``.
"""
from __future__ import annotations

import pytest
from zoo import align_cell, get_fault, get_pair, location_matches

SIZE = 64


def _errors(result):  # noqa: ANN001, ANN202
    return [f for f in result.findings if str(f.severity) == "error"]


@pytest.mark.parametrize("name", ["conv_bias_bn", "resnet"])
def test_correct_zoo_pair_has_no_error(name: str) -> None:
    r = align_cell(get_pair(name), SIZE)
    assert [(str(f.type), f.location) for f in _errors(r)] == []
    assert r.verdict == "pass"
    assert r.rows and all(x.match == "name" for x in r.rows)  # the ports share every attribute path


@pytest.mark.parametrize("name", ["bn_eps", "no_residual"])
def test_planted_zoo_fault_is_caught_where_planted(name: str) -> None:
    fault = get_fault(name)
    assert fault.size == SIZE
    r = align_cell(get_pair(fault.pair), fault.size, fault=fault)
    errors = _errors(r)
    assert r.verdict == "fail" and errors
    assert location_matches(fault.expected_location, errors[0].location), [(str(f.type), f.location) for f in errors]
    assert str(errors[0].type) == fault.expected_type
