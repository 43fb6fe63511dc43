// The fused NAF ray march: per ray, clip to the box, stratified samples, hash grid, MLP,
// output activation and scale, and the line integral sum(mu * dt); and its backward.
//
// Semantics of nfrecon/ops/naf_march/reference.py (RayMarcher + NAFField in torch): the
// predicted line integral of ray r is  sum_k mu(o + t_k d) * dt  with t_k = t_near + (k +
// offset_k) dt, dt = (t_far - t_near) / n_samples, and mu(p) = mu_max * MLP(enc(unit(p))),
// unit(p) = (p - field_min) / field_size.
//
// Memory design: the forward pass writes one float per ray and nothing per sample. The
// backward pass recomputes each sample's encoding and MLP activations (held in per-thread
// registers/stack, a few hundred floats) and backpropagates at once: d pred / d mu_k = dt
// does not depend on the other samples, so no per-ray buffer is needed either. The price is
// one extra forward evaluation per sample in training (about a third of the backward's
// arithmetic); the gain is that a step's memory does not grow with rays x samples.
#pragma once

#include "nfrecon/hashgrid.h"
#include "nfrecon/mlp.h"
#include "nfrecon/ray.h"

namespace nfrecon {

template <typename T>
struct MarchSpec {
  const double* geom;  // (views, 12) double: src, det, u, v per view, (z, y, x) mm
  int det_rows;
  int det_cols;
  int n_samples;
  T lo[3];             // box the rays are clipped to (mm)
  T hi[3];
  T field_min[3];      // box the field maps onto the unit cube (mm)
  T field_size[3];
  T mu_max;            // 1/mm
};

// Ray r's entry point, direction and bin length; false when it misses the box.
template <typename T>
NFR_HD bool ray_bins(const MarchSpec<T>& s, int64_t ray, T o[3], T d[3], T& t_near, T& dt) {
  pixel_ray(s.geom, ray, s.det_rows, s.det_cols, o, d);
  T t_far;
  ray_box(o, d, s.lo, s.hi, t_near, t_far);
  const T length = max2(t_far - t_near, T(0));
  dt = length / T(s.n_samples);
  return length > T(0);
}

// Unit-cube coordinates of sample k (offsets: n_samples uniforms, or null for midpoints).
template <typename T>
NFR_HD void sample_unit(const MarchSpec<T>& s, const T o[3], const T d[3], T t_near, T dt, int k,
                        const T* offsets, T u[3]) {
  const T t = sample_t(t_near, dt, k, offsets != nullptr ? offsets[k] : T(0.5));
  for (int a = 0; a < 3; ++a) u[a] = ((o[a] + t * d[a]) - s.field_min[a]) / s.field_size[a];
}

// mu(sample k) * dt: the contribution of one sample to its ray's line integral.
template <typename T, int W, bool U>
NFR_HD T naf_sample_forward(const MarchSpec<T>& s, const GridSpec& g, const T* table, const MLPView<T>& m,
                            const T o[3], const T d[3], T t_near, T dt, int k, const T* offsets) {
  T u[3];
  T feat[kMaxEncoding];
  T h[kMaxLayers][W];
  T z;
  sample_unit(s, o, d, t_near, dt, k, offsets, u);
  encode_point(g, u, table, feat);
  const T mu = mlp_forward<T, W, U>(m, feat, h, z) * s.mu_max;
  return mu * dt;
}

// Backward of one sample given dL/d(MLP output) g_out = dL/d(line integral) * dt * mu_max:
// table gradients through table_acc, MLP parameter gradients through param_acc.
template <typename T, int W, bool U, typename TableAcc, typename ParamAcc>
NFR_HD void naf_sample_backward(const MarchSpec<T>& s, const GridSpec& g, const T* table, const MLPView<T>& m,
                                const T o[3], const T d[3], T t_near, T dt, int k, const T* offsets, T g_out,
                                TableAcc& table_acc, ParamAcc& param_acc) {
  T u[3];
  T feat[kMaxEncoding];
  T grad_feat[kMaxEncoding];
  T h[kMaxLayers][W];
  T z;
  sample_unit(s, o, d, t_near, dt, k, offsets, u);
  encode_point(g, u, table, feat);
  const T y = mlp_forward<T, W, U>(m, feat, h, z);
  mlp_backward<T, W, U>(m, feat, h, z, y, g_out, param_acc, grad_feat);
  encode_point_backward(g, u, table, grad_feat, table_acc, static_cast<T*>(nullptr));
}

// Predicted line integral of one ray (offsets: its n_samples uniforms, or null).
// W: the largest hidden width; U: every hidden layer is exactly W wide (see mlp.h).
template <typename T, int W, bool U>
NFR_HD T naf_ray_forward(const MarchSpec<T>& s, const GridSpec& g, const T* table, const MLPView<T>& m,
                         int64_t ray, const T* offsets) {
  T o[3], d[3], t_near, dt;
  if (!ray_bins(s, ray, o, d, t_near, dt)) return T(0);
  T sum = T(0);
  for (int k = 0; k < s.n_samples; ++k) sum += naf_sample_forward<T, W, U>(s, g, table, m, o, d, t_near, dt, k, offsets);
  return sum;
}

// Backward of one ray given dL/d(line integral) grad.
template <typename T, int W, bool U, typename TableAcc, typename ParamAcc>
NFR_HD void naf_ray_backward(const MarchSpec<T>& s, const GridSpec& g, const T* table, const MLPView<T>& m,
                             int64_t ray, const T* offsets, T grad, TableAcc& table_acc, ParamAcc& param_acc) {
  T o[3], d[3], t_near, dt;
  if (grad == T(0) || !ray_bins(s, ray, o, d, t_near, dt)) return;
  const T g_out = grad * dt * s.mu_max;  // the same for every sample of the ray
  for (int k = 0; k < s.n_samples; ++k) {
    naf_sample_backward<T, W, U>(s, g, table, m, o, d, t_near, dt, k, offsets, g_out, table_acc, param_acc);
  }
}

}  // namespace nfrecon
