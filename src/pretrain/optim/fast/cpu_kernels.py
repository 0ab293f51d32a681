"""Fused CPU kernels for the reduction passes of SGD-HD, Adam-HD, LARS and LAMB, built on first use with
`torch.utils.cpp_extension.load_inline` (g++ and ninja, which torch.compile on CPU needs anyway).

Why: on a CPU a loop that streams one tensor runs far below the memory bandwidth that a loop streaming several
reaches (bench/README.md: one thread, 124M parameters: `_foreach_norm` of the weights and of the gradients, two
one-stream passes, 88-92 ms; one pass over both, 62 ms; fused AdamW's 7-stream step 150 ms), and torch.compile's
Inductor puts neither two reductions over different tensors into one loop, nor a reduction and a write of a
tensor it reads. So each kernel makes a reduction and the state update it precedes in one pass:

- `dot_update_(gs, qs, a, b)`: h = sum over pairs of dot(g, q), and q <- a*q + b*g (a=0, b=1: q <- g, a copy).
  SGD-HD's hypergradient dot(g_t, u_{t-1}) and the state update that makes u_t (plain SGD: q = the previous
  direction; heavy ball: q = the momentum buffer).
- `sq_norms(xs, ys)`: per pair, sum(x^2) and sum(y^2): LARS's ||w||^2 and ||g||^2.
- `lamb_moments_norms_`: LAMB's moment updates with ||w||^2 and ||r||^2 of its update direction r, which is not
  stored (the update pass recomputes it from the new moments).
- `dot_adam_moments_`: Adam-HD's h = g . u_{t-1} from the moments before the step, then the moment updates.

Reductions return float64 (partial sums per 16384-element chunk, fp32 within a chunk, added in chunk order: the
result does not depend on the thread count); the kernels run with torch's intra-op threads (`at::parallel_for`).
Updates are multiplies then adds (no fused multiply-add: `-ffp-contract=off`): q <- a*q + g is bitwise
`q.mul_(a).add_(g)`; the moment updates agree with torch's to fp32 rounding.

The kernels take contiguous fp32 CPU tensors (`eligible`). Each one stands in for a plain torch-op function that
sits with the update rule using it (`_common.dots` / `_common.sq_norms`, `lamb.lamb_moments_norms_`,
`hypergradient.dot_update_` / `hypergradient.dot_adam_moments_`), with the same result up to rounding, and only
through `fast.kernel(name, plain)`: after `fast.enable_kernels()`, once built, for eligible tensors. The build
happens on first use; when it fails (no compiler: the reason is logged once) or with `PRETRAIN_CPU_KERNELS=0`,
`available()` is False and the plain functions run. Under torch.compile the kernels are custom ops
(`torch.library.custom_op`, namespace `pretrain`): Inductor calls them as external kernels.
"""
from __future__ import annotations

import logging
import os
import platform

import torch

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <array>
#include <vector>

using Vec = at::vec::Vectorized<float>;
constexpr int64_t CHUNK = 16384;  // elements per partial sum

static inline float hsum(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, v);
}

// body(lo, hi) -> std::array<double, K>: the K partial sums of elements [lo, hi) of an n-element tensor, run over
// CHUNK-sized chunks with torch's threads; returns the K totals, the partials added in chunk order
template <int K, typename Body>
std::array<double, K> chunked_sums(int64_t n, const Body& body) {
  const int64_t m = (n + CHUNK - 1) / CHUNK;
  std::vector<std::array<double, K>> part(m);
  at::parallel_for(0, m, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) part[c] = body(c * CHUNK, std::min(n, (c + 1) * CHUNK));
  });
  std::array<double, K> total{};
  for (const auto& p : part)
    for (int j = 0; j < K; ++j) total[j] += p[j];
  return total;
}

