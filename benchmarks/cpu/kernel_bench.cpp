// kernel_bench.cpp: torch-free timing of the CPU kernel sets (no op dispatch, no allocation),
// to separate kernel speed from framework overhead and to measure the bounds: read bandwidth
// of a plain multi-threaded sum over a buffer far larger than LLC, same threads.
//
//   python tools/native_build.py kernel_bench -o build/kernel_bench
//   build/kernel_bench [--threads 2] [--set NAME] [--shapes 4096x4096,...] [--m 1,8,128]
//                      [--formats i2,i8] [--act int8,none] [--modes hot,cold] [--cold-mib 1024]
//                      [--reps N] [--bw-mib 2048] [--bw-reps 5]
// --bw-mib 4 --bw-reps 2000 measures the read bandwidth of a cache-resident (hot) buffer.
// Threads split the row units into contiguous chunks (OpenMP static), as at::parallel_for.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu/kernels.h"

using namespace ternary;
using namespace ternary::cpu;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t a = 0;
  while (a <= s.size()) {
    size_t b = s.find(',', a);
    if (b == std::string::npos) b = s.size();
    if (b > a) out.push_back(s.substr(a, b - a));
    a = b + 1;
  }
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// GB/s of a threaded read of nbytes (4 independent accumulators per thread).
double read_bw(size_t nbytes, int threads, int reps) {
  const size_t n = nbytes / sizeof(uint64_t);
  std::vector<uint64_t> buf(n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (size_t i = 0; i < n; ++i) buf[i] = i;
  std::vector<double> ts;
  volatile uint64_t sink = 0;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now();
    uint64_t total = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
    for (size_t i = 0; i < n; i += 8) {
      total += buf[i] + buf[i + 1] + buf[i + 2] + buf[i + 3] + buf[i + 4] + buf[i + 5] +
               buf[i + 6] + buf[i + 7];
    }
    sink = sink + total;
    ts.push_back(now() - t0);
  }
  return nbytes / *std::min_element(ts.begin(), ts.end()) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, reps = 0;
  std::string set_name, shapes = "2560x2560,6912x2560,2560x6912,4096x4096,14336x4096,4096x14336";
  std::string ms = "1,8,128", formats = "i2,i8", acts = "int8,none", modes = "hot,cold";
  double cold_mib = 1024, bw_mib = 2048;
  int bw_reps = 5;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--threads") threads = std::atoi(next().c_str());
    else if (a == "--set") set_name = next();
    else if (a == "--shapes") shapes = next();
    else if (a == "--m") ms = next();
    else if (a == "--formats") formats = next();
    else if (a == "--act") acts = next();
    else if (a == "--modes") modes = next();
    else if (a == "--cold-mib") cold_mib = std::atof(next().c_str());
    else if (a == "--bw-mib") bw_mib = std::atof(next().c_str());
    else if (a == "--bw-reps") bw_reps = std::atoi(next().c_str());
    else if (a == "--reps") reps = std::atoi(next().c_str());
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (!set_name.empty() && !select_kernels(set_name.c_str())) {
    std::fprintf(stderr, "no kernel set %s\n", set_name.c_str());
    return 2;
  }
  const KernelSet& ks = selected_kernels();
  const double bw = read_bw(size_t(bw_mib * (1 << 20)), threads, bw_reps);
  std::printf("# set %s, %d threads, read bandwidth %.1f GB/s (best of %d, %.0f MiB)\n", ks.name,
              threads, bw, bw_reps, bw_mib);
  std::printf("%-11s %4s %-4s %-2s %-4s %10s %8s %7s %6s %8s\n", "shape", "M", "mode", "fm", "act",
              "median_us", "GOP/s", "wGB/s", "DRAM%", "min_us");
  std::mt19937 rng(1);
  for (const auto& shape : split(shapes)) {
    const int64_t N = std::atoll(shape.c_str()), K = std::atoll(shape.c_str() + shape.find('x') + 1);
    for (const auto& fm : split(formats)) {
      const bool i2 = fm == "i2";
      const int64_t rows = i2 ? i2_packed_rows(N) : N;
      const size_t wbytes = size_t(rows * K);
      std::vector<uint8_t> w0(wbytes);
      for (auto& b : w0) b = i2 ? uint8_t(rng()) & 0x55 : uint8_t(int(rng() % 3) - 1);  // valid codes
      for (const auto& mode : split(modes)) {
        const size_t copies = mode == "hot" ? 1 : std::max<size_t>(2, size_t(cold_mib * (1 << 20) / wbytes) + 1);
        std::vector<std::vector<uint8_t>> ws(copies, w0);
        for (const auto& mstr : split(ms)) {
          const int64_t M = std::atoll(mstr.c_str());
          std::vector<float> x(M * K), y(M * N), scale(1, 0.5f), inv(M);
          for (auto& v : x) v = float(int(rng() % 2001) - 1000) / 100.0f;
          const int64_t ldq = act_padded_k(K);
          std::vector<int8_t> q(M * ldq);
          std::vector<int32_t> sum(M);
          for (const auto& act : split(acts)) {
            const bool int8 = act == "int8";
            LinearFn fn = i2 ? (int8 ? ks.i2_int8 : ks.i2_none) : (int8 ? ks.i8_int8 : ks.i8_none);
            Problem p;
            p.M = M; p.N = N; p.K = K; p.scale = scale.data(); p.scale_stride = 0;
            p.xq = q.data(); p.x_inv = inv.data(); p.x_sum = sum.data(); p.ldq = ldq;
            p.xf = x.data(); p.ldx = K; p.y = y.data(); p.ldy = N;
            const int r = reps > 0 ? reps : int(std::max<double>(10, std::min<double>(400, 2e9 / (2.0 * M * N * K))));
            std::vector<double> ts;
            for (int it = -3; it < r; ++it) {
              p.weight = ws[size_t(it + 3) % copies].data();
              const double t0 = now();
              if (int8) ks.quantize(x.data(), K, K, 0, M, q.data(), ldq, inv.data(), sum.data());
#pragma omp parallel num_threads(threads)
              {
                const int t = omp_get_thread_num(), nt = omp_get_num_threads();
                const int64_t u0 = rows * t / nt, u1 = rows * (t + 1) / nt;
                if (u1 > u0) fn(p, u0, u1);
              }
              if (it >= 0) ts.push_back(now() - t0);
            }
            const double t = median(ts), tmin = *std::min_element(ts.begin(), ts.end());
            std::printf("%-11s %4lld %-4s %-2s %-4s %10.1f %8.1f %7.2f %6.0f %8.1f\n", shape.c_str(),
                        (long long)M, mode.c_str(), fm.c_str(), act.c_str(), t * 1e6,
                        2.0 * M * N * K / t / 1e9, wbytes / t / 1e9, 100.0 * wbytes / t / 1e9 / bw,
                        tmin * 1e6);
            std::fflush(stdout);
          }
        }
      }
    }
  }
  return 0;
}
