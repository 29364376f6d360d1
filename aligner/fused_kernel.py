"""The fused reductions of :mod:`aligner.reductions` as a small C kernel, compiled at first use.

One pass per block reads each element once, casts it to float64 in registers and updates every
accumulator (no temporary arrays): about 15x the chunked numpy passes on the 2-core machine
(benchmarks/results/compare_throughput.md). Blocks are independent, so threads run disjoint block
ranges with the GIL released (ctypes) and the caller combines the per-block partials in block order.

Arithmetic: float64 throughout, no fast-math and no contraction to FMA, so the elementwise quantities
(``|d|``, ``rtol*|ref|``, the closeness test, ``|d| - rtol*|ref|``) round exactly as numpy's; only the
order of the sums differs (8 lanes instead of numpy's pairwise/BLAS order, ~1e-14 relative).

A compiler is optional: when ``cc`` (``$CC``) is missing or fails, :func:`load` returns None and
:mod:`aligner.reductions` runs its numpy path instead (as it does when the library disagrees with that
path on a probe). The library is
cached per source, compiler flags and CPU (``-march=native``) under ``$ALIGNER_KERNEL_CACHE`` or
``~/.cache/aligner/kernels``. ``ALIGNER_KERNEL=numpy`` disables it.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

__all__ = ["PAIR_FIELDS", "STATS_FIELDS", "load", "SOURCE"]

log = logging.getLogger(__name__)

# per block: zeros_ref, zeros_port, max|r|, max|d|, sum|d|, rr, pp, rp, dd, max(|d|-rtol|r|), close
PAIR_FIELDS = 11
# per block: n, min, max, sum, sum (x - block mean)^2, sum x^2, zeros, fingerprint (uint64 bits in a double slot)
STATS_FIELDS = 8
# the fingerprint's constants (see FINGERPRINT in the source; aligner.reductions has the numpy twin)
FP_STEP, FP_MUL = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9

SOURCE = r"""
#include <stdint.h>
#include <string.h>

typedef double v4d __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef int64_t v4l __attribute__((vector_size(32)));

#define NEG_INF ((v4d){-__builtin_inf(), -__builtin_inf(), -__builtin_inf(), -__builtin_inf()})
#define POS_INF ((v4d){__builtin_inf(), __builtin_inf(), __builtin_inf(), __builtin_inf()})

static inline v4d load_f(const float *x) { v4f v; memcpy(&v, x, sizeof v); return __builtin_convertvector(v, v4d); }
static inline v4d load_d(const double *x) { v4d v; memcpy(&v, x, sizeof v); return v; }
static inline v4d vabs(v4d x) { const v4l m = {INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX}; return (v4d)((v4l)x & m); }
/* b > a ? b : a per lane; vmaxpd computes exactly that (the generic blend costs ~15% of the speed) */
#if defined(__AVX__)
#include <immintrin.h>
static inline v4d vmax(v4d a, v4d b) { return (v4d)_mm256_max_pd((__m256d)b, (__m256d)a); }
static inline v4d vmin(v4d a, v4d b) { return (v4d)_mm256_min_pd((__m256d)b, (__m256d)a); }
#else
static inline v4d vsel(v4l g, v4d b, v4d a) { return (v4d)(((v4l)b & g) | ((v4l)a & ~g)); }
static inline v4d vmax(v4d a, v4d b) { return vsel((v4l)(b > a), b, a); }
static inline v4d vmin(v4d a, v4d b) { return vsel((v4l)(b < a), b, a); }
#endif
static inline double hsum(v4d v) { return (v[0] + v[1]) + (v[2] + v[3]); }
static inline double smax(double a, double b) { return a > b ? a : b; }
static inline double smin(double a, double b) { return a < b ? a : b; }
static inline double hmax(v4d v) { return smax(smax(v[0], v[1]), smax(v[2], v[3])); }
static inline double hmin(v4d v) { return smin(smin(v[0], v[1]), smin(v[2], v[3])); }
static inline double hcnt(v4l v) { return (double)(-(v[0] + v[1] + v[2] + v[3])); }  /* true lanes are -1 */

#define PAIR_STEP(LR, LP, j, am, dm, ds, rr, pp, rp, dd, rq) {                                      \
    v4d a = LR(r + (j)), b = LP(p + (j)), d = b - a, ad = vabs(d), ar = vabs(a), s = ar * vr;      \
    zr += (v4l)(a == z); zp += (v4l)(b == z);                                                       \
    am = vmax(am, ar); dm = vmax(dm, ad); ds += ad;                                                 \
    rr += a * a; pp += b * b; rp += a * b; dd += d * d;                                             \
    rq = vmax(rq, ad - s); cl += (v4l)(ad <= s + va); }

