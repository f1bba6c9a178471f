// metal_emu.h: compiles Metal Shading Language kernels as C++ and runs them on the CPU, for
// tests only. It covers the subset csrc/metal/*.metal uses, and nothing Metal lacks:
//
//  * scalar and vector types (uchar, ushort, uint, ulong, half, bfloat; vec<T, N> and the
//    float4 / char4 / int4 / uint4 ... aliases) with element-wise operators, scalar broadcast,
//    explicit conversions, .x/.y/.z/.w and [i]; as_type<> bit casts;
//  * the math and integer functions used (min, max, clamp, fabs, isnan, rint, fma, dot) and NAN;
//  * address spaces (device, threadgroup, constant, thread) and `kernel`, as empty macros: the
//    kernel text stays plain Metal and its [[attributes]] are ignored by g++ (-Wno-attributes);
//  * threadgroup_barrier and the simdgroup collectives simd_sum / simd_max /
//    simd_shuffle / simd_shuffle_down, with real semantics (below).
//
// Executor: run_grid() runs the threadgroups of a grid one at a time; the threads of a group are
// fibers (ucontext) with their own stacks, scheduled cooperatively in a shuffled order. A
// thread runs until it reaches a barrier or a simdgroup collective; a barrier releases when
// every thread of the group has reached it, a collective when all 32 lanes of the simdgroup
// have. A thread that exits while others wait at a barrier, or lanes of one simdgroup at
// different collectives, is reported as divergence (undefined behaviour on a GPU). Threadgroup
// memory starts as 0xFF bytes (NaN floats) each group and is fenced by canaries, so a missing
// barrier or an overrun shows as a wrong answer or an error rather than luck. That holds for
// both kinds of threadgroup memory: the dynamic threadgroup(0) block whose length the host
// sets per dispatch (run_grid's smem_bytes), and storage a kernel declares itself, which C++
// cannot express as one variable shared by fibers: the kernel text spells it
// threadgroup_static(bytes) here, one block per threadgroup, the same for every thread.
//
// The real threads of a group never run concurrently here, so data races are not detected;
// the shuffled order and poisoned memory catch the usual missing-barrier bugs.
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

// Metal sources may test METAL_EMU where an attribute names an address space (see below).
#define METAL_EMU 1
#ifndef __METAL_VERSION__
#define __METAL_VERSION__ 310  // emulate Metal 3.1: bfloat available
#endif

// ---- scalar types (global, like Metal's; glibc may already declare some identically) ----
typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;  // 64-bit on LP64, as in Metal
static_assert(sizeof(ulong) == 8, "Metal ulong is 64-bit");
typedef _Float16 half;

