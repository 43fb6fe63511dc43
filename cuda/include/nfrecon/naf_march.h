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
//
// Sample blocks: the per-sample functions are templates on S, the number of consecutive
// samples of one ray evaluated together (naf_block_*). The CUDA kernels use S = 1 (one thread
// per sample); the CPU launcher uses S = 8 for width-32 MLPs (kCpuBlock), so that the MLP
// layers are register-blocked micro-GEMMs (mlp.h) and the parameter gradients are accumulated
// once per block. A block's scratch (encodings, their gradients, activations, the hash-grid
// corners of every level) stays on the thread's stack, a few KB: still nothing per ray in
// memory. With Keep (the CPU), the backward keeps the corners (rows, weights) of each level
// from its recomputed forward and reuses them for the table gradient instead of computing
// them a second time; the GPU recomputes them (cheaper than local memory there).
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

// Corners of the S samples of a block (lcs: one LevelCorners<T, S> per level, computed in SIMD
// lanes over the samples), then a prefetch of every table row they read (and, with a gradient
// buffer, of the rows the backward will add to), then their encodings (feat: S rows of E).
template <typename T, int S, typename TableAcc>
NFR_HD void block_encode_kept(const GridSpec& g, const T* table, const T (*u)[3], LevelCorners<T, S>* lcs, T* feat,
                              TableAcc* table_acc) {
  const int L = g.n_levels, F = g.n_features, E = g.width();
  block_corners(g, u, lcs);
  for (int l = 0; l < L; ++l) {
    for (int c = 0; c < 8; ++c) {
      for (int p = 0; p < S; ++p) {
        const int64_t i = int64_t(lcs[l].row[c][p]) * F;
        prefetch_read(table + i);
        if (table_acc != nullptr) table_acc->prefetch(i);
      }
    }
  }
  for (int p = 0; p < S; ++p)
    for (int l = 0; l < L; ++l) level_features(lcs[l], p, table, F, feat + p * E + l * F);
}

// A table accumulator that is never used (the forward's block_encode_kept).
struct NoAcc {
  NFR_HD void prefetch(int64_t) {}
};

// mu * dt of samples k0 .. k0 + S - 1 into out[0, S): their contributions to the ray's integral.
// Keep: encode the block through block_encode_kept (the CPU), else point by point.
template <typename T, int W, bool U, int S, bool Keep = false>
NFR_HD void naf_block_forward(const MarchSpec<T>& s, const GridSpec& g, const T* table, const MLPView<T>& m,
                              const T o[3], const T d[3], T t_near, T dt, int k0, const T* offsets, T* out) {
  const int E = g.width();
  T u[S][3];
  T feat[S * kMaxEncoding];  // S rows of E
  T h[kMaxLayers][S][W];
  T z[S], y[S];
  for (int p = 0; p < S; ++p) sample_unit(s, o, d, t_near, dt, k0 + p, offsets, u[p]);
  if constexpr (Keep) {
    LevelCorners<T, S> lcs[kMaxLevels];
    block_encode_kept<T, S, NoAcc>(g, table, u, lcs, feat, nullptr);
  } else {
    for (int p = 0; p < S; ++p) encode_point(g, u[p], table, feat + p * E);
  }
  mlp_forward<T, W, U, S>(m, feat, E, h, z, y);
  for (int p = 0; p < S; ++p) {
    const T mu = y[p] * s.mu_max;
    out[p] = mu * dt;
  }
}

// mu(sample k) * dt: the contribution of one sample to its ray's line integral.
template <typename T, int W, bool U>
NFR_HD T naf_sample_forward(const MarchSpec<T>& s, const GridSpec& g, const T* table, const MLPView<T>& m,
                            const T o[3], const T d[3], T t_near, T dt, int k, const T* offsets) {
  T out[1];
  naf_block_forward<T, W, U, 1>(s, g, table, m, o, d, t_near, dt, k, offsets, out);
  return out[0];
}

