// CUDA launcher of the fused conditioned (CondCBNT) ray march: one thread per (ray, sample).
//
// As the NAF march's CUDA launcher: the forward adds each sample's mu * dt to its ray with an
// atomic; the backward adds table gradients with global atomics and MLP parameter gradients
// (both networks, one flat buffer [backbone MLP, modulation MLP]) into shared memory per block
// when they fit in 48 KB, then once per block into global memory. float32 only (the fits run
// in float32; float64 would double an already long nvcc build), and only the general MLP path
// (U = false): the uniform-width specialisation is a CPU vectorisation aid that would
// quadruple the kernels to compile.
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <torch/library.h>

#include "args.h"
#include "cuda_common.cuh"
#include "nfrecon/cond_march.h"

namespace nfrecon {
namespace {

constexpr int64_t kSharedBytes = 48 * 1024;

template <typename T, int W, bool UB, bool UM>
__global__ void cond_march_forward_kernel(MarchSpec<T> s, CondNets<T> n, const int64_t* rays, const T* offsets, T* out,
                                          int64_t n_rays) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n_rays * s.n_samples) return;
  const int64_t r = i / s.n_samples;
  const int k = int(i - r * s.n_samples);
  T o[3], d[3], t_near, dt;
  if (!ray_bins(s, rays[r], o, d, t_near, dt)) return;
  T value[1];
  CondScratch<T, W, 1, false> sc;
  cond_block_forward<T, W, UB, UM, 1, false>(s, n, o, d, t_near, dt, k,
                                             offsets != nullptr ? offsets + r * s.n_samples : nullptr, sc, value);
  atomicAdd(out + r, value[0]);
}

template <typename T, int W, bool UB, bool UM, bool BG>
__global__ void cond_march_backward_kernel(MarchSpec<T> s, CondNets<T> n, const int64_t* rays, const T* offsets,
                                           const T* grad, T* grad_btable, T* grad_mtable, T* grad_params,
                                           int64_t n_bparams, int64_t n_params, bool shared_params, int64_t n_rays) {
  extern __shared__ unsigned char shared_raw[];
  BlockParams<T> params(grad_params, n_params, shared_params, shared_raw);
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n_rays * s.n_samples) {
    const int64_t r = i / s.n_samples;
    const int k = int(i - r * s.n_samples);
    T o[3], d[3], t_near, dt;
    if (grad[r] != T(0) && ray_bins(s, rays[r], o, d, t_near, dt)) {
      AtomicAcc<T> bt{grad_btable}, bp{params.buffer()}, mt{grad_mtable}, mp{params.buffer() + n_bparams};
      CondScratch<T, W, 1, false> sc;
      cond_block_backward<T, W, UB, UM, 1, false, BG>(s, n, o, d, t_near, dt, k,
                                                      offsets != nullptr ? offsets + r * s.n_samples : nullptr,
                                                      grad[r] * dt * s.mu_max, sc, bt, bp, mt, mp);
    }
  }
  params.flush();
}

at::Tensor cond_march_forward_cuda(const at::Tensor& rays, const at::Tensor& geometry, const at::Tensor& offsets,
                                   const at::Tensor& btable, at::TensorList bweights, at::TensorList bbiases,
                                   c10::IntArrayRef bgrid, c10::IntArrayRef bmlp, const at::Tensor& mtable,
                                   at::TensorList mweights, at::TensorList mbiases, c10::IntArrayRef mgrid,
                                   c10::IntArrayRef mmlp, c10::ArrayRef<double> box, double mu_max,
                                   c10::IntArrayRef march) {
  TORCH_CHECK(rays.dim() == 1 && rays.scalar_type() == at::kLong && rays.is_contiguous(), "nfrecon: rays must be (R,) int64");
  const int64_t n_rays = rays.size(0);
  at::Tensor out = at::zeros({n_rays}, btable.options());
  if (n_rays == 0) return out;
  const c10::DeviceGuard guard(btable.device());
  cudaStream_t stream = current_stream(btable);
  TORCH_CHECK(btable.scalar_type() == at::kFloat, "nfrecon: the CUDA conditioned march runs in float32");
  [&] {
    using T = float;
    const CondArgs<T> a = cond_args<T>(btable, bweights, bbiases, bgrid, bmlp, mtable, mweights, mbiases, mgrid, mmlp);
    const MarchSpec<T> s = march_spec<T>(geometry, box, mu_max, march);
    const T* off = offsets_ptr<T>(offsets, n_rays, s.n_samples);
    with_buffer_width(std::max(max_hidden(a.nets.bm), max_hidden(a.nets.mm)), [&](auto width) {
      constexpr int W = decltype(width)::value;
      cond_march_forward_kernel<T, W, false, false><<<blocks_for(n_rays * s.n_samples), kThreads, 0, stream>>>(
          s, a.nets, rays.data_ptr<int64_t>(), off, out.data_ptr<T>(), n_rays);
    });
    check_launch("cond_march_forward_cuda");
  }();
  return out;
}