// sum(g * q) over every pair, and q <- a * q + b * g (a == 0 && b == 1: q <- g) in the same pass. Written with
// W independent scalar accumulators, which the compiler vectorizes (measured faster here than Vec accumulators).
double dot_update_(const std::vector<at::Tensor>& gs, const std::vector<at::Tensor>& qs, double a, double b) {
  constexpr int W = 16;
  const bool copy = (a == 0.0 && b == 1.0);
  const float fa = static_cast<float>(a), fb = static_cast<float>(b);
  double total = 0.0;
  for (size_t k = 0; k < gs.size(); ++k) {
    const float* __restrict__ g = gs[k].data_ptr<float>();
    float* __restrict__ q = qs[k].data_ptr<float>();
    total += chunked_sums<1>(gs[k].numel(), [&](int64_t i, int64_t hi) {
      float acc[W] = {0.0f};
      if (copy) {
        for (; i + W <= hi; i += W)
          for (int j = 0; j < W; ++j) {
            acc[j] += g[i + j] * q[i + j];
            q[i + j] = g[i + j];
          }
      } else {
        for (; i + W <= hi; i += W)
          for (int j = 0; j < W; ++j) {
            acc[j] += g[i + j] * q[i + j];
            q[i + j] = fa * q[i + j] + fb * g[i + j];
          }
      }
      float s = 0.0f;
      for (int j = 0; j < W; ++j) s += acc[j];
      for (; i < hi; ++i) {
        s += g[i] * q[i];
        q[i] = copy ? g[i] : fa * q[i] + fb * g[i];
      }
      return std::array<double, 1>{s};
    })[0];
  }
  return total;
}

// per pair k: out[k][0] = sum(x^2), out[k][1] = sum(y^2), in one pass over x and y
at::Tensor sq_norms(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& ys) {
  constexpr int64_t V = Vec::size();
  auto out = at::zeros({static_cast<int64_t>(xs.size()), 2}, at::kDouble);
  double* o = out.data_ptr<double>();
  for (size_t k = 0; k < xs.size(); ++k) {
    const float* x = xs[k].data_ptr<float>();
    const float* y = ys[k].data_ptr<float>();
    const auto t = chunked_sums<2>(xs[k].numel(), [&](int64_t i, int64_t hi) {
      Vec sx0(0.0f), sx1(0.0f), sy0(0.0f), sy1(0.0f);
      for (; i + 2 * V <= hi; i += 2 * V) {
        __builtin_prefetch(x + i + 1024);  // 4 KiB ahead: a read-only loop gets ~10% more bandwidth here
        __builtin_prefetch(y + i + 1024);
        const Vec x0 = Vec::loadu(x + i), x1 = Vec::loadu(x + i + V);
        const Vec y0 = Vec::loadu(y + i), y1 = Vec::loadu(y + i + V);
        sx0 = sx0 + x0 * x0;
        sx1 = sx1 + x1 * x1;
        sy0 = sy0 + y0 * y0;
        sy1 = sy1 + y1 * y1;
      }
      float sx = hsum(sx0 + sx1), sy = hsum(sy0 + sy1);
      for (; i < hi; ++i) {
        sx += x[i] * x[i];
        sy += y[i] * y[i];
      }
      return std::array<double, 2>{sx, sy};
    });
    o[2 * k] = t[0];
    o[2 * k + 1] = t[1];
  }
  return out;
}

