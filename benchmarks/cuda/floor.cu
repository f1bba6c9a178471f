// floor.cu: what a call of the M = 1 GEMV could cost at best, in the benchmark's setting (a
// CUDA graph of back-to-back calls, each streaming its own copy of the weights from HBM). A
// probe kernel with the persistent GEMV's layout (one warp per 4 KB weight row in turn, two 4 KB
// batches in flight per warp, the i2 dp4a decode against q in shared memory, no epilogue) is
// timed with and without each part of the real kernel's prologue: programmatic dependent
// launch, the quantization of x after waiting on the predecessor, the L2 prefetch (bulk or per
// line), and, as the ideal no real kernel may use, the first batch loaded before the wait. The
// real op (through the router, csrc/cuda/kernels.h) runs on the same bytes. Torch-free; it
// includes the kernels' headers and links their sources:
//   nvcc -O3 -std=c++17 --use_fast_math -arch=sm_90 -Icsrc benchmarks/cuda/floor.cu \
//       csrc/cuda/*.cu -o floor
//   [FLOOR_ALL=1] [FLOOR_REAL=1] ./floor [4 KB rows per call ...]   (default 3584 and 14336:
//   14336x4096 i2 bytes and four times that; the real op runs on each size that holds whole
//   rows of its K. FLOOR_ALL adds the full probe matrix: both block sizes, x lengths, x
//   prefetch, x per block; FLOOR_REAL runs only the real op)
#include "../../csrc/cuda/gemv.cuh"
#include "../../csrc/cuda/quantize.cuh"
#include "harness.cuh"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using namespace ternary::cuda;

enum Mode : int {
  kPdl = 1,         // launched with PDL; lets the next call launch at once, waits before x
  kXPhase = 2,      // quantizes x (quantize_x_block) after the wait, as the real kernel
  kBulkPf = 4,      // cp.async.bulk.prefetch.L2 of the block's rows before the wait
  kLinePf = 8,      // prefetch.global.L2 of every line of the block's rows before the wait
  kEarlyLoads = 16,  // first batch loaded before the wait (unsafe in general: the ideal)
  kXPf = 32,         // prefetch.global.L2 of x's lines before the wait
  kReal = 64,        // the real kernel (i2, N = 4 * units, K = 4096) instead, switches below
  kXThenLoads = 128,  // first batch issued once x's loads are, before x is used
  kXTwoPass = 256,    // x quantized in two passes (amax, then quantize) instead of from registers
  kXSpread = 512      // every block reads its own copy of x (no two blocks read the same lines)
};

constexpr int kRow = 4096;  // bytes per weight row (unit)
constexpr int kB = kRow / (32 * 16);

template <int THREADS, int MIN_BLOCKS>
__global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
    probe_kernel(const uint8_t* __restrict__ W, int64_t units, const __nv_bfloat16* x, int64_t xk,
                 int32_t* out, int mode) {
  extern __shared__ __align__(16) unsigned char smem_q[];
  if (mode & kXSpread) x += blockIdx.x * xk;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  const int64_t stride = int64_t(nwarps) * gridDim.x;
  int64_t item = int64_t(warp) * gridDim.x + blockIdx.x;
  auto load = [&](uint4 (&w)[kB], int64_t u) {
    const bool ok = u < units;
#pragma unroll
    for (int j = 0; j < kB; ++j) w[j] = load_w16<true>(W + (ok ? u : 0) * kRow, (j * 32 + lane) * 16, kRow, ok);
  };
  if (mode & kPdl) pdl_launch_dependents();
  const int64_t own = (units + gridDim.x - 1) / gridDim.x;
  if (mode & kBulkPf)
    for (int64_t j = threadIdx.x; j < own; j += blockDim.x) {
      const int64_t u = blockIdx.x + j * gridDim.x;
      if (u < units) prefetch_l2(W + u * kRow, kRow);
    }
  if (mode & kLinePf)
    for (int64_t l = threadIdx.x; l < own * (kRow / 128); l += blockDim.x) {
      const int64_t u = blockIdx.x + (l / (kRow / 128)) * gridDim.x;
      if (u < units) prefetch_l2_line(W + u * kRow + (l % (kRow / 128)) * 128);
    }
  if (mode & kXPf)
    for (int64_t l = threadIdx.x; l < (2 * xk + 127) / 128; l += blockDim.x)
      prefetch_l2_line(reinterpret_cast<const char*>(x) + 128 * l);
  uint4 cur[kB], nxt[kB];
  if (mode & kEarlyLoads) load(cur, item);
  if (mode & kPdl) pdl_wait();
  if (mode & kXPhase) {
    float inv[1];
    int32_t qsum[1];
    auto x_hook = [&](int phase) {
      if (phase == kXLoadsIssued && (mode & kXThenLoads)) load(cur, item);
    };
    quantize_x_block<1, kXAnyPath, __nv_bfloat16>(x, 1, xk, true, !(mode & kXTwoPass), smem_q,
                                                  inv, qsum, x_hook);
  } else {
    for (int i = threadIdx.x; i < kRow / 4; i += blockDim.x)
      reinterpret_cast<uint32_t*>(smem_q)[i] = 0x01010101u * (i & 3);
    __syncthreads();
  }
  if (!(mode & (kEarlyLoads | kXThenLoads))) load(cur, item);
  int32_t acc[ternary::kI2RowsPerByte][1] = {};
  while (item < units) {
    load(nxt, item + stride);
#pragma unroll
    for (int j = 0; j < kB; ++j) {
      uint4 qv[1];
      load_q16<1, true>(reinterpret_cast<const int8_t*>(smem_q), 0, j * 32 + lane, 1, qv);
      dot16<1, true>(cur[j], qv, acc);
    }
#pragma unroll
    for (int j = 0; j < kB; ++j) cur[j] = nxt[j];
    item += stride;
  }
  const int32_t t = warp_sum(acc[0][0] + acc[1][0] + acc[2][0] + acc[3][0]);
  if (lane == 0) out[blockIdx.x * nwarps + warp] = t;
}

