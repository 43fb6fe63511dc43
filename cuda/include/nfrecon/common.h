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

namespace nfrecon {

// Limits of the fused kernels (checked on the Python side before any kernel runs, so a config
// beyond them gets an InputError naming the option, never a buffer overrun here).
constexpr int kMaxLevels = 32;     // hash-grid levels
constexpr int kMaxEncoding = 128;  // encoding width L * F
constexpr int kMaxLayers = 8;      // linear layers of the MLP
constexpr int kMaxWidth = 256;     // hidden width of the MLP

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

template <typename T> NFR_HD T min2(T a, T b) { return a < b ? a : b; }
template <typename T> NFR_HD T max2(T a, T b) { return a > b ? a : b; }

}  // namespace nfrecon
