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

// Loop pragmas of the CPU build (ignored by nvcc): the per-sample loops below are written so
// that g++ vectorises them (-march=native: AVX2/AVX-512 gathers of the 8 corners).
#if defined(__CUDACC__)
#define NFR_SIMD
#define NFR_SIMD_SUM
#else
#define NFR_SIMD _Pragma("omp simd")
#define NFR_SIMD_SUM _Pragma("omp simd reduction(+ : acc)")
#endif

// Samples whose corners the transpose computes together before it scatters them.
constexpr int kVoxelBlock = 16;

// Border-clamped linear interpolation along one axis of n voxels (stride elements apart):
// lower corner i0 (an element offset i0 * stride), the offset to the upper corner (0 at the
// last centre, where the upper weight is 0 anyway) and the weight w of the upper corner.
// Matches grid_sample (border, align_corners=False): clip the index coordinate to [0, n - 1],
// then floor. A NaN position clips to 0.
template <typename T>
NFR_HD void border_axis(T x, int n, int stride, int& offset, int& step, T& w) {
  x = min2(max2(x, T(0)), T(n - 1));
  const T f = floor(x);
  const int i0 = int(f);
  w = x - f;
  offset = i0 * stride;
  step = i0 < n - 1 ? stride : 0;
}

// The trilinear stencil of index position (z, y, x): the flat offset of the lower corner, the
// offsets to the upper corner along z, y, x and the upper weights. Corner c = (cz, cy, cx)
// (bits 2, 1, 0) is at base + cz * sz + cy * sy + cx * sx with weight
// (cz ? wz : 1 - wz) * (cy ? wy : 1 - wy) * (cx ? wx : 1 - wx).
template <typename T>
struct Stencil {
  int base, sz, sy, sx;
  T wz, wy, wx;
};

template <typename T>
NFR_HD Stencil<T> stencil(const int n[3], T z, T y, T x) {
  Stencil<T> st;
  int oz, oy, ox;
  border_axis(z, n[0], n[1] * n[2], oz, st.sz, st.wz);
  border_axis(y, n[1], n[2], oy, st.sy, st.wy);
  border_axis(x, n[2], 1, ox, st.sx, st.wx);
  st.base = oz + oy + ox;
  return st;
}

// The 8 trilinear weights of a stencil, corner order as above (x fastest).
template <typename T>
NFR_HD void stencil_weights(const Stencil<T>& st, T w[8]) {
  const T uz = T(1) - st.wz, uy = T(1) - st.wy, ux = T(1) - st.wx;
  const T a = uz * uy, b = uz * st.wy, c = st.wz * uy, d = st.wz * st.wy;
  w[0] = a * ux; w[1] = a * st.wx; w[2] = b * ux; w[3] = b * st.wx;
  w[4] = c * ux; w[5] = c * st.wx; w[6] = d * ux; w[7] = d * st.wx;
}

// Line integral of one ray (A x for one pixel). vol holds at most 2^31 - 1 voxels (int
// offsets; checked on the Python side).
template <typename T>
NFR_HD T voxel_project_ray(const VoxelSpec& s, int64_t flat, const T* __restrict__ vol) {
  const VoxelRay<T> r = voxel_ray<T>(s, flat);
  T acc = T(0);
  NFR_SIMD_SUM
  for (int k = 0; k < r.n_bins; ++k) {
    const Stencil<T> st = stencil(s.n, r.p0[0] + T(k) * r.dp[0], r.p0[1] + T(k) * r.dp[1], r.p0[2] + T(k) * r.dp[2]);
    T w[8];
    stencil_weights(st, w);
    const T* v = vol + st.base;
    const int y1 = st.sy, z1 = st.sz, zy = st.sz + st.sy;
    acc += w[0] * v[0] + w[1] * v[st.sx] + w[2] * v[y1] + w[3] * v[y1 + st.sx] +
           w[4] * v[z1] + w[5] * v[z1 + st.sx] + w[6] * v[zy] + w[7] * v[zy + st.sx];
  }
  return acc * r.dt;
}

// Transpose of voxel_project_ray for one pixel value g: out[voxel] += g * dt * weight for
// every sample; Acc is BufferAcc (CPU, per-thread buffer) or AtomicAcc (CUDA). The stencils
// of kVoxelBlock samples are computed together (vectorised), then scattered one by one.
template <typename T, typename Acc>
NFR_HD void voxel_backproject_ray(const VoxelSpec& s, int64_t flat, T g, Acc& out) {
  const VoxelRay<T> r = voxel_ray<T>(s, flat);
  if (r.n_bins == 0 || g == T(0)) return;
  const T gd = g * r.dt;
  for (int k0 = 0; k0 < r.n_bins; k0 += kVoxelBlock) {
    int base[kVoxelBlock], sz[kVoxelBlock], sy[kVoxelBlock], sx[kVoxelBlock];
    T w[8][kVoxelBlock];
    // samples past the ray's end are computed too (their positions clip into the volume) and
    // not scattered
    NFR_SIMD
    for (int j = 0; j < kVoxelBlock; ++j) {
      const T k = T(k0 + j);
      const Stencil<T> st = stencil(s.n, r.p0[0] + k * r.dp[0], r.p0[1] + k * r.dp[1], r.p0[2] + k * r.dp[2]);
      T wj[8];
      stencil_weights(st, wj);
      base[j] = st.base;
      sz[j] = st.sz;
      sy[j] = st.sy;
      sx[j] = st.sx;
      for (int c = 0; c < 8; ++c) w[c][j] = gd * wj[c];
    }
    const int m = min2(kVoxelBlock, r.n_bins - k0);
    for (int j = 0; j < m; ++j) {
      const int b = base[j], y1 = sy[j], z1 = sz[j], zy = sz[j] + sy[j], x1 = sx[j];
      out.add(b, w[0][j]);
      out.add(b + x1, w[1][j]);
      out.add(b + y1, w[2][j]);
      out.add(b + y1 + x1, w[3][j]);
      out.add(b + z1, w[4][j]);
      out.add(b + z1 + x1, w[5][j]);
      out.add(b + zy, w[6][j]);
      out.add(b + zy + x1, w[7][j]);
    }
  }
}

}  // namespace nfrecon
