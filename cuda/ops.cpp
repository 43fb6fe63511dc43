// The op schemas of every nfrecon kernel, registered once. The CPU launchers (*_cpu.cpp, in
// the same library) and the CUDA launchers (*_cuda.cu, a second library loaded after this
// one) add their implementations for the CPU and CUDA dispatch keys, so that one
// torch.autograd.Function (nfrecon/ops/<kernel>/function.py) serves both devices.
//
// Argument packing (see cuda/args.h): grid = [log2_hashmap_size, n_features, n_levels,
// res..., dense..., offset...]; mlp = [activation, out_activation, skip flag per layer];
// box = [lo, hi, field_min, field_size] (mm, z y x); march = [det_rows, det_cols, n_samples].
#include <torch/library.h>

TORCH_LIBRARY(nfrecon, m) {
  m.def("hashgrid_forward(Tensor points, Tensor table, int[] grid) -> Tensor");
  m.def("hashgrid_backward(Tensor grad, Tensor points, Tensor table, int[] grid, bool points_grad) -> (Tensor, Tensor)");
  m.def("naf_march_forward(Tensor rays, Tensor geometry, Tensor offsets, Tensor table, Tensor[] weights, "
        "Tensor[] biases, int[] grid, int[] mlp, float[] box, float mu_max, int[] march) -> Tensor");
  m.def("naf_march_backward(Tensor grad, Tensor rays, Tensor geometry, Tensor offsets, Tensor table, "
        "Tensor[] weights, Tensor[] biases, int[] grid, int[] mlp, float[] box, float mu_max, int[] march) -> Tensor[]");
  // conditioned (CondCBNT) march (cuda/include/nfrecon/cond_march.h): backbone b* and modulation m*
  m.def("cond_march_forward(Tensor rays, Tensor geometry, Tensor offsets, Tensor btable, Tensor[] bweights, "
        "Tensor[] bbiases, int[] bgrid, int[] bmlp, Tensor mtable, Tensor[] mweights, Tensor[] mbiases, int[] mgrid, "
        "int[] mmlp, float[] box, float mu_max, int[] march) -> Tensor");
  m.def("cond_march_backward(Tensor grad, Tensor rays, Tensor geometry, Tensor offsets, Tensor btable, "
        "Tensor[] bweights, Tensor[] bbiases, int[] bgrid, int[] bmlp, Tensor mtable, Tensor[] mweights, "
        "Tensor[] mbiases, int[] mgrid, int[] mmlp, float[] box, float mu_max, int[] march, bool backbone_grad) "
        "-> Tensor[]");
  // voxel projector (cuda/include/nfrecon/projector.h): rays = flat indices (R,) or None for
  // every ray; det = [rows, cols]; box = [lo(3), size(3)] mm; shape = [nz, ny, nx]
  m.def("projector_forward(Tensor volume, Tensor geometry, Tensor? rays, int[] det, float[] box, float step) -> Tensor");
  m.def("projector_adjoint(Tensor values, Tensor geometry, Tensor? rays, int[] det, float[] box, float step, "
        "int[] shape) -> Tensor");
  // FDK's voxel-driven backprojection (cuda/include/nfrecon/fdk.h): mats (views, 12), voxel offsets z, y, x
  m.def("fdk_backproject(Tensor images, Tensor mats, Tensor z, Tensor y, Tensor x) -> Tensor");
}
