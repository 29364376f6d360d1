"""The fused reductions (compiled kernel and numpy path) against plain float64 numpy computed here."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import fingerprint_ref
from aligner import fused_kernel, reductions
from aligner.metrics import compare_arrays, rel_error, rel_l2_error
from aligner.records import TensorStats
from aligner.reductions import CHUNK

BACKENDS = ["numpy", pytest.param("c", marks=pytest.mark.skipif(
    fused_kernel.load() is None, reason="no C compiler: only the numpy path runs here"))]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest):
    previous = reductions.set_backend(request.param)
    yield request.param
    reductions.set_backend(previous)


def _fsum_rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def _expected(ref: np.ndarray, port: np.ndarray, rtol: float, atol: float) -> dict[str, float]:
    """All-finite metrics from whole float64 arrays, sums exactly rounded (math.fsum)."""
    r = ref.astype(np.float64).ravel()
    p = port.astype(np.float64).ravel()
    d = np.abs(p - r)
    slack = rtol * np.abs(r)
    rr, pp = math.fsum(r * r), math.fsum(p * p)
    nr, np_ = math.sqrt(rr), math.sqrt(pp)
    cos = 1.0 if nr == np_ == 0 else (0.0 if nr == 0 or np_ == 0 else math.fsum(r * p) / nr / np_)
    scale = float(np.abs(r).max())
    return dict(max_abs=float(d.max()), ref_absmax=scale, rel=float(d.max()) / (scale if scale else 1e-30),
                mean_abs=math.fsum(d) / d.size, cosine=cos,
                frac_close=int(np.sum(d <= atol + slack)) / d.size, required_atol=max(float(np.max(d - slack)), 0.0),
                zero_frac_ref=int(np.sum(r == 0)) / r.size, zero_frac_port=int(np.sum(p == 0)) / p.size,
                rel_l2=math.sqrt(math.fsum(d * d)) / (nr if nr else 1e-30))


EXACT = ("max_abs", "ref_absmax", "rel", "frac_close", "required_atol", "zero_frac_ref", "zero_frac_port")
SUMS = ("mean_abs", "cosine", "rel_l2")


def _pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    out = []
    for n in (1, 3, 7, CHUNK - 1, CHUNK, CHUNK + 5, 3 * CHUNK + 13, 9 * CHUNK + 5):  # the last on several threads
        r = rng.standard_normal(n) * 3
        p = r + rng.standard_normal(n) * 1e-3
        out.append((f"f64-{n}", r, p))
        out.append((f"f32-{n}", r.astype(np.float32), p.astype(np.float32)))
    r = rng.standard_normal((4, 33, 1001)).astype(np.float32)
    p = (r * np.float32(1.0001)).astype(np.float32)
    r.ravel()[::3] = 0.0
    p.ravel()[::4] = 0.0
    out.append(("f32-3d-zeros", r, p))
    out.append(("f32-vs-f64", r, p.astype(np.float64) + 1e-9))
    out.append(("f64-vs-f32", r.astype(np.float64) - 1e-9, p))
    out.append(("transposed", r.transpose(2, 0, 1), p.transpose(2, 0, 1)))
    out.append(("all-zero-ref", np.zeros(CHUNK + 9, np.float32), rng.standard_normal(CHUNK + 9).astype(np.float32)))
    out.append(("both-zero", np.zeros((5, 70000)), np.zeros((5, 70000))))
    out.append(("identical", r, r.copy()))
    out.append(("negative-zero", np.full(100, -0.0), np.zeros(100)))
    out.append(("0-d", np.array(2.5, np.float32), np.array(2.0)))
    out.append(("float16", r.astype(np.float16), p.astype(np.float16)))
    out.append(("int32", rng.integers(-1000, 1000, 70001).astype(np.int32), rng.integers(-1000, 1000, 70001)))
    out.append(("huge-but-finite", np.full(10, 1e150), np.full(10, -1e150)))
    return out


@pytest.mark.parametrize("name,ref,port", _pairs(), ids=[c[0] for c in _pairs()])
def test_compare_arrays_matches_float64_numpy(backend, name, ref, port):
    rtol, atol = 1e-3, 1e-6
    m = compare_arrays(ref, port, rtol=rtol, atol=atol)
    want = _expected(ref, port, rtol, atol)
    for k in EXACT:
        assert getattr(m, k) == want[k], k
    for k in SUMS:
        assert _fsum_rel(getattr(m, k), want[k]) <= 1e-12, (k, getattr(m, k), want[k])
    assert (m.nan_ref, m.nan_port, m.inf_ref, m.inf_port) == (0, 0, 0, 0)
    assert m.exact == bool(np.array_equal(ref.astype(np.float64), port.astype(np.float64)))
    assert rel_error(ref, port) == want["rel"]
    assert _fsum_rel(rel_l2_error(ref, port), want["rel_l2"]) <= 1e-12


def test_overflow_and_non_finite_take_the_masked_path(backend):
    rng = np.random.default_rng(3)
    r = rng.standard_normal(CHUNK * 2 + 1)
    p = r.copy()
    r[5], p[5] = np.inf, np.inf          # matching infinities count as equal
    p[CHUNK + 3] = np.nan                # NaN never equals anything
    r[7] = -np.inf
    m = compare_arrays(r, p, rtol=1e-3)
    assert (m.nan_ref, m.nan_port, m.inf_ref, m.inf_port) == (0, 1, 2, 1)
    assert m.max_abs == math.inf and not m.exact and m.rel_l2 == math.inf
    big = np.full(8, 1e200)              # finite, but the sums of squares overflow
    mb = compare_arrays(big, big * 0.5)
    assert mb.max_abs == 5e199 and mb.rel == 0.5 and mb.frac_close == 0.0
    assert rel_error(big, big * 0.5) == 0.5


def test_shape_mismatch_and_empty(backend):
    assert compare_arrays(np.zeros(4), np.zeros(5)).max_abs == math.inf
    e = compare_arrays(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
    assert e.exact and e.max_abs == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64])
def test_tensor_stats_match_float64_numpy(backend, dtype):
    rng = np.random.default_rng(11)
    a = (rng.standard_normal((3, CHUNK + 77)) * 50 + 7).astype(dtype)
    a[0, ::6] = 0
    s = TensorStats.of(a)
    x = a.astype(np.float64).ravel()
    mean = math.fsum(x) / x.size
    std = math.sqrt(math.fsum((x - mean) ** 2) / x.size)
    assert (s.min, s.max, s.zero_frac, s.nan, s.inf) == (x.min(), x.max(), np.sum(x == 0) / x.size, 0, 0)
    assert _fsum_rel(s.mean, mean) <= 1e-12 and _fsum_rel(s.std, std) <= 1e-12
    assert _fsum_rel(s.l2, math.sqrt(math.fsum(x * x))) <= 1e-12
    assert s.fingerprint == fingerprint_ref.fingerprint(a)
    b = a.copy()
    b.reshape(-1).view(np.uint8)[-b.itemsize] ^= 1   # the lowest bit of the last element (little-endian)
    assert TensorStats.of(b).fingerprint != s.fingerprint
    c = a.copy()
    c[0, [1, 2]] = c[0, [2, 1]]                      # two different elements swapped
    assert c[0, 1] != c[0, 2] and TensorStats.of(c).fingerprint != s.fingerprint


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_fingerprint_of_a_tensor_split_over_threads(backend, dtype):
    """Above the parallel threshold each thread's blocks start mid-tensor: positions stay global."""
    a = np.random.default_rng(3).standard_normal(reductions._PARALLEL_MIN + 4 * CHUNK + 5) * 1e3
    a = a.astype(dtype)
    assert TensorStats.of(a).fingerprint == fingerprint_ref.fingerprint(a)


