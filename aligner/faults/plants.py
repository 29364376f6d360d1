"""The planted faults: one context manager per catalogued porting fault of GOLD-YOLO's Jittor port.

Each ``plant_<name>(probe, **plant_args)`` (``PLANTS[name]``, named by catalogue.toml) patches ``jittor_impl``
(see :mod:`aligner.faults.patching`) and calls ``probe.hit()`` whenever the faulty code runs. Module and
attribute names are those of reference_torch, which the port mirrors.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from .patching import (Probe, after_init, jt_module, on_call, on_first_arg, on_model, override_execute, patch_attr,
                       port_module, rebind_init, submodule, wrap_method)

# ---------------------------------------------------------------------------------------------
# graph breaks


def plant_detach_neck(probe: Probe) -> AbstractContextManager[None]:
    def edit(model: Any) -> None:
        override_execute(submodule(model, "neck.Rep_p4"),
                         lambda orig: on_call(lambda x: orig(x).detach(), probe))
    return on_model(edit)


def plant_numpy_roundtrip_loss(probe: Probe) -> AbstractContextManager[None]:
    jt = jt_module()

    def roundtrip(outputs: Any) -> Any:
        scores = outputs[1]
        # the port's "to numpy and back" (dtype kept, so only the graph breaks)
        return (outputs[0], jt.array(scores.numpy(), str(scores.dtype)), *outputs[2:])
    return on_first_arg(port_module("loss").ComputeLoss, "__call__", roundtrip, probe)


def plant_stop_grad_param(probe: Probe) -> AbstractContextManager[None]:
    def edit(model: Any) -> None:
        conv = submodule(model, "neck.conv_1x1_n")

        def make(orig: Callable[..., Any]) -> Callable[..., Any]:
            def execute(x: Any) -> Any:
                probe.hit()
                _ = conv.weight.stop_grad()  # meant as a detached view; Jittor's stop_grad is in place
                return orig(x)
            return execute
        override_execute(conv, make)
    return on_model(edit)


def plant_requires_grad_block(probe: Probe) -> AbstractContextManager[None]:
    def edit(model: Any) -> None:
        probe.hit()
        submodule(model, "neck.Rep_p3").requires_grad_(False)  # torch idiom "freeze this block"
    return on_model(edit)


def plant_eval_before_grad(probe: Probe) -> AbstractContextManager[None]:
    def edit(model: Any) -> None:
        probe.hit()
        model.eval()  # Jittor: also stop_grad() on every parameter
    return on_model(edit)


def plant_eval_neck_bn_freeze(probe: Probe) -> AbstractContextManager[None]:
    def edit(model: Any) -> None:
        probe.hit()
        model.neck.eval()  # torch idiom "freeze BN statistics of the neck"; Jittor freezes its weights too
    return on_model(edit)


def plant_hidden_param_list(probe: Probe) -> AbstractContextManager[None]:
    def edit(model: Any) -> None:
        probe.hit()
        preds = model.detect.cls_preds
        model.detect.cls_preds = [preds[i] for i in range(len(preds))]  # a Python list: invisible to Jittor
    return on_model(edit)


# ---------------------------------------------------------------------------------------------
# numerics


def plant_jittor_adaptive_pool(probe: Probe) -> AbstractContextManager[None]:
    nn = jt_module().nn

    def pool(x: Any, size: Any) -> Any:
        probe.hit()
        return nn.AdaptiveAvgPool2d((int(size[0]), int(size[1])))(x)
    return patch_attr(port_module("neck"), "adaptive_avg_pool2d", pool)


def plant_interpolate_default_mode(probe: Probe) -> AbstractContextManager[None]:
    nn = jt_module().nn

    def resize(x: Any, size: Any) -> Any:
        probe.hit()
        return nn.resize(x, (int(size[0]), int(size[1])))  # default mode: nearest
    return patch_attr(port_module("neck"), "_interpolate_bilinear", resize)


def plant_interpolate_align_corners(probe: Probe) -> AbstractContextManager[None]:
    nn = jt_module().nn

    def interp(x: Any, size: Any) -> Any:
        probe.hit()
        return nn.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=True)
    return patch_attr(port_module("neck"), "_interpolate_bilinear", interp)


def plant_bn_family(probe: Probe, eps: float, momentum: float, exact: bool) -> AbstractContextManager[None]:
    bn_cls = port_module("layers").BatchNorm2d

    def initialize_weights(model: Any) -> None:
        probe.hit()
        for m in model.modules():
            if (type(m) is bn_cls) if exact else isinstance(m, bn_cls):
                m.eps, m.momentum = eps, momentum
    return patch_attr(port_module("model"), "initialize_weights", initialize_weights)


def plant_biased_running_var(probe: Probe) -> AbstractContextManager[None]:
    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def _update_running_stats(self: Any, mean: Any, var_sum: Any, n: int) -> None:
            probe.hit()
            # Jittor's own BatchNorm puts the biased variance sum/n into running_var; the torch port divides
            # by n - 1, so handing it sum * (n-1)/n makes exactly that change (the normalisation is untouched)
            return orig(self, mean, var_sum * ((n - 1) / n), n)
        return _update_running_stats
    return wrap_method(port_module("layers").BatchNorm2d, "_update_running_stats", make)


def plant_attention(probe: Probe, variant: str) -> AbstractContextManager[None]:
    jt = jt_module()
    nn = jt.nn

    def execute(self: Any, x: Any) -> Any:
        probe.hit()
        B, C, H, W = x.shape
        qq = self.to_q(x).reshape(B, self.num_heads, self.key_dim, H * W).permute(0, 1, 3, 2)
        kk = self.to_k(x).reshape(B, self.num_heads, self.key_dim, H * W)
        vv = self.to_v(x).reshape(B, self.num_heads, self.d, H * W).permute(0, 1, 3, 2)
        attn = jt.matmul(qq, kk)
        if variant == "scaled":
            attn = nn.softmax(attn * self.scale, dim=-1)  # the textbook 1/sqrt(d) the official code omits
        else:
            attn = nn.softmax(attn)  # no dim: Jittor normalises over all elements
        xx = jt.matmul(attn, vv).permute(0, 1, 3, 2).reshape(B, self.dh, H, W)
        return self.proj(xx)
    return patch_attr(port_module("transformer").Attention, "execute", execute)


def plant_silu_for_relu(probe: Probe) -> AbstractContextManager[None]:
    nn = jt_module().nn

    def edit(conv: Any) -> None:
        probe.hit()
        conv.act = nn.SiLU()  # copy-pasted from Conv
    return after_init(port_module("layers").SimConv, edit)


def plant_repvgg_no_identity(probe: Probe) -> AbstractContextManager[None]:
    def execute(self: Any, inputs: Any) -> Any:
        if hasattr(self, "rbr_reparam"):
            return self.nonlinearity(self.se(self.rbr_reparam(inputs)))
        if self.rbr_identity is not None:
            probe.hit()
        return self.nonlinearity(self.se(self.rbr_dense(inputs) + self.rbr_1x1(inputs)))  # identity forgotten
    return patch_attr(port_module("layers").RepVGGBlock, "execute", execute)


def plant_drop_path_active(probe: Probe) -> AbstractContextManager[None]:
    tr = port_module("transformer")

    def edit(layer: Any) -> None:
        for i in range(1, layer.block_num):
            blk = layer.transformer_blocks[i]
            if not isinstance(blk.drop_path, tr.DropPath):  # the run asked for rate 0; the port keeps 0.1
                probe.hit()
                blk.drop_path = tr.DropPath(0.1)
    return after_init(tr.TopBasicLayer, edit)


# ---------------------------------------------------------------------------------------------
# structure


def plant_neck_width_scaled(probe: Probe) -> AbstractContextManager[None]:
    make_divisible = port_module("configs").make_divisible

    def change(args: dict[str, Any]) -> None:
        probe.hit()
        e, ch = args["extra_cfg"], args["channels_list"]
        width = ch[0] / 64  # the backbone's first width is 64 * width_multiple
        args["extra_cfg"] = dataclasses.replace(e, embed_dim_p=make_divisible(e.embed_dim_p * width, 8))
    return rebind_init(port_module("neck").RepGDNeck, change)


def plant_split_order_swapped(probe: Probe) -> AbstractContextManager[None]:
    jt = jt_module()

    def execute(self: Any, input: Any) -> Any:
        probe.hit()
        c2, c3, c4, c5 = input
        low_fuse_feat = self.low_IFM(self.low_FAM(input))
        # port: g1, g0 = split(x, trans[1::-1]) -- same sizes per branch, channels taken from the wrong end
        g1, g0 = jt.split(low_fuse_feat, self.trans_channels[1::-1], dim=1)
        c5_half = self.reduce_layer_c5(c5)
        p4 = self.Rep_p4(self.Inject_p4(self.LAF_p4([c3, c4, c5_half]), g0))
        p4_half = self.reduce_layer_p4(p4)
        p3 = self.Rep_p3(self.Inject_p3(self.LAF_p3([c2, c3, p4_half]), g1))
        high_fuse_feat = self.conv_1x1_n(self.high_IFM(self.high_FAM([p3, p4, c5])))
        h0, h1 = jt.split(high_fuse_feat, self.trans_channels[2:4], dim=1)
        n4 = self.Rep_n4(self.Inject_n4(self.LAF_n4(p3, p4_half), h0))
        n5 = self.Rep_n5(self.Inject_n5(self.LAF_n5(self._n5_local(p4, n4), c5_half), h1))
        return [p3, n4, n5]
    return patch_attr(port_module("neck").RepGDNeck, "execute", execute)


def plant_loss_attr(probe: Probe, edit: str) -> AbstractContextManager[None]:
    """``edit`` (the name of one of the loss edits at the end of this file) applied to every new ComputeLoss."""
    change = _LOSS_EDITS[edit]

    def run(loss: Any) -> None:
        probe.hit()
        change(loss)
    return after_init(port_module("loss").ComputeLoss, run)


def plant_anchor_stride_from_size(probe: Probe) -> AbstractContextManager[None]:
    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def __call__(self: Any, outputs: Any, *args: Any, **kwargs: Any) -> Any:
            probe.hit()
            saved = self.fpn_strides
            # port: stride = image size // feature size (right only when the size is a multiple of 32)
            self.fpn_strides = [int(self.ori_img_size) // int(f.shape[2]) for f in outputs[0]]
            try:
                return orig(self, outputs, *args, **kwargs)
            finally:
                self.fpn_strides = saved
        return __call__
    return wrap_method(port_module("loss").ComputeLoss, "__call__", make)


def plant_reg_max_from_config(probe: Probe) -> AbstractContextManager[None]:
    def change(args: dict[str, Any]) -> None:
        probe.hit()
        reg_pred = args["head_layers"][4]
        args["reg_max"] = int(reg_pred.out_channels) // 4 - 1  # port passes cfg.reg_max (0 without DFL)
    return rebind_init(port_module("head").Detect, change)


# ---------------------------------------------------------------------------------------------
# initialisation


def plant_head_reinit(probe: Probe) -> AbstractContextManager[None]:
    jt = jt_module()

    def edit(model: Any) -> None:
        probe.hit()
        # a blanket re-init after initialize_biases: default conv init for every prediction conv
        for convs in (model.detect.cls_preds, model.detect.reg_preds):
            for i in range(len(convs)):
                conv = convs[i]
                fan_in = int(math.prod(conv.weight.shape[1:]))
                bound = 1.0 / math.sqrt(fan_in)
                conv.weight.assign(jt.init.uniform(conv.weight.shape, "float32", -bound, bound))
                conv.bias.assign(jt.init.uniform(conv.bias.shape, "float32", -bound, bound))
    return on_model(edit)


def plant_proj_trainable(probe: Probe) -> AbstractContextManager[None]:
    def edit(model: Any) -> None:
        probe.hit()
        model.detect.proj.start_grad()  # torch: Parameter(requires_grad=False); Jittor Vars train by default
        model.detect.proj_conv.weight.start_grad()
    return on_model(edit)


# ---------------------------------------------------------------------------------------------
# loss


def plant_double_sigmoid(probe: Probe) -> AbstractContextManager[None]:
    # the head already applied the sigmoid to the scores the varifocal loss gets
    return on_first_arg(port_module("loss").VarifocalLoss, "execute", jt_module().sigmoid, probe)


def plant_assigner_attrs(probe: Probe, **values: float) -> AbstractContextManager[None]:
    def edit(tal: Any) -> None:
        probe.hit()
        for k, v in values.items():
            setattr(tal, k, v)
    return after_init(port_module("assigners").TaskAlignedAssigner, edit)


def grid_offset_zero(loss: Any) -> None:
    loss.grid_cell_offset = 0.0  # anchor points at the cell corners


def swap_class_iou_weights(loss: Any) -> None:
    w = loss.loss_weight
    w["class"], w["iou"] = w["iou"], w["class"]


def other_iou_type(loss: Any) -> None:
    new = "giou" if loss.iou_type != "giou" else "siou"
    loss.iou_type = new
    loss.bbox_loss.iou_loss.iou_type = new


def wrong_img_size(loss: Any) -> None:
    loss.ori_img_size = 640 if int(loss.ori_img_size) != 640 else 512  # the ComputeLoss default, not the input


_LOSS_EDITS: dict[str, Callable[[Any], None]] = {
    f.__name__: f for f in (grid_offset_zero, swap_class_iou_weights, other_iou_type, wrong_img_size)}

# plant name (catalogue.toml) -> ``plant_<name>(probe, **plant_args)``
PLANTS: dict[str, Callable[..., AbstractContextManager[None]]] = {
    name.removeprefix("plant_"): fn for name, fn in list(globals().items()) if name.startswith("plant_")}
