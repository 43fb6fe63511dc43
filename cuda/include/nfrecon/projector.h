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

// Samples whose stencils are computed together (one block of vector lanes on the CPU).
constexpr int kVoxelBlock = 16;

// The trilinear stencil of index position (z, y, x), clipped to [0, n - 1] per axis and then
// floored (grid_sample with border padding, align_corners=False; a NaN position clips to 0):
// the flat offset base of the lower corner, the offsets sz, sy, sx to the upper corner along
// z, y, x (0 at the last centre, where the upper weight is 0 anyway) and the 8 weights.
// Corner c = (cz, cy, cx) (bits 2, 1, 0: x fastest) is at base + cz sz + cy sy + cx sx with
// weight w[c] = (cz ? wz : 1 - wz) (cy ? wy : 1 - wy) (cx ? wx : 1 - wx).
//
// The stencils of samples k0 .. k0 + kVoxelBlock - 1 of a ray, structure of arrays (so that
// the CPU build computes them with vector instructions; the loads and adds that use them are
// scalar). Samples past the ray's end are computed too (their positions clip into the
// volume) and not used.
template <typename T>
struct StencilBlock {
  int base[kVoxelBlock], sz[kVoxelBlock], sy[kVoxelBlock], sx[kVoxelBlock];
  T w[8][kVoxelBlock];
};

template <typename T>
NFR_HD void stencil_block(const int n[3], const VoxelRay<T>& r, int k0, StencilBlock<T>& b) {
  const T pz = r.p0[0], py = r.p0[1], px = r.p0[2], dz = r.dp[0], dy = r.dp[1], dx = r.dp[2];
  const int sy = n[2], sz = n[1] * n[2];
  const T hz = T(n[0] - 1), hy = T(n[1] - 1), hx = T(n[2] - 1);
  int* __restrict__ base = b.base;
  int* __restrict__ oz = b.sz;
  int* __restrict__ oy = b.sy;
  int* __restrict__ ox = b.sx;
  T* __restrict__ w0 = b.w[0];
  T* __restrict__ w1 = b.w[1];
  T* __restrict__ w2 = b.w[2];
  T* __restrict__ w3 = b.w[3];
  T* __restrict__ w4 = b.w[4];
  T* __restrict__ w5 = b.w[5];
  T* __restrict__ w6 = b.w[6];
  T* __restrict__ w7 = b.w[7];
  NFR_SIMD
  for (int j = 0; j < kVoxelBlock; ++j) {
    // written out per axis: helper calls, inner loops and floor() stop g++'s vectoriser
    const T k = T(k0 + j);
    const T z = min2(max2(pz + k * dz, T(0)), hz);
    const T y = min2(max2(py + k * dy, T(0)), hy);
    const T x = min2(max2(px + k * dx, T(0)), hx);
    // z, y, x >= 0 here, so truncation is floor
    const int iz = int(z), iy = int(y), ix = int(x);
    const T fz = T(iz), fy = T(iy), fx = T(ix);
    const T wz = z - fz, wy = y - fy, wx = x - fx;
    base[j] = iz * sz + iy * sy + ix;
    oz[j] = iz < n[0] - 1 ? sz : 0;
    oy[j] = iy < n[1] - 1 ? sy : 0;
    ox[j] = ix < n[2] - 1 ? 1 : 0;
    const T uz = T(1) - wz, uy = T(1) - wy, ux = T(1) - wx;
    const T a = uz * uy, bb = uz * wy, c = wz * uy, d = wz * wy;
    w0[j] = a * ux;
    w1[j] = a * wx;
    w2[j] = bb * ux;
    w3[j] = bb * wx;
    w4[j] = c * ux;
    w5[j] = c * wx;
    w6[j] = d * ux;
    w7[j] = d * wx;
  }
}

// Line integral of one ray (A x for one pixel). vol holds at most 2^31 - 1 voxels (int
// offsets; checked on the Python side).
template <typename T>
NFR_HD T voxel_project_ray(const VoxelSpec& s, int64_t flat, const T* __restrict__ vol) {
  const VoxelRay<T> r = voxel_ray<T>(s, flat);
  T acc = T(0);
  StencilBlock<T> b;
  for (int k0 = 0; k0 < r.n_bins; k0 += kVoxelBlock) {
    stencil_block(s.n, r, k0, b);
    const int m = min2(kVoxelBlock, r.n_bins - k0);
    for (int j = 0; j < m; ++j) {
      const T* v = vol + b.base[j];
      const int x1 = b.sx[j], y1 = b.sy[j], z1 = b.sz[j], zy = b.sz[j] + b.sy[j];
      // a tree of sums (not one chain of 8 dependent multiply-adds): consecutive samples overlap
      const T s0 = b.w[0][j] * v[0] + b.w[1][j] * v[x1], s1 = b.w[2][j] * v[y1] + b.w[3][j] * v[y1 + x1];
      const T s2 = b.w[4][j] * v[z1] + b.w[5][j] * v[z1 + x1], s3 = b.w[6][j] * v[zy] + b.w[7][j] * v[zy + x1];
      acc += (s0 + s1) + (s2 + s3);
    }
  }
  return acc * r.dt;
}

// Transpose of voxel_project_ray for one pixel value g: out[voxel] += g * dt * weight for
// every sample (the same stencils); Acc is BufferAcc (CPU, per-thread buffer) or AtomicAcc
// (CUDA).
template <typename T, typename Acc>
NFR_HD void voxel_backproject_ray(const VoxelSpec& s, int64_t flat, T g, Acc& out) {
  const VoxelRay<T> r = voxel_ray<T>(s, flat);
  if (r.n_bins == 0 || g == T(0)) return;
  const T gd = g * r.dt;
  StencilBlock<T> b;
  for (int k0 = 0; k0 < r.n_bins; k0 += kVoxelBlock) {
    stencil_block(s.n, r, k0, b);
    const int m = min2(kVoxelBlock, r.n_bins - k0);
    for (int j = 0; j < m; ++j) {
      const int p = b.base[j], x1 = b.sx[j], y1 = b.sy[j], z1 = b.sz[j], zy = b.sz[j] + b.sy[j];
      out.add(p, gd * b.w[0][j]);
      out.add(p + x1, gd * b.w[1][j]);
      out.add(p + y1, gd * b.w[2][j]);
      out.add(p + y1 + x1, gd * b.w[3][j]);
      out.add(p + z1, gd * b.w[4][j]);
      out.add(p + z1 + x1, gd * b.w[5][j]);
      out.add(p + zy, gd * b.w[6][j]);
      out.add(p + zy + x1, gd * b.w[7][j]);
    }
  }
}

}  // namespace nfrecon
