// Voxel projector: forward projection A and its exact transpose A^T, the per-ray math written
// once for the CPU and CUDA builds.
//
// Semantics of nfrecon/ops/projector/reference.py. The volume (nz, ny, nx), indexed [z, y, x],
// fills the box [lo, lo + size] mm (z, y, x); it is read as the trilinear interpolant of the
// voxel values at the voxel centres, constant from the outermost centres to the box faces
// (grid_sample's border padding with align_corners=False) and zero outside the box. A ray's
// chord inside the box (pixel_ray and ray_box of ray.h, in double) is cut into
// n = ceil(length / step) equal bins of dt = length / n mm; the line integral is
// sum_k f(midpoint_k) * dt. The transpose adds g * dt * (trilinear weight) of every sample
// into its 8 corner voxels: the same samples and the same weights, so <A x, y> = <x, A^T y>
// up to rounding.
//
// Positions are carried in voxel-index coordinates (0 at the centre of voxel 0, nx - 1 at the
// last centre): the entry point and the per-bin step are computed in double per ray and
// rounded to T once; sample k sits at entry + (k + 1/2) * step, evaluated in T.
#pragma once

#include "nfrecon/common.h"
#include "nfrecon/ray.h"

namespace nfrecon {

// What every ray of a projection needs: geometry (views, 12) double (src, det, u, v, mm,
// z y x), the detector size, the volume grid and box, and the sampling step (mm).
struct VoxelSpec {
  const double* geom;
  int rows, cols;
  int n[3];        // nz, ny, nx
  double lo[3];    // box corner (mm, z y x)
  double size[3];  // box size (mm, z y x)
  double step;     // largest bin length along a ray (mm)
};

// One ray, ready to be sampled: n_bins bins of length dt (mm); sample k at voxel-index
// position p0 + k * dp (p0 is the first midpoint). n_bins = 0 for a ray that misses the box.
template <typename T>
struct VoxelRay {
  int n_bins;
  T dt;
  T p0[3];
  T dp[3];
};

template <typename T>
NFR_HD VoxelRay<T> voxel_ray(const VoxelSpec& s, int64_t flat) {
  double o[3], d[3], lo[3], hi[3], tn, tf;
  pixel_ray<double>(s.geom, flat, s.rows, s.cols, o, d);
  for (int k = 0; k < 3; ++k) {
    lo[k] = s.lo[k];
    hi[k] = s.lo[k] + s.size[k];
  }
  ray_box<double>(o, d, lo, hi, tn, tf);
  VoxelRay<T> r;
  const double length = tf - tn > 0.0 ? tf - tn : 0.0;
  const double count = ceil(length / s.step);
  r.n_bins = int(count);
  const double dt = length / (count > 1.0 ? count : 1.0);
  r.dt = T(dt);
  for (int k = 0; k < 3; ++k) {
    // world mm -> voxel index: (x - lo) / voxel - 1/2, voxel = size / n
    const double inv_voxel = double(s.n[k]) / s.size[k];
    const double first = tn + 0.5 * dt;
    r.p0[k] = T((o[k] + first * d[k] - s.lo[k]) * inv_voxel - 0.5);
    r.dp[k] = T(dt * d[k] * inv_voxel);
  }
  return r;
}

// Border-clamped linear interpolation along one axis: corners i0 <= i1 (equal at a face)
// and the weight w of i1. Matches grid_sample (border, align_corners=False): clip the
// index coordinate to [0, n - 1], then floor.
template <typename T>
NFR_HD void border_corners(T x, int n, int& i0, int& i1, T& w) {
  x = min2(max2(x, T(0)), T(n - 1));
  const T f = floor(x);
  i0 = int(f);
  w = x - f;
  i1 = min2(i0 + 1, n - 1);
}

// The 8 corner offsets (flat, into a [z, y, x] volume) and trilinear weights of position p.
template <typename T>
NFR_HD void trilinear(const int n[3], const T p[3], int64_t idx[8], T wt[8]) {
  int z0, z1, y0, y1, x0, x1;
  T wz, wy, wx;
  border_corners(p[0], n[0], z0, z1, wz);
  border_corners(p[1], n[1], y0, y1, wy);
  border_corners(p[2], n[2], x0, x1, wx);
  const int64_t sy = n[2], sz = int64_t(n[1]) * n[2];
  const int64_t a = z0 * sz, b = z1 * sz;
  const int64_t c = y0 * sy, e = y1 * sy;
  idx[0] = a + c + x0; idx[1] = a + c + x1; idx[2] = a + e + x0; idx[3] = a + e + x1;
  idx[4] = b + c + x0; idx[5] = b + c + x1; idx[6] = b + e + x0; idx[7] = b + e + x1;
  const T uz = T(1) - wz, uy = T(1) - wy, ux = T(1) - wx;
  wt[0] = uz * uy * ux; wt[1] = uz * uy * wx; wt[2] = uz * wy * ux; wt[3] = uz * wy * wx;
  wt[4] = wz * uy * ux; wt[5] = wz * uy * wx; wt[6] = wz * wy * ux; wt[7] = wz * wy * wx;
}

// Line integral of one ray (A x for one pixel). A is the accumulator type (double on the
// CPU: the sum over a ray's ~n samples then carries no float32 rounding growth).
template <typename T, typename A>
NFR_HD T voxel_project_ray(const VoxelSpec& s, int64_t flat, const T* __restrict__ vol) {
  const VoxelRay<T> r = voxel_ray<T>(s, flat);
  A acc = A(0);
  for (int k = 0; k < r.n_bins; ++k) {
    const T p[3] = {r.p0[0] + T(k) * r.dp[0], r.p0[1] + T(k) * r.dp[1], r.p0[2] + T(k) * r.dp[2]};
    int64_t idx[8];
    T wt[8];
    trilinear(s.n, p, idx, wt);
    T v = T(0);
    NFR_UNROLL
    for (int c = 0; c < 8; ++c) v += wt[c] * vol[idx[c]];
    acc += A(v);
  }
  return T(acc * A(r.dt));
}

// Transpose of voxel_project_ray for one pixel value g: out[voxel] += g * dt * weight for
// every sample; Acc is BufferAcc (CPU, per-thread buffer) or AtomicAcc (CUDA).
template <typename T, typename Acc>
NFR_HD void voxel_backproject_ray(const VoxelSpec& s, int64_t flat, T g, Acc& out) {
  const VoxelRay<T> r = voxel_ray<T>(s, flat);
  if (r.n_bins == 0 || g == T(0)) return;
  const T gd = g * r.dt;
  for (int k = 0; k < r.n_bins; ++k) {
    const T p[3] = {r.p0[0] + T(k) * r.dp[0], r.p0[1] + T(k) * r.dp[1], r.p0[2] + T(k) * r.dp[2]};
    int64_t idx[8];
    T wt[8];
    trilinear(s.n, p, idx, wt);
    NFR_UNROLL
    for (int c = 0; c < 8; ++c) out.add(idx[c], gd * wt[c]);
  }
}

}  // namespace nfrecon
