"""A user's own port with other names: the proposed name map (`aligner map`), the transfer through it, the
parameter story, and the port loader's one-line errors.

The ports here are written against small torch models with the renames real ports have: an extra wrapper
level, a renamed leaf module (bn -> norm), a conv with an extra bias, a module of another width, an extra
module, a wrapper around the whole model and a renamed head. Every expected pairing is written by hand.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

import aligner.env  # noqa: F401 - must precede jittor
import jittor as jt
import torch
from jittor import nn as jnn
from torch import nn as tnn

from aligner.adapters import get_adapter
from aligner.capture import capture_models
from aligner.cli import main
from aligner.errors import UsageError
from aligner.mapping import propose_map, shapes_of, write_mapping
from aligner.match import load_mapping, rename
from aligner.param_story import param_story
from aligner.port_loader import build_port, load_factory
from aligner.records import WeightProblem, WeightProblemKind
from aligner.weights import untransferred_modules

BN = ("weight", "bias", "running_mean", "running_var")


# ---- pair 1: renamed leaves, a wrapper level, an extra bias, another width, an extra module --------------

class TorchConvBN(tnn.Module):
    def __init__(self, ci: int, co: int, k: int = 3) -> None:
        super().__init__()
        self.conv = tnn.Conv2d(ci, co, k, 1, k // 2, bias=False)
        self.bn = tnn.BatchNorm2d(co)
        self.act = tnn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class TorchNet(tnn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = TorchConvBN(3, 8)
        self.body = TorchConvBN(8, 16)
        self.reduce = TorchConvBN(16, 8, 1)
        self.head = tnn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.reduce(self.body(self.stem(x))))


class JittorConvNorm(jnn.Module):
    def __init__(self, ci: int, co: int, k: int = 3, bias: bool = False) -> None:
        self.conv = jnn.Conv2d(ci, co, k, 1, k // 2, bias=bias)
        self.norm = jnn.BatchNorm2d(co)
        self.act = jnn.SiLU()

    def execute(self, x):
        return self.act(self.norm(self.conv(x)))


class JittorWrapped(jnn.Module):
    def __init__(self, ci: int, co: int) -> None:
        self.block = JittorConvNorm(ci, co)

    def execute(self, x):
        return self.block(x)


class JittorPort(jnn.Module):
    def __init__(self) -> None:
        self.stem = JittorWrapped(3, 8)                 # one wrapper level deeper, bn -> norm
        self.body = JittorConvNorm(8, 16, bias=True)    # bn -> norm, and a conv bias torch does not have
        self.reduce = JittorConvNorm(16, 12, 1)         # 12 channels instead of 8
        self.adapt = jnn.Conv2d(12, 8, 1)               # extra module
        self.head = jnn.Conv2d(8, 4, 1)

    def execute(self, x):
        return self.head(self.adapt(self.reduce(self.body(self.stem(x)))))


TRUTH_SAME = {"stem.conv.weight": "stem.block.conv.weight",
              **{f"stem.bn.{k}": f"stem.block.norm.{k}" for k in BN},
              "body.conv.weight": "body.conv.weight",
              **{f"body.bn.{k}": f"body.norm.{k}" for k in BN},
              "head.weight": "head.weight", "head.bias": "head.bias"}
TRUTH_DIFFERENT = {"reduce.conv.weight": "reduce.conv.weight", **{f"reduce.bn.{k}": f"reduce.norm.{k}" for k in BN}}
EXTRA_JITTOR = ["body.conv.bias", "adapt.weight", "adapt.bias"]


@pytest.fixture(scope="module")
def pair1():
    torch.manual_seed(0)
    jt.set_global_seed(1)
    tm, jm = TorchNet(), JittorPort()
    with torch.no_grad():  # non-default BN tensors, so a copied one is told from the port's own init
        for m in tm.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    ts = shapes_of(get_adapter("torch").inventory(tm)[0])
    js = shapes_of(get_adapter("jittor").inventory(jm)[0])
    return tm, jm, ts, js


def test_proposal_pairs_every_renamed_tensor(pair1) -> None:
    _, _, ts, js = pair1
    p = propose_map(ts, js)
    assert p.tensor_map == {**TRUTH_SAME, **TRUTH_DIFFERENT}
    assert sorted(p.same_shape) == sorted(TRUTH_SAME.items())
    assert {(t, j) for t, j, _, _ in p.different_shape} == set(TRUTH_DIFFERENT.items())
    assert ("reduce.conv.weight", "reduce.conv.weight", (8, 16, 1, 1), (12, 16, 1, 1)) in p.different_shape
    assert p.unmapped_torch == []  # num_batches_tracked is torch-only bookkeeping, not a tensor to map
    assert p.unmapped_jittor == EXTRA_JITTOR
    assert p.how["body.conv.weight"] == "name" and p.how["stem.bn.weight"] == "rename"


def test_written_file_loads_to_the_same_map(pair1, tmp_path: Path) -> None:
    _, _, ts, js = pair1
    p = propose_map(ts, js)
    path = write_mapping(p, tmp_path / "map.json")
    loaded = load_mapping(path)
    for t, j in {**TRUTH_SAME, **TRUTH_DIFFERENT}.items():
        assert (rename(t, loaded) or t) == j
    # kept at module level: one key per renamed module, not one per tensor
    assert loaded == {"stem.conv": "stem.block.conv", "stem.bn": "stem.block.norm", "body.bn": "body.norm",
                      "reduce.bn": "reduce.norm"}
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["unmapped_jittor"] == sorted(EXTRA_JITTOR)
    assert set(doc["different_shape"]) == set(TRUTH_DIFFERENT)
    with pytest.raises(UsageError, match="exists"):
        write_mapping(p, path)


def test_unmapped_torch_names_are_null_to_fill_in(tmp_path: Path) -> None:
    ts = {"a.conv.weight": (4, 3, 1, 1), "a.extra.weight": (2,)}
    js = {"a.cv.weight": (4, 3, 1, 1)}
    p = propose_map(ts, js)
    path = write_mapping(p, tmp_path / "m.json")
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["map"] == {"a.conv": "a.cv", "a.extra.weight": None}
    assert load_mapping(path) == {"a.conv": "a.cv"}
    doc["map"]["a.extra.weight"] = "a.more.weight"  # the user fills the name in
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert load_mapping(path) == {"a.conv": "a.cv", "a.extra.weight": "a.more.weight"}


def test_transfer_copies_through_the_map_and_reports_the_rest(pair1, tmp_path: Path) -> None:
    tm, jm, ts, js = pair1
    name_map = load_mapping(write_mapping(propose_map(ts, js), tmp_path / "map.json"))
    ja = get_adapter("jittor")
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    before = ja.state_arrays(jm)
    _, jtrace = capture_models(tm, jm, [x], name_map=name_map)
    after = ja.state_arrays(jm)
    torch_state = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    for t, j in TRUTH_SAME.items():
        assert np.array_equal(after[j], torch_state[t]), j  # bit-exact copy
        assert not np.array_equal(before[j], torch_state[t]), j  # and not equal before by chance
    for j in EXTRA_JITTOR + list(TRUTH_DIFFERENT.values()):
        assert np.array_equal(after[j], before[j]), j  # not transferred: the port's own values
    problems = {(w["kind"], w["jittor_name"]) for w in jtrace.meta["weight_transfer"]}
    assert problems == ({("extra", j) for j in EXTRA_JITTOR} | {("shape", j) for j in TRUTH_DIFFERENT.values()})
    assert jtrace.meta["weight_untransferred"] == ["reduce", "adapt"]


def test_transfer_without_the_map_leaves_renamed_tensors_alone(pair1) -> None:
    tm, _, _, _ = pair1
    jm = JittorPort()
    ja = get_adapter("jittor")
    before = ja.state_arrays(jm)
    x = np.zeros((1, 3, 8, 8), np.float32)
    _, jtrace = capture_models(tm, jm, [x], full=False)
    after = ja.state_arrays(jm)
    assert np.array_equal(after["stem.block.norm.running_mean"], before["stem.block.norm.running_mean"])
    assert np.array_equal(after["head.weight"], tm.head.weight.detach().numpy())
    assert "stem" in jtrace.meta["weight_untransferred"]


class SmallWrapped(jnn.Module):
    """The small pair's own port one level deeper (``model.``), as a user's wrapper would put it."""

    def __init__(self) -> None:
        from aligner.pairs._small_jittor import SmallNet
        self.model = SmallNet(3)

    def execute(self, x):
        return self.model(x)


SMALL_TOPS = ("stem", "down", "attn", "shared", "fuse", "cls_pred", "reg_pred")


@pytest.mark.parametrize("mapped", [True, False], ids=["with-map", "without-map"])
def test_capture_in_process_transfers_through_a_prefix_map(mapped: bool) -> None:
    from aligner.capture import capture_in_process, torch_weights
    from aligner.pairs import get_pair

    pair = get_pair("small")
    weights = torch_weights(pair, ["init"])
    model = SmallWrapped()
    name_map = {t: f"model.{t}" for t in SMALL_TOPS} if mapped else None
    trace = capture_in_process(pair, "jittor", states=["init"], weights=weights, model=model, full=False,
                               init=False, name_map=name_map)["init"]
    after = get_adapter("jittor").state_arrays(model)
    sent = {k: v for k, v in weights["init"].items() if not k.endswith("num_batches_tracked")}
    copied = [k for k, v in sent.items() if np.array_equal(after[f"model.{k}"], v)]
    if mapped:
        assert len(copied) == len(sent) == 36 and trace.meta["weight_transfer"] == []
        assert trace.meta["weight_untransferred"] == []
    else:  # BN tensors start equal on both sides whatever the transfer: look at the random conv weights only
        assert [k for k in copied if k.endswith("conv.weight")] == []
        assert trace.meta["weight_untransferred"] == ["model"]


def test_untransferred_modules_groups_by_module() -> None:
    names = ["a.conv.weight", "a.conv.bias", "a.bn.weight", "b.x.weight", "b.y.weight", "c.weight", "top"]
    problems = [WeightProblem(WeightProblemKind.EXTRA, n, n) for n in ("a.conv.bias", "b.x.weight", "b.y.weight",
                                                                        "top")]
    problems.append(WeightProblem(WeightProblemKind.SHAPE, "c.weight", "c.weight"))
    problems.append(WeightProblem(WeightProblemKind.DTYPE, "a.bn.weight", "a.bn.weight"))  # loaded anyway
    assert untransferred_modules(problems, names) == ["b", "c"]


# ---- pair 2: the whole port wrapped in `model`, the head renamed (paired by order and shape) -------------

class TorchNet2(tnn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = tnn.Sequential(tnn.Conv2d(3, 8, 3, bias=False), tnn.BatchNorm2d(8), tnn.ReLU())
        self.cls_pred = tnn.Linear(8, 5)


class JittorInner2(jnn.Module):
    def __init__(self) -> None:
        self.features = jnn.Sequential(jnn.Conv2d(3, 8, 3, bias=False), jnn.BatchNorm2d(8), jnn.ReLU())
        self.classifier = jnn.Linear(8, 5)


class JittorPort2(jnn.Module):
    def __init__(self) -> None:
        self.model = JittorInner2()


def test_root_wrapper_and_renamed_head() -> None:
    ts = shapes_of(get_adapter("torch").inventory(TorchNet2())[0])
    js = shapes_of(get_adapter("jittor").inventory(JittorPort2())[0])
    p = propose_map(ts, js)
    truth = {"features.0.weight": "model.features.0.weight",
             **{f"features.1.{k}": f"model.features.1.{k}" for k in BN},
             "cls_pred.weight": "model.classifier.weight", "cls_pred.bias": "model.classifier.bias"}
    assert p.tensor_map == truth
    assert p.how["cls_pred.weight"] == "order" and p.how["features.0.weight"] == "rename"
    assert p.unmapped_torch == [] and p.unmapped_jittor == [] and p.different_shape == []
    assert p.module_map == {"features": "model.features", "cls_pred": "model.classifier"}


# ---- the parameter story ---------------------------------------------------------------------------------

def test_param_story_counts_and_groups(pair1) -> None:
    tm, jm, ts, js = pair1
    tparams, _ = get_adapter("torch").inventory(tm)
    jparams, jmods = get_adapter("jittor").inventory(jm)
    s = param_story(tparams, jparams, propose_map(ts, js).module_map, jittor_modules=jmods)
    # by hand: torch 3 ConvBN x (conv w, bn w, bn b) + head w, b = 11; the port adds body's conv bias and adapt's w, b
    assert (s.torch.trainable_tensors, s.jittor.trainable_tensors) == (11, 14)
    assert (s.torch.buffer_tensors, s.jittor.buffer_tensors) == (6, 6)
    torch_numel = 8 * 3 * 9 + 16 + 16 * 8 * 9 + 32 + 8 * 16 + 16 + 4 * 8 + 4
    jittor_numel = 8 * 3 * 9 + 16 + 16 * 8 * 9 + 16 + 32 + 12 * 16 + 24 + 8 * 12 + 8 + 4 * 8 + 4
    assert (s.torch.trainable_numel, s.jittor.trainable_numel) == (torch_numel, jittor_numel)
    assert [(g.module, g.names) for g in s.extra] == [("body.conv", ("body.conv.bias",)),
                                                       ("adapt", ("adapt.weight", "adapt.bias"))]
    assert s.missing == ()
    assert {r[0] for r in s.reshaped} == set(TRUTH_DIFFERENT)
    assert s.sentence_en.startswith("your port has 14 trainable tensors, the reference 11: +1 under body.conv (")
    assert "+2 under adapt (" in s.sentence_en and "5 mapped tensors differ in shape" in s.sentence_en
    assert s.sentence_zh.startswith("你的移植有 14 个可训练张量，参考实现 11 个：body.conv 下多 1 个")


# ---- the command line and the port loader ---------------------------------------------------------------

PORT = """
import jittor as jt
from jittor import nn
from aligner.pairs._small_jittor import SmallNet


