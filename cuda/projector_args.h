// Host-side glue of the projector and FDK launchers (CPU and CUDA): unpack and check the op
// arguments into the plain structs of cuda/include/nfrecon/{projector,fdk}.h. The Python side
// (nfrecon/ops/projector/, nfrecon/recon/fdk.py) has already checked shapes, dtypes and ray
// indices with user-facing messages; these checks only stop a direct call of
// torch.ops.nfrecon.* from reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "nfrecon/projector.h"

namespace nfrecon {

// det = [rows, cols]; box = [lo(3), size(3)] mm (z, y, x); shape = [nz, ny, nx]
inline VoxelSpec voxel_spec(const at::Tensor& geometry, c10::IntArrayRef det, c10::ArrayRef<double> box, double step,
                            c10::IntArrayRef shape) {
  TORCH_CHECK(geometry.dim() == 2 && geometry.size(1) == 12 && geometry.scalar_type() == at::kDouble &&
                  geometry.is_contiguous(), "nfrecon: geometry must be (views, 12) float64");
  TORCH_CHECK(det.size() == 2 && box.size() == 6 && shape.size() == 3, "nfrecon: projector spec has the wrong length");
  TORCH_CHECK(step > 0.0, "nfrecon: step must be positive");
  VoxelSpec s{};
  s.geom = geometry.data_ptr<double>();
  s.rows = int(det[0]);
  s.cols = int(det[1]);
  TORCH_CHECK(s.rows >= 1 && s.cols >= 1, "nfrecon: bad detector shape");
  for (int k = 0; k < 3; ++k) {
    s.n[k] = int(shape[k]);
    s.lo[k] = box[k];
    s.size[k] = box[3 + k];
    TORCH_CHECK(s.n[k] >= 1 && s.size[k] > 0.0, "nfrecon: bad volume grid");
  }
  s.step = step;
  return s;
}

// The number of rays addressed: rays.numel(), or every ray of the stack when rays is absent.
// Flat indices must lie in [0, views * rows * cols) (checked on the Python side).
inline int64_t ray_count(const VoxelSpec& s, const at::Tensor& geometry, const std::optional<at::Tensor>& rays) {
  if (rays.has_value()) {
    TORCH_CHECK(rays->scalar_type() == at::kLong && rays->dim() == 1 && rays->is_contiguous(),
                "nfrecon: rays must be (R,) int64");
    return rays->numel();
  }
  return geometry.size(0) * int64_t(s.rows) * s.cols;
}

inline const int64_t* ray_ptr(const std::optional<at::Tensor>& rays) {
  return rays.has_value() ? rays->data_ptr<int64_t>() : nullptr;
}

}  // namespace nfrecon