#define PAIR(NAME, TR, TP, LR, LP)                                                                  \
static void NAME##_block(const TR *r, const TP *p, int64_t n, double rtol, double atol, double *o) { \
    const v4d z = {0, 0, 0, 0}, vr = {rtol, rtol, rtol, rtol}, va = {atol, atol, atol, atol};        \
    v4l zr = {0}, zp = {0}, cl = {0};                                                              \
    /* two accumulator sets: twice the instruction-level parallelism */                            \
    v4d am = z, dm = z, ds = z, rr = z, pp = z, rp = z, dd = z, rq = NEG_INF;                       \
    v4d am2 = z, dm2 = z, ds2 = z, rr2 = z, pp2 = z, rp2 = z, dd2 = z, rq2 = NEG_INF;               \
    int64_t i = 0;                                                                                 \
    for (; i + 8 <= n; i += 8) {                                                                   \
        PAIR_STEP(LR, LP, i, am, dm, ds, rr, pp, rp, dd, rq)                                       \
        PAIR_STEP(LR, LP, i + 4, am2, dm2, ds2, rr2, pp2, rp2, dd2, rq2)                           \
    }                                                                                              \
    for (; i + 4 <= n; i += 4) PAIR_STEP(LR, LP, i, am, dm, ds, rr, pp, rp, dd, rq)                \
    am = vmax(am, am2); dm = vmax(dm, dm2); rq = vmax(rq, rq2);                                    \
    ds += ds2; rr += rr2; pp += pp2; rp += rp2; dd += dd2;                                         \
    double czr = hcnt(zr), czp = hcnt(zp), ccl = hcnt(cl), sam = hmax(am), sdm = hmax(dm);         \
    double sds = hsum(ds), srr = hsum(rr), spp = hsum(pp), srp = hsum(rp), sdd = hsum(dd);         \
    double srq = hmax(rq);                                                                         \
    for (; i < n; i++) {                                                                           \
        double a = r[i], b = p[i], d = b - a, ad = __builtin_fabs(d), ar = __builtin_fabs(a);      \
        double s = ar * rtol;                                                                      \
        czr += a == 0; czp += b == 0;                                                              \
        if (ar > sam) sam = ar;                                                                    \
        if (ad > sdm) sdm = ad;                                                                    \
        sds += ad; srr += a * a; spp += b * b; srp += a * b; sdd += d * d;                          \
        if (ad - s > srq) srq = ad - s;                                                            \
        ccl += ad <= s + atol;                                                                     \
    }                                                                                              \
    o[0] = czr; o[1] = czp; o[2] = sam; o[3] = sdm; o[4] = sds; o[5] = srr; o[6] = spp;             \
    o[7] = srp; o[8] = sdd; o[9] = srq; o[10] = ccl;                                               \
}                                                                                                  \
void NAME(const TR *r, const TP *p, int64_t n, int64_t block, double rtol, double atol, double *out) { \
    for (int64_t s = 0, k = 0; s < n; s += block, k++)                                             \
        NAME##_block(r + s, p + s, n - s < block ? n - s : block, rtol, atol, out + 11 * k);       \
}

PAIR(pair_ff, float, float, load_f, load_f)
PAIR(pair_fd, float, double, load_f, load_d)
PAIR(pair_df, double, float, load_d, load_f)
PAIR(pair_dd, double, double, load_d, load_d)

/* FINGERPRINT: sum over elements (mod 2^64) of mix(bits_i + (base + i) * STEP), mix = xorshift, multiply,
   xorshift. Each step is a bijection of the element's bits, so any one changed element changes the sum; the
   position enters every term, so moved elements do too. Order-free: blocks and lanes add up in any order. */
typedef uint64_t v4u __attribute__((vector_size(32)));
#define FP_STEP 0x9E3779B97F4A7C15ULL
#define FP_MUL 0xBF58476D1CE4E5B9ULL
static inline uint64_t fp_mix(uint64_t w, uint64_t i) {
    uint64_t x = w + i * FP_STEP; x ^= x >> 29; x *= FP_MUL; return x ^ (x >> 32); }
static inline double fp_bits(uint64_t h) { double d; memcpy(&d, &h, sizeof d); return d; }
static uint64_t fp_u32(const uint32_t *w, int64_t n, uint64_t base) {
    const v4u st = {FP_STEP, FP_STEP, FP_STEP, FP_STEP}, mu = {FP_MUL, FP_MUL, FP_MUL, FP_MUL};
    const v4u step4 = {4 * FP_STEP, 4 * FP_STEP, 4 * FP_STEP, 4 * FP_STEP};
    v4u acc = {0, 0, 0, 0}, pos = {base, base + 1, base + 2, base + 3};
    pos *= st;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        v4u x = {w[i], w[i + 1], w[i + 2], w[i + 3]};
        x += pos; x ^= x >> 29; x *= mu; acc += x ^ (x >> 32); pos += step4; }
    uint64_t h = acc[0] + acc[1] + acc[2] + acc[3];
    for (; i < n; i++) h += fp_mix(w[i], base + (uint64_t)i);
    return h; }
static uint64_t fp_u64(const uint64_t *w, int64_t n, uint64_t base) {
    uint64_t h = 0;
    for (int64_t i = 0; i < n; i++) h += fp_mix(w[i], base + (uint64_t)i);
    return h; }
