// CUDA launcher of the hash-grid encoding: one thread per point; table gradients by atomics.
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <torch/library.h>

#include "args.h"
#include "cuda_common.cuh"
#include "nfrecon/hashgrid.h"

namespace nfrecon {
namespace {

template <typename T>
__global__ void hashgrid_forward_kernel(GridSpec g, const T* points, const T* table, T* out, int64_t m) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < m) encode_point(g, points + 3 * i, table, out + i * g.width());
}

template <typename T>
__global__ void hashgrid_backward_kernel(GridSpec g, const T* points, const T* table, const T* grad, T* grad_table,
                                         T* grad_points, int64_t m) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m) return;
  AtomicAcc<T> acc{grad_table};
  encode_point_backward(g, points + 3 * i, table, grad + i * g.width(), acc,
                        grad_points != nullptr ? grad_points + 3 * i : nullptr);
}

at::Tensor hashgrid_forward_cuda(const at::Tensor& points, const at::Tensor& table, c10::IntArrayRef grid) {
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 3 && points.is_contiguous(), "nfrecon: points must be (M, 3)");
  const GridSpec g = grid_spec(grid, table);
  const int64_t m = points.size(0);
  at::Tensor out = at::empty({m, g.width()}, table.options());
  if (m == 0) return out;
  const c10::DeviceGuard guard(table.device());
  cudaStream_t stream = current_stream(table);
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "hashgrid_forward_cuda", [&] {
    hashgrid_forward_kernel<scalar_t><<<blocks_for(m), kThreads, 0, stream>>>(
        g, points.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), m);
  });
  check_launch("hashgrid_forward_cuda");
  return out;
}

std::tuple<at::Tensor, at::Tensor> hashgrid_backward_cuda(const at::Tensor& grad, const at::Tensor& points,
                                                          const at::Tensor& table, c10::IntArrayRef grid,
                                                          bool points_grad) {
  const GridSpec g = grid_spec(grid, table);
  const int64_t m = points.size(0);
  TORCH_CHECK(grad.is_contiguous() && grad.size(0) == m && grad.size(1) == g.width(), "nfrecon: grad must be (M, L * F)");
  at::Tensor grad_table = at::zeros_like(table);
  at::Tensor grad_points = points_grad ? at::zeros_like(points) : at::Tensor();
  if (m == 0) return {grad_table, grad_points};
  const c10::DeviceGuard guard(table.device());
  cudaStream_t stream = current_stream(table);
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "hashgrid_backward_cuda", [&] {
    hashgrid_backward_kernel<scalar_t><<<blocks_for(m), kThreads, 0, stream>>>(
        g, points.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
        grad_table.data_ptr<scalar_t>(), points_grad ? grad_points.data_ptr<scalar_t>() : nullptr, m);
  });
  check_launch("hashgrid_backward_cuda");
  return {grad_table, grad_points};
}

}  // namespace

TORCH_LIBRARY_IMPL(nfrecon, CUDA, m) {
  m.impl("hashgrid_forward", &hashgrid_forward_cuda);
  m.impl("hashgrid_backward", &hashgrid_backward_cuda);
}

}  // namespace nfrecon