// bfloat: the high 16 bits of a float32; conversion from float rounds to nearest even.
struct bfloat {
  uint16_t bits;
  bfloat() = default;
  explicit bfloat(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      bits = static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
    } else {
      bits = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
  }
  explicit operator float() const {
    const uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

namespace metal {

// ---- vectors ----
template <typename T, int N>
struct vec_base;
template <typename T>
struct vec_base<T, 2> { T x, y; };
template <typename T>
struct vec_base<T, 3> { T x, y, z; };
template <typename T>
struct vec_base<T, 4> { T x, y, z, w; };

template <typename T, int N>
struct vec : vec_base<T, N> {
  vec() = default;
  vec(T s) {  // broadcast, as Metal's float4(1.0f)
    for (int i = 0; i < N; ++i) (*this)[i] = s;
  }
  template <typename... A, typename = std::enable_if_t<sizeof...(A) == N && (N > 1)>>
  vec(A... a) {
    const T v[N] = {static_cast<T>(a)...};
    for (int i = 0; i < N; ++i) (*this)[i] = v[i];
  }
  template <typename U>
  explicit vec(const vec<U, N>& o) {  // element-wise conversion, as float4(char4)
    for (int i = 0; i < N; ++i) (*this)[i] = static_cast<T>(o[i]);
  }
  T& operator[](int i) { return reinterpret_cast<T*>(this)[i]; }
  const T& operator[](int i) const { return reinterpret_cast<const T*>(this)[i]; }
};

#define METAL_EMU_BINOP(op)                                                    \
  template <typename T, int N>                                                 \
  vec<T, N> operator op(const vec<T, N>& a, const vec<T, N>& b) {              \
    vec<T, N> r;                                                               \
    for (int i = 0; i < N; ++i) r[i] = static_cast<T>(a[i] op b[i]);           \
    return r;                                                                  \
  }                                                                            \
  template <typename T, int N, typename S,                                     \
            typename = std::enable_if_t<std::is_arithmetic<S>::value>>         \
  vec<T, N> operator op(const vec<T, N>& a, S s) {                             \
    return a op vec<T, N>(static_cast<T>(s));                                  \
  }                                                                            \
  template <typename T, int N, typename S,                                     \
            typename = std::enable_if_t<std::is_arithmetic<S>::value>>         \
  vec<T, N> operator op(S s, const vec<T, N>& a) {                             \
    return vec<T, N>(static_cast<T>(s)) op a;                                  \
  }                                                                            \
  template <typename T, int N, typename B>                                     \
  vec<T, N>& operator op##=(vec<T, N>& a, const B& b) {                        \
    return a = a op b;                                                         \
  }
METAL_EMU_BINOP(+)
METAL_EMU_BINOP(-)
METAL_EMU_BINOP(*)
METAL_EMU_BINOP(/)
METAL_EMU_BINOP(&)
METAL_EMU_BINOP(|)
METAL_EMU_BINOP(^)
METAL_EMU_BINOP(<<)
METAL_EMU_BINOP(>>)
#undef METAL_EMU_BINOP

#define METAL_EMU_VEC_ALIASES(T, name) \
  typedef vec<T, 2> name##2;           \
  typedef vec<T, 3> name##3;           \
  typedef vec<T, 4> name##4;
METAL_EMU_VEC_ALIASES(char, char)
METAL_EMU_VEC_ALIASES(uchar, uchar)
METAL_EMU_VEC_ALIASES(short, short)
METAL_EMU_VEC_ALIASES(ushort, ushort)
METAL_EMU_VEC_ALIASES(int, int)
METAL_EMU_VEC_ALIASES(uint, uint)
METAL_EMU_VEC_ALIASES(float, float)
METAL_EMU_VEC_ALIASES(half, half)
METAL_EMU_VEC_ALIASES(bfloat, bfloat)
#undef METAL_EMU_VEC_ALIASES

// Bit reinterpretation between same-sized types.
template <typename To, typename From>
To as_type(const From& v) {
  static_assert(sizeof(To) == sizeof(From), "as_type needs equal sizes");
  To r;
  std::memcpy(&r, &v, sizeof(To));
  return r;
}

// ---- functions ----
template <typename T>
T min(T a, T b) { return b < a ? b : a; }
template <typename T>
T max(T a, T b) { return a < b ? b : a; }
template <typename T>
T clamp(T v, T lo, T hi) { return min(max(v, lo), hi); }
inline float fabs(float v) { return std::fabs(v); }
inline bool isnan(float v) { return std::isnan(v); }
inline float rint(float v) { return std::nearbyint(v); }  // round half to even
inline float fma(float a, float b, float c) { return std::fma(a, b, c); }
template <int N>
float dot(const vec<float, N>& a, const vec<float, N>& b) {
  float s = 0.0f;
  for (int i = 0; i < N; ++i) s += a[i] * b[i];
  return s;
}

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };

}  // namespace metal

