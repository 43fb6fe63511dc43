// CPU launcher of the fused NAF ray march: OpenMP loops over rays, one ray per iteration, its
// samples in blocks of kCpuBlock.
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

// GCC's tuning for AVX-512 CPUs vectorises with 256-bit registers by default; asked to prefer
// 512-bit ones, a 32-wide MLP row is two zmm registers (measured ~10% faster here). Affects
// only the auto-vectorised loops of this file (no ABI change); ignored without AVX-512.
#pragma GCC target("prefer-vector-width=512")
#include "args.h"
#include "cpu_parallel.h"
#include "nfrecon/naf_march.h"

namespace nfrecon {
namespace {

// Samples of a ray evaluated together (naf_march.h): 8 for width 32 (z[8][32] = 16 AVX-512
// registers), fewer for wider MLPs, whose blocks live in L1 anyway.
template <int W> constexpr int kCpuBlock = W <= 32 ? 8 : W <= 64 ? 4 : 2;

at::Tensor naf_march_forward_cpu(const at::Tensor& rays, const at::Tensor& geometry, const at::Tensor& offsets,
                                 const at::Tensor& table, at::TensorList weights, at::TensorList biases,
                                 c10::IntArrayRef grid, c10::IntArrayRef mlp, c10::ArrayRef<double> box,
                                 double mu_max, c10::IntArrayRef march) {
  TORCH_CHECK(rays.dim() == 1 && rays.scalar_type() == at::kLong && rays.is_contiguous(), "nfrecon: rays must be (R,) int64");
  const GridSpec g = grid_spec(grid, table);
  const int64_t n_rays = rays.size(0);
  at::Tensor out = at::empty({n_rays}, table.options());
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "naf_march_forward_cpu", [&] {
    std::vector<at::Tensor> wt;
    const MLPView<scalar_t> m = mlp_view<scalar_t>(weights.vec(), biases.vec(), mlp, g.width(), wt);
    const MarchSpec<scalar_t> s = march_spec<scalar_t>(geometry, box, mu_max, march);
    const scalar_t* off = offsets_ptr<scalar_t>(offsets, n_rays, s.n_samples);
    const int64_t* r = rays.data_ptr<int64_t>();
    const scalar_t* t = table.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    with_width(m, [&](auto width, auto uniform) {
      constexpr int W = decltype(width)::value;
      constexpr bool U = decltype(uniform)::value;
      at::parallel_for(0, n_rays, 8, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          o[i] = naf_ray_forward<scalar_t, W, U, kCpuBlock<W>, true>(s, g, t, m, r[i], off != nullptr ? off + i * s.n_samples : nullptr);
        }
      });
    });
  });
  return out;
}

std::vector<at::Tensor> naf_march_backward_cpu(const at::Tensor& grad, const at::Tensor& rays,
                                               const at::Tensor& geometry, const at::Tensor& offsets,
                                               const at::Tensor& table, at::TensorList weights,
                                               at::TensorList biases, c10::IntArrayRef grid, c10::IntArrayRef mlp,
                                               c10::ArrayRef<double> box, double mu_max, c10::IntArrayRef march) {
  const GridSpec g = grid_spec(grid, table);
  const int64_t n_rays = rays.size(0);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == n_rays && grad.is_contiguous(), "nfrecon: grad must be (R,)");
  const std::vector<at::Tensor> ws = weights.vec(), bs = biases.vec();
  const int64_t table_size = table.numel();
  at::Tensor flat = at::empty({table_size + n_params(ws, bs)}, table.options());
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "naf_march_backward_cpu", [&] {
    std::vector<at::Tensor> wt;
    const MLPView<scalar_t> m = mlp_view<scalar_t>(ws, bs, mlp, g.width(), wt);
    const MarchSpec<scalar_t> s = march_spec<scalar_t>(geometry, box, mu_max, march);
    const scalar_t* off = offsets_ptr<scalar_t>(offsets, n_rays, s.n_samples);
    const int64_t* r = rays.data_ptr<int64_t>();
    const scalar_t* t = table.data_ptr<scalar_t>();
    const scalar_t* gr = grad.data_ptr<scalar_t>();
    with_width(m, [&](auto width, auto uniform) {
      constexpr int W = decltype(width)::value;
      constexpr bool U = decltype(uniform)::value;
      chunked_accumulate<scalar_t>(n_rays, flat.numel(), flat.data_ptr<scalar_t>(),
                                   [&](int64_t b, int64_t e, scalar_t* buf) {
                                     BufferAcc<scalar_t> table_acc{buf};
                                     BufferAcc<scalar_t> param_acc{buf + table_size};
                                     for (int64_t i = b; i < e; ++i) {
                                       naf_ray_backward<scalar_t, W, U, kCpuBlock<W>, true>(
                                           s, g, t, m, r[i], off != nullptr ? off + i * s.n_samples : nullptr, gr[i],
                                           table_acc, param_acc);
                                     }
                                   });
    });
  });
  std::vector<at::Tensor> out{flat.narrow(0, 0, table_size).view(table.sizes())};
  const std::vector<at::Tensor> params = split_params(flat.narrow(0, table_size, flat.numel() - table_size), ws, bs);
  out.insert(out.end(), params.begin(), params.end());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(nfrecon, CPU, m) {
  m.impl("naf_march_forward", &naf_march_forward_cpu);
  m.impl("naf_march_backward", &naf_march_backward_cpu);
}

}  // namespace nfrecon