// LAMB's first pass, per tensor k: m <- b1 * m + (1 - b1) * g;  v <- b2 * v + (1 - b2) * g * g;
// r = (m / c1[k]) / (sqrt(v / c2[k]) + eps) + wd * w (not stored);  out[k] = (sum(w^2), sum(r^2))
at::Tensor lamb_moments_norms_(const std::vector<at::Tensor>& gs, const std::vector<at::Tensor>& ws,
                               const std::vector<at::Tensor>& ms, const std::vector<at::Tensor>& vs, double beta1,
                               double beta2, const at::Tensor& c1, const at::Tensor& c2, double eps, double wd) {
  constexpr int64_t V = Vec::size();
  const float b1 = beta1, b2 = beta2, ob1 = 1.0 - beta1, ob2 = 1.0 - beta2, fe = eps, fwd = wd;
  const Vec vb1(b1), vb2(b2), vob1(ob1), vob2(ob2), ve(fe), vwd(fwd);
  const double* c1p = c1.data_ptr<double>();
  const double* c2p = c2.data_ptr<double>();
  auto out = at::zeros({static_cast<int64_t>(gs.size()), 2}, at::kDouble);
  double* o = out.data_ptr<double>();
  for (size_t k = 0; k < gs.size(); ++k) {
    const float* g = gs[k].data_ptr<float>();
    const float* w = ws[k].data_ptr<float>();
    float* m = ms[k].data_ptr<float>();
    float* v = vs[k].data_ptr<float>();
    const float fc1 = 1.0 / c1p[k], fc2 = 1.0 / c2p[k];  // multiplications, not divisions, as in dot_adam_moments_
    const Vec vc1(fc1), vc2(fc2);
    const auto t = chunked_sums<2>(gs[k].numel(), [&](int64_t i, int64_t hi) {
      Vec sw(0.0f), sr(0.0f);
      for (; i + V <= hi; i += V) {
        const Vec gv = Vec::loadu(g + i), wv = Vec::loadu(w + i);
        const Vec mv = Vec::loadu(m + i) * vb1 + gv * vob1;
        const Vec vv = Vec::loadu(v + i) * vb2 + gv * gv * vob2;
        mv.store(m + i);
        vv.store(v + i);
        const Vec r = (mv * vc1) / ((vv * vc2).sqrt() + ve) + vwd * wv;
        sw = sw + wv * wv;
        sr = sr + r * r;
      }
      float tw = hsum(sw), tr = hsum(sr);
      for (; i < hi; ++i) {
        m[i] = m[i] * b1 + g[i] * ob1;
        v[i] = v[i] * b2 + g[i] * g[i] * ob2;
        const float r = (m[i] * fc1) / (std::sqrt(v[i] * fc2) + fe) + fwd * w[i];
        tw += w[i] * w[i];
        tr += r * r;
      }
      return std::array<double, 2>{tw, tr};
    });
    o[2 * k] = t[0];
    o[2 * k + 1] = t[1];
  }
  return out;
}