int main(int argc, char** argv) {
  std::vector<int64_t> sizes;
  for (int i = 1; i < argc; ++i) sizes.push_back(std::atoll(argv[i]));
  if (sizes.empty()) sizes = {3584, 14336};
  int l2 = 0, sms = 0;
  CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaStream_t s;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));

  // Device-to-device copy bandwidth (bytes read + written), the reference for "% copy BW".
  const size_t cbytes = size_t(1) << 30;
  void *ca, *cb;
  CHECK(cudaMalloc(&ca, cbytes));
  CHECK(cudaMalloc(&cb, cbytes));
  CHECK(cudaMemset(ca, 1, cbytes));
  std::vector<double> ct;
  for (int r = 0; r < 12; ++r) {
    CHECK(cudaEventRecord(e0, s));
    CHECK(cudaMemcpyAsync(cb, ca, cbytes, cudaMemcpyDeviceToDevice, s));
    CHECK(cudaEventRecord(e1, s));
    CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (r >= 2) ct.push_back(ms);
  }
  const double copy_gbs = 2.0 * cbytes / (median(ct) * 1e-3) / 1e9;
  CHECK(cudaFree(ca));
  CHECK(cudaFree(cb));
  std::printf("%d SMs, L2 %d MB, copy bandwidth %.0f GB/s\n", sms, l2 >> 20, copy_gbs);

  // x: the largest K used, bf16, nonzero values.
  const int64_t xk_max = 14336;
  __nv_bfloat16 *x, *y;
  int32_t* out;
  float* scale;
  // One copy per block (kXSpread reads copy blockIdx.x; the others read the first).
  CHECK(cudaMalloc(&x, 2 * xk_max * sms));
  std::vector<__nv_bfloat16> hx(xk_max * sms);
  for (int64_t k = 0; k < xk_max * sms; ++k)
    hx[k] = __float2bfloat16(float(((k % xk_max) * 37) % 101) - 50.0f);
  CHECK(cudaMemcpy(x, hx.data(), 2 * xk_max * sms, cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&out, 4 * 132 * 64 * 4));
  CHECK(cudaMalloc(&y, 2 * 4 * 16384));
  CHECK(cudaMalloc(&scale, 4 * 4 * 16384));
  CHECK(cudaMemset(scale, 0, 4 * 4 * 16384));

  struct Config {
    int64_t units;
    int threads;
    int64_t xk;  // probe: x's length; real kernel: K (N = 4 * units * 4096 / K)
    int mode;
  };
  std::vector<Config> configs;
  const bool all = std::getenv("FLOOR_ALL") != nullptr;
  if (all) {
    const int base[] = {0,
                        kPdl,
                        kPdl | kBulkPf,
                        kPdl | kLinePf,
                        kPdl | kEarlyLoads,
                        kPdl | kXPhase,
                        kPdl | kXPhase | kBulkPf,
                        kPdl | kXPhase | kLinePf,
                        kPdl | kXPhase | kEarlyLoads};
    for (const int64_t units : sizes)
      for (const int threads : {512, 256})
        for (const int mode : base) configs.push_back({units, threads, 4096, mode});
    // x's share: x of 64, 4096 and 14336 elements, x prefetched or not, x read by every block
    // or one copy per block.
    for (const int64_t xk : {64, 4096, 14336})
      for (const int mode : {kPdl | kXPhase, kPdl | kXPhase | kBulkPf, kPdl | kXPhase | kXPf,
                             kPdl | kXPhase | kBulkPf | kXPf,
                             kPdl | kXPhase | kBulkPf | kXThenLoads,
                             kPdl | kXPhase | kBulkPf | kXThenLoads | kXSpread})
        configs.push_back({3584, 512, xk, mode});
  }
  // FLOOR_REAL=1: only the real op (for A/B runs and profilers).
  const bool real_only = std::getenv("FLOOR_REAL") != nullptr;
  if (!real_only)
    for (const int mode : {kPdl | kBulkPf, kPdl | kXPhase | kBulkPf, kPdl | kXPhase | kBulkPf | kXTwoPass,
                           kPdl | kXPhase | kBulkPf | kXThenLoads, kPdl | kXPhase | kEarlyLoads})
      configs.push_back({3584, 512, 4096, mode});
  // The real op on the same bytes, as 14336x4096 and 4096x14336.
  for (const int64_t k : {4096, 14336})
    for (const int64_t units : sizes)  // sizes that hold whole rows of K (N = 4 * bytes / K)
      if (units * kRow % k == 0) configs.push_back({units, 512, k, kPdl | kReal});

  auto name = [](int m) {
    if (m & kReal) return std::string("real op");
    std::string r = m & kPdl ? "PDL" : "no PDL";
    if (m & kXPhase) r += " + x";
    if (m & kXTwoPass) r += " (two passes)";
    if (m & kXPf) r += " + x pf";
    if (m & kBulkPf) r += " + bulk pf";
    if (m & kLinePf) r += " + line pf";
    if (m & kEarlyLoads) r += " + loads before wait";
    if (m & kXThenLoads) r += " + loads after x's";
    if (m & kXSpread) r += " + x per block";
    return r;
  };
  std::printf("| units | MB | threads | x K | mode | us/call | GB/s | %% copy BW |\n"
              "|---|---|---|---|---|---|---|---|\n");
  int64_t have = 0;
  int copies = 0;
  std::vector<uint8_t*> w;
  for (const Config& cf : configs) {
    const int64_t units = cf.units, bytes = units * kRow;
    if (units != have) {
      for (auto p : w) CHECK(cudaFree(p));
      copies = static_cast<int>(std::max<int64_t>(2, 4 * int64_t(l2) / bytes + 1));
      w.assign(copies, nullptr);
      std::vector<uint8_t> hw(bytes);
      for (int64_t i = 0; i < bytes; ++i) hw[i] = uint8_t((i * 2654435761u) >> 13);
      for (auto& p : w) {
        CHECK(cudaMalloc(&p, bytes));
        CHECK(cudaMemcpy(p, hw.data(), bytes, cudaMemcpyHostToDevice));
      }
      have = units;
    }
    const int calls = 32;
    const int mode = cf.mode;
    const size_t smem = std::max<size_t>(kRow, ternary::act_padded_k(cf.xk));
    auto launch_one = [&](int c) {
      const dim3 grid(sms), block(cf.threads);
      if (mode & kReal) {
        Linear p;
        p.M = 1; p.N = 4 * bytes / cf.xk; p.K = cf.xk; p.i2 = true; p.weight = w[c % copies];
        p.scale = scale; p.scale_stride = 1; p.bias = nullptr; p.x = x; p.y = y;
        p.dtype = DType::BF16;
        CHECK(run_linear(plan_linear(p, Act::Int8), p, nullptr, s));  // fused: no scratch
      } else if (cf.threads == 512) {
        CHECK(launch_smem(probe_kernel<512, 1>, grid, block, smem, s, (mode & kPdl) != 0,
                          w[c % copies], units, x, cf.xk, out, mode));
      } else {
        CHECK(launch_smem(probe_kernel<256, 2>, grid, block, smem, s, (mode & kPdl) != 0,
                          w[c % copies], units, x, cf.xk, out, mode));
      }
    };
    const cudaGraphExec_t ge = capture_calls(s, calls, launch_one);
    std::vector<double> t;
    for (int r = 0; r < 25; ++r) {
      CHECK(cudaEventRecord(e0, s));
      CHECK(cudaGraphLaunch(ge, s));
      CHECK(cudaEventRecord(e1, s));
      CHECK(cudaEventSynchronize(e1));
      float ms = 0;
      CHECK(cudaEventElapsedTime(&ms, e0, e1));
      if (r >= 5) t.push_back(1e3 * ms / calls);
    }
    CHECK(cudaGetLastError());
    const double us = median(t);
    std::printf("| %lld | %.1f | %d | %lld | %s | %.2f | %.0f | %.1f |\n", (long long)units,
                bytes / 1e6, cf.threads, (long long)cf.xk, name(mode).c_str(), us,
                bytes / us / 1e3, 100.0 * bytes / us / 1e3 / copy_gbs);
    CHECK(cudaGraphExecDestroy(ge));
  }
  for (auto p : w) CHECK(cudaFree(p));
  return 0;
}
