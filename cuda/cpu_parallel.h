// Deterministic parallel accumulation for the CPU launchers.
//
// Gradients into shared tables (hash-grid rows, MLP weights) are summed by many work items.
// Each of nt chunks of the work (nt = torch's thread count, chunk c = items [c n / nt,
// (c+1) n / nt)) accumulates into a private buffer, and the buffers are then added in chunk
// order. The result is bitwise the same on every run with the same thread count, whatever
// the scheduling, which is what exact resume needs. (GPU atomics give no such guarantee.)
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <vector>

namespace nfrecon {

// Adds into a plain buffer of B (one thread owns it); the values may be of another float type
// (a double buffer accumulates float contributions without float32 rounding at every add).
template <typename B>
struct BufferAcc {
  B* buf;
  template <typename T> void add(int64_t i, T v) { buf[i] += B(v); }
  void prefetch(int64_t i) const { __builtin_prefetch(buf + i, 1, 3); }
  template <typename T> void axpy(int64_t base, T s, const T* __restrict__ v, int n) {
    B* __restrict__ p = buf + base;
#pragma omp simd
    for (int a = 0; a < n; ++a) p[a] += B(s * v[a]);
  }
};

// out[0, size) = sum over chunks of what body(begin, end, buffer) adds into its zeroed buffer.
// Each chunk zeroes its own buffer on its own thread (in parallel, and first touched there).
template <typename T, typename Body>
void chunked_accumulate(int64_t n_items, int64_t size, T* out, Body body) {
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_items));
  if (nt == 1) {
    std::fill(out, out + size, T(0));
    body(int64_t(0), n_items, out);
    return;
  }
  std::unique_ptr<T[]> bufs(new T[size_t(nt - 1) * size_t(size)]);  // chunk 0 accumulates into out
  T* const extra = bufs.get();
  at::parallel_for(0, nt, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      T* buf = c == 0 ? out : extra + (c - 1) * size;
      std::fill(buf, buf + size, T(0));
      body(c * n_items / nt, (c + 1) * n_items / nt, buf);
    }
  });
  at::parallel_for(0, size, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t c = 1; c < nt; ++c) {
      const T* buf = extra + (c - 1) * size;
      for (int64_t i = b; i < e; ++i) out[i] += buf[i];
    }
  });
}

}  // namespace nfrecon
