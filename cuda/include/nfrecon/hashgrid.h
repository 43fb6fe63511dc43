// Multiresolution hash-grid encoding: level corners, trilinear weights, encode and its backward.
//
// The exact semantics are those of nfrecon/ops/hashgrid/reference.py (its module docstring is
// the contract): points in the unit cube, (z, y, x) order, clamped to [0, 1]; level l has N_l
// cells per axis and N_l + 1 vertices; the cell is min(floor(u * N_l), N_l - 1), the fraction
// u * N_l - cell; dense levels index vertex (k, j, i) as i + j (N+1) + k (N+1)^2, hashed levels
// as (i * 1) ^ (j * 2654435761) ^ (k * 805459861) mod 2^T (uint32 products: only the low T
// bits survive). Corner c = 4 bz + 2 by + bx; weight = w_z[bz] * w_y[by] * w_x[bx].
#pragma once

#include "nfrecon/common.h"

namespace nfrecon {

// Hash primes of the z and y vertex indices (x gets 1), as Instant-NGP.
constexpr uint32_t kPrimeZ = 805459861u;
constexpr uint32_t kPrimeY = 2654435761u;

// The levels of one hash grid (plain data, passed by value to CUDA kernels).
struct GridSpec {
  int n_levels;
  int n_features;             // F, features per level
  uint32_t mask;              // 2^T - 1
  int res[kMaxLevels];        // N_l, cells per axis
  int dense[kMaxLevels];      // 1 when level l is indexed densely
  int offset[kMaxLevels];     // first table row of level l
  NFR_HD int width() const { return n_levels * n_features; }
};

// A coordinate clamped to [0, 1]; NaN becomes 0 so that a row index can never leave the table
// (the Python side refuses non-finite points before a kernel runs).
template <typename T> NFR_HD T clamp_unit(T x) { return x > T(1) ? T(1) : (x >= T(0) ? x : T(0)); }

// Whether d(clamp)/dx is 1 (torch.clamp passes the gradient on [min, max], ends included).
template <typename T> NFR_HD T clamp_pass(T x) { return (x >= T(0) && x <= T(1)) ? T(1) : T(0); }

// The 8 corners of the cell holding the clamped unit point u at one level: table rows
// (offset included), trilinear weights, and the per-axis fractions and weight pairs.
template <typename T>
struct LevelCorners {
  int row[8];
  T w[8];
  T axis_w[3][2];  // per axis (z, y, x): weight of corner b = 0 and b = 1
  int n;
};

template <typename T>
NFR_HD void level_corners(const GridSpec& g, int level, const T u[3], LevelCorners<T>& lc) {
  const int n = g.res[level];
  lc.n = n;
  int cell[3];
  for (int d = 0; d < 3; ++d) {
    const T pos = u[d] * T(n);
    T c = T(floor(pos));
    if (c > T(n - 1)) c = T(n - 1);
    cell[d] = int(c);
    const T frac = pos - c;
    lc.axis_w[d][0] = T(1) - frac;
    lc.axis_w[d][1] = frac;
  }
  const int offset = g.offset[level];
  if (g.dense[level]) {
    const int s1 = n + 1, s2 = (n + 1) * (n + 1);  // dense: (N+1)^3 <= 2^T < 2^31
    for (int c = 0; c < 8; ++c) {
      const int bz = (c >> 2) & 1, by = (c >> 1) & 1, bx = c & 1;
      lc.row[c] = offset + (cell[2] + bx) + (cell[1] + by) * s1 + (cell[0] + bz) * s2;
    }
  } else {
    uint32_t hz[2], hy[2], hx[2];
    for (int b = 0; b < 2; ++b) {
      hz[b] = uint32_t(cell[0] + b) * kPrimeZ;
      hy[b] = uint32_t(cell[1] + b) * kPrimeY;
      hx[b] = uint32_t(cell[2] + b);
    }
    for (int c = 0; c < 8; ++c) {
      const int bz = (c >> 2) & 1, by = (c >> 1) & 1, bx = c & 1;
      lc.row[c] = offset + int((hx[bx] ^ hy[by] ^ hz[bz]) & g.mask);
    }
  }
  for (int c = 0; c < 8; ++c) {
    const int bz = (c >> 2) & 1, by = (c >> 1) & 1, bx = c & 1;
    lc.w[c] = lc.axis_w[0][bz] * lc.axis_w[1][by] * lc.axis_w[2][bx];
  }
}

// Features (L * F, level-major) of one unit point u_raw (3, unclamped) from table (rows, F).
template <typename T>
NFR_HD void encode_point(const GridSpec& g, const T u_raw[3], const T* table, T* feat) {
  const T u[3] = {clamp_unit(u_raw[0]), clamp_unit(u_raw[1]), clamp_unit(u_raw[2])};
  const int F = g.n_features;
  LevelCorners<T> lc;
  for (int l = 0; l < g.n_levels; ++l) {
    level_corners(g, l, u, lc);
    for (int f = 0; f < F; ++f) {
      T acc = T(0);
      for (int c = 0; c < 8; ++c) acc += lc.w[c] * table[int64_t(lc.row[c]) * F + f];
      feat[l * F + f] = acc;
    }
  }
}

// Backward of encode_point: adds w * dL/dfeat into the table gradient through `acc`
// (acc.add(flat element index, value): a thread-local buffer on the CPU, atomics on the GPU)
// and, when grad_u is not null, writes dL/du_raw (3) (zero along a clamped coordinate).
template <typename T, typename Acc>
NFR_HD void encode_point_backward(const GridSpec& g, const T u_raw[3], const T* table, const T* grad_feat,
                                  Acc& acc, T* grad_u) {
  const T u[3] = {clamp_unit(u_raw[0]), clamp_unit(u_raw[1]), clamp_unit(u_raw[2])};
  const int F = g.n_features;
  T gu[3] = {T(0), T(0), T(0)};
  LevelCorners<T> lc;
  for (int l = 0; l < g.n_levels; ++l) {
    level_corners(g, l, u, lc);
    const T* gf = grad_feat + l * F;
    for (int c = 0; c < 8; ++c) {
      const int64_t base = int64_t(lc.row[c]) * F;
      for (int f = 0; f < F; ++f) acc.add(base + f, lc.w[c] * gf[f]);
    }
    if (grad_u != nullptr) {
      // d w_c / d frac_d = (b_d ? 1 : -1) * (product of the other two axis weights); d frac / d u = N_l
      for (int c = 0; c < 8; ++c) {
        const int b[3] = {(c >> 2) & 1, (c >> 1) & 1, c & 1};
        T s = T(0);
        const int64_t base = int64_t(lc.row[c]) * F;
        for (int f = 0; f < F; ++f) s += table[base + f] * gf[f];
        for (int d = 0; d < 3; ++d) {
          const int e1 = d == 0 ? 1 : 0, e2 = d == 2 ? 1 : 2;
          const T dw = lc.axis_w[e1][b[e1]] * lc.axis_w[e2][b[e2]];
          gu[d] += (b[d] ? s : -s) * dw * T(lc.n);
        }
      }
    }
  }
  if (grad_u != nullptr) {
    for (int d = 0; d < 3; ++d) grad_u[d] = gu[d] * clamp_pass(u_raw[d]);
  }
}

}  // namespace nfrecon