// ---- executor ----
namespace metal_emu {

constexpr int kSimdWidth = 32;

struct ThreadPos {
  uint group[3];
  uint tid, sg, lane;
};

// Runs one thread of the kernel: the harness's wrapper calls the kernel with its arguments.
using ThreadFn = std::function<void(const ThreadPos&, uchar* smem)>;

namespace detail {

enum class State { Ready, Barrier, Simd, Done };

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  State state = State::Done;
  ThreadPos pos{};
};

struct SimdGroup {
  int arrived = 0;
  const char* op = nullptr;  // the collective the waiting lanes are at
  alignas(16) unsigned char in[kSimdWidth][32];
  alignas(16) unsigned char out[kSimdWidth][32];
};

constexpr size_t kMaxThreadgroupMemory = 32768;  // every Apple GPU's maxThreadgroupMemoryLength
// Fence bytes after each threadgroup memory block: as much as a kernel could address, so an
// overrun lands in the fence (and is reported), never in the heap beyond it.
constexpr size_t kCanary = kMaxThreadgroupMemory;
constexpr size_t kStaticUnset = ~size_t(0);

struct Group {
  std::vector<Fiber> fibers;
  std::vector<SimdGroup> simd;
  ucontext_t sched;
  int current = -1;
  const ThreadFn* fn = nullptr;
  uchar* smem = nullptr;
  size_t dynamic_bytes = 0;
  // Storage the kernel declares (threadgroup_static): sized by its first use, then poisoned
  // and fenced per threadgroup like the dynamic block.
  std::vector<uchar> static_mem;
  size_t static_bytes = kStaticUnset;
  std::string error;
};

inline Group*& current_group() {
  static thread_local Group* g = nullptr;
  return g;
}

inline Fiber& self() {
  Group* g = current_group();
  return g->fibers[g->current];
}

inline void yield() {
  Group* g = current_group();
  swapcontext(&g->fibers[g->current].ctx, &g->sched);
}

// Reports undefined behaviour from inside a fiber; the scheduler stops the group.
[[noreturn]] inline void fail(const std::string& msg) {
  Group* g = current_group();
  if (g->error.empty()) g->error = msg;
  for (;;) yield();  // never resumed
}

inline void fiber_main() {
  Group* g = current_group();
  Fiber& f = g->fibers[g->current];
  (*g->fn)(f.pos, g->smem);
  f.state = State::Done;  // returns to uc_link (the scheduler)
}

// Out of line: getcontext returns twice as far as the compiler knows; keep that away from
// the scheduler's locals.
__attribute__((noinline)) inline void start_fiber(Fiber& f, const ThreadPos& pos,
                                                   ucontext_t* sched) {
  f.pos = pos;
  f.state = State::Ready;
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack.data();
  f.ctx.uc_stack.ss_size = f.stack.size();
  f.ctx.uc_link = sched;
  makecontext(&f.ctx, fiber_main, 0);
}

inline std::string where(const ThreadPos& p) {
  return "threadgroup (" + std::to_string(p.group[0]) + "," + std::to_string(p.group[1]) + "," +
         std::to_string(p.group[2]) + ") thread " + std::to_string(p.tid);
}

}  // namespace detail

// A simdgroup collective: every lane deposits `v`; when all 32 have, `combine(in, lane)`
// computes each lane's result from all inputs.
template <typename T, typename Combine>
T simd_collective(const char* op, T v, Combine combine) {
  static_assert(sizeof(T) <= 32, "collective operand too large");
  detail::Group* g = detail::current_group();
  detail::Fiber& f = detail::self();
  detail::SimdGroup& s = g->simd[f.pos.sg];
  if (s.arrived > 0 && std::strcmp(s.op, op) != 0)
    detail::fail("simdgroup divergence: " + detail::where(f.pos) + " reached " + op +
                 " while its simdgroup waits at " + s.op);
  s.op = op;
  std::memcpy(s.in[f.pos.lane], &v, sizeof(T));
  if (++s.arrived < kSimdWidth) {
    f.state = detail::State::Simd;
    detail::yield();
  } else {
    T in[kSimdWidth];
    for (int l = 0; l < kSimdWidth; ++l) std::memcpy(&in[l], s.in[l], sizeof(T));
    for (int l = 0; l < kSimdWidth; ++l) {
      const T r = combine(in, l);
      std::memcpy(s.out[l], &r, sizeof(T));
    }
    s.arrived = 0;
    const int first = static_cast<int>(f.pos.sg) * kSimdWidth;
    for (int l = 0; l < kSimdWidth; ++l) g->fibers[first + l].state = detail::State::Ready;
  }
  T r;
  std::memcpy(&r, s.out[f.pos.lane], sizeof(T));
  return r;
}

