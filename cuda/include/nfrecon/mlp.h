// The small fully connected network of a neural field (optionally FiLM-modulated), forward
// and backward for blocks of points.
//
// Semantics of nfrecon/ops/mlp.py (mlp_forward): layer i computes z_i = W_i in_i + b_i with
// in_0 = x and in_i = cat([x, h_{i-1}]) when i is a skip layer, else h_{i-1}; hidden layers
// apply the activation (leaky ReLU with slope 0.01, or ReLU), the last layer the output
// activation (sigmoid, softplus with beta 1 and threshold 20, or none). W_i is torch's
// Linear weight, (out, fan_in) row-major; Wt_i is its transpose, (fan_in, out), so that the
// forward is a sequence of contiguous axpys over the outputs (vectorised by the compiler).
//
// W is the largest hidden width the caller's buffers hold (a template parameter so that the
// CUDA build can size per-thread arrays exactly).
#pragma once

#include "nfrecon/common.h"

namespace nfrecon {

template <typename T>
struct MLPView {
  int n_layers;
  int in_dim;                  // width of x (the encoding)
  int width[kMaxLayers];       // output width of each layer (the last is 1 for a field)
  int fan_in[kMaxLayers];      // (skip ? in_dim : 0) + width of the previous layer (in_dim for layer 0)
  int skip[kMaxLayers];        // 1 when the layer's input is cat([x, h])
  int act;                     // Activation
  int out_act;                 // OutActivation
  const T* W[kMaxLayers];      // (out, fan_in)
  const T* Wt[kMaxLayers];     // (fan_in, out)
  const T* b[kMaxLayers];      // (out)
  int64_t w_offset[kMaxLayers];  // where dL/dW_i starts in the flat parameter-gradient buffer
  int64_t b_offset[kMaxLayers];  // where dL/db_i starts
};

template <typename T> NFR_HD T exp_(T x);
template <> NFR_HD float exp_<float>(float x) { return expf(x); }
template <> NFR_HD double exp_<double>(double x) { return exp(x); }
template <typename T> NFR_HD T log1p_(T x);
template <> NFR_HD float log1p_<float>(float x) { return log1pf(x); }
template <> NFR_HD double log1p_<double>(double x) { return log1p(x); }

template <typename T> NFR_HD T hidden_act(int act, T z) {
  return z > T(0) ? z : (act == kLeakyRelu ? z * T(kLeakySlope) : T(0));
}

// d act / d z from the activation's output h (h > 0 exactly where z > 0, as torch decides).
template <typename T> NFR_HD T hidden_act_grad(int act, T h) {
  return h > T(0) ? T(1) : (act == kLeakyRelu ? T(kLeakySlope) : T(0));
}

template <typename T> NFR_HD T out_act_value(int act, T z) {
  if (act == kSigmoid) return T(1) / (T(1) + exp_(-z));
  if (act == kSoftplus) return z > T(kSoftplusThreshold) ? z : log1p_(exp_(z));
  return z;
}

// d out / d z from the pre-activation z and the output y.
template <typename T> NFR_HD T out_act_grad(int act, T z, T y) {
  if (act == kSigmoid) return y * (T(1) - y);
  if (act == kSoftplus) {
    if (z > T(kSoftplusThreshold)) return T(1);
    const T e = exp_(z);
    return e / (e + T(1));
  }
  return T(1);
}

// out[j] += w[j] * s for j < n (contiguous: vectorises on the CPU).
template <typename T> NFR_HD void axpy(T* __restrict__ out, const T* __restrict__ w, int n, T s) {
#if !defined(__CUDACC__)
#pragma omp simd
#endif
  for (int j = 0; j < n; ++j) out[j] += w[j] * s;
}

// sum_a w[a] * v[a] for a < n.
template <typename T> NFR_HD T dot(const T* __restrict__ w, const T* __restrict__ v, int n) {
  T s = T(0);
#if !defined(__CUDACC__)
#pragma omp simd reduction(+ : s)
#endif
  for (int a = 0; a < n; ++a) s += w[a] * v[a];
  return s;
}

// Width of hidden layer i: W itself when the caller knows that every hidden layer is W wide
// (Uniform: the compiler then unrolls the loops over outputs and keeps them in registers).
template <typename T, int W, bool Uniform> NFR_HD int hidden_width(const MLPView<T>& m, int i) {
  return Uniform ? W : m.width[i];
}

// FiLM of the hidden layers (CondCBNT's modulation): per point, P = 2 * sum(hidden widths)
// values laid out [dgamma_0, beta_0, dgamma_1, beta_1, ...] (v: S rows of stride fs); hidden
// layer i then computes act(z_i * (1 + dgamma_i) + beta_i). zpre keeps each hidden layer's
// pre-FiLM z_i for the backward (dL/d dgamma = dL/d(FiLM output) * z).
template <typename T, int W, int S>
struct Film {
  const T* v;
  int fs;
  T (*zpre)[S][W];
};

// Where dgamma_i starts in a point's FiLM vector (beta_i follows at + width_i).
template <typename T, int W, bool Uniform> NFR_HD int film_offset(const MLPView<T>& m, int i) {
  int off = 0;
  for (int k = 0; k < i; ++k) off += 2 * hidden_width<T, W, Uniform>(m, k);
  return off;
}

// Blocks of S points. The CPU launcher evaluates S consecutive samples of a ray at once, so
// that every layer is a register-blocked micro-GEMM: each weight row is loaded once and used
// for S points (for W = 32 and S = 8 the pre-activations z[S][W] are 16 AVX-512 registers),
// and each parameter-gradient row is read and written once per S points (a rank-S update)
// instead of once per point. S = 1 is the per-point code the CUDA kernels run (one thread per
// sample); the arithmetic of each point is the same for every S (same operations, same order),
// except that the parameter gradients of a block are summed before they reach the buffer.
//
// Layouts: x and grad_x hold S rows of xs elements (point s at x + s * xs); h[i][s][j].

// out[p][j] = b[j] + sum_a M[a][j] in_p[a] for the S points p and outputs j0 <= j < j0 + n
// (n <= JB; Full: n == JB, known at compile time; b null: no bias), M a matrix with rows of
// stride ms and in_p = cat([x_p (nx values), h_p (nh values)]): a register block of PB points x
// JB outputs, each row segment of M loaded once per PB points. Each output sums the bias, then
// the x terms, then the h terms in order (the per-point arithmetic of the plain loops).
template <typename T, int S, int PB, int JB, bool Full>
NFR_HD void dense_chunk(const T* __restrict__ mat, int ms, const T* __restrict__ b, int j0, int n, const T* x, int xs,
                        int nx, const T* h, int hs, int nh, T* out, int os) {
  const int jn = Full ? JB : n;
  for (int p0 = 0; p0 < S; p0 += PB) {
    T acc[PB][JB];
    NFR_UNROLL
    for (int p = 0; p < PB; ++p)
      for (int j = 0; j < jn; ++j) acc[p][j] = b != nullptr ? b[j0 + j] : T(0);
    for (int a = 0; a < nx; ++a) {
      const T* w = mat + int64_t(a) * ms + j0;
      NFR_UNROLL
      for (int p = 0; p < PB; ++p) axpy(acc[p], w, jn, x[(p0 + p) * xs + a]);
    }
    for (int a = 0; a < nh; ++a) {
      const T* w = mat + int64_t(nx + a) * ms + j0;
      NFR_UNROLL
      for (int p = 0; p < PB; ++p) axpy(acc[p], w, jn, h[(p0 + p) * hs + a]);
    }
    NFR_UNROLL
    for (int p = 0; p < PB; ++p)
      for (int j = 0; j < jn; ++j) out[(p0 + p) * os + j0 + j] = acc[p][j];
  }
}

// out (S rows of stride os) = the no outputs b + M^T cat([x, h]) for a matrix M of nx + nh
// rows of stride ms (a layer's transposed weight in the forward; its weight, for dL/d(input),
// in the backward), inputs in S rows of stride xs and hs: blocks of 8 points x 32 outputs (two
// AVX-512 vectors of float), so that wide layers (the published 128, the 768 FiLM outputs of a
// modulation network) reuse each matrix element from registers.
template <typename T, int S>
NFR_HD void dense_block(const T* mat, int ms, const T* b, int no, const T* x, int xs, int nx, const T* h, int hs, int nh,
                        T* out, int os) {
  constexpr int PB = S < 8 ? S : 8;
  constexpr int JB = 32;
  static_assert(S % PB == 0, "blocks of points must be a multiple of 8 (or fewer than 8)");
  int j0 = 0;
  for (; j0 + JB <= no; j0 += JB) dense_chunk<T, S, PB, JB, true>(mat, ms, b, j0, JB, x, xs, nx, h, hs, nh, out, os);
  if (j0 < no) dense_chunk<T, S, PB, JB, false>(mat, ms, b, j0, no - j0, x, xs, nx, h, hs, nh, out, os);
}

// Forward of S points x. Stores the hidden activations h[i] (i < n_layers - 1) for a backward
// pass and the last layer's pre-activations z_out; writes the network outputs y (both S rows
// of the output width: one value for a field, the FiLM vector for a modulation network).
// film: modulate the hidden layers (null: plain MLP).
template <typename T, int W, bool Uniform = false, int S = 1>
NFR_HD void mlp_forward(const MLPView<T>& m, const T* x, int xs, T (*h)[S][W], T* z_out, T* y,
                        const Film<T, W, S>* film = nullptr) {
  const int last = m.n_layers - 1;
  for (int i = 0; i < last; ++i) {
    const int no = hidden_width<T, W, Uniform>(m, i);
    const bool has_x = i == 0 || m.skip[i];  // the x columns come first in cat([x, h])
    const int prev_dim = i > 0 ? hidden_width<T, W, Uniform>(m, i - 1) : 0;
    const T* hprev = i > 0 ? &h[i - 1][0][0] : nullptr;
    T z[S][W];  // registers when Uniform and S * W fits (see above)
    if constexpr (W > 32) {  // wide layers: register blocks over points and outputs
      dense_block<T, S>(m.Wt[i], no, m.b[i], no, x, xs, has_x ? m.in_dim : 0, hprev, W, prev_dim, &z[0][0], W);
    } else {
      NFR_UNROLL
      for (int p = 0; p < S; ++p)
        for (int j = 0; j < no; ++j) z[p][j] = m.b[i][j];
      const T* wt = m.Wt[i];
      if (has_x) {
        for (int a = 0; a < m.in_dim; ++a) {
          NFR_UNROLL
          for (int p = 0; p < S; ++p) axpy(z[p], wt + a * no, no, x[p * xs + a]);
        }
        wt += int64_t(m.in_dim) * no;
      }
      for (int a = 0; a < prev_dim; ++a) {
        NFR_UNROLL
        for (int p = 0; p < S; ++p) axpy(z[p], wt + a * no, no, h[i - 1][p][a]);
      }
    }
    if (film != nullptr) {
      const int off = film_offset<T, W, Uniform>(m, i);
      for (int p = 0; p < S; ++p) {
        const T* f = film->v + p * film->fs + off;
        for (int j = 0; j < no; ++j) {
          film->zpre[i][p][j] = z[p][j];
          z[p][j] = z[p][j] * (T(1) + f[j]) + f[no + j];
        }
      }
    }
    NFR_UNROLL
    for (int p = 0; p < S; ++p)
      for (int j = 0; j < no; ++j) h[i][p][j] = hidden_act(m.act, z[p][j]);
  }
  const int nout = m.width[last];
  if (nout > 1) {  // a vector output (the modulation network's FiLM vector)
    const int prev_dim = last > 0 ? hidden_width<T, W, Uniform>(m, last - 1) : 0;
    dense_block<T, S>(m.Wt[last], nout, m.b[last], nout, x, xs, last == 0 || m.skip[last] ? m.in_dim : 0,
                      last > 0 ? &h[last - 1][0][0] : nullptr, W, prev_dim, z_out, nout);
    for (int p = 0; p < S; ++p)
      for (int j = 0; j < nout; ++j) y[p * nout + j] = out_act_value(m.out_act, z_out[p * nout + j]);
    return;
  }
  // the output layer of a field (width 1): a dot product with its weight row
  for (int p = 0; p < S; ++p) {
    const T* w = m.W[last];
    T z = m.b[last][0];
    if (last == 0 || m.skip[last]) {
      z += dot(w, x + p * xs, m.in_dim);
      w += m.in_dim;
    }
    if (last > 0) z += dot(w, h[last - 1][p], hidden_width<T, W, Uniform>(m, last - 1));
    z_out[p] = z;
    y[p] = out_act_value(m.out_act, z);
  }
}

// acc[base + a] += sum_p c[p * cs] * v[p * vs + a] for a < n: one row of a parameter gradient,
// summed over the S points of a block in registers first (for S = 1 exactly acc.axpy).
template <typename T, int S, typename Acc>
NFR_HD void acc_rank(Acc& acc, int64_t base, const T* c, int cs, const T* v, int vs, int n) {
  if constexpr (S == 1) {
    acc.axpy(base, c[0], v, n);
  } else {
#if !defined(__CUDACC__)
#pragma omp simd
#endif
    for (int a = 0; a < n; ++a) {
      T t = c[0] * v[a];
      NFR_UNROLL
      for (int p = 1; p < S; ++p) t += c[p * cs] * v[p * vs + a];
      acc.add(base + a, t);
    }
  }
}

// Backward of S points given dL/d(output) g_out (S rows of stride gs; gs = 0: one value for
// all points and outputs): adds the gradients of every W_i and b_i through `acc`
// (acc.axpy(base, s, vec, n): buf[base + a] += s * vec[a]; acc.add(i, v)) and writes dL/dx
// into grad_x (S rows of xs, overwritten). With film, also writes dL/d(FiLM vector) into
// grad_film (S rows of film->fs). O: the largest output width (the size of its buffer).
template <typename T, int W, bool Uniform, int S, typename Acc, int O = 1>
NFR_HD void mlp_backward(const MLPView<T>& m, const T* x, int xs, const T (*h)[S][W], const T* z_out, const T* y,
                         const T* g_out, int gs, Acc& acc, T* grad_x, const Film<T, W, S>* film = nullptr,
                         T* grad_film = nullptr) {
  const int last = m.n_layers - 1;
  const int nout = m.width[last];
  for (int p = 0; p < S; ++p)
    for (int a = 0; a < m.in_dim; ++a) grad_x[p * xs + a] = T(0);
  T gl[S][O];  // dL/dz of the output layer
  T g[S][W];   // dL/dz of the current hidden layer
  T gp[S][W];  // dL/dh of the previous layer
  for (int p = 0; p < S; ++p)
    for (int j = 0; j < nout; ++j)
      gl[p][j] = g_out[p * gs + (gs != 0 ? j : 0)] * out_act_grad(m.out_act, z_out[p * nout + j], y[p * nout + j]);
  for (int i = last; i >= 0; --i) {
    const int no = i == last ? nout : hidden_width<T, W, Uniform>(m, i);
    T* gc = i == last ? &gl[0][0] : &g[0][0];  // this layer's dL/dz, S rows of stride gst
    const int gst = i == last ? O : W;
    const int fan = m.fan_in[i];
    const bool has_x = i == 0 || m.skip[i];
    const int prev_dim = i == 0 ? 0 : hidden_width<T, W, Uniform>(m, i - 1);
    const int x_cols = has_x ? m.in_dim : 0;
    const T* w = m.W[i];
    for (int j = 0; j < no; ++j) {
      const int64_t row = m.w_offset[i] + int64_t(j) * fan;
      if (has_x) acc_rank<T, S>(acc, row, gc + j, gst, x, xs, m.in_dim);
      if (i > 0) acc_rank<T, S>(acc, row + x_cols, gc + j, gst, &h[i - 1][0][0], W, prev_dim);
      T gb = gc[j];
      for (int p = 1; p < S; ++p) gb += gc[p * gst + j];
      acc.add(m.b_offset[i] + j, gb);
    }
    if (has_x) {
      for (int j = 0; j < no; ++j) {
        NFR_UNROLL
        for (int p = 0; p < S; ++p) axpy(grad_x + p * xs, w + int64_t(j) * fan, m.in_dim, gc[p * gst + j]);
      }
    }
    if (i == 0) break;
    if constexpr (W > 32) {  // dL/dh = W^T dL/dz in register blocks (wide layers)
      dense_block<T, S>(w + x_cols, fan, nullptr, prev_dim, gc, gst, no, nullptr, 0, 0, &gp[0][0], W);
    } else {
      NFR_UNROLL
      for (int p = 0; p < S; ++p)
        for (int a = 0; a < prev_dim; ++a) gp[p][a] = T(0);
      for (int j = 0; j < no; ++j) {
        NFR_UNROLL
        for (int p = 0; p < S; ++p) axpy(gp[p], w + int64_t(j) * fan + x_cols, prev_dim, gc[p * gst + j]);
      }
    }
    NFR_UNROLL
    for (int p = 0; p < S; ++p)
      for (int a = 0; a < prev_dim; ++a) g[p][a] = gp[p][a] * hidden_act_grad(m.act, h[i - 1][p][a]);
    if (film != nullptr) {  // through the FiLM of layer i - 1: z * (1 + dgamma) + beta
      const int off = film_offset<T, W, Uniform>(m, i - 1);
      for (int p = 0; p < S; ++p) {
        const T* f = film->v + p * film->fs + off;
        T* gf = grad_film + p * film->fs + off;
        for (int a = 0; a < prev_dim; ++a) {
          gf[a] = g[p][a] * film->zpre[i - 1][p][a];
          gf[prev_dim + a] = g[p][a];
          g[p][a] *= T(1) + f[a];
        }
      }
    }
  }
}

}  // namespace nfrecon
