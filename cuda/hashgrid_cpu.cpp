// CPU launcher of the hash-grid encoding (forward and backward): OpenMP loops over points.
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "args.h"
#include "cpu_parallel.h"
#include "nfrecon/hashgrid.h"

namespace nfrecon {
namespace {

at::Tensor hashgrid_forward_cpu(const at::Tensor& points, const at::Tensor& table, c10::IntArrayRef grid) {
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 3 && points.is_contiguous(), "nfrecon: points must be (M, 3)");
  TORCH_CHECK(table.is_contiguous() && table.scalar_type() == points.scalar_type(), "nfrecon: table dtype/layout");
  const GridSpec g = grid_spec(grid, table);
  const int64_t m = points.size(0);
  at::Tensor out = at::empty({m, g.width()}, table.options());
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "hashgrid_forward_cpu", [&] {
    const scalar_t* p = points.data_ptr<scalar_t>();
    const scalar_t* t = table.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, m, 256, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) encode_point(g, p + 3 * i, t, o + i * g.width());
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> hashgrid_backward_cpu(const at::Tensor& grad, const at::Tensor& points,
                                                         const at::Tensor& table, c10::IntArrayRef grid,
                                                         bool points_grad) {
  const GridSpec g = grid_spec(grid, table);
  const int64_t m = points.size(0);
  TORCH_CHECK(grad.is_contiguous() && grad.dim() == 2 && grad.size(0) == m && grad.size(1) == g.width(),
              "nfrecon: grad must be (M, L * F)");
  at::Tensor grad_table = at::empty_like(table);
  at::Tensor grad_points = points_grad ? at::zeros_like(points) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "hashgrid_backward_cpu", [&] {
    const scalar_t* p = points.data_ptr<scalar_t>();
    const scalar_t* t = table.data_ptr<scalar_t>();
    const scalar_t* gr = grad.data_ptr<scalar_t>();
    scalar_t* gp = points_grad ? grad_points.data_ptr<scalar_t>() : nullptr;
    chunked_accumulate<scalar_t>(m, table.numel(), grad_table.data_ptr<scalar_t>(),
                                 [&](int64_t b, int64_t e, scalar_t* buf) {
                                   BufferAcc<scalar_t> acc{buf};
                                   for (int64_t i = b; i < e; ++i) {
                                     encode_point_backward(g, p + 3 * i, t, gr + i * g.width(), acc,
                                                           gp != nullptr ? gp + 3 * i : nullptr);
                                   }
                                 });
  });
  return {grad_table, grad_points};
}

}  // namespace

TORCH_LIBRARY_IMPL(nfrecon, CPU, m) {
  m.impl("hashgrid_forward", &hashgrid_forward_cpu);
  m.impl("hashgrid_backward", &hashgrid_backward_cpu);
}

}  // namespace nfrecon