// Adam-HD's first pass, per tensor k: h += dot(g, (m / c1[k]) / (sqrt(v / c2[k]) + eps)) where use[k] != 0 (the
// previous step's Adam direction, from the moments before this step), then m <- b1 * m + (1 - b1) * g and
// v <- b2 * v + (1 - b2) * g * g
double dot_adam_moments_(const std::vector<at::Tensor>& gs, const std::vector<at::Tensor>& ms,
                         const std::vector<at::Tensor>& vs, double beta1, double beta2, const at::Tensor& c1,
                         const at::Tensor& c2, const at::Tensor& use, double eps) {
  constexpr int64_t V = Vec::size();
  const float b1 = beta1, b2 = beta2, ob1 = 1.0 - beta1, ob2 = 1.0 - beta2, fe = eps;
  const Vec vb1(b1), vb2(b2), vob1(ob1), vob2(ob2), ve(fe);
  const double* c1p = c1.data_ptr<double>();
  const double* c2p = c2.data_ptr<double>();
  const double* up = use.data_ptr<double>();
  double total = 0.0;
  for (size_t k = 0; k < gs.size(); ++k) {
    const float* g = gs[k].data_ptr<float>();
    float* m = ms[k].data_ptr<float>();
    float* v = vs[k].data_ptr<float>();
    const bool dot = up[k] != 0.0;
    // multiplications by 1/c instead of divisions (one division per element is left): h is a sum, and this
    // changes each term by about one rounding
    const float fc1 = dot ? 1.0 / c1p[k] : 1.0f, fc2 = dot ? 1.0 / c2p[k] : 1.0f;
    const Vec vc1(fc1), vc2(fc2);
    total += chunked_sums<1>(gs[k].numel(), [&](int64_t i, int64_t hi) {
      Vec acc(0.0f);
      for (; i + V <= hi; i += V) {
        const Vec gv = Vec::loadu(g + i), mv = Vec::loadu(m + i), vv = Vec::loadu(v + i);
        if (dot) acc = acc + gv * ((mv * vc1) / ((vv * vc2).sqrt() + ve));
        (mv * vb1 + gv * vob1).store(m + i);
        (vv * vb2 + gv * gv * vob2).store(v + i);
      }
      float s = hsum(acc);
      for (; i < hi; ++i) {
        if (dot) s += g[i] * ((m[i] * fc1) / (std::sqrt(v[i] * fc2) + fe));
        m[i] = m[i] * b1 + g[i] * ob1;
        v[i] = v[i] * b2 + g[i] * g[i] * ob2;
      }
      return std::array<double, 1>{s};
    })[0];
  }
  return total;
}
"""

_FUNCTIONS = ("dot_update_", "sq_norms", "lamb_moments_norms_", "dot_adam_moments_")
_module = None
_failed: str | None = None


def _flags() -> list[str]:
    # Vector instructions only where this CPU has them (the build is cached per machine's flags): without them
    # the loops are scalar and slower than torch's own kernels.
    flags = ["-O3", "-fopenmp", "-ffp-contract=off"]
    if platform.machine() in ("x86_64", "AMD64") and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        # at::vec::Vectorized<float> as 8 AVX2 lanes (as ATen builds its own AVX2 kernels)
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return flags


def _build():
    """The compiled extension, or None (disabled, or the build failed: logged once)."""
    global _module, _failed
    if _module is not None or _failed is not None:
        return _module
    if os.environ.get("PRETRAIN_CPU_KERNELS", "1") == "0":
        _failed = "disabled by PRETRAIN_CPU_KERNELS=0"
        return None
    try:
        from torch.utils.cpp_extension import load_inline

        flags = _flags()
        _module = load_inline("pretrain_cpu_kernels", cpp_sources=_SOURCE, functions=list(_FUNCTIONS),
                              extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:  # no compiler / ninja: torch ops instead, same results
        _failed = f"{type(e).__name__}: {e}"
        log.warning("pretrain CPU kernels not built (%s); using torch ops", _failed.splitlines()[0])
    return _module


def available() -> bool:
    """Whether the compiled kernels can be used (builds them on the first call; while torch.compile traces, only
    whether they were built before: `prepare`)."""
    if torch.compiler.is_compiling():
        return _module is not None
    return _build() is not None


def prepare(param_groups) -> None:
    """Build the kernels now if any parameter could use them (an optimizer's __init__: the first step may be
    traced by torch.compile, which cannot run the build)."""
    if any(p.device.type == "cpu" and p.dtype == torch.float32 for g in param_groups for p in g["params"]):
        available()


def eligible(*lists) -> bool:
    """Whether every tensor of the lists can go to the kernels: contiguous fp32 CPU."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for ts in lists for t in ts)


# ------------------------------------------------------------------------------------------------ custom ops
@torch.library.custom_op("pretrain::dot_update_", mutates_args=("qs",), device_types="cpu")
def _dot_update_op(gs: list[torch.Tensor], qs: list[torch.Tensor], a: float, b: float) -> torch.Tensor:
    return torch.tensor(_build().dot_update_(gs, qs, a, b), dtype=torch.float64)


@_dot_update_op.register_fake
def _(gs, qs, a, b):
    return torch.empty((), dtype=torch.float64)


