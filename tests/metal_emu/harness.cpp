// harness.cpp: the Metal kernels of csrc/metal/ternary_linear.metal, compiled as C++ against
// metal_emu.h and exposed to tests/test_metal_emulated.py through a small C API (ctypes).
//
// It launches kernels exactly as the glue (csrc/aten/ops_mps.mm) does: same kernel choice,
// grid, threadgroup size and threadgroup memory (ternary::metal::plan_launch), same scalar
// parameter block, same alignment rule for 16-byte weight loads. Device buffers are copies
// that end at a PROT_NONE page, so a read past the end of x, w, scale or bias faults; the
// output is fenced by canaries and poisoned with NaN so unwritten or stray stores show.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

// Built with -I tests/metal_emu -I csrc. metal_emu.h comes first: it defines __METAL_VERSION__,
// so csrc/ternary_format.h, which the kernels include, is read in its Metal form (the text the
// shipped Metal source inlines), and the launch geometry's host code reads the same.
#include "guarded.h"  // before metal_emu.h
#include "metal_emu.h"
#include "metal/ternary_metal_config.h"
#include "metal/ternary_linear.metal"
#include "selftest.metal"

namespace {

namespace tm = ternary::metal;

#define FIELD_MATCHES(f) (offsetof(LinearParams, f) == offsetof(tm::Params, f))
static_assert(sizeof(LinearParams) == sizeof(tm::Params), "LinearParams layout mismatch");
static_assert(FIELD_MATCHES(M) && FIELD_MATCHES(N) && FIELD_MATCHES(K) && FIELD_MATCHES(units) &&
                  FIELD_MATCHES(scale_stride) && FIELD_MATCHES(scale_dtype) &&
                  FIELD_MATCHES(has_bias) && FIELD_MATCHES(bias_dtype) &&
                  FIELD_MATCHES(w_aligned),
              "LinearParams field offsets differ from ternary::metal::Params");
#undef FIELD_MATCHES

struct Args {
  const void* x;
  const uchar* w;
  const uchar* scale;
  const uchar* bias;
  void* y;
  LinearParams p;
};

template <typename T>
using KernelFn = void (*)(const T*, const uchar*, const uchar*, const uchar*, T*, LinearParams&,
                          uchar*, uint3, uint, uint, uint);

using Launcher = std::string (*)(Args&, const tm::Launch&, unsigned seed);

// Runs kernel F over the grid; every emulated thread calls it with its own position.
template <typename T, KernelFn<T> F>
std::string launch(Args& a, const tm::Launch& L, unsigned seed) {
  return metal_emu::run_grid(
      L.groups_x, L.groups_y, 1, L.threads, L.smem, seed,
      [&a](const metal_emu::ThreadPos& t, uchar* smem) {
        F(static_cast<const T*>(a.x), a.w, a.scale, a.bias, static_cast<T*>(a.y), a.p, smem,
          uint3(t.group[0], t.group[1], t.group[2]), t.tid, t.sg, t.lane);
      });
}

struct Entry {
  const char* name;
  Launcher run;
};

#define HARNESS_ENTRY(path, fmt, act, tname, FMT, ACT, T) \
  {TERNARY_STR(ternary_##path##_##fmt##_##act##_##tname), &launch<T, &ternary_##path<FMT, ACT, T>>},
const Entry kKernels[] = {TERNARY_KERNELS(HARNESS_ENTRY)};
#undef HARNESS_ENTRY
constexpr int kKernelCount = sizeof(kKernels) / sizeof(kKernels[0]);

// Inputs as guarded copies; w shifted `w_shift` bytes off the page end, to test unaligned bases.
using Guarded = metal_emu_host::GuardedCopy;
using metal_emu_host::report;

int elem_size(int dt) { return dt == TERNARY_DT_F32 ? 4 : 2; }

}  // namespace

extern "C" {

int tmetal_kernel_count() { return kKernelCount; }
const char* tmetal_kernel_name(int i) { return i >= 0 && i < kKernelCount ? kKernels[i].name : ""; }

// y = linear(x, w) with the kernel the glue would choose (path = -1), or forced: 0 matvec
// (M must be 1), 1 matmul. `max_smem` plays the device's maxThreadgroupMemoryLength.
// w_shift offsets the weight base by that many bytes (16-byte loads then cannot be used).
// On success writes the kernel name to `used` and returns 0; else 1 with a message in `err`.
int tmetal_linear(int path, int i2, int act_int8, int dtype, long M, long N, long K,
                  const void* x, const void* w, long w_shift, const void* scale, int scale_dtype,
                  int scale_stride, const void* bias, int bias_dtype, void* y,
                  unsigned long max_smem, unsigned seed, char* used, int used_len, char* err,
                  int err_len) {
  if (M < 1 || N < 1 || K < 0) return report(err, err_len, "bad shape");
  const int es = elem_size(dtype);
  tm::Launch L = tm::plan_launch(i2 != 0, act_int8 != 0, M, N, K, es, max_smem);
  if (path == 0) {
    if (M != 1) return report(err, err_len, "the matvec kernel needs M == 1");
    const uint64_t smem = tm::mv_smem_bytes(act_int8 != 0, K, es);
    if (smem > max_smem) return report(err, err_len, "matvec threadgroup memory too large");
    L = tm::plan_launch(i2 != 0, act_int8 != 0, 1, N, K, es, ~0ull);
  } else if (path == 1) {
    L = tm::plan_launch(i2 != 0, act_int8 != 0, M, N, K, es, 0);  // nothing fits: matmul
  }
  const std::string name = tm::kernel_name(L.path, i2 != 0, act_int8 != 0, dtype);
  const Entry* e = nullptr;
  for (const Entry& k : kKernels)
    if (name == k.name) e = &k;
  if (!e) return report(err, err_len, "no kernel named " + name);

  const uint64_t units = tm::row_units(i2 != 0, N);
  const size_t scale_n = scale_stride ? static_cast<size_t>(N) : 1;
  Guarded gx(x, static_cast<size_t>(M * K * es));
  Guarded gw(w, static_cast<size_t>(units * K), static_cast<size_t>(w_shift));
  Guarded gs(scale, scale_n * static_cast<size_t>(elem_size(scale_dtype)));
  Guarded gb(bias ? bias : scale, bias ? static_cast<size_t>(N * elem_size(bias_dtype)) : 0);
  if (!gx.ok() || !gw.ok() || !gs.ok() || !gb.ok()) return report(err, err_len, "mmap failed");

  // Output: NaN-poisoned (0xFF bytes) and fenced by canaries.
  const size_t ybytes = static_cast<size_t>(M * N * es), fence = 64;
  std::vector<uchar> ybuf(ybytes + 2 * fence, 0xC3);
  std::memset(ybuf.data() + fence, 0xFF, ybytes);

  tm::Params hp{};
  hp.M = static_cast<uint32_t>(M);
  hp.N = static_cast<uint32_t>(N);
  hp.K = static_cast<uint32_t>(K);
  hp.units = static_cast<uint32_t>(units);
  hp.scale_stride = scale_stride ? 1 : 0;
  hp.scale_dtype = static_cast<uint32_t>(scale_dtype);
  hp.has_bias = bias ? 1 : 0;
  hp.bias_dtype = static_cast<uint32_t>(bias_dtype);
  hp.w_aligned = tm::weight_rows_aligned(reinterpret_cast<uintptr_t>(gw.data()), K) ? 1 : 0;

  Args a;
  a.x = gx.data();
  a.w = gw.data();
  a.scale = gs.data();
  a.bias = gb.data();
  a.y = ybuf.data() + fence;
  std::memcpy(&a.p, &hp, sizeof(hp));  // what setBytes hands the GPU

  const std::string msg = e->run(a, L, seed);
  if (!msg.empty()) return report(err, err_len, name + ": " + msg);
  for (size_t i = 0; i < fence; ++i)
    if (ybuf[i] != 0xC3 || ybuf[fence + ybytes + i] != 0xC3)
      return report(err, err_len, name + ": store outside the output tensor");
  std::memcpy(y, ybuf.data() + fence, ybytes);
  if (used && used_len > 0) std::snprintf(used, static_cast<size_t>(used_len), "%s", name.c_str());
  return 0;
}

// 1 when the weight rows of this call would be read 16 bytes at a time (for tests).
int tmetal_aligned(long w_shift, long K) {
  return tm::weight_rows_aligned(static_cast<uint64_t>(w_shift), K) ? 1 : 0;
}

// Runs selftest.metal case `which` (see there) on 2 threadgroups of 64 threads and checks the
// answers: 0 when the emulator behaved as a GPU must, else 1 and what it reported or found.
int tmetal_selftest(int which, char* err, int err_len) {
  const uint threads = 64, groups = 2;
  std::vector<int> out(groups * threads * 5, -1);
  const uint w = static_cast<uint>(which);
  const std::string msg = metal_emu::run_grid(
      groups, 1, 1, threads, threads * sizeof(int), 17u + w,
      [&](const metal_emu::ThreadPos& t, uchar* smem) {
        uint which_arg = w;  // bound like setBytes: a constant reference to a copy
        selftest(out.data(), which_arg, reinterpret_cast<int*>(smem), uint3(t.group[0], 0u, 0u), t.tid,
                 threads, t.lane);
      });
  if (!msg.empty()) return report(err, err_len, msg);
  for (uint g = 0; g < groups; ++g)
    for (uint t = 0; t < threads; ++t) {
      const int* o = &out[(g * threads + t) * 5];
      const int lane = static_cast<int>(t % 32);
      const int want[5] = {496, 31, 10, lane + 3 < 32 ? lane + 3 : lane,
                           static_cast<int>(g * 1000 + (t + 1) % threads)};
      for (int i = 0; i < 5; ++i)
        if (o[i] != want[i])
          return report(err, err_len,
                        "wrong result: group " + std::to_string(g) + " thread " +
                            std::to_string(t) + " value " + std::to_string(i) + " = " +
                            std::to_string(o[i]) + ", want " + std::to_string(want[i]));
    }
  return 0;
}

}  // extern "C"
