// Single-pass optimiser steps for float32 arrays on the CPU, called from JAX through jax.ffi.
//
// XLA's CPU backend gives each output of an element-wise computation its own loop (it has no
// multi-output fusion), so an Adam step becomes three passes over memory: m, v, then p reading
// m and v back (40 bytes per parameter). Each kernel here makes one pass: it reads p, g and the
// moments once and writes p and the moments in place (Adam: 28 bytes per parameter).
//
// setup.py compiles this file when gradtx is installed, against the XLA FFI headers shipped
// with jaxlib; gradtx/native.py loads it, and gradtx falls back to the pure-JAX step without it.
// The math is the math of gradtx's transformations, operation for operation; each kernel names
// the transformations it fuses. One call updates many leaves (they arrive as variadic buffers),
// so a step costs a call per few dozen leaves, not one per leaf. Scalars that change
// from step to step (the learning rate, bias corrections, weight decay) arrive as a small
// float32 buffer, so schedules work under jit.

#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GRADTX_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GRADTX_VECTOR_CLONES
#endif

constexpr int64_t kChunk = 1 << 15;  // elements per task: 128 KiB of each array

// One leaf: its parameters, gradient and up to two moments (updated in place).
struct Leaf {
  float* p;
  const float* g;
  float* s[2];
  int64_t n;
};

// A piece of work: elements [lo, hi) of one leaf.
struct Task {
  int64_t leaf, lo, hi;
};

// Runs body(i) for i in [0, n), on the calling thread and on XLA's intra-op thread pool.
//
// Helpers that start late find no work left and return without calling body; the caller waits
// only for helpers that are inside body, so it never waits on a task the pool has not started
// (the pool may be busy elsewhere, or be this very thread).
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const Body& body) {
  const int64_t threads = pool.num_threads();
  if (n < 2 || threads < 2) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  struct Shared {
    const Body* body;
    int64_t n;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> busy{0};
    void Work() {
      for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) (*body)(i);
    }
  };
  auto shared = std::make_shared<Shared>();
  shared->body = &body;
  shared->n = n;
  const int64_t helpers = threads - 1 < n - 1 ? threads - 1 : n - 1;
  for (int64_t h = 0; h < helpers; ++h) {
    pool.Schedule([shared] {
      shared->busy.fetch_add(1);
      shared->Work();
      shared->busy.fetch_sub(1);
    });
  }
  shared->Work();
  while (shared->busy.load() > 0) std::this_thread::yield();
}

// chain(scale_by_adam(b1, b2, eps, eps_root), [add_decayed_weights(wd)], scale_by_learning_rate)
// then apply_updates:
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  u = (m c1) / (sqrt(v c2 + eps_root) + eps)
//   [u = u + p wd];  p = p + u * step      (step = -learning_rate)
struct AdamUpdate {
  static constexpr int kMoments = 2;
  float b1, nb1, b2, nb2, eps, eps_root;
  bool decay;
  float step, c1, c2, wd;  // scalars[0..3]

  void SetScalars(const float* s) {
    step = s[0];
    c1 = s[1];
    c2 = s[2];
    wd = s[3];
  }

  GRADTX_VECTOR_CLONES void operator()(const Leaf& leaf, int64_t lo, int64_t hi) const {
    float* __restrict p = leaf.p;
    float* __restrict m = leaf.s[0];
    float* __restrict v = leaf.s[1];
    const float* __restrict g = leaf.g;
    const float b1_ = b1, nb1_ = nb1, b2_ = b2, nb2_ = nb2, eps_ = eps, eps_root_ = eps_root;
    const float step_ = step, c1_ = c1, c2_ = c2, wd_ = wd;
    if (decay) {
      for (int64_t i = lo; i < hi; ++i) {
        const float x = g[i];
        const float m_new = b1_ * m[i] + nb1_ * x;
        const float v_new = b2_ * v[i] + nb2_ * (x * x);
        const float u = (m_new * c1_) / (std::sqrt(v_new * c2_ + eps_root_) + eps_);
        m[i] = m_new;
        v[i] = v_new;
        p[i] = p[i] + (u + p[i] * wd_) * step_;
      }
    } else {
      for (int64_t i = lo; i < hi; ++i) {
        const float x = g[i];
        const float m_new = b1_ * m[i] + nb1_ * x;
        const float v_new = b2_ * v[i] + nb2_ * (x * x);
        const float u = (m_new * c1_) / (std::sqrt(v_new * c2_ + eps_root_) + eps_);
        m[i] = m_new;
        v[i] = v_new;
        p[i] = p[i] + u * step_;
      }
    }
  }
};

// chain(trace(decay, nesterov), scale_by_learning_rate) then apply_updates:
//   t = decay t + g;  u = t, or g + decay t with nesterov;  p = p + u * step
struct TraceUpdate {
  static constexpr int kMoments = 1;
  float decay;
  bool nesterov;
  float step;  // scalars[0]

  void SetScalars(const float* s) { step = s[0]; }

  GRADTX_VECTOR_CLONES void operator()(const Leaf& leaf, int64_t lo, int64_t hi) const {
    float* __restrict p = leaf.p;
    float* __restrict t = leaf.s[0];
    const float* __restrict g = leaf.g;
    const float d = decay, step_ = step;
    if (nesterov) {
      for (int64_t i = lo; i < hi; ++i) {
        const float t_new = d * t[i] + g[i];
        t[i] = t_new;
        p[i] = p[i] + (g[i] + d * t_new) * step_;
      }
    } else {
      for (int64_t i = lo; i < hi; ++i) {
        const float t_new = d * t[i] + g[i];
        t[i] = t_new;
        p[i] = p[i] + t_new * step_;
      }
    }
  }
};