// The threadgroup storage a kernel declares itself (Metal: a `threadgroup` array in the kernel
// body): `bytes` bytes, one block per threadgroup that every thread of the group sees, 16-byte
// aligned, 0xFF-poisoned at the start of each group and fenced. A kernel declares one such
// block; more than 32 KiB would not compile for an Apple GPU and is reported.
inline uchar* threadgroup_static(size_t bytes) {
  detail::Group* g = detail::current_group();
  if (g->static_bytes == detail::kStaticUnset) {
    if (bytes + g->dynamic_bytes > detail::kMaxThreadgroupMemory)
      detail::fail("threadgroup memory of " + std::to_string(bytes) + " declared + " +
                   std::to_string(g->dynamic_bytes) + " set bytes exceeds " +
                   std::to_string(detail::kMaxThreadgroupMemory));
    g->static_mem.assign(bytes + detail::kCanary, uchar(0xC3));
    std::fill(g->static_mem.begin(), g->static_mem.begin() + bytes, uchar(0xFF));
    g->static_bytes = bytes;
  } else if (bytes != g->static_bytes) {
    detail::fail("threadgroup_static: the kernel declares " + std::to_string(bytes) +
                 " bytes after " + std::to_string(g->static_bytes) +
                 " (one declared block per kernel is emulated)");
  }
  return g->static_mem.data();
}

