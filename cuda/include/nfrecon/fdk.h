// FDK's voxel-driven backprojection (nfrecon/recon/fdk.py, _backproject): per-voxel math for the
// CPU and CUDA builds.
//
// Per view, a 3x4 matrix M maps a voxel's offset from the volume centre (z, y, x, 1), mm, to
// (col * U, row * U, U): the detector pixel-index coordinates of its projection times U, the
// source-to-voxel distance along the detector normal. The filtered view (rows, cols) is read
// by bilinear interpolation, zero outside the detector (grid_sample's zeros padding,
// align_corners=False), and weighted by 1 / U^2.

#pragma once

#include "nfrecon/common.h"

namespace nfrecon {

// Bilinear read of image (rows, cols) at pixel-index coordinates (col x, row y), zeros padding.
template <typename T>
NFR_HD T bilinear_zeros(const T* __restrict__ img, int rows, int cols, T x, T y) {
  // far outside the detector every corner reads zero; the clamp keeps int() in range
  x = min2(max2(x, T(-2)), T(cols + 1));
  y = min2(max2(y, T(-2)), T(rows + 1));
  const T fx = floor(x), fy = floor(y);
  const int x0 = int(fx), y0 = int(fy);
  const T wx = x - fx, wy = y - fy;
  // a corner outside the image contributes zero
  const bool in_x0 = x0 >= 0 && x0 < cols, in_x1 = x0 + 1 >= 0 && x0 + 1 < cols;
  const bool in_y0 = y0 >= 0 && y0 < rows, in_y1 = y0 + 1 >= 0 && y0 + 1 < rows;
  T v = T(0);
  if (in_y0) {
    const T* row = img + int64_t(y0) * cols;
    if (in_x0) v += (T(1) - wx) * (T(1) - wy) * row[x0];
    if (in_x1) v += wx * (T(1) - wy) * row[x0 + 1];
  }
  if (in_y1) {
    const T* row = img + int64_t(y0 + 1) * cols;
    if (in_x0) v += (T(1) - wx) * wy * row[x0];
    if (in_x1) v += wx * wy * row[x0 + 1];
  }
  return v;
}

// Sum over views of the 1 / U^2-weighted filtered values at voxel offset (z, y, x) mm.
// mats: (views, 12) in T, row-major 3x4; images: (views, rows, cols). A: accumulator type.
template <typename T, typename A>
NFR_HD T fdk_voxel(const T* __restrict__ mats, const T* __restrict__ images, int views, int rows, int cols,
                   T z, T y, T x) {
  A acc = A(0);
  const int64_t per_view = int64_t(rows) * cols;
  for (int v = 0; v < views; ++v) {
    const T* m = mats + 12 * v;
    const T hu = m[0] * z + m[3] + m[1] * y + m[2] * x;
    const T hv = m[4] * z + m[7] + m[5] * y + m[6] * x;
    const T h = m[8] * z + m[11] + m[9] * y + m[10] * x;
    const T inv = T(1) / h;
    const T val = bilinear_zeros(images + v * per_view, rows, cols, hu * inv, hv * inv);
    acc += A(val * inv * inv);
  }
  return T(acc);
}

}  // namespace nfrecon