@torch.library.custom_op("pretrain::sq_norms", mutates_args=(), device_types="cpu")
def _sq_norms_op(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    return _build().sq_norms(xs, ys)


@_sq_norms_op.register_fake
def _(xs, ys):
    return xs[0].new_empty((len(xs), 2), dtype=torch.float64)


@torch.library.custom_op("pretrain::lamb_moments_norms_", mutates_args=("ms", "vs"), device_types="cpu")
def _lamb_op(gs: list[torch.Tensor], ws: list[torch.Tensor], ms: list[torch.Tensor], vs: list[torch.Tensor],
             beta1: float, beta2: float, c1: torch.Tensor, c2: torch.Tensor, eps: float, wd: float) -> torch.Tensor:
    return _build().lamb_moments_norms_(gs, ws, ms, vs, beta1, beta2, c1, c2, eps, wd)


@_lamb_op.register_fake
def _(gs, ws, ms, vs, beta1, beta2, c1, c2, eps, wd):
    return gs[0].new_empty((len(gs), 2), dtype=torch.float64)


@torch.library.custom_op("pretrain::dot_adam_moments_", mutates_args=("ms", "vs"), device_types="cpu")
def _adam_hd_op(gs: list[torch.Tensor], ms: list[torch.Tensor], vs: list[torch.Tensor], beta1: float, beta2: float,
                c1: torch.Tensor, c2: torch.Tensor, use: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.tensor(_build().dot_adam_moments_(gs, ms, vs, beta1, beta2, c1, c2, use, eps), dtype=torch.float64)


@_adam_hd_op.register_fake
def _(gs, ms, vs, beta1, beta2, c1, c2, use, eps):
    return torch.empty((), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------- API
def _scalars(xs: list) -> torch.Tensor:
    """Per-tensor scalars (Python numbers, or 0-dim tensors under torch.compile) as one float64 tensor."""
    if any(torch.is_tensor(x) for x in xs):
        return torch.stack([x.double() if torch.is_tensor(x) else torch.scalar_tensor(x, dtype=torch.float64)
                            for x in xs])
    return torch.tensor(xs, dtype=torch.float64)


def dot_update_(gs: list, qs: list, a: float, b: float) -> torch.Tensor:
    """Fused `hypergradient.dot_update_`: sum_k dot(gs[k], qs[k]) (0-dim float64, computed before the update),
    then qs[k] <- a*qs[k] + b*gs[k] (a=0, b=1: a copy of gs[k]), in one pass."""
    return _dot_update_op(list(gs), list(qs), float(a), float(b))


def sq_norms(xs: list, ys: list) -> torch.Tensor:
    """Fused `_common.sq_norms`: (len(xs), 2) float64, row k = (sum(xs[k]^2), sum(ys[k]^2)), in one pass."""
    return _sq_norms_op(list(xs), list(ys))


def lamb_moments_norms_(gs: list, ws: list, ms: list, vs: list, betas, c1s: list, c2s: list, eps: float,
                        wd: float):
    """Fused `lamb.lamb_moments_norms_`: the Adam moments ms, vs updated in place with gradients gs, and per tensor
    (sum(w^2), sum(r^2)) with r = (m / c1) / (sqrt(v / c2) + eps) + wd * w (c1s, c2s: each tensor's bias
    corrections, floats or 0-dim tensors). Returns (len(gs), 2) float64 and None: r is not stored (the caller
    recomputes it in its update pass)."""
    out = _lamb_op(list(gs), list(ws), list(ms), list(vs), float(betas[0]), float(betas[1]), _scalars(c1s),
                   _scalars(c2s), float(eps), float(wd))
    return out, None


def dot_adam_moments_(gs: list, ms: list, vs: list, betas, c1s: list, c2s: list, use: list, eps: float):
    """Fused `hypergradient.dot_adam_moments_`: h = sum over tensors k with use[k] of
    dot(g_k, (m_k / c1_k) / (sqrt(v_k / c2_k) + eps)) (0-dim float64; the moments before this step), then the
    moments updated in place with the gradients gs."""
    return _adam_hd_op(list(gs), list(ms), list(vs), float(betas[0]), float(betas[1]), _scalars(c1s),
                       _scalars(c2s), _scalars([1.0 if u else 0.0 for u in use]), float(eps))


# name -> the number of leading arguments that are lists of tensors the kernel reads or writes (`eligible`)
TENSOR_LISTS = {"dot_update_": 2, "sq_norms": 2, "lamb_moments_norms_": 4, "dot_adam_moments_": 3}
