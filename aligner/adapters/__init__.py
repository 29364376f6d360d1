"""Framework adapters. Only ``torch_adapter`` / ``jittor_adapter`` import a framework, and only when
:func:`get_adapter` is called, so importing this package loads neither."""
from __future__ import annotations

from ..records import Framework
from .base import Adapter, GradResult, NamedTensor
from .recording import LossContext, LossFn, flatten, probe_loss

__all__ = ["Adapter", "GradResult", "LossContext", "LossFn", "NamedTensor", "flatten", "probe_loss",
           "get_adapter"]


def get_adapter(framework: Framework | str) -> Adapter:
    """A fresh adapter for ``"torch"`` or ``"jittor"`` (imports that framework now)."""
    fw = Framework(framework)
    if fw == Framework.TORCH:
        from .torch_adapter import TorchAdapter  # noqa: PLC0415 - lazy on purpose
        return TorchAdapter()
    from .jittor_adapter import JittorAdapter  # noqa: PLC0415 - lazy on purpose
    return JittorAdapter()
