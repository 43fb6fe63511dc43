// Shared building blocks of every nfrecon kernel: the host+device macro, limits, small math.
//
// Every function in cuda/include/nfrecon/ is written once and compiled twice: by g++ into the
// CPU extension (NFR_HD expands to `inline`) and by nvcc into the CUDA extension
// (`__host__ __device__ __forceinline__`). Nothing here touches torch: plain pointers and PODs.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define NFR_HD __host__ __device__ __forceinline__
#else
#define NFR_HD inline
#endif

// Full unrolling of a short loop of compile-time length (the S points of a block, mlp.h), so
// that its per-point accumulators can live in registers.
#if defined(__CUDACC__)
#define NFR_UNROLL _Pragma("unroll")
#else
#define NFR_UNROLL _Pragma("GCC unroll 16")
#endif

namespace nfrecon {

// Limits of the fused kernels (checked on the Python side before any kernel runs, so a config
// beyond them gets an InputError naming the option, never a buffer overrun here).
constexpr int kMaxLevels = 32;     // hash-grid levels
constexpr int kMaxEncoding = 128;  // encoding width L * F
constexpr int kMaxLayers = 8;      // linear layers of the MLP
constexpr int kMaxWidth = 256;     // hidden width of the MLP
constexpr int kMaxFilm = 1024;     // FiLM values per point (2 x the sum of the modulated widths)

// Activation codes, in the order of nfrecon.ops.mlp.ACTIVATIONS / OUT_ACTIVATIONS.
enum Activation : int { kLeakyRelu = 0, kRelu = 1 };
enum OutActivation : int { kSigmoid = 0, kSoftplus = 1, kIdentity = 2 };

// Negative slope of the leaky ReLU (torch's default, used by NAF).
constexpr float kLeakySlope = 0.01f;
// torch.nn.Softplus(beta=1, threshold=20): linear above the threshold.
constexpr float kSoftplusThreshold = 20.0f;

// Smallest positive normal number of T (torch.finfo(T).tiny), used by the slab test.
template <typename T> NFR_HD T tiny_normal();
template <> NFR_HD float tiny_normal<float>() { return 1.17549435082228750797e-38f; }
template <> NFR_HD double tiny_normal<double>() { return 2.2250738585072013831e-308; }

// A cache prefetch hint on the CPU (a no-op in CUDA builds): the CPU march computes the hash-grid
// corners of a whole block of samples first and prefetches their table and gradient rows, so
// that the random-access misses overlap instead of stalling one after the other.
NFR_HD void prefetch_read(const void* p) {
#if !defined(__CUDACC__)
  __builtin_prefetch(p, 0, 3);
#else
  (void)p;
#endif
}
template <typename T> NFR_HD T min2(T a, T b) { return a < b ? a : b; }
template <typename T> NFR_HD T max2(T a, T b) { return a > b ? a : b; }

}  // namespace nfrecon
