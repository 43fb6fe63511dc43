// The fused conditioned (CondCBNT) ray march: per sample, the modulation field (hash grid +
// MLP -> FiLM vector) and the FiLM-modulated backbone (hash grid + MLP -> sigmoid * mu_max),
// accumulated along the ray as sum(mu * dt); and its backward.
//
// Semantics of nfrecon/ops/cond_march/reference.py (RayMarcher + ConditionedField in torch):
// u = unit(p) on the scan's box; film = MLP_m(enc_m(u)) (output activation none, P = 2 x the
// backbone's hidden widths, [dgamma_0, beta_0, ...]); mu = mu_max * out(MLP_b(enc_b(u); film))
// with hidden layer i of the backbone act(z_i * (1 + dgamma_i) + beta_i).
//
// Memory: as the NAF march (naf_march.h): nothing per sample in memory, the backward
// recomputes both networks per block of S samples in a caller-owned CondScratch (a local of
// each CUDA thread, S = 1; one heap buffer per CPU thread, large blocks). The backward always
// computes the modulation's gradients; the backbone's (its table and MLP) only when asked
// (pretraining, or test-time fitting with an unfrozen backbone), else its parameter
// accumulator is a no-op the compiler removes.
#pragma once

#include "nfrecon/naf_march.h"

