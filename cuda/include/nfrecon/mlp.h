// The small fully connected network of a neural field, forward and backward for one point.
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

// Forward of one point x (in_dim). Stores the hidden activations h[i] (i < n_layers - 1) for a
// backward pass and the last layer's pre-activation z_out; returns the network output (width 1).
template <typename T, int W, bool Uniform = false>
NFR_HD T mlp_forward(const MLPView<T>& m, const T* x, T (*h)[W], T& z_out) {
  const int last = m.n_layers - 1;
  const T* prev = x;
  int prev_dim = m.in_dim;
  for (int i = 0; i < last; ++i) {
    const int no = hidden_width<T, W, Uniform>(m, i);
    T z[W];
    for (int j = 0; j < no; ++j) z[j] = m.b[i][j];
    const T* wt = m.Wt[i];
    if (i > 0 && m.skip[i]) {
      for (int a = 0; a < m.in_dim; ++a) axpy(z, wt + a * no, no, x[a]);
      wt += int64_t(m.in_dim) * no;
    }
    for (int a = 0; a < prev_dim; ++a) axpy(z, wt + a * no, no, prev[a]);
    for (int j = 0; j < no; ++j) h[i][j] = hidden_act(m.act, z[j]);
    prev = h[i];
    prev_dim = no;
  }
  // the output layer (width 1): a dot product with its weight row
  const T* w = m.W[last];
  T z = m.b[last][0];
  if (last == 0 || m.skip[last]) {
    z += dot(w, x, m.in_dim);
    w += m.in_dim;
  }
  if (last > 0) z += dot(w, prev, prev_dim);
  z_out = z;
  return out_act_value(m.out_act, z);
}

// Backward of one point given dL/d(output) g_out: adds the gradients of every W_i and b_i
// through `acc` (acc.axpy(base, s, vec, n): buf[base + a] += s * vec[a]; acc.add(i, v)) and
// writes dL/dx into grad_x (in_dim, overwritten).
template <typename T, int W, bool Uniform, typename Acc>
NFR_HD void mlp_backward(const MLPView<T>& m, const T* x, const T (*h)[W], T z_out, T y, T g_out, Acc& acc,
                         T* grad_x) {
  const int last = m.n_layers - 1;
  for (int a = 0; a < m.in_dim; ++a) grad_x[a] = T(0);
  T g[W];   // dL/dz of the current layer
  T gp[W];  // dL/dh of the previous layer
  g[0] = g_out * out_act_grad(m.out_act, z_out, y);
  for (int i = last; i >= 0; --i) {
    const int no = i == last ? 1 : hidden_width<T, W, Uniform>(m, i);
    const int fan = m.fan_in[i];
    const bool has_x = i == 0 || m.skip[i];
    const int prev_dim = i == 0 ? 0 : hidden_width<T, W, Uniform>(m, i - 1);
    const int x_cols = has_x ? m.in_dim : 0;
    const T* w = m.W[i];
    for (int j = 0; j < no; ++j) {
      const T gj = g[j];
      const int64_t row = m.w_offset[i] + int64_t(j) * fan;
      if (has_x) acc.axpy(row, gj, x, m.in_dim);
      if (i > 0) acc.axpy(row + x_cols, gj, h[i - 1], prev_dim);
      acc.add(m.b_offset[i] + j, gj);
    }
    if (has_x) {
      for (int j = 0; j < no; ++j) axpy(grad_x, w + int64_t(j) * fan, m.in_dim, g[j]);
    }
    if (i == 0) break;
    for (int a = 0; a < prev_dim; ++a) gp[a] = T(0);
    for (int j = 0; j < no; ++j) axpy(gp, w + int64_t(j) * fan + x_cols, prev_dim, g[j]);
    for (int a = 0; a < prev_dim; ++a) g[a] = gp[a] * hidden_act_grad(m.act, h[i - 1][a]);
  }
}

}  // namespace nfrecon