// chain(scale_by_rms(decay, eps, eps_in_sqrt, bias_correction), scale_by_learning_rate) then
// apply_updates:
//   s = decay s + (1-decay) g^2;  s' = s c (c = 1 without bias correction);
//   u = g / sqrt(s' + eps), or g / (sqrt(s') + eps);  p = p + u * step
struct RmsUpdate {
  static constexpr int kMoments = 1;
  float decay, ndecay, eps;
  bool eps_in_sqrt, bias_correction;
  float step, c;  // scalars[0..1]

  void SetScalars(const float* s) {
    step = s[0];
    c = s[1];
  }

  GRADTX_VECTOR_CLONES void operator()(const Leaf& leaf, int64_t lo, int64_t hi) const {
    float* __restrict p = leaf.p;
    float* __restrict s = leaf.s[0];
    const float* __restrict g = leaf.g;
    const float d = decay, nd = ndecay, eps_ = eps, step_ = step, c_ = c;
    const bool inside = eps_in_sqrt, corrected = bias_correction;
    for (int64_t i = lo; i < hi; ++i) {
      const float x = g[i];
      const float s_new = d * s[i] + nd * (x * x);
      const float s_hat = corrected ? s_new * c_ : s_new;
      const float inv = inside ? 1.0f / std::sqrt(s_hat + eps_) : 1.0f / (std::sqrt(s_hat) + eps_);
      s[i] = s_new;
      p[i] = p[i] + (x * inv) * step_;
    }
  }
};

// Arguments: scalars, then L params, L gradients, L of each moment. Results: L params, L of
// each moment, each aliased to its argument (the caller donates them).
template <typename Update>
ffi::Error Run(ffi::ThreadPool pool, F32 scalars, ffi::RemainingArgs args,
               ffi::RemainingRets rets, Update update) {
  constexpr int kMoments = Update::kMoments;
  const size_t count = rets.size() / (1 + kMoments);
  if (rets.size() != count * (1 + kMoments) || args.size() != count * (2 + kMoments)) {
    return ffi::Error::InvalidArgument("gradtx fused step: wrong number of buffers");
  }
  update.SetScalars(scalars.typed_data());
  std::vector<Leaf> leaves(count);
  std::vector<Task> tasks;
  for (size_t i = 0; i < count; ++i) {
    auto p = args.get<F32>(i);
    auto g = args.get<F32>(count + i);
    auto p_out = rets.get<F32>(i);
    if (!p.has_value() || !g.has_value() || !p_out.has_value()) {
      return ffi::Error::InvalidArgument("gradtx fused step: buffers must be float32");
    }
    Leaf& leaf = leaves[i];
    leaf.n = static_cast<int64_t>(p->element_count());
    leaf.p = (*p_out)->typed_data();
    leaf.g = g->typed_data();
    bool ok = leaf.p == p->typed_data() && g->element_count() == p->element_count();
    for (int k = 0; k < kMoments; ++k) {
      auto s = args.get<F32>((2 + k) * count + i);
      auto s_out = rets.get<F32>((1 + k) * count + i);
      if (!s.has_value() || !s_out.has_value()) {
        return ffi::Error::InvalidArgument("gradtx fused step: buffers must be float32");
      }
      leaf.s[k] = (*s_out)->typed_data();
      ok = ok && leaf.s[k] == s->typed_data() && s->element_count() == p->element_count();
    }
    if (!ok) {
      return ffi::Error::InvalidArgument(
          "gradtx fused step: each result must alias its argument, all of one leaf's size");
    }
    for (int64_t lo = 0; lo < leaf.n; lo += kChunk) {
      tasks.push_back({static_cast<int64_t>(i), lo, lo + kChunk < leaf.n ? lo + kChunk : leaf.n});
    }
  }
  ParallelFor(pool, static_cast<int64_t>(tasks.size()), [&](int64_t i) {
    const Task& task = tasks[i];
    update(leaves[task.leaf], task.lo, task.hi);
  });
  return ffi::Error::Success();
}

ffi::Error AdamImpl(ffi::ThreadPool pool, F32 scalars, ffi::RemainingArgs args,
                    ffi::RemainingRets rets, float b1, float nb1, float b2, float nb2, float eps,
                    float eps_root, bool decay) {
  return Run(pool, scalars, args, rets, AdamUpdate{b1, nb1, b2, nb2, eps, eps_root, decay});
}

ffi::Error TraceImpl(ffi::ThreadPool pool, F32 scalars, ffi::RemainingArgs args,
                     ffi::RemainingRets rets, float decay, bool nesterov) {
  return Run(pool, scalars, args, rets, TraceUpdate{decay, nesterov});
}

ffi::Error RmsImpl(ffi::ThreadPool pool, F32 scalars, ffi::RemainingArgs args,
                   ffi::RemainingRets rets, float decay, float ndecay, float eps,
                   bool eps_in_sqrt, bool bias_correction) {
  return Run(pool, scalars, args, rets,
             RmsUpdate{decay, ndecay, eps, eps_in_sqrt, bias_correction});
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GradtxAdamStep, AdamImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // step, c1, c2, wd
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<float>("b1")
                                  .Attr<float>("nb1")
                                  .Attr<float>("b2")
                                  .Attr<float>("nb2")
                                  .Attr<float>("eps")
                                  .Attr<float>("eps_root")
                                  .Attr<bool>("decay"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GradtxTraceStep, TraceImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // step
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<float>("decay")
                                  .Attr<bool>("nesterov"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GradtxRmsStep, RmsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // step, c
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<float>("decay")
                                  .Attr<float>("ndecay")
                                  .Attr<float>("eps")
                                  .Attr<bool>("eps_in_sqrt")
                                  .Attr<bool>("bias_correction"));
