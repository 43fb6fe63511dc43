// CPU launcher of the fused conditioned (CondCBNT) ray march: one ray per loop iteration, its
// samples in blocks of kCondBlock; float32 (fits, pretraining) and float64 (tests).
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <memory>

// As in naf_march_cpu.cpp: 512-bit vectors for the auto-vectorised MLP loops.
#pragma GCC target("prefer-vector-width=512")
#include "args.h"
#include "cpu_parallel.h"
#include "nfrecon/cond_march.h"

namespace nfrecon {
namespace {

// Samples evaluated together. Narrow networks (condcbnt-fast, 32 wide): 4, so that a block's
// activations stay in registers; wide ones (the published 128, FiLM vectors of 768): 16, so that
// each weight and each row of the thread's (double) parameter-gradient buffer is touched once per
// 16 samples (the modulation network's last layer alone is 768 x 128 values).
template <int W> constexpr int kCondBlock = W <= 32 ? 4 : 16;

// One ray scratch per chunk of rays, on the heap (too large for an OpenMP thread's stack).
template <typename T, int W>
using RayScratch = CondRayScratch<T, W, kCondBlock<W>, true>;

at::Tensor cond_march_forward_cpu(const at::Tensor& rays, const at::Tensor& geometry, const at::Tensor& offsets,
                                  const at::Tensor& btable, at::TensorList bweights, at::TensorList bbiases,
                                  c10::IntArrayRef bgrid, c10::IntArrayRef bmlp, const at::Tensor& mtable,
                                  at::TensorList mweights, at::TensorList mbiases, c10::IntArrayRef mgrid,
                                  c10::IntArrayRef mmlp, c10::ArrayRef<double> box, double mu_max,
                                  c10::IntArrayRef march) {
  TORCH_CHECK(rays.dim() == 1 && rays.scalar_type() == at::kLong && rays.is_contiguous(), "nfrecon: rays must be (R,) int64");
  const int64_t n_rays = rays.size(0);
  at::Tensor out = at::empty({n_rays}, btable.options());
  AT_DISPATCH_FLOATING_TYPES(btable.scalar_type(), "cond_march_forward_cpu", [&] {
    using T = scalar_t;
    const CondArgs<T> a = cond_args<T>(btable, bweights, bbiases, bgrid, bmlp, mtable, mweights, mbiases, mgrid, mmlp);
    const MarchSpec<T> s = march_spec<T>(geometry, box, mu_max, march);
    const T* off = offsets_ptr<T>(offsets, n_rays, s.n_samples);
    const int64_t* r = rays.data_ptr<int64_t>();
    T* o = out.data_ptr<T>();
    with_widths(a.nets.bm, a.nets.mm, [&](auto width, auto ub, auto um) {
      constexpr int W = decltype(width)::value;
      constexpr bool UB = decltype(ub)::value, UM = decltype(um)::value;
      at::parallel_for(0, n_rays, 8, [&](int64_t b, int64_t e) {
        auto sc = std::make_unique<RayScratch<T, W>>();
        for (int64_t i = b; i < e; ++i) {
          o[i] = cond_ray_forward<T, W, UB, UM, kCondBlock<W>, true>(
              s, a.nets, r[i], off != nullptr ? off + i * s.n_samples : nullptr, *sc);
        }
      });
    });
  });
  return out;
}

std::vector<at::Tensor> cond_march_backward_cpu(
    const at::Tensor& grad, const at::Tensor& rays, const at::Tensor& geometry, const at::Tensor& offsets,
    const at::Tensor& btable, at::TensorList bweights, at::TensorList bbiases, c10::IntArrayRef bgrid,
    c10::IntArrayRef bmlp, const at::Tensor& mtable, at::TensorList mweights, at::TensorList mbiases,
    c10::IntArrayRef mgrid, c10::IntArrayRef mmlp, c10::ArrayRef<double> box, double mu_max, c10::IntArrayRef march,
    bool backbone_grad) {
  const int64_t n_rays = rays.size(0);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == n_rays && grad.is_contiguous(), "nfrecon: grad must be (R,)");
  const int64_t nbt = backbone_grad ? btable.numel() : 0, nmt = mtable.numel();
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(btable.scalar_type(), "cond_march_backward_cpu", [&] {
    using T = scalar_t;
    const CondArgs<T> a = cond_args<T>(btable, bweights, bbiases, bgrid, bmlp, mtable, mweights, mbiases, mgrid, mmlp);
    const MarchSpec<T> s = march_spec<T>(geometry, box, mu_max, march);
    const T* off = offsets_ptr<T>(offsets, n_rays, s.n_samples);
    const int64_t* r = rays.data_ptr<int64_t>();
    const T* gr = grad.data_ptr<T>();
    // one flat buffer: [backbone table, backbone MLP, modulation table, modulation MLP]; the
    // backbone part is empty when its gradients are not asked for. Accumulated in double: the
    // FiLM products make the per-sample terms of the first layers and tables cancel strongly.
    const int64_t nbp = backbone_grad ? n_params(a.bw, a.bb) : 0, nmp = n_params(a.mw, a.mb);
    at::Tensor flat = at::empty({nbt + nbp + nmt + nmp}, btable.options().dtype(at::kDouble));
    with_widths(a.nets.bm, a.nets.mm, [&](auto width, auto ub, auto um) {
      constexpr int W = decltype(width)::value;
      constexpr bool UB = decltype(ub)::value, UM = decltype(um)::value;
      auto run = [&](auto with_backbone) {
        constexpr bool BG = decltype(with_backbone)::value;
        chunked_accumulate<double>(n_rays, flat.numel(), flat.data_ptr<double>(), [&](int64_t b, int64_t e, double* buf) {
          BufferAcc<double> bt{buf}, bp{buf + nbt}, mt{buf + nbt + nbp}, mp{buf + nbt + nbp + nmt};
          auto sc = std::make_unique<RayScratch<T, W>>();
          for (int64_t i = b; i < e; ++i) {
            cond_ray_backward<T, W, UB, UM, kCondBlock<W>, true, BG>(
                s, a.nets, r[i], off != nullptr ? off + i * s.n_samples : nullptr, gr[i], *sc, bt, bp, mt, mp);
          }
        });
      };
      if (backbone_grad) {
        run(std::true_type{});
      } else {
        run(std::false_type{});
      }
    });
    out = cond_gradients(flat.to(btable.scalar_type()), backbone_grad, btable, a.bw, a.bb, mtable, a.mw, a.mb);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(nfrecon, CPU, m) {
  m.impl("cond_march_forward", &cond_march_forward_cpu);
  m.impl("cond_march_backward", &cond_march_backward_cpu);
}

}  // namespace nfrecon