#define FP_f(x, n, base) fp_u32((const uint32_t *)(x), n, base)
#define FP_d(x, n, base) fp_u64((const uint64_t *)(x), n, base)

#define STATS(NAME, T, L, FP)                                                                       \
static void NAME##_block(const T *x, int64_t n, uint64_t base, double *o) {                         \
    const v4d z = {0, 0, 0, 0};                                                                    \
    v4d mn = POS_INF, mx = NEG_INF, sm = z, sq = z;                                                \
    v4l zc = {0};                                                                                  \
    int64_t i = 0;                                                                                 \
    for (; i + 4 <= n; i += 4) {                                                                   \
        v4d a = L(x + i);                                                                          \
        mn = vmin(mn, a); mx = vmax(mx, a); sm += a; sq += a * a; zc += (v4l)(a == z);             \
    }                                                                                              \
    double smn = hmin(mn), smx = hmax(mx), ssm = hsum(sm), ssq = hsum(sq), szc = hcnt(zc);         \
    for (; i < n; i++) {                                                                           \
        double a = x[i];                                                                           \
        if (a < smn) smn = a;                                                                      \
        if (a > smx) smx = a;                                                                      \
        ssm += a; ssq += a * a; szc += a == 0;                                                     \
    }                                                                                              \
    /* second pass while the block is in cache: deviations from the block mean (Chan et al.) */   \
    double mean = ssm / (double)n;                                                                 \
    v4d vm = {mean, mean, mean, mean}, m2 = z;                                                     \
    for (i = 0; i + 4 <= n; i += 4) { v4d t = L(x + i) - vm; m2 += t * t; }                        \
    double sm2 = hsum(m2);                                                                         \
    for (; i < n; i++) { double t = x[i] - mean; sm2 += t * t; }                                   \
    o[0] = (double)n; o[1] = smn; o[2] = smx; o[3] = ssm; o[4] = sm2; o[5] = ssq; o[6] = szc;       \
    o[7] = fp_bits(FP(x, n, base));  /* the block is still in cache */                               \
}                                                                                                  \
void NAME(const T *x, int64_t n, int64_t block, int64_t base, double *out) {                       \
    for (int64_t s = 0, k = 0; s < n; s += block, k++)                                             \
        NAME##_block(x + s, n - s < block ? n - s : block, (uint64_t)(base + s), out + 8 * k);     \
}

STATS(stats_f, float, load_f, FP_f)
STATS(stats_d, double, load_d, FP_d)

/* the fingerprint alone, of 32-bit words (a file's bytes): one slot per block */
void fingerprint_u32(const uint32_t *w, int64_t n, int64_t block, int64_t base, double *out) {
    for (int64_t s = 0, k = 0; s < n; s += block, k++)
        out[k] = fp_bits(fp_u32(w + s, n - s < block ? n - s : block, (uint64_t)(base + s)));
}
"""

# no -ffast-math: NaN and the rounding of every elementwise operation must stay as in numpy
_FLAGS = ("-O3", "-ffp-contract=off", "-fPIC", "-shared")
_ARCH_FLAGS = (("-march=native",), ())  # the first that compiles wins

_lock = threading.Lock()
_loaded = False
_lib: ctypes.CDLL | None = None


def _cpu_id() -> str:
    """What -march=native depends on: a library built for one CPU must not load on another."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        wanted = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))][:2]
        return "|".join(wanted) or platform.processor()
    except OSError:
        return platform.machine() + platform.processor()


def _cache_dir() -> Path:
    env = os.environ.get("ALIGNER_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aligner" / "kernels"


def _compile(cc: str) -> Path | None:
    for arch in _ARCH_FLAGS:
        flags = (*_FLAGS, *arch)
        key = hashlib.sha256("\0".join((SOURCE, cc, *flags, _cpu_id())).encode()).hexdigest()[:16]
        target = _cache_dir() / f"fused-{key}.so"
        if target.exists():
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                src, out = Path(tmp) / "fused.c", Path(tmp) / "fused.so"
                src.write_text(SOURCE)
                subprocess.run([cc, *flags, "-o", str(out), str(src)], check=True, capture_output=True, timeout=120)
                os.replace(out, target)  # atomic: concurrent processes each build, one file wins
            return target
        except (OSError, subprocess.SubprocessError) as e:
            log.debug("fused kernel: %s %s failed: %s", cc, " ".join(flags), e)
    return None


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    ptr, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    for name in ("pair_ff", "pair_fd", "pair_df", "pair_dd"):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = [ptr, ptr, i64, i64, f64, f64, ptr], None
    for name in ("stats_f", "stats_d", "fingerprint_u32"):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = [ptr, i64, i64, i64, ptr], None
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled kernel (built once per machine), or None where it cannot be built or loaded."""
    global _loaded, _lib
    with _lock:
        if not _loaded:
            _loaded = True
            if os.environ.get("ALIGNER_KERNEL", "").lower() != "numpy":
                cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
                path = _compile(cc) if cc else None
                try:
                    _lib = _bind(path) if path else None
                except OSError as e:
                    log.debug("fused kernel: cannot load %s: %s", path, e)
        return _lib