namespace nfrecon {

// Both networks of a conditioned field.
template <typename T>
struct CondNets {
  GridSpec bg;          // backbone hash grid
  MLPView<T> bm;        // backbone MLP (output width 1)
  const T* btable;
  GridSpec mg;          // modulation hash grid
  MLPView<T> mm;        // modulation MLP (output width P)
  const T* mtable;
};

// A parameter accumulator that discards (the frozen backbone).
struct NullAcc {
  template <typename T> NFR_HD void add(int64_t, T) {}
  template <typename T> NFR_HD void axpy(int64_t, T, const T*, int) {}
  NFR_HD void prefetch(int64_t) {}
};

// Encodings of S points: kept corners and prefetch (CPU, Keep) or point by point.
template <typename T, int S, bool Keep, typename TableAcc>
NFR_HD void block_encode(const GridSpec& g, const T* table, const T (*u)[3], LevelCorners<T, S>* lcs, T* feat,
                         TableAcc* table_acc) {
  if constexpr (Keep) {
    block_encode_kept<T, S, TableAcc>(g, table, u, lcs, feat, table_acc);
  } else {
    for (int p = 0; p < S; ++p) encode_point(g, u[p], table, feat + p * g.width());
  }
}

// Table gradients of S points from their encodings' gradients (kept corners or recomputed).
template <typename T, int S, bool Keep, typename Acc>
NFR_HD void block_encode_backward(const GridSpec& g, const T* table, const T (*u)[3], const LevelCorners<T, S>* lcs,
                                  const T* grad_feat, Acc& acc) {
  const int E = g.width(), F = g.n_features;
  for (int p = 0; p < S; ++p) {
    if constexpr (Keep) {
      for (int l = 0; l < g.n_levels; ++l) level_backward_table(lcs[l], p, F, grad_feat + p * E + l * F, acc);
    } else {
      encode_point_backward(g, u[p], table, grad_feat + p * E, acc, static_cast<T*>(nullptr));
    }
  }
}

// Scratch of one block: both networks' encodings and activations, the FiLM vectors.
template <typename T, int W, int S, bool Keep>
struct CondBlock {
  T u[S][3];
  T fm[S * kMaxEncoding];
  T fb[S * kMaxEncoding];
  T hm[kMaxLayers][S][W];
  T hb[kMaxLayers][S][W];
  T zpre[kMaxLayers][S][W];
  T zm[S * kMaxFilm];
  T film[S * kMaxFilm];
  T zb[S], yb[S];
  LevelCorners<T, S> lm[Keep ? kMaxLevels : 1];
  LevelCorners<T, S> lb[Keep ? kMaxLevels : 1];
};

// Everything a block's forward and backward write: the block and the backward's gradients of
// the encodings and FiLM vectors.
template <typename T, int W, int S, bool Keep>
struct CondScratch {
  CondBlock<T, W, S, Keep> blk;
  T gfb[S * kMaxEncoding];
  T gfm[S * kMaxEncoding];
  T gfilm[S * kMaxFilm];
};

// The scratch of a ray: blocks of S samples, then the remainder one by one (for W = 128 and
// S = 16 about 0.6 MB in float32: the CPU launcher keeps it on the heap).
template <typename T, int W, int S, bool Keep>
struct CondRayScratch {
  CondScratch<T, W, S, Keep> block;
  CondScratch<T, W, 1, Keep> one;
};

// Forward of samples k0 .. k0 + S - 1 into blk (what both forward and backward need).
// (The accumulators are only prefetched into: the rows the backward will add to.)
template <typename T, int W, bool UB, bool UM, int S, bool Keep, typename BTableAcc, typename MTableAcc>
NFR_HD void cond_block_eval(const MarchSpec<T>& s, const CondNets<T>& n, const T o[3], const T d[3], T t_near, T dt,
                            int k0, const T* offsets, CondBlock<T, W, S, Keep>& blk, BTableAcc* btable_acc,
                            MTableAcc* mtable_acc) {
  for (int p = 0; p < S; ++p) sample_unit(s, o, d, t_near, dt, k0 + p, offsets, blk.u[p]);
  block_encode<T, S, Keep>(n.mg, n.mtable, blk.u, blk.lm, blk.fm, mtable_acc);
  mlp_forward<T, W, UM, S>(n.mm, blk.fm, n.mg.width(), blk.hm, blk.zm, blk.film);
  block_encode<T, S, Keep>(n.bg, n.btable, blk.u, blk.lb, blk.fb, btable_acc);
  const int P = n.mm.width[n.mm.n_layers - 1];
  const Film<T, W, S> film{blk.film, P, blk.zpre};
  mlp_forward<T, W, UB, S>(n.bm, blk.fb, n.bg.width(), blk.hb, blk.zb, blk.yb, &film);
}

// mu * dt of samples k0 .. k0 + S - 1 into out[0, S).
template <typename T, int W, bool UB, bool UM, int S, bool Keep>
NFR_HD void cond_block_forward(const MarchSpec<T>& s, const CondNets<T>& n, const T o[3], const T d[3], T t_near,
                               T dt, int k0, const T* offsets, CondScratch<T, W, S, Keep>& sc, T* out) {
  CondBlock<T, W, S, Keep>& blk = sc.blk;
  cond_block_eval<T, W, UB, UM, S, Keep, NoAcc, NoAcc>(s, n, o, d, t_near, dt, k0, offsets, blk, nullptr, nullptr);
  for (int p = 0; p < S; ++p) out[p] = (blk.yb[p] * s.mu_max) * dt;
}

// Backward of samples k0 .. k0 + S - 1 given g_out = dL/d(line integral) * dt * mu_max.
// Modulation gradients through mtable_acc / mparam_acc; the backbone's through btable_acc /
// bparam_acc when BackboneGrad.
template <typename T, int W, bool UB, bool UM, int S, bool Keep, bool BackboneGrad, typename Acc>
NFR_HD void cond_block_backward(const MarchSpec<T>& s, const CondNets<T>& n, const T o[3], const T d[3], T t_near,
                                T dt, int k0, const T* offsets, T g_out, CondScratch<T, W, S, Keep>& sc,
                                Acc& btable_acc, Acc& bparam_acc, Acc& mtable_acc, Acc& mparam_acc) {
  CondBlock<T, W, S, Keep>& blk = sc.blk;
  T* gfb = sc.gfb;
  T* gfm = sc.gfm;
  T* gfilm = sc.gfilm;
  cond_block_eval<T, W, UB, UM, S, Keep, Acc, Acc>(s, n, o, d, t_near, dt, k0, offsets, blk,
                                                   BackboneGrad ? &btable_acc : nullptr, &mtable_acc);
  const int P = n.mm.width[n.mm.n_layers - 1];
  const Film<T, W, S> film{blk.film, P, blk.zpre};
  if constexpr (BackboneGrad) {
    mlp_backward<T, W, UB, S>(n.bm, blk.fb, n.bg.width(), blk.hb, blk.zb, blk.yb, &g_out, 0, bparam_acc, gfb, &film,
                              gfilm);
    block_encode_backward<T, S, Keep>(n.bg, n.btable, blk.u, blk.lb, gfb, btable_acc);
  } else {
    NullAcc none;
    mlp_backward<T, W, UB, S>(n.bm, blk.fb, n.bg.width(), blk.hb, blk.zb, blk.yb, &g_out, 0, none, gfb, &film, gfilm);
  }
  mlp_backward<T, W, UM, S, Acc, kMaxFilm>(n.mm, blk.fm, n.mg.width(), blk.hm, blk.zm, blk.film, gfilm, P, mparam_acc,
                                          gfm);
  block_encode_backward<T, S, Keep>(n.mg, n.mtable, blk.u, blk.lm, gfm, mtable_acc);
}

// Predicted line integral of one ray (blocks of S, then the remainder one by one).
template <typename T, int W, bool UB, bool UM, int S, bool Keep>
NFR_HD T cond_ray_forward(const MarchSpec<T>& s, const CondNets<T>& n, int64_t ray, const T* offsets,
                          CondRayScratch<T, W, S, Keep>& sc) {
  T o[3], d[3], t_near, dt;
  if (!ray_bins(s, ray, o, d, t_near, dt)) return T(0);
  T sum = T(0);
  int k = 0;
  for (; k + S <= s.n_samples; k += S) {
    T out[S];
    cond_block_forward<T, W, UB, UM, S, Keep>(s, n, o, d, t_near, dt, k, offsets, sc.block, out);
    for (int p = 0; p < S; ++p) sum += out[p];
  }
  for (; k < s.n_samples; ++k) {
    T out[1];
    cond_block_forward<T, W, UB, UM, 1, Keep>(s, n, o, d, t_near, dt, k, offsets, sc.one, out);
    sum += out[0];
  }
  return sum;
}

// Backward of one ray given dL/d(line integral) grad.
template <typename T, int W, bool UB, bool UM, int S, bool Keep, bool BackboneGrad, typename Acc>
NFR_HD void cond_ray_backward(const MarchSpec<T>& s, const CondNets<T>& n, int64_t ray, const T* offsets, T grad,
                              CondRayScratch<T, W, S, Keep>& sc, Acc& btable_acc, Acc& bparam_acc, Acc& mtable_acc,
                              Acc& mparam_acc) {
  T o[3], d[3], t_near, dt;
  if (grad == T(0) || !ray_bins(s, ray, o, d, t_near, dt)) return;
  const T g_out = grad * dt * s.mu_max;
  int k = 0;
  for (; k + S <= s.n_samples; k += S) {
    cond_block_backward<T, W, UB, UM, S, Keep, BackboneGrad>(s, n, o, d, t_near, dt, k, offsets, g_out, sc.block,
                                                             btable_acc, bparam_acc, mtable_acc, mparam_acc);
  }
  for (; k < s.n_samples; ++k) {
    cond_block_backward<T, W, UB, UM, 1, Keep, BackboneGrad>(s, n, o, d, t_near, dt, k, offsets, g_out, sc.one,
                                                             btable_acc, bparam_acc, mtable_acc, mparam_acc);
  }
}

}  // namespace nfrecon
