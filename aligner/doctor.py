"""`aligner doctor`: is this machine ready to align PyTorch with Jittor?

Checks both frameworks import, whether Jittor's CPU convolutions use oneDNN, where the kernel cache
lives and how big it is, and runs a ~1 s smoke test: the same conv+BN+SiLU forward and backward in
both frameworks with identical weights, reporting their largest difference.

Framework imports are lazy and local to the check functions: `import aligner` must stay framework-free.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

# Smoke-test agreement bound: conv/BN/SiLU in float32 agree to ~1e-6 relative (docs/jittor-notes.md, "Numerics against PyTorch").
SMOKE_REL_TOL = 1e-4


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def _smoke_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((2, 3, 32, 32)).astype(np.float32),
        "w": (rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32),
        "r": rng.standard_normal((2, 8, 32, 32)).astype(np.float32),
    }


def _torch_smoke(d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(d["x"])
    w = torch.from_numpy(d["w"]).requires_grad_(True)
    y = F.silu(F.batch_norm(F.conv2d(x, w, padding=1), None, None, training=True, eps=1e-3))
    (y * torch.from_numpy(d["r"])).sum().backward()
    return y.detach().numpy(), w.grad.numpy()


def _jittor_smoke(d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    import aligner.env  # noqa: F401  (before jittor)
    import jittor as jt

    x = jt.array(d["x"])
    w = jt.array(d["w"])
    y = jt.nn.conv2d(x, w, padding=1)
    mean = y.mean(dims=(0, 2, 3), keepdims=True)
    var = ((y - mean) ** 2).mean(dims=(0, 2, 3), keepdims=True)
    y = (y - mean) / jt.sqrt(var + 1e-3)
    y = y * y.sigmoid()
    (gw,) = jt.grad((y * jt.array(d["r"])).sum(), [w])
    return y.numpy(), gw.numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.abs(a64 - b64).max() / max(np.abs(a64).max(), 1e-30))


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_checks() -> DoctorReport:
    """Run every check; never raises for an environment problem (it becomes a failed Check)."""
    rep = DoctorReport()
    rep.checks.append(Check("cpu threads", True, f"{os.cpu_count()} logical CPUs"))
    inputs = _smoke_inputs()
    try:
        import torch

        (t_out, t_time) = _timed(lambda: _torch_smoke(inputs))
        rep.checks.append(Check("torch", True, f"{torch.__version__}, {torch.get_num_threads()} threads, "
                                                f"smoke fwd+bwd {t_time * 1e3:.0f} ms"))
    except Exception as exc:  # any import/runtime failure is a diagnosis, not a crash
        t_out = None
        rep.checks.append(Check("torch", False, f"{type(exc).__name__}: {exc}",
                                "run `make setup` (installs torch==2.13.0 into .venv)"))
    try:
        import aligner.env as env
        import jittor as jt
        from jittor import compile_extern

        mkl = bool(compile_extern.use_mkl and compile_extern.mkl_ops is not None)
        rep.checks.append(Check("jittor", True, f"{jt.__version__}, nvcc_path={os.environ.get('nvcc_path')!r}, "
                                                 f"use_cuda={jt.flags.use_cuda}"))
        rep.checks.append(Check("jittor oneDNN", mkl,
                                "convolutions use oneDNN" if mkl else "convolutions use Jittor's slow fallback (~50x)",
                                "" if mkl else env.SLOW_WARNING))
        cache = Path(jt.flags.cache_path)
        rep.checks.append(Check("kernel cache", cache.exists(),
                                f"{cache} ({_dir_size(cache) / 2**20:.0f} MiB)"))
        (j_out, j_time) = _timed(lambda: _jittor_smoke(inputs))
        rep.checks.append(Check("jittor smoke", True, f"fwd+bwd {j_time * 1e3:.0f} ms (first call includes kernel compile)"))
    except Exception as exc:
        j_out = None
        rep.checks.append(Check("jittor", False, f"{type(exc).__name__}: {exc}",
                                "run `make setup` (installs jittor==1.3.11.0, links oneDNN, compiles the core)"))
    if t_out is not None and j_out is not None:
        fwd, grad = _rel(t_out[0], j_out[0]), _rel(t_out[1], j_out[1])
        ok = fwd <= SMOKE_REL_TOL and grad <= SMOKE_REL_TOL
        rep.checks.append(Check("torch vs jittor", ok,
                                f"conv+BN+SiLU max rel diff: forward {fwd:.1e}, weight grad {grad:.1e} "
                                f"(bound {SMOKE_REL_TOL:.0e})",
                                "" if ok else "the two frameworks disagree on a conv: reinstall with `make setup`"))
    return rep


def main() -> int:
    """Print the report; 0 when both frameworks work, 1 otherwise."""
    rep = run_checks()
    width = max(len(c.name) for c in rep.checks)
    for c in rep.checks:
        print(f"{'ok ' if c.ok else 'FAIL'} {c.name:<{width}}  {c.detail}")
        if not c.ok and c.fix:
            print(f"     {'':<{width}}  fix: {c.fix}")
    print("doctor: all checks passed" if rep.ok else "doctor: some checks failed (see fix lines above)")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
