// CPU launcher of FDK's voxel-driven backprojection: one task per row of voxels (z, y), every
// view summed per voxel in double (no reduction across threads: deterministic).
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "nfrecon/fdk.h"

namespace nfrecon {
namespace {

at::Tensor fdk_backproject_cpu(const at::Tensor& images, const at::Tensor& mats, const at::Tensor& z,
                               const at::Tensor& y, const at::Tensor& x) {
  TORCH_CHECK(images.dim() == 3 && images.is_contiguous(), "nfrecon: images must be (views, rows, cols)");
  TORCH_CHECK(mats.dim() == 2 && mats.size(0) == images.size(0) && mats.size(1) == 12 && mats.is_contiguous() &&
                  mats.scalar_type() == images.scalar_type(), "nfrecon: mats must be (views, 12) of the images' dtype");
  for (const at::Tensor* c : {&z, &y, &x}) {
    TORCH_CHECK(c->dim() == 1 && c->is_contiguous() && c->scalar_type() == images.scalar_type(),
                "nfrecon: voxel coordinates must be 1-D of the images' dtype");
  }
  const int views = int(images.size(0)), rows = int(images.size(1)), cols = int(images.size(2));
  const int64_t nz = z.numel(), ny = y.numel(), nx = x.numel();
  at::Tensor out = at::empty({nz, ny, nx}, images.options());
  AT_DISPATCH_FLOATING_TYPES(images.scalar_type(), "fdk_backproject_cpu", [&] {
    const scalar_t* img = images.data_ptr<scalar_t>();
    const scalar_t* m = mats.data_ptr<scalar_t>();
    const scalar_t *zp = z.data_ptr<scalar_t>(), *yp = y.data_ptr<scalar_t>(), *xp = x.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, nz * ny, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const scalar_t zc = zp[r / ny], yc = yp[r % ny];
        for (int64_t i = 0; i < nx; ++i) {
          o[r * nx + i] = fdk_voxel<scalar_t, double>(m, img, views, rows, cols, zc, yc, xp[i]);
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(nfrecon, CPU, m) { m.impl("fdk_backproject", &fdk_backproject_cpu); }

}  // namespace nfrecon