def test_tensor_stats_non_finite(backend):
    a = np.linspace(-1, 1, CHUNK + 3, dtype=np.float32)
    a[10], a[CHUNK + 1] = np.nan, -np.inf
    s = TensorStats.of(a)
    fin = a[np.isfinite(a)].astype(np.float64)
    assert (s.nan, s.inf, s.min, s.max) == (1, 1, fin.min(), fin.max())
    assert s.mean == pytest.approx(fin.mean(), rel=1e-12)


def test_backends_agree_on_partials_chunk_by_chunk():
    """Same chunking, so the per-chunk counts and maxima are identical and the sums agree closely."""
    if fused_kernel.load() is None:
        pytest.skip("no C compiler")
    rng = np.random.default_rng(5)
    r = rng.standard_normal(5 * CHUNK + 11).astype(np.float32)
    p = (r + rng.standard_normal(r.size) * 1e-4).astype(np.float32)
    previous = reductions.set_backend("numpy")
    try:
        slow = reductions.pair_sums(r, p, 1e-4, 1e-7)
        reductions.set_backend("c")
        fast = reductions.pair_sums(r, p, 1e-4, 1e-7)
    finally:
        reductions.set_backend(previous)
    for k in ("n", "zeros_ref", "zeros_port", "ref_absmax", "max_abs", "required", "close"):
        assert getattr(fast, k) == getattr(slow, k), k
    for k in ("sum_abs", "rr", "pp", "rp", "dd"):
        assert _fsum_rel(getattr(fast, k), getattr(slow, k)) <= 1e-12, k


@pytest.mark.parametrize("env", [{"ALIGNER_KERNEL": "numpy"}, {"CC": "/nonexistent/cc"}])
def test_without_a_compiler_the_numpy_path_runs(tmp_path, env):
    code = ("import numpy as np\nfrom aligner import reductions\nfrom aligner.metrics import compare_arrays\n"
            "m = compare_arrays(np.array([1.0, 2.0]), np.array([1.0, 2.5]))\n"
            "print(reductions.backend(), m.max_abs)\n")
    run_env = {**os.environ, "ALIGNER_KERNEL_CACHE": str(tmp_path), **env}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=run_env)
    assert out.stdout.split() == ["numpy", "0.5"]
    assert not list(tmp_path.glob("*.so"))
