// cuda_trace.cu: a timeline of the act="int8" persistent GEMV inside a CUDA graph of
// back-to-back calls (the benchmark's setting), from per-block timestamps the kernel records
// when TERNARY_CUDA_TRACE is defined (see TRACE_* in csrc/cuda/common.cuh). Torch-free.
//
// Build and run on a CUDA machine:
//   nvcc -O3 -std=c++17 --use_fast_math -arch=sm_90 benchmarks/cuda_trace.cu -o cuda_trace
//   ./cuda_trace N K [i2|i8] [calls]
// Prints, for the steady-state calls of the last replay, the median over calls of: the gap
// between one call's last block end and the next call's first block start (negative: the
// calls overlap under PDL), the call's span, and per-block phase times (medians over blocks):
// start -> predecessor done (griddepcontrol.wait), quantize x, first unit summed, block end.
#define TERNARY_CUDA_TRACE 1
#include "../csrc/cuda/gemv.cu"
#include "../csrc/cuda/mma_int8.cu"
#include "cuda_harness.cuh"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <cstdio>
#include <vector>

using namespace ternary::cuda;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s N K [i2|i8] [calls]\n", argv[0]);
    return 2;
  }
  const int64_t N = std::atoll(argv[1]), K = std::atoll(argv[2]);
  const bool i2 = argc < 4 || std::string(argv[3]) == "i2";
  const int calls = argc > 4 ? std::atoi(argv[4]) : 32;
  const int64_t wbytes = units_of(i2, N) * K;
  int l2 = 0, sms = 0, clk_khz = 0;
  CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CHECK(cudaDeviceGetAttribute(&clk_khz, cudaDevAttrClockRate, 0));
  const int copies = static_cast<int>(std::max<int64_t>(2, 4 * int64_t(l2) / wbytes + 1));

  std::vector<void*> w(copies);
  for (auto& p : w) {
    CHECK(cudaMalloc(&p, wbytes));
    CHECK(cudaMemset(p, 0x55, wbytes));  // i2: all codes 1 (zero weights); i8: 0x55 is not a
  }                                      // ternary code, but the kernel does not care
  float *scale, *bias;
  __nv_bfloat16 *x, *y;
  CHECK(cudaMalloc(&scale, 4 * N));
  CHECK(cudaMemset(scale, 0, 4 * N));
  CHECK(cudaMalloc(&bias, 4 * N));
  CHECK(cudaMemset(bias, 0, 4 * N));
  CHECK(cudaMalloc(&x, 2 * K));
  CHECK(cudaMemset(x, 0x3f, 2 * K));
  CHECK(cudaMalloc(&y, 2 * N));

  cudaStream_t s;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  auto one = [&](int c) {
    Linear p;
    p.M = 1; p.N = N; p.K = K; p.i2 = i2; p.weight = w[c % copies];
    p.scale = scale; p.scale_stride = 1; p.bias = nullptr; p.x = x; p.y = y;
    p.dtype = DType::BF16;
    return linear_int8(p, s);
  };
  CHECK(one(0));
  CHECK(cudaStreamSynchronize(s));
  const cudaGraphExec_t ge = capture_calls(s, calls, [&](int c) { CHECK(one(c)); });
  for (int r = 0; r < 5; ++r) CHECK(cudaGraphLaunch(ge, s));
  CHECK(cudaStreamSynchronize(s));
  trace_reset();
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  CHECK(cudaEventRecord(e0, s));
  CHECK(cudaGraphLaunch(ge, s));
  CHECK(cudaEventRecord(e1, s));
  CHECK(cudaStreamSynchronize(s));
  float ms = 0;
  CHECK(cudaEventElapsedTime(&ms, e0, e1));
  const std::vector<unsigned long long> buf = trace_read();
  const unsigned n = static_cast<unsigned>(buf.size() / kTraceRecord);
  constexpr int R = kTraceRecord;

  // Blocks of one call: the grid size is the same for every call; records arrive in order of
  // block end, so group them by start time instead: sort by start, cut into calls.
  const int grid = static_cast<int>(n / calls);
  std::vector<const unsigned long long*> recs;
  for (unsigned i = 0; i < n; ++i) recs.push_back(&buf[size_t(i) * R]);
  std::sort(recs.begin(), recs.end(), [](auto a, auto b) { return a[1] < b[1]; });
  const double ns_per_cycle = 1e6 / clk_khz;
  std::vector<double> gap, span, wait, quant, first, rest, total;
  double prev_end = 0;
  for (int c = 0; c < calls; ++c) {
    double t0 = 1e30, t1 = 0;
    for (int b = 0; b < grid; ++b) {
      const auto* r = recs[size_t(c) * grid + b];
      t0 = std::min<double>(t0, r[1]);
      t1 = std::max<double>(t1, r[1 + 2 * (kTracePoints - 1)]);
      if (c >= calls / 4) {
        auto cyc = [&](int i, int j) { return (double(r[2 + 2 * j]) - double(r[2 + 2 * i])) * ns_per_cycle; };
        wait.push_back(cyc(0, 1));
        quant.push_back(cyc(1, 2));
        if (r[1 + 2 * 3]) first.push_back(cyc(2, 3));
        rest.push_back(cyc(2, kTracePoints - 1));
        total.push_back(cyc(0, kTracePoints - 1));
      }
    }
    if (c >= calls / 4) {
      gap.push_back(t0 - prev_end);
      span.push_back(t1 - t0);
    }
    prev_end = t1;
  }
  std::printf("%lldx%lld %s M=1: %d calls, grid %d of %d SMs, %.2f us per call (events), %.1f MB "
              "weights, %d copies\n",
              (long long)N, (long long)K, i2 ? "i2" : "i8", calls, grid, sms, 1e3 * ms / calls,
              wbytes / 1e6, copies);
  std::printf("  per call (medians, ns): gap after previous call %.0f, span first start -> last end %.0f\n",
              median(gap), median(span));
  std::printf("  per block (medians, ns at %d MHz): start -> wait done %.0f, quantize x %.0f, "
              "-> first unit summed %.0f, quantize end -> block end %.0f, whole block %.0f\n",
              clk_khz / 1000, median(wait), median(quant), median(first), median(rest), median(total));
  return 0;
}