// Backward of samples k0 .. k0 + S - 1 given dL/d(MLP output) g_out = dL/d(line integral) *
// dt * mu_max: table gradients through table_acc, MLP parameter gradients through param_acc.
template <typename T, int W, bool U, int S, bool Keep, typename TableAcc, typename ParamAcc>
NFR_HD void naf_block_backward(const MarchSpec<T>& s, const GridSpec& g, const T* table, const MLPView<T>& m,
                               const T o[3], const T d[3], T t_near, T dt, int k0, const T* offsets, T g_out,
                               TableAcc& table_acc, ParamAcc& param_acc) {
  const int E = g.width();
  T u[S][3];
  T feat[S * kMaxEncoding];
  T grad_feat[S * kMaxEncoding];
  T h[kMaxLayers][S][W];
  T z[S], y[S];
  LevelCorners<T, S> lcs[Keep ? kMaxLevels : 1];  // the corners of every level
  const int L = g.n_levels, F = g.n_features;
  for (int p = 0; p < S; ++p) sample_unit(s, o, d, t_near, dt, k0 + p, offsets, u[p]);
  if constexpr (Keep) {
    block_encode_kept<T, S>(g, table, u, lcs, feat, &table_acc);
  } else {
    for (int p = 0; p < S; ++p) encode_point(g, u[p], table, feat + p * E);
  }
  mlp_forward<T, W, U, S>(m, feat, E, h, z, y);
  mlp_backward<T, W, U, S>(m, feat, E, h, z, y, &g_out, 0, param_acc, grad_feat);
  for (int p = 0; p < S; ++p) {
    if constexpr (Keep) {
      for (int l = 0; l < L; ++l) level_backward_table(lcs[l], p, F, grad_feat + p * E + l * F, table_acc);
    } else {
      encode_point_backward(g, u[p], table, grad_feat + p * E, table_acc, static_cast<T*>(nullptr));
    }
  }
}

// Backward of one sample (the CUDA kernels: S = 1, corners recomputed).
template <typename T, int W, bool U, typename TableAcc, typename ParamAcc>
NFR_HD void naf_sample_backward(const MarchSpec<T>& s, const GridSpec& g, const T* table, const MLPView<T>& m,
                                const T o[3], const T d[3], T t_near, T dt, int k, const T* offsets, T g_out,
                                TableAcc& table_acc, ParamAcc& param_acc) {
  naf_block_backward<T, W, U, 1, false>(s, g, table, m, o, d, t_near, dt, k, offsets, g_out, table_acc, param_acc);
}

// Predicted line integral of one ray (offsets: its n_samples uniforms, or null), in blocks of
// S samples and the remainder one by one; the sum runs over k in order whatever S.
// W: the largest hidden width; U: every hidden layer is exactly W wide (see mlp.h).
template <typename T, int W, bool U, int S = 1, bool Keep = false>
NFR_HD T naf_ray_forward(const MarchSpec<T>& s, const GridSpec& g, const T* table, const MLPView<T>& m,
                         int64_t ray, const T* offsets) {
  T o[3], d[3], t_near, dt;
  if (!ray_bins(s, ray, o, d, t_near, dt)) return T(0);
  T sum = T(0);
  int k = 0;
  for (; k + S <= s.n_samples; k += S) {
    T out[S];
    naf_block_forward<T, W, U, S, Keep>(s, g, table, m, o, d, t_near, dt, k, offsets, out);
    for (int p = 0; p < S; ++p) sum += out[p];
  }
  for (; k < s.n_samples; ++k) sum += naf_sample_forward<T, W, U>(s, g, table, m, o, d, t_near, dt, k, offsets);
  return sum;
}

// Backward of one ray given dL/d(line integral) grad (blocks of S samples, then the remainder).
template <typename T, int W, bool U, int S, bool Keep, typename TableAcc, typename ParamAcc>
NFR_HD void naf_ray_backward(const MarchSpec<T>& s, const GridSpec& g, const T* table, const MLPView<T>& m,
                             int64_t ray, const T* offsets, T grad, TableAcc& table_acc, ParamAcc& param_acc) {
  T o[3], d[3], t_near, dt;
  if (grad == T(0) || !ray_bins(s, ray, o, d, t_near, dt)) return;
  const T g_out = grad * dt * s.mu_max;  // the same for every sample of the ray
  int k = 0;
  for (; k + S <= s.n_samples; k += S) {
    naf_block_backward<T, W, U, S, Keep>(s, g, table, m, o, d, t_near, dt, k, offsets, g_out, table_acc, param_acc);
  }
  for (; k < s.n_samples; ++k) {
    naf_block_backward<T, W, U, 1, Keep>(s, g, table, m, o, d, t_near, dt, k, offsets, g_out, table_acc, param_acc);
  }
}

}  // namespace nfrecon
