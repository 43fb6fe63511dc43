// CPU launcher of the voxel projector: forward projection (blocks of rays per task) and its exact
// transpose (rays split into one chunk per thread, each scattering into a private volume
// buffer; the buffers are added in chunk order, so the result is deterministic).
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "cpu_parallel.h"
#include "nfrecon/projector.h"
#include "projector_args.h"

namespace nfrecon {
namespace {

at::Tensor projector_forward_cpu(const at::Tensor& volume, const at::Tensor& geometry,
                                 const std::optional<at::Tensor>& rays, c10::IntArrayRef det,
                                 c10::ArrayRef<double> box, double step) {
  TORCH_CHECK(volume.dim() == 3 && volume.is_contiguous(), "nfrecon: volume must be a contiguous (nz, ny, nx) tensor");
  const VoxelSpec s = voxel_spec(geometry, det, box, step, volume.sizes());
  const int64_t n = ray_count(s, geometry, rays);
  const int64_t* idx = ray_ptr(rays);
  at::Tensor out = at::empty({n}, volume.options());
  AT_DISPATCH_FLOATING_TYPES(volume.scalar_type(), "projector_forward_cpu", [&] {
    const scalar_t* vol = volume.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    // rays are independent: threads take blocks of rays from a shared counter (a thread that
    // the OS deschedules on a busy machine holds up no fixed half of the work)
    constexpr int64_t kRays = 256;
    std::atomic<int64_t> next{0};
    at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
      for (int64_t b = next.fetch_add(kRays); b < n; b = next.fetch_add(kRays)) {
        const int64_t e = std::min(n, b + kRays);
        for (int64_t i = b; i < e; ++i) o[i] = voxel_project_ray<scalar_t>(s, idx ? idx[i] : i, vol);
      }
    });
  });
  return out;
}

at::Tensor projector_adjoint_cpu(const at::Tensor& values, const at::Tensor& geometry,
                                 const std::optional<at::Tensor>& rays, c10::IntArrayRef det,
                                 c10::ArrayRef<double> box, double step, c10::IntArrayRef shape) {
  const VoxelSpec s = voxel_spec(geometry, det, box, step, shape);
  const int64_t n = ray_count(s, geometry, rays);
  TORCH_CHECK(values.dim() == 1 && values.numel() == n && values.is_contiguous(), "nfrecon: values must be (R,)");
  const int64_t* idx = ray_ptr(rays);
  at::Tensor out = at::empty(shape, values.options());
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "projector_adjoint_cpu", [&] {
    const scalar_t* g = values.data_ptr<scalar_t>();
    chunked_accumulate<scalar_t>(n, out.numel(), out.data_ptr<scalar_t>(), [&](int64_t b, int64_t e, scalar_t* buf) {
      BufferAcc<scalar_t> acc{buf};
      for (int64_t i = b; i < e; ++i) voxel_backproject_ray(s, idx ? idx[i] : i, g[i], acc);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(nfrecon, CPU, m) {
  m.impl("projector_forward", &projector_forward_cpu);
  m.impl("projector_adjoint", &projector_adjoint_cpu);
}

}  // namespace nfrecon
