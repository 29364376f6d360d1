"""The Pair protocol: how to build, feed, train-mode and score one PyTorch model and its Jittor port.

A pair is a plain object (options in, models out). Framework imports happen inside its methods, so
importing a pair module loads no framework. Weights always flow torch -> Jittor: the torch side is
built and seeded (and put into the requested state), then copied into the Jittor model, so both
frameworks see identical numbers.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..adapters.base import LossFn
from ..rules.pair import PairRules

__all__ = ["Pair", "PairInputs"]


@dataclass(frozen=True)
class PairInputs:
    """Numpy inputs of one run; the adapters turn them into framework tensors."""
    inputs: list[np.ndarray]                  # positional model inputs
    targets: Any = None                       # numpy array / nested structure for the loss
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-able description (shapes, recipe)


@dataclass(frozen=True, kw_only=True)
class Pair(ABC):
    """A registered model pair: frozen options (change one with ``dataclasses.replace``). Subclasses set
    ``name``/``states``, add their options as fields and implement the hooks below."""

    name: ClassVar[str] = "pair"
    states: ClassVar[tuple[str, ...]] = ("default",)   # model states a default run checks, in order
    item_names: ClassVar[tuple[str, ...]] = ()         # loss item names (stage "loss_items")

    seed: int = 0
    dtype: str = "float32"
    batch: int = 2
    # the user's own loss for the Jittor side (``--port-loss``): a function building the loss object L of
    # :meth:`port_loss_fn`; not a pair option (no ``--set``), not part of the pair's identity
    port_loss: Callable[[], Any] | None = field(default=None, compare=False, repr=False,
                                                metadata={"setting": False})

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")

    def config(self) -> dict[str, Any]:
        """Pair-specific options for results.json ``run.config`` (JSON-able)."""
        return {"batch": self.batch}

    @property
    def label(self) -> str:
        """Registered name with its variant, e.g. ``gold_yolo-n``."""
        return self.name

    def rules(self) -> PairRules | None:
        """Finding rules of this pair beyond the generic ones (anchors, assigner, name hints); None: none."""
        return None

    # ----- models ------------------------------------------------------------------------------
    @abstractmethod
    def build_torch(self) -> Any:
        """The seeded reference model, in ``self.dtype``, in the mode the run checks."""

    @abstractmethod
    def build_jittor(self, **options: Any) -> Any:
        """The port, in ``self.dtype`` (its weights are replaced by the torch ones)."""

    def apply_state(self, torch_model: Any, state: str) -> None:
        """Put the torch model's weights into ``state`` (in place); the default has one state."""
        if state not in self.states:
            raise ValueError(f"{self.name}: unknown state {state!r}; known: {list(self.states)}")

    def prepare(self, model: Any, framework: str) -> None:
        """Set the mode a capture runs in (train mode by default; never Jittor's eval() before grads)."""
        if framework == "torch":
            model.train()
        else:
            for _, m in model.named_modules():
                m.is_train = True

    # ----- data and loss -------------------------------------------------------------------------
    @abstractmethod
    def make_inputs(self, seed: int | None = None) -> PairInputs:
        """Deterministic numpy inputs/targets from ``seed`` (default: the pair's seed)."""

    @abstractmethod
    def torch_loss(self) -> LossFn:
        """``loss(outputs, targets, ctx) -> scalar``; stages recorded with ``ctx.record``."""

    @abstractmethod
    def jittor_loss(self) -> LossFn:
        """Same contract as :meth:`torch_loss`, for the Jittor model."""

    def loss_for(self, framework: str) -> LossFn:
        if framework == "torch":
            return self.torch_loss()
        return self.jittor_loss() if self.port_loss is None else self.port_loss_fn(self.port_loss())

    # ----- the user's own loss (``--port-loss``; checked alone by aligner.adapters.loss_check) -----------
    # head leaves (flatten paths of :meth:`head_of`'s value) whose gradients the loss check compares, by name
    head_grads: ClassVar[dict[str, str]] = {}

    def head_of(self, outputs: Any) -> Any:
        """What the loss takes from the reference model's outputs (the reference layout); default: all of it."""
        return outputs

    def stress_head(self, head: Any, targets: Any) -> Any:
        """A stress input for the loss built from the reference head ``head`` (numpy leaves, same structure),
        where clamping and NaN handling decide the result; None: the pair has none."""
        return None

    def port_loss_fn(self, loss_obj: Any, *, from_model: bool = True) -> LossFn:
        """``loss(outputs, targets, ctx)`` around the user's loss object ``L``: ``L(head, targets) -> (total,
        items)`` on the head in the reference layout (``L.head(outputs)`` when L has it, else
        :meth:`head_of`; ``from_model`` False: ``outputs`` is that head already). Records ``loss_items`` and
        ``L.assignment`` (a dict set during the call, e.g. ``fg_mask``) as the ``assign/<key>`` stages."""
        convert = getattr(loss_obj, "head", None)
        convert = convert if callable(convert) else self.head_of

        def loss(outputs: Any, targets: Any, ctx: Any) -> Any:
            head = convert(outputs) if from_model else outputs
            if hasattr(loss_obj, "assignment"):
                loss_obj.assignment = None  # a stale one from an earlier call is not this call's
            total, items = loss_obj(head, targets)
            if isinstance(items, (list, tuple)):  # a list of scalars: one array, as the reference's Var [3]
                items = np.asarray([float(v.item()) if hasattr(v, "item") else float(v) for v in items])
            ctx.record("loss_items", items)
            assignment = getattr(loss_obj, "assignment", None)
            if isinstance(assignment, dict) and assignment:
                ctx.record("assign", dict(assignment))
            return total
        return loss

    def build_for(self, framework: str, **options: Any) -> Any:
        return self.build_torch() if framework == "torch" else self.build_jittor(**options)

    def build_port(self, factory: Callable[[], Any]) -> Any:
        """A user's own Jittor port from ``factory()``, built as the pair's own port is (seeded, cast to the
        pair's dtype, in the checked mode)."""
        return self._seeded_jittor(factory)

    def _seeded_torch(self, build: Callable[[], Any]) -> Any:
        """``build()`` under ``torch.manual_seed(seed)``, cast to the pair's dtype, in the checked mode."""
        import torch  # noqa: PLC0415 - lazy
        torch.manual_seed(self.seed)
        model = build()
        if self.dtype == "float64":  # built (and initialised) in float32, as the golden data was
            model = model.double()
        self.prepare(model, "torch")
        return model

    def _seeded_jittor(self, build: Callable[[], Any]) -> Any:
        """``build()`` under ``jt.set_global_seed(seed)``, cast to the pair's dtype, in the checked mode."""
        import jittor_impl.env  # noqa: F401, PLC0415 - configures Jittor before it is imported
        import jittor as jt  # noqa: PLC0415
        jt.set_global_seed(self.seed)
        model = build()
        if self.dtype == "float64":
            model.float64()
        self.prepare(model, "jittor")
        return model

    # ----- stages --------------------------------------------------------------------------------
    def summarize_stages(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """JSON-able summaries of ``stage/*`` arrays; the default reports the loss."""
        out: dict[str, Any] = {}
        if "stage/loss" in arrays:
            loss: dict[str, Any] = {"total": float(np.asarray(arrays["stage/loss"]).reshape(-1)[0])}
            if "stage/loss_items" in arrays:
                loss["items"] = [float(v) for v in np.asarray(arrays["stage/loss_items"]).reshape(-1)]
                loss["item_names"] = list(self.item_names)
            out["loss"] = loss
        return out
