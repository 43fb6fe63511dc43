// Pieces shared by the CUDA launchers: the current stream, launch checks, atomic accumulators.
//
// Only c10/core headers are used (no c10/cuda, no ATen/cuda), so that these files compile
// against the headers of a CPU-only torch wheel too (CI compiles them without a GPU).
#pragma once

#include <c10/core/DeviceGuard.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include "nfrecon/common.h"

namespace nfrecon {

constexpr int kThreads = 128;  // threads per block of every nfrecon kernel

inline unsigned int blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

// torch's current CUDA stream on the device of t (kernels queue behind torch's own work).
inline cudaStream_t current_stream(const at::Tensor& t) {
  const c10::impl::DeviceGuardImplInterface* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
  return static_cast<cudaStream_t>(impl->getStream(t.device()).native_handle());
}

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "nfrecon: CUDA kernel ", what, " failed to launch: ", cudaGetErrorString(err));
}

// Adds into global (or shared) memory with atomics: the order of the additions, and so the
// float rounding, varies from run to run (GPU results are not bitwise reproducible).
template <typename T>
struct AtomicAcc {
  T* buf;
  __device__ void add(int64_t i, T v) { atomicAdd(buf + i, v); }
  __device__ void axpy(int64_t base, T s, const T* v, int n) {
    for (int a = 0; a < n; ++a) atomicAdd(buf + base + a, s * v[a]);
  }
};

// The MLP parameter gradients of one block: summed in shared memory (when use_shared, i.e. they
// fit) and added to global memory once per parameter and block by flush(), else added to global
// memory directly. Every thread of the block must construct it and call flush().
template <typename T>
struct BlockParams {
  T* global;
  int64_t n;
  bool use_shared;
  T* shared;
  __device__ BlockParams(T* global_, int64_t n_, bool use_shared_, void* shared_mem)
      : global(global_), n(n_), use_shared(use_shared_), shared(static_cast<T*>(shared_mem)) {
    if (use_shared) {
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) shared[j] = T(0);
      __syncthreads();
    }
  }
  __device__ T* buffer() const { return use_shared ? shared : global; }
  __device__ void flush() {
    if (!use_shared) return;
    __syncthreads();
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) atomicAdd(global + j, shared[j]);
  }
};

}  // namespace nfrecon
