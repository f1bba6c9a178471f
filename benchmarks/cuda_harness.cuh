// cuda_harness.cuh: what the torch-free CUDA tools (cuda_trace.cu, cuda_floor.cu) share:
// error checks, medians and reading back the kernels' timeline records (TRACE_* in
// csrc/cuda/common.cuh). Include after the kernel sources.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(x)                                                                              \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

inline double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// launch(c) for c = 0 .. calls - 1, back to back, captured on s into an executable graph.
template <typename F>
cudaGraphExec_t capture_calls(cudaStream_t s, int calls, F&& launch) {
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  for (int c = 0; c < calls; ++c) launch(c);
  CHECK(cudaStreamEndCapture(s, &g));
  CHECK(cudaGraphInstantiate(&ge, g, 0));
  CHECK(cudaGraphDestroy(g));  // the executable graph does not need it
  return ge;
}

#ifdef TERNARY_CUDA_TRACE
// Words per block record: the block index, then (globaltimer, clock64) per trace point.
constexpr int kTraceRecord = 2 * ternary::cuda::kTracePoints + 1;

inline void trace_reset() {
  const unsigned zero = 0;
  CHECK(cudaMemcpyToSymbol(ternary::cuda::trace_next, &zero, sizeof zero));
}

// The records written since trace_reset(), kTraceRecord words each, in order of block end.
inline std::vector<unsigned long long> trace_read() {
  unsigned n = 0;
  CHECK(cudaMemcpyFromSymbol(&n, ternary::cuda::trace_next, sizeof n));
  std::vector<unsigned long long> buf(size_t(n) * kTraceRecord);
  CHECK(cudaMemcpyFromSymbol(buf.data(), ternary::cuda::trace_buf, buf.size() * 8));
  return buf;
}
#endif
