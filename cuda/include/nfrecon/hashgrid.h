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

// The 8 corners of the cells holding S clamped unit points u[axis][p] at one level: table rows (offset
// included), trilinear weights, and the per-axis weight pairs; point p in the last index
// (structure of arrays, so that the CPU march computes the corners of a block of S samples
// in SIMD lanes, one point per lane). S = 1 is one point (the CUDA kernels, encode_point).
template <typename T, int S = 1>
struct LevelCorners {
  int row[8][S];
  T w[8][S];
  T axis_w[3][2][S];  // per axis (z, y, x): weight of corner b = 0 and b = 1
  int n;
};

// The SIMD loop over the points of a block (vectorised by the CPU compiler; S = 1 on the GPU).
#if defined(__CUDACC__)
#define NFR_SIMD
#else
#define NFR_SIMD _Pragma("omp simd")
#endif

template <typename T, int S>
NFR_HD void level_corners(const GridSpec& g, int level, const T (*u)[S], LevelCorners<T, S>& lc) {
  const int n = g.res[level];
  lc.n = n;
  int cell[3][S];
  NFR_SIMD
  for (int p = 0; p < S; ++p) {
    NFR_UNROLL  // the axes unrolled, so that every access is contiguous in the lane p
    for (int d = 0; d < 3; ++d) {
      const T pos = u[d][p] * T(n);
      T c = T(floor(pos));
      if (c > T(n - 1)) c = T(n - 1);
      cell[d][p] = int(c);
      const T frac = pos - c;
      lc.axis_w[d][0][p] = T(1) - frac;
      lc.axis_w[d][1][p] = frac;
    }
  }
  const int offset = g.offset[level];
  if (g.dense[level]) {
    const int s1 = n + 1, s2 = (n + 1) * (n + 1);  // dense: (N+1)^3 <= 2^T < 2^31
    for (int c = 0; c < 8; ++c) {
      const int bz = (c >> 2) & 1, by = (c >> 1) & 1, bx = c & 1;
      NFR_SIMD
      for (int p = 0; p < S; ++p)
        lc.row[c][p] = offset + (cell[2][p] + bx) + (cell[1][p] + by) * s1 + (cell[0][p] + bz) * s2;
    }
  } else {
    uint32_t hz[2][S], hy[2][S], hx[2][S];
    for (int b = 0; b < 2; ++b) {
      NFR_SIMD
      for (int p = 0; p < S; ++p) {
        hz[b][p] = uint32_t(cell[0][p] + b) * kPrimeZ;
        hy[b][p] = uint32_t(cell[1][p] + b) * kPrimeY;
        hx[b][p] = uint32_t(cell[2][p] + b);
      }
    }
    for (int c = 0; c < 8; ++c) {
      const int bz = (c >> 2) & 1, by = (c >> 1) & 1, bx = c & 1;
      NFR_SIMD
      for (int p = 0; p < S; ++p) lc.row[c][p] = offset + int((hx[bx][p] ^ hy[by][p] ^ hz[bz][p]) & g.mask);
    }
  }
  // w_c = (w_z * w_y) * w_x, the z-y products shared by the two x corners: 12 multiplies
  // instead of 16, the same rounding as the product written out left to right.
  T wzy[4][S];
  for (int q = 0; q < 4; ++q) {
    NFR_SIMD
    for (int p = 0; p < S; ++p) wzy[q][p] = lc.axis_w[0][q >> 1][p] * lc.axis_w[1][q & 1][p];
  }
  for (int c = 0; c < 8; ++c) {
    NFR_SIMD
    for (int p = 0; p < S; ++p) lc.w[c][p] = wzy[c >> 1][p] * lc.axis_w[2][c & 1][p];
  }
}

// The F features of point p at one level from its corners.
template <typename T, int S>
NFR_HD void level_features(const LevelCorners<T, S>& lc, int p, const T* table, int F, T* feat_l) {
  for (int f = 0; f < F; ++f) {
    T acc = T(0);
    for (int c = 0; c < 8; ++c) acc += lc.w[c][p] * table[int64_t(lc.row[c][p]) * F + f];
    feat_l[f] = acc;
  }
}

// Table-gradient part of the backward of point p at one level: acc.add(row * F + f, w_c * gf[f]).
template <typename T, int S, typename Acc>
NFR_HD void level_backward_table(const LevelCorners<T, S>& lc, int p, int F, const T* gf, Acc& acc) {
  for (int c = 0; c < 8; ++c) {
    const int64_t base = int64_t(lc.row[c][p]) * F;
    for (int f = 0; f < F; ++f) acc.add(base + f, lc.w[c][p] * gf[f]);
  }
}

// Features (L * F, level-major) of one unit point u_raw (3, unclamped) from table (rows, F).
template <typename T>
NFR_HD void encode_point(const GridSpec& g, const T u_raw[3], const T* table, T* feat) {
  const T u[3][1] = {{clamp_unit(u_raw[0])}, {clamp_unit(u_raw[1])}, {clamp_unit(u_raw[2])}};
  const int F = g.n_features;
  LevelCorners<T, 1> lc;
  for (int l = 0; l < g.n_levels; ++l) {
    level_corners(g, l, u, lc);
    level_features(lc, 0, table, F, feat + l * F);
  }
}

// The corners of every level (lcs: n_levels) of S unit points u_raw (unclamped), without
// reading the table. With level_features per point, the same as encode_point; apart, a caller
// can prefetch the rows between the two and keep the corners for level_backward_table.
template <typename T, int S>
NFR_HD void block_corners(const GridSpec& g, const T (*u_raw)[3], LevelCorners<T, S>* lcs) {
  T u[3][S];  // axis-major: the SIMD lanes of level_corners load contiguous points
  for (int p = 0; p < S; ++p)
    for (int d = 0; d < 3; ++d) u[d][p] = clamp_unit(u_raw[p][d]);
  for (int l = 0; l < g.n_levels; ++l) level_corners(g, l, u, lcs[l]);
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
  const T u1[3][1] = {{u[0]}, {u[1]}, {u[2]}};
  LevelCorners<T, 1> lc;
  for (int l = 0; l < g.n_levels; ++l) {
    level_corners(g, l, u1, lc);
    const T* gf = grad_feat + l * F;
    level_backward_table(lc, 0, F, gf, acc);
    if (grad_u != nullptr) {
      // d w_c / d frac_d = (b_d ? 1 : -1) * (product of the other two axis weights); d frac / d u = N_l
      for (int c = 0; c < 8; ++c) {
        const int b[3] = {(c >> 2) & 1, (c >> 1) & 1, c & 1};
        T s = T(0);
        const int64_t base = int64_t(lc.row[c][0]) * F;
        for (int f = 0; f < F; ++f) s += table[base + f] * gf[f];
        for (int d = 0; d < 3; ++d) {
          const int e1 = d == 0 ? 1 : 0, e2 = d == 2 ? 1 : 2;
          const T dw = lc.axis_w[e1][b[e1]][0] * lc.axis_w[e2][b[e2]][0];
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