std::vector<at::Tensor> cond_march_backward_cuda(
    const at::Tensor& grad, const at::Tensor& rays, const at::Tensor& geometry, const at::Tensor& offsets,
    const at::Tensor& btable, at::TensorList bweights, at::TensorList bbiases, c10::IntArrayRef bgrid,
    c10::IntArrayRef bmlp, const at::Tensor& mtable, at::TensorList mweights, at::TensorList mbiases,
    c10::IntArrayRef mgrid, c10::IntArrayRef mmlp, c10::ArrayRef<double> box, double mu_max, c10::IntArrayRef march,
    bool backbone_grad) {
  const int64_t n_rays = rays.size(0);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == n_rays && grad.is_contiguous(), "nfrecon: grad must be (R,)");
  const int64_t nbt = backbone_grad ? btable.numel() : 0, nmt = mtable.numel();
  const c10::DeviceGuard guard(btable.device());
  cudaStream_t stream = current_stream(btable);
  std::vector<at::Tensor> out;
  TORCH_CHECK(btable.scalar_type() == at::kFloat, "nfrecon: the CUDA conditioned march runs in float32");
  [&] {
    using T = float;
    const CondArgs<T> a = cond_args<T>(btable, bweights, bbiases, bgrid, bmlp, mtable, mweights, mbiases, mgrid, mmlp);
    const MarchSpec<T> s = march_spec<T>(geometry, box, mu_max, march);
    const T* off = offsets_ptr<T>(offsets, n_rays, s.n_samples);
    const int64_t nbp = n_params(a.bw, a.bb), nmp = n_params(a.mw, a.mb);
    // the kernel's layout: [backbone table | modulation table | backbone MLP, modulation MLP]
    at::Tensor gbt = at::zeros({backbone_grad ? btable.numel() : 1}, btable.options());
    at::Tensor gmt = at::zeros({nmt}, btable.options());
    at::Tensor gp = at::zeros({nbp + nmp}, btable.options());
    const int64_t bytes = (nbp + nmp) * int64_t(sizeof(T));
    const bool shared = bytes <= kSharedBytes;
    if (n_rays > 0) {
      with_buffer_width(std::max(max_hidden(a.nets.bm), max_hidden(a.nets.mm)), [&](auto width) {
        constexpr int W = decltype(width)::value;
        auto launch = [&](auto with_backbone) {
          constexpr bool BG = decltype(with_backbone)::value;
          cond_march_backward_kernel<T, W, false, false, BG>
              <<<blocks_for(n_rays * s.n_samples), kThreads, shared ? size_t(bytes) : 0, stream>>>(
                  s, a.nets, rays.data_ptr<int64_t>(), off, grad.data_ptr<T>(), gbt.data_ptr<T>(), gmt.data_ptr<T>(),
                  gp.data_ptr<T>(), nbp, nbp + nmp, shared, n_rays);
        };
        if (backbone_grad) {
          launch(std::true_type{});
        } else {
          launch(std::false_type{});
        }
      });
      check_launch("cond_march_backward_cuda");
    }
    // into the CPU launcher's flat layout, which cond_gradients splits
    std::vector<at::Tensor> parts;
    if (backbone_grad) parts.insert(parts.end(), {gbt, gp.narrow(0, 0, nbp)});
    parts.insert(parts.end(), {gmt, gp.narrow(0, nbp, nmp)});
    out = cond_gradients(at::cat(parts), backbone_grad, btable, a.bw, a.bb, mtable, a.mw, a.mb);
  }();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(nfrecon, CUDA, m) {
  m.impl("cond_march_forward", &cond_march_forward_cuda);
  m.impl("cond_march_backward", &cond_march_backward_cuda);
}

}  // namespace nfrecon