// Runs a grid of gx * gy * gz threadgroups of `threads` threads (a multiple of 32) with
// `smem_bytes` of dynamic threadgroup memory each, fenced by `canary` bytes. Returns "" or a
// description of what went wrong.
inline std::string run_grid(uint gx, uint gy, uint gz, uint threads, size_t smem_bytes,
                            unsigned seed, const ThreadFn& fn, size_t canary = detail::kCanary) {
  using namespace detail;
  if (threads == 0 || threads % kSimdWidth != 0 || threads > 1024)
    return "threadgroup size must be a multiple of 32 up to 1024, got " + std::to_string(threads);
  constexpr size_t kStack = 128 * 1024;
  Group g;
  g.fn = &fn;
  g.dynamic_bytes = smem_bytes;
  g.fibers.resize(threads);
  for (auto& f : g.fibers) f.stack.resize(kStack);
  g.simd.resize(threads / kSimdWidth);
  std::vector<uchar> smem(smem_bytes + canary);
  g.smem = smem.data();
  std::vector<int> order(threads);
  std::mt19937 rng(seed);
  Group* saved = current_group();
  current_group() = &g;
  std::string err;
  for (uint z = 0; z < gz && err.empty(); ++z)
    for (uint y = 0; y < gy && err.empty(); ++y)
      for (uint x = 0; x < gx && err.empty(); ++x) {
        std::fill(smem.begin(), smem.begin() + smem_bytes, uchar(0xFF));
        std::fill(smem.begin() + smem_bytes, smem.end(), uchar(0xC3));
        if (g.static_bytes != kStaticUnset)
          std::fill(g.static_mem.begin(), g.static_mem.begin() + g.static_bytes, uchar(0xFF));
        for (auto& s : g.simd) s.arrived = 0;
        for (uint t = 0; t < threads; ++t) {
          start_fiber(g.fibers[t], ThreadPos{{x, y, z}, t, t / kSimdWidth, t % kSimdWidth},
                      &g.sched);
          order[t] = static_cast<int>(t);
        }
        std::shuffle(order.begin(), order.end(), rng);
        for (;;) {
          bool ran = false;
          for (int t : order) {
            if (g.fibers[t].state != State::Ready) continue;
            g.current = t;
            swapcontext(&g.sched, &g.fibers[t].ctx);
            ran = true;
            if (!g.error.empty()) break;
          }
          if (!g.error.empty()) {
            err = g.error;
            break;
          }
          if (ran) continue;
          int done = 0, barrier = 0, simd = 0, first_done = -1, first_simd = -1;
          for (uint t = 0; t < threads; ++t) {
            const State s = g.fibers[t].state;
            if (s == State::Done && first_done < 0) first_done = static_cast<int>(t);
            if (s == State::Simd && first_simd < 0) first_simd = static_cast<int>(t);
            done += s == State::Done;
            barrier += s == State::Barrier;
            simd += s == State::Simd;
          }
          if (done == static_cast<int>(threads)) break;
          if (simd > 0) {
            err = "simdgroup divergence: " + where(g.fibers[first_simd].pos) + " waits at " +
                  g.simd[g.fibers[first_simd].pos.sg].op +
                  " that some lanes of its simdgroup never reach";
            break;
          }
          if (done > 0) {
            err = "barrier divergence: " + where(g.fibers[first_done].pos) +
                  " exited while other threads wait at threadgroup_barrier";
            break;
          }
          for (auto& f : g.fibers) f.state = State::Ready;  // everyone reached the barrier
        }
        if (err.empty())
          for (size_t i = smem_bytes; i < smem.size(); ++i)
            if (smem[i] != 0xC3) {
              err = "threadgroup memory overrun past " + std::to_string(smem_bytes) + " bytes";
              break;
            }
        if (err.empty() && g.static_bytes != kStaticUnset)
          for (size_t i = g.static_bytes; i < g.static_mem.size(); ++i)
            if (g.static_mem[i] != 0xC3) {
              err = "threadgroup memory overrun past the " + std::to_string(g.static_bytes) +
                    " bytes the kernel declares";
              break;
            }
      }
  current_group() = saved;
  return err;
}

}  // namespace metal_emu

namespace metal {

inline void threadgroup_barrier(mem_flags) {
  metal_emu::detail::self().state = metal_emu::detail::State::Barrier;
  metal_emu::detail::yield();
}

template <typename T>
T simd_sum(T v) {
  return metal_emu::simd_collective("simd_sum", v, [](const T* in, int) {
    T s = in[0];
    for (int l = 1; l < metal_emu::kSimdWidth; ++l) s = s + in[l];
    return s;
  });
}

template <typename T>
T simd_max(T v) {
  return metal_emu::simd_collective("simd_max", v, [](const T* in, int) {
    T s = in[0];
    for (int l = 1; l < metal_emu::kSimdWidth; ++l) s = max(s, in[l]);
    return s;
  });
}

template <typename T>
T simd_shuffle(T v, ushort src) {
  return metal_emu::simd_collective("simd_shuffle", v,
                                    [src](const T* in, int) { return in[src % 32]; });
}

template <typename T>
T simd_shuffle_down(T v, ushort delta) {
  // Lanes whose source is past the end keep their own value, as on the GPU.
  return metal_emu::simd_collective("simd_shuffle_down", v, [delta](const T* in, int lane) {
    return lane + delta < metal_emu::kSimdWidth ? in[lane + delta] : in[lane];
  });
}

}  // namespace metal

// ---- address spaces and function qualifiers: plain C++ has one address space ----
// Defined last: every system header above is already parsed. Code after this header must not
// use these words as identifiers. Attributes are macro-expanded too, so [[threadgroup(0)]]
// cannot survive this: kernels spell it through a macro that is empty when METAL_EMU is set.
#define device
#define threadgroup
#define constant
#define thread
#define kernel
