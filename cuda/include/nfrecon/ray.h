// Detector rays, slab clipping to the volume box and stratified sample positions.
//
// Semantics of nfrecon/geometry/rays.py (pixel_rays, ray_box, stratified_samples): rays are
// addressed by the flat index view * rows * cols + row * cols + col into a [view, v, u] stack;
// the geometry is, per view, the cone_vec quadruple (source, detector centre, u, v), (z, y, x)
// mm. The ray runs from the source through the pixel centre; its direction is a unit vector
// (computed in double, then rounded to T), so t is a distance in mm from the source.
#pragma once

#include "nfrecon/common.h"

namespace nfrecon {

// Origin and unit direction of one ray; geom is (views, 12) double: src, det, u, v.
template <typename T>
NFR_HD void pixel_ray(const double* geom, int64_t flat, int rows, int cols, T o[3], T d[3]) {
  const int64_t per_view = int64_t(rows) * cols;
  const int64_t view = flat / per_view;
  const int64_t rem = flat - view * per_view;
  const int64_t row = rem / cols;
  const int64_t col = rem - row * cols;
  const double cu = double(col) - (cols - 1) / 2.0;
  const double cv = double(row) - (rows - 1) / 2.0;
  const double* g = geom + view * 12;
  double dd[3];
  double norm2 = 0.0;
  for (int k = 0; k < 3; ++k) {
    const double pix = g[3 + k] + cu * g[6 + k] + cv * g[9 + k];
    dd[k] = pix - g[k];
    norm2 += dd[k] * dd[k];
  }
  const double norm = sqrt(norm2);
  for (int k = 0; k < 3; ++k) {
    o[k] = T(g[k]);
    d[k] = T(dd[k] / norm);
  }
}

// Slab intersection with the box [lo, hi]: t_near >= 0; a ray that misses or grazes the box
// gets t_near = t_far = 0. Axis-parallel directions use +tiny instead of 0 (no NaN).
template <typename T>
NFR_HD void ray_box(const T o[3], const T d[3], const T lo[3], const T hi[3], T& t_near, T& t_far) {
  T tn = T(-INFINITY), tf = T(INFINITY);
  for (int k = 0; k < 3; ++k) {
    const T dk = (d[k] < T(0) ? -d[k] : d[k]) < tiny_normal<T>() ? tiny_normal<T>() : d[k];
    const T inv = T(1) / dk;
    const T t0 = (lo[k] - o[k]) * inv;
    const T t1 = (hi[k] - o[k]) * inv;
    tn = max2(tn, min2(t0, t1));
    tf = min2(tf, max2(t0, t1));
  }
  tn = max2(tn, T(0));
  const bool hit = tf > tn;
  t_near = hit ? tn : T(0);
  t_far = hit ? tf : T(0);
}

// The ray parameter of sample k of n between t_near and t_far: t_near + (k + offset) * dt,
// offset uniform in [0, 1) when jittered (drawn by the caller), 0.5 at the bin midpoint.
template <typename T>
NFR_HD T sample_t(T t_near, T dt, int k, T offset) {
  return t_near + (T(k) + offset) * dt;
}

}  // namespace nfrecon
