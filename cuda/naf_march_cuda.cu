// CUDA launcher of the fused NAF ray march: one thread per (ray, sample).
//
// Forward: each thread adds mu * dt of its sample to its ray's output with an atomic.
// Backward: table gradients by global atomics; MLP parameter gradients are first summed per
// block in shared memory (when they fit in 48 KB: widths up to about 64) and then added to
// global memory once per block, which keeps atomic traffic on the few thousand weights low.
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <torch/library.h>

#include "args.h"
#include "cuda_common.cuh"
#include "nfrecon/naf_march.h"

namespace nfrecon {
namespace {

constexpr int64_t kSharedBytes = 48 * 1024;

template <typename T, int W, bool U>
__global__ void naf_march_forward_kernel(MarchSpec<T> s, GridSpec g, const T* table, MLPView<T> m, const int64_t* rays,
                                         const T* offsets, T* out, int64_t n_rays) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n_rays * s.n_samples) return;
  const int64_t r = i / s.n_samples;
  const int k = int(i - r * s.n_samples);
  T o[3], d[3], t_near, dt;
  if (!ray_bins(s, rays[r], o, d, t_near, dt)) return;
  const T* off = offsets != nullptr ? offsets + r * s.n_samples : nullptr;
  atomicAdd(out + r, naf_sample_forward<T, W, U>(s, g, table, m, o, d, t_near, dt, k, off));
}

template <typename T, int W, bool U>
__global__ void naf_march_backward_kernel(MarchSpec<T> s, GridSpec g, const T* table, MLPView<T> m, const int64_t* rays,
                                          const T* offsets, const T* grad, T* grad_table, T* grad_params,
                                          int64_t n_params, bool shared_params, int64_t n_rays) {
  extern __shared__ unsigned char shared_raw[];
  BlockParams<T> params(grad_params, n_params, shared_params, shared_raw);
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n_rays * s.n_samples) {
    const int64_t r = i / s.n_samples;
    const int k = int(i - r * s.n_samples);
    T o[3], d[3], t_near, dt;
    if (grad[r] != T(0) && ray_bins(s, rays[r], o, d, t_near, dt)) {
      const T* off = offsets != nullptr ? offsets + r * s.n_samples : nullptr;
      AtomicAcc<T> table_acc{grad_table};
      AtomicAcc<T> param_acc{params.buffer()};
      naf_sample_backward<T, W, U>(s, g, table, m, o, d, t_near, dt, k, off, grad[r] * dt * s.mu_max, table_acc,
                                param_acc);
    }
  }
  params.flush();
}

at::Tensor naf_march_forward_cuda(const at::Tensor& rays, const at::Tensor& geometry, const at::Tensor& offsets,
                                  const at::Tensor& table, at::TensorList weights, at::TensorList biases,
                                  c10::IntArrayRef grid, c10::IntArrayRef mlp, c10::ArrayRef<double> box,
                                  double mu_max, c10::IntArrayRef march) {
  TORCH_CHECK(rays.dim() == 1 && rays.scalar_type() == at::kLong && rays.is_contiguous(), "nfrecon: rays must be (R,) int64");
  const GridSpec g = grid_spec(grid, table);
  const int64_t n_rays = rays.size(0);
  at::Tensor out = at::zeros({n_rays}, table.options());
  if (n_rays == 0) return out;
  const c10::DeviceGuard guard(table.device());
  cudaStream_t stream = current_stream(table);
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "naf_march_forward_cuda", [&] {
    std::vector<at::Tensor> wt;
    const MLPView<scalar_t> m = mlp_view<scalar_t>(weights.vec(), biases.vec(), mlp, g.width(), wt);
    const MarchSpec<scalar_t> s = march_spec<scalar_t>(geometry, box, mu_max, march);
    const scalar_t* off = offsets_ptr<scalar_t>(offsets, n_rays, s.n_samples);
    with_width(m, [&](auto width, auto uniform) {
      constexpr int W = decltype(width)::value;
      constexpr bool U = decltype(uniform)::value;
      naf_march_forward_kernel<scalar_t, W, U><<<blocks_for(n_rays * s.n_samples), kThreads, 0, stream>>>(
          s, g, table.data_ptr<scalar_t>(), m, rays.data_ptr<int64_t>(), off, out.data_ptr<scalar_t>(), n_rays);
    });
    check_launch("naf_march_forward_cuda");
  });
  return out;
}

std::vector<at::Tensor> naf_march_backward_cuda(const at::Tensor& grad, const at::Tensor& rays,
                                                const at::Tensor& geometry, const at::Tensor& offsets,
                                                const at::Tensor& table, at::TensorList weights,
                                                at::TensorList biases, c10::IntArrayRef grid, c10::IntArrayRef mlp,
                                                c10::ArrayRef<double> box, double mu_max, c10::IntArrayRef march) {
  const GridSpec g = grid_spec(grid, table);
  const int64_t n_rays = rays.size(0);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == n_rays && grad.is_contiguous(), "nfrecon: grad must be (R,)");
  const std::vector<at::Tensor> ws = weights.vec(), bs = biases.vec();
  const int64_t np = n_params(ws, bs);
  at::Tensor grad_table = at::zeros_like(table);
  at::Tensor grad_params = at::zeros({np}, table.options());
  if (n_rays > 0) {
    const c10::DeviceGuard guard(table.device());
  cudaStream_t stream = current_stream(table);
    AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "naf_march_backward_cuda", [&] {
      std::vector<at::Tensor> wt;
      const MLPView<scalar_t> m = mlp_view<scalar_t>(ws, bs, mlp, g.width(), wt);
      const MarchSpec<scalar_t> s = march_spec<scalar_t>(geometry, box, mu_max, march);
      const scalar_t* off = offsets_ptr<scalar_t>(offsets, n_rays, s.n_samples);
      const int64_t bytes = np * int64_t(sizeof(scalar_t));
      const bool shared = bytes <= kSharedBytes;
      with_width(m, [&](auto width, auto uniform) {
        constexpr int W = decltype(width)::value;
        constexpr bool U = decltype(uniform)::value;
        naf_march_backward_kernel<scalar_t, W, U>
            <<<blocks_for(n_rays * s.n_samples), kThreads, shared ? size_t(bytes) : 0, stream>>>(
                s, g, table.data_ptr<scalar_t>(), m, rays.data_ptr<int64_t>(), off, grad.data_ptr<scalar_t>(),
                grad_table.data_ptr<scalar_t>(), grad_params.data_ptr<scalar_t>(), np, shared, n_rays);
      });
      check_launch("naf_march_backward_cuda");
    });
  }
  std::vector<at::Tensor> out{grad_table};
  const std::vector<at::Tensor> params = split_params(grad_params, ws, bs);
  out.insert(out.end(), params.begin(), params.end());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(nfrecon, CUDA, m) {
  m.impl("naf_march_forward", &naf_march_forward_cuda);
  m.impl("naf_march_backward", &naf_march_backward_cuda);
}

}  // namespace nfrecon
