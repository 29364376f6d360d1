"""Realistic PyTorch-to-Jittor porting faults of GOLD-YOLO, as data.

Each :class:`Fault` names one small variant of the correct port (``jittor_impl``), the finding type and
the location the aligner should report, and the plant (:mod:`aligner.faults.plants`) that makes it: a
monkeypatch of a ``jittor_impl`` class or module attribute, or an edit of the freshly built model, always
undone on exit, so the correct port stays untouched. The Jittor model must be built inside the plant (the
pair does that during a run). Nothing here imports a framework at import time.

Locations: a module path (the fault lives in that module or below it), ``"loss"``, ``"assigner"``,
``"anchors"`` or ``""`` (the whole model). :func:`location_matches` is the rule the benchmark uses.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from aligner.records import FindingType

from . import plants as P
from .patching import FaultNotApplicable, Probe

__all__ = ["Fault", "Probe", "FaultNotApplicable", "catalogue", "get_fault", "location_matches", "FAST_SUBSET"]

T = FindingType


@dataclass(frozen=True)
class Fault:
    """One catalogued porting fault and what the aligner should say about it."""
    name: str
    category: str                      # graph | numerics | structure | init | loss
    expected_type: FindingType
    expected_location: str
    description: str
    description_zh: str
    plant: Callable[[Probe], AbstractContextManager[None]]
    also_types: tuple[FindingType, ...] = ()   # other types that name the same fault correctly
    also_locations: tuple[str, ...] = ()       # other locations that are the same place
    steps: int = 0                     # > 0: only visible after optimizer steps (multi-step mode)
    odd_size: bool = False             # needs an input size that is not a multiple of 32
    options: tuple[tuple[str, Any], ...] = ()  # pair options the fault needs (both sides)
    note: str = ""

    @property
    def types(self) -> tuple[FindingType, ...]:
        return (self.expected_type, *self.also_types)

    @property
    def locations(self) -> tuple[str, ...]:
        return (self.expected_location, *self.also_locations)

    def accepts(self, ftype: str, location: str) -> bool:
        """True when a finding of ``ftype`` at ``location`` names this fault."""
        return ftype in {t.value for t in self.types} and any(location_matches(p, location) for p in self.locations)

    @contextmanager
    def planted(self) -> Iterator[Probe]:
        """Plant the fault; yields a :class:`Probe` whose ``hits`` tell whether the fault code ran."""
        probe = Probe()
        with self.plant(probe):
            yield probe


def location_matches(pattern: str, location: str) -> bool:
    """``""`` is the whole model (exact); a glob matches by fnmatch; a path matches itself and below it."""
    if pattern == "":
        return location == ""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(location, pattern)
    return location == pattern or location.startswith(pattern + ".")


# ---------------------------------------------------------------------------------------------
# the catalogue


def catalogue() -> tuple[Fault, ...]:
    """Every catalogued fault, in table order."""
    F = Fault
    return (
        # graph breaks
        F("detach_neck", "graph", T.BACKWARD_DIVERGENCE, "neck.Rep_p4",
          "neck.Rep_p4 returns out.detach(): no gradient reaches it or anything before it on that path",
          "neck.Rep_p4 返回 out.detach()：梯度无法到达它及其之前的层",
          P.plant_detach_neck, also_types=(T.UNREACHABLE_GRADIENT, T.GRADIENT_PATTERN)),
        F("numpy_roundtrip_loss", "graph", T.BACKWARD_DIVERGENCE, "loss",
          "the loss takes pred_scores through numpy and back (jt.array(x.numpy())): the class branch loses its gradient",
          "损失函数把 pred_scores 经 numpy 往返（jt.array(x.numpy())）：分类分支失去梯度",
          P.plant_numpy_roundtrip_loss, also_types=(T.UNREACHABLE_GRADIENT, T.GRADIENT_PATTERN)),
        F("stop_grad_param", "graph", T.FROZEN_PARAMETER, "neck.conv_1x1_n",
          "neck.conv_1x1_n calls weight.stop_grad() in execute as if it returned a copy; it freezes the weight",
          "neck.conv_1x1_n 在 execute 中调用 weight.stop_grad()，以为返回副本；实际冻结了权重",
          P.plant_stop_grad_param, also_types=(T.UNREACHABLE_GRADIENT, T.GRADIENT_PATTERN, T.BACKWARD_DIVERGENCE)),
        F("requires_grad_block", "graph", T.UNREACHABLE_GRADIENT, "neck.Rep_p3",
          "neck.Rep_p3.requires_grad_(False): Jittor runs the block under no_grad, cutting everything upstream",
          "neck.Rep_p3.requires_grad_(False)：Jittor 在 no_grad 下运行该模块，切断其上游所有梯度",
          P.plant_requires_grad_block, also_types=(T.BACKWARD_DIVERGENCE, T.GRADIENT_PATTERN, T.FROZEN_PARAMETER)),
        F("eval_before_grad", "graph", T.FROZEN_PARAMETER, "",
          "model.eval() before the gradient pass: Jittor stop_grads every parameter",
          "在反向传播前调用 model.eval()：Jittor 会对所有参数 stop_grad",
          P.plant_eval_before_grad, also_types=(T.MODE_MISMATCH,)),
        F("eval_neck_bn_freeze", "graph", T.FROZEN_PARAMETER, "neck",
          "neck.eval() used as the torch idiom for freezing BN statistics: Jittor also freezes the neck's weights",
          "把 neck.eval() 当作 torch 冻结 BN 统计量的写法：Jittor 同时冻结了 neck 的权重",
          P.plant_eval_neck_bn_freeze, also_types=(T.MODE_MISMATCH,)),
        F("hidden_param_list", "graph", T.MISSING_PARAMETER, "detect.cls_preds",
          "detect.cls_preds kept in a Python list: the convs vanish from parameters() and state_dict()",
          "detect.cls_preds 存放在 Python 列表中：这些卷积从 parameters() 和 state_dict() 中消失",
          P.plant_hidden_param_list, also_types=(T.WEIGHT_TRANSFER, T.PARAM_COUNT_DRIFT, T.UNMATCHED_MODULE)),
        # numerics
        F("jittor_adaptive_pool", "numerics", T.FORWARD_DIVERGENCE, "neck.low_FAM",
          "Jittor's nn.AdaptiveAvgPool2d (fixed onnx-style kernel) instead of torch's windows at a non-divisible size",
          "在非整除尺寸下使用 Jittor 的 nn.AdaptiveAvgPool2d（固定核，onnx 方式）代替 torch 的可变窗口",
          P.plant_jittor_adaptive_pool, odd_size=True),
        F("interpolate_default_mode", "numerics", T.FORWARD_DIVERGENCE, "neck.low_FAM",
          "the neck resizes with jt.nn.resize(x, size), relying on a default mode (nearest) where torch asks for bilinear",
          "neck 使用 jt.nn.resize(x, size) 依赖默认模式（nearest），而 torch 指定 bilinear",
          P.plant_interpolate_default_mode),
        F("interpolate_align_corners", "numerics", T.FORWARD_DIVERGENCE, "neck.low_FAM",
          "bilinear resizing in the neck with align_corners=True (torch: False)",
          "neck 中的 bilinear 插值使用 align_corners=True（torch 为 False）",
          P.plant_interpolate_align_corners),
        F("bn_family_isinstance", "numerics", T.MODE_MISMATCH, "neck.Inject_p4",
          "initialize_weights matches BatchNorm2d with isinstance: the SyncBN family also gets eps 1e-3 / momentum 0.03",
          "initialize_weights 用 isinstance 判断 BatchNorm2d：SyncBN 一族也被设为 eps 1e-3 / momentum 0.03",
          lambda p: P.plant_bn_family(1e-3, 0.03, False, p), also_types=(T.FORWARD_DIVERGENCE,),
          also_locations=("neck.Inject_p4.*", "neck.high_IFM")),
        F("bn_eps_default", "numerics", T.MODE_MISMATCH, "backbone.stem",
          "initialize_weights sets only the momentum: plain BatchNorm2d keeps eps 1e-5 instead of 1e-3",
          "initialize_weights 只设置了 momentum：普通 BatchNorm2d 的 eps 仍为 1e-5 而非 1e-3",
          lambda p: P.plant_bn_family(1e-5, 0.03, True, p), also_types=(T.FORWARD_DIVERGENCE,)),
        F("bn_momentum_convention", "numerics", T.MODE_MISMATCH, "backbone.stem",
          "BN momentum written in the Keras convention (0.97 = 1 - 0.03): running statistics drift after a step",
          "BN momentum 按 Keras 约定写成 0.97（= 1 - 0.03）：训练一步后 running 统计量漂移",
          lambda p: P.plant_bn_family(1e-3, 0.97, True, p), also_types=(T.BACKWARD_DIVERGENCE,), steps=2),
        F("biased_running_var", "numerics", T.FORWARD_DIVERGENCE, "*.running_var",
          "running_var updated with the biased batch variance (Jittor's BatchNorm); torch uses the unbiased one",
          "running_var 用有偏的批方差更新（Jittor 自带 BatchNorm 的做法）；torch 使用无偏方差",
          P.plant_biased_running_var, also_locations=("*.running_mean",),
          note="visible only in the BN running statistics: the buffers are compared as the captured "
               "train-mode forward left them (the module outputs are unaffected)"),
        F("attention_scaled", "numerics", T.FORWARD_DIVERGENCE, "neck.high_IFM.transformer_blocks.0.attn",
          "attention logits multiplied by 1/sqrt(key_dim) (the official code never applies its scale)",
          "注意力 logits 乘以 1/sqrt(key_dim)（官方代码从未使用该缩放）",
          lambda p: P.plant_attention("scaled", p), also_types=(T.BACKWARD_DIVERGENCE,)),
        F("softmax_no_dim", "numerics", T.FORWARD_DIVERGENCE, "neck.high_IFM.transformer_blocks.0.attn",
          "attention softmax written nn.softmax(attn) without dim: Jittor normalises over all elements",
          "注意力 softmax 写成 nn.softmax(attn) 未指定 dim：Jittor 对所有元素归一化",
          lambda p: P.plant_attention("nodim", p), also_types=(T.BACKWARD_DIVERGENCE,)),
        F("silu_for_relu", "numerics", T.FORWARD_DIVERGENCE, "backbone.ERBlock_5.2.cv1",
          "SimConv uses SiLU (copied from Conv) where the official code has ReLU",
          "SimConv 使用 SiLU（从 Conv 复制而来），官方代码为 ReLU",
          P.plant_silu_for_relu, also_types=(T.MODE_MISMATCH, T.UNMATCHED_MODULE)),
        F("repvgg_no_identity", "numerics", T.FORWARD_DIVERGENCE, "backbone.ERBlock_2.1.conv1",
          "RepVGGBlock.execute forgets the identity (BN) branch",
          "RepVGGBlock.execute 漏掉了恒等（BN）分支",
          P.plant_repvgg_no_identity),
        F("drop_path_active", "numerics", T.FORWARD_DIVERGENCE, "neck.high_IFM.transformer_blocks.1",
          "the port ignores drop_path_rate=0 of the run: DropPath(0.1) stays active in train mode",
          "移植版忽略了运行时的 drop_path_rate=0：训练模式下 DropPath(0.1) 仍然生效",
          P.plant_drop_path_active, also_types=(T.MODE_MISMATCH, T.UNMATCHED_MODULE)),
        # structure
        F("neck_width_scaled", "structure", T.SHAPE_MISMATCH, "neck.low_IFM",
          "the absolute extra_cfg width embed_dim_p scaled by the width multiplier (96 -> 24 for N)",
          "extra_cfg 中的绝对宽度 embed_dim_p 被宽度系数缩放（N 为 96 -> 24）",
          P.plant_neck_width_scaled, also_types=(T.WEIGHT_TRANSFER, T.PARAM_COUNT_DRIFT, T.MISSING_PARAMETER)),
        F("split_order_swapped", "structure", T.FORWARD_DIVERGENCE, "neck.Inject_p4",
          "low-level global features split in the reverse order (g1, g0 = split(x, [32, 64]))",
          "低层全局特征按相反顺序拆分（g1, g0 = split(x, [32, 64])）",
          P.plant_split_order_swapped),
        F("anchor_grid_offset", "structure", T.ASSIGNER_MISMATCH, "anchors",
          "anchor points at the cell corners: grid_cell_offset 0 instead of 0.5",
          "anchor 点位于网格角点：grid_cell_offset 为 0 而非 0.5",
          lambda p: P.plant_loss_attr(p, P.grid_offset_zero),
          also_types=(T.ANCHOR_COUNT_DRIFT, T.FORWARD_DIVERGENCE, T.LOSS_DIVERGENCE)),
        F("anchor_stride_from_size", "structure", T.ASSIGNER_MISMATCH, "anchors",
          "strides computed as image size // feature size (7/15/31 at 500) instead of the fixed 8/16/32",
          "步长按 图像尺寸 // 特征图尺寸 计算（500 时为 7/15/31），而非固定的 8/16/32",
          P.plant_anchor_stride_from_size, odd_size=True,
          also_types=(T.ANCHOR_COUNT_DRIFT, T.FORWARD_DIVERGENCE, T.LOSS_DIVERGENCE)),
        F("reg_max_from_config", "structure", T.SHAPE_MISMATCH, "detect",
          "Detect built with the config's reg_max (0) instead of the fixed 16: proj/proj_conv get 1 entry, not 17",
          "Detect 使用配置中的 reg_max（0）而非固定的 16：proj/proj_conv 只有 1 个元素而非 17",
          P.plant_reg_max_from_config, options=(("use_dfl", False),),
          also_types=(T.WEIGHT_TRANSFER, T.PARAM_COUNT_DRIFT), also_locations=("detect.proj*",)),
        # initialisation
        F("head_reinit", "init", T.INIT_MISMATCH, "detect",
          "prediction convs re-initialised with the default init after initialize_biases (weights not 0, biases not the prior)",
          "initialize_biases 之后预测卷积又被默认初始化覆盖（权重不为 0，偏置不是先验值）",
          P.plant_head_reinit,
          note="the aligner copies the torch weights into the port, so a port-side init is overwritten before "
               "the comparison; only the check of the port's own initial values (before the transfer) sees it"),
        F("proj_trainable", "init", T.PARAM_COUNT_DRIFT, "detect",
          "detect.proj and proj_conv.weight left trainable (torch: requires_grad=False)",
          "detect.proj 与 proj_conv.weight 仍可训练（torch 中 requires_grad=False）",
          P.plant_proj_trainable, also_types=(T.EXTRA_GRADIENT, T.EXTRA_PARAMETER, T.MODE_MISMATCH)),
        # loss
        F("double_sigmoid", "loss", T.LOSS_DIVERGENCE, "loss",
          "sigmoid applied again before the varifocal loss (the head already returns probabilities)",
          "在 varifocal loss 前再次应用 sigmoid（检测头已输出概率）",
          P.plant_double_sigmoid),
        F("tal_topk", "loss", T.ASSIGNER_MISMATCH, "assigner",
          "TaskAlignedAssigner top-k 10 instead of 13",
          "TaskAlignedAssigner 的 top-k 为 10 而非 13",
          lambda p: P.plant_assigner_attrs(p, topk=10)),
        F("tal_alpha_beta", "loss", T.ASSIGNER_MISMATCH, "assigner",
          "TaskAlignedAssigner alpha/beta 0.5/6.0 (another codebase's defaults) instead of 1.0/6.0",
          "TaskAlignedAssigner 的 alpha/beta 为 0.5/6.0（其他代码库的默认值）而非 1.0/6.0",
          lambda p: P.plant_assigner_attrs(p, alpha=0.5)),
        F("loss_weights_swapped", "loss", T.LOSS_DIVERGENCE, "loss",
          "class and IoU loss weights swapped (2.5 / 1.0 instead of 1.0 / 2.5)",
          "分类与 IoU 损失权重互换（2.5 / 1.0 而非 1.0 / 2.5）",
          lambda p: P.plant_loss_attr(p, P.swap_class_iou_weights)),
        F("iou_type_changed", "loss", T.LOSS_DIVERGENCE, "loss",
          "IoU loss type changed (giou instead of the config's siou)",
          "IoU 损失类型被修改（giou 而非配置中的 siou）",
          lambda p: P.plant_loss_attr(p, P.other_iou_type)),
        F("targets_wrong_img_size", "loss", T.ASSIGNER_MISMATCH, "assigner",
          "ComputeLoss keeps ori_img_size=640 while the input is smaller: normalised targets are scaled wrongly",
          "ComputeLoss 保持 ori_img_size=640，而输入更小：归一化目标被错误缩放",
          lambda p: P.plant_loss_attr(p, P.wrong_img_size), also_types=(T.LOSS_DIVERGENCE,), also_locations=("loss",)),
    )


# the fast subset (test_faults_fast): one or two faults per layer of a port, cheap at a small input
FAST_SUBSET: tuple[str, ...] = ("detach_neck", "eval_before_grad", "jittor_adaptive_pool", "bn_family_isinstance",
                                "neck_width_scaled", "proj_trainable", "double_sigmoid")


def get_fault(name: str) -> Fault:
    """The catalogued fault called ``name``."""
    for f in catalogue():
        if f.name == name:
            return f
    raise KeyError(f"unknown fault {name!r}; known: {', '.join(f.name for f in catalogue())}")