class Wrapper(nn.Module):
    def __init__(self, num_classes):
        self.model = SmallNet(num_classes)

    def execute(self, x):
        return self.model(x)


def build(num_classes=3):
    return Wrapper(num_classes)
"""


def test_cli_map_on_a_port_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "myport.py").write_text(textwrap.dedent(PORT), encoding="utf-8")
    out = tmp_path / "map.json"
    args = ["map", "--model", "small", "--port", f"{tmp_path / 'myport.py'}:build",
            "--port-args", '{"num_classes": 3}', "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "mapped, same shape: 36 · mapped, different shape: 0 · unmapped torch: 0 · unmapped jittor: 0" in printed
    tops = ("stem", "down", "attn", "shared", "fuse", "cls_pred", "reg_pred")
    assert load_mapping(out) == {t: f"model.{t}" for t in tops}
    written = out.read_text(encoding="utf-8")
    assert main(args) == 2  # an existing file is kept
    assert "exists" in capsys.readouterr().err and out.read_text(encoding="utf-8") == written
    assert main([*args, "--force"]) == 0


def _write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


@pytest.mark.parametrize("body, spec, expected", [
    ("", "{dir}/nowhere.py:build", "port file not found"),
    ("def build():\n    return 1\n", "{file}:make", "has no attribute 'make'"),
    ("build = 3\n", "{file}:build", "not a callable factory"),
    ("def build(width=1):\n    raise ValueError('width must be even\\nsecond line')\n", "{file}:build",
     "raised ValueError: width must be even"),
    ("def build():\n    return {'not': 'a module'}\n", "{file}:build", "returned builtins.dict, not a Jittor Module"),
    ("raise ImportError('needs mmcv')\n", "{file}:build", "failed: ImportError: needs mmcv"),
    ("", "no_colon_here", "PATH.py:FACTORY"),
    ("", "surely_not_a_module_xyz:build", "not found"),
], ids=["missing-file", "missing-attribute", "not-callable", "factory-raises", "not-a-module", "import-fails",
        "bad-spec", "missing-module"])
def test_port_loader_errors_are_one_line(tmp_path: Path, body: str, spec: str, expected: str) -> None:
    path = _write(tmp_path, f"port_{abs(hash(body)) % 10**8}.py", body)
    with pytest.raises(UsageError) as err:
        build_port(spec.format(dir=tmp_path, file=path))
    message = str(err.value)
    assert expected in message and "\n" not in message, message


def test_port_loader_builds_a_jittor_module(tmp_path: Path) -> None:
    path = _write(tmp_path, "port_good.py", """
        from jittor import nn

        def build(width=4):
            return nn.Linear(3, width)
    """)
    model = build_port(f"{path}:build", {"width": 6})
    assert tuple(model.weight.shape) == (6, 3)
    assert load_factory(f"{path}:build") is load_factory(f"{path}:build")  # the file is imported once
