"""A GOLD-YOLO-N Jittor port written independently of jittor_impl (other module names, one more wrapper level,
its own batch norm, outputs in another order, its own loss signature), with planted deviations that can be
switched on by name. ``model.build`` makes the model, ``adapter.build_loss`` the loss for ``--port-loss``.
"""
# name -> where it is planted (this port's module / setting)
MODEL_DEVIATIONS = {
    "stem_bn_eps": "body.stem.dense.norm: eps 1e-5 (torch's default) instead of yolov6's 1e-3",
    "neck_act": "fpn.stage_p3.units.1: SiLU instead of ReLU after the RepVGG sum",
    "attn_scale": "fpn.high_blocks.0.attn: logits scaled by key_dim ** -0.5, which the official code omits",
    "head_stem_bias": "heads.levels.1.stem.block.conv: a bias the reference conv does not have",
}
LOSS_DEVIATIONS = {
    "loss_iou_weight": "DetLoss: iou weight 2.0 instead of 2.5",
    "assigner_topk": "AlignedAssigner: top-k 9 instead of 13",
}
DEVIATIONS = {**MODEL_DEVIATIONS, **LOSS_DEVIATIONS}
