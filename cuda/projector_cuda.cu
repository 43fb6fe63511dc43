// CUDA launcher of the voxel projector: one thread per ray; the transpose scatters into the
// volume with atomics (the order of the additions, and so the rounding, varies run to run).
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <torch/library.h>

#include "cuda_common.cuh"
#include "nfrecon/projector.h"
#include "projector_args.h"

namespace nfrecon {
namespace {

template <typename T>
__global__ void projector_forward_kernel(VoxelSpec s, const int64_t* rays, const T* vol, T* out, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = voxel_project_ray<T>(s, rays ? rays[i] : i, vol);
}

template <typename T>
__global__ void projector_adjoint_kernel(VoxelSpec s, const int64_t* rays, const T* values, T* out, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  AtomicAcc<T> acc{out};
  voxel_backproject_ray(s, rays ? rays[i] : i, values[i], acc);
}

at::Tensor projector_forward_cuda(const at::Tensor& volume, const at::Tensor& geometry,
                                  const std::optional<at::Tensor>& rays, c10::IntArrayRef det,
                                  c10::ArrayRef<double> box, double step) {
  TORCH_CHECK(volume.dim() == 3 && volume.is_contiguous(), "nfrecon: volume must be a contiguous (nz, ny, nx) tensor");
  const VoxelSpec s = voxel_spec(geometry, det, box, step, volume.sizes());
  const int64_t n = ray_count(s, geometry, rays);
  at::Tensor out = at::empty({n}, volume.options());
  if (n == 0) return out;
  const c10::DeviceGuard guard(volume.device());
  cudaStream_t stream = current_stream(volume);
  AT_DISPATCH_FLOATING_TYPES(volume.scalar_type(), "projector_forward_cuda", [&] {
    projector_forward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        s, ray_ptr(rays), volume.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n);
  });
  check_launch("projector_forward_cuda");
  return out;
}

at::Tensor projector_adjoint_cuda(const at::Tensor& values, const at::Tensor& geometry,
                                  const std::optional<at::Tensor>& rays, c10::IntArrayRef det,
                                  c10::ArrayRef<double> box, double step, c10::IntArrayRef shape) {
  const VoxelSpec s = voxel_spec(geometry, det, box, step, shape);
  const int64_t n = ray_count(s, geometry, rays);
  TORCH_CHECK(values.dim() == 1 && values.numel() == n && values.is_contiguous(), "nfrecon: values must be (R,)");
  at::Tensor out = at::zeros(shape, values.options());
  if (n == 0) return out;
  const c10::DeviceGuard guard(values.device());
  cudaStream_t stream = current_stream(values);
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "projector_adjoint_cuda", [&] {
    projector_adjoint_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        s, ray_ptr(rays), values.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n);
  });
  check_launch("projector_adjoint_cuda");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(nfrecon, CUDA, m) {
  m.impl("projector_forward", &projector_forward_cuda);
  m.impl("projector_adjoint", &projector_adjoint_cuda);
}

}  // namespace nfrecon
