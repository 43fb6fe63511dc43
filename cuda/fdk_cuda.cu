// CUDA launcher of FDK's voxel-driven backprojection: one thread per voxel (x fastest, so a
// warp reads neighbouring detector pixels), every view summed in a register.
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <torch/library.h>

#include "cuda_common.cuh"
#include "nfrecon/fdk.h"

namespace nfrecon {
namespace {

template <typename T>
__global__ void fdk_backproject_kernel(const T* images, const T* mats, const T* z, const T* y, const T* x, T* out,
                                       int views, int rows, int cols, int64_t ny, int64_t nx, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t ix = i % nx, iy = (i / nx) % ny, iz = i / (nx * ny);
  out[i] = fdk_voxel<T, T>(mats, images, views, rows, cols, z[iz], y[iy], x[ix]);
}

at::Tensor fdk_backproject_cuda(const at::Tensor& images, const at::Tensor& mats, const at::Tensor& z,
                                const at::Tensor& y, const at::Tensor& x) {
  TORCH_CHECK(images.dim() == 3 && images.is_contiguous(), "nfrecon: images must be (views, rows, cols)");
  TORCH_CHECK(mats.dim() == 2 && mats.size(0) == images.size(0) && mats.size(1) == 12 && mats.is_contiguous() &&
                  mats.scalar_type() == images.scalar_type(), "nfrecon: mats must be (views, 12) of the images' dtype");
  for (const at::Tensor* c : {&z, &y, &x}) {
    TORCH_CHECK(c->dim() == 1 && c->is_contiguous() && c->scalar_type() == images.scalar_type(),
                "nfrecon: voxel coordinates must be 1-D of the images' dtype");
  }
  const int64_t nz = z.numel(), ny = y.numel(), nx = x.numel(), n = nz * ny * nx;
  at::Tensor out = at::empty({nz, ny, nx}, images.options());
  if (n == 0) return out;
  const c10::DeviceGuard guard(images.device());
  cudaStream_t stream = current_stream(images);
  AT_DISPATCH_FLOATING_TYPES(images.scalar_type(), "fdk_backproject_cuda", [&] {
    fdk_backproject_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        images.data_ptr<scalar_t>(), mats.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
        x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), int(images.size(0)), int(images.size(1)),
        int(images.size(2)), ny, nx, n);
  });
  check_launch("fdk_backproject_cuda");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(nfrecon, CUDA, m) { m.impl("fdk_backproject", &fdk_backproject_cuda); }

}  // namespace nfrecon
