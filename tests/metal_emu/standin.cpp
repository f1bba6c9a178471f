// standin.cpp: the C side of tests/metal_emu/shader_standin.py, which stands in for
// torch.mps.compile_shader where there is no Apple GPU.
//
// Built once per source text: the exact string handed to compile_shader is written to a file and
// included here (-DTMETAL_SHADER='"<file>"'), with no include path but the emulator's
// <metal_stdlib>. tmetal_dispatch() then does what a compile_shader kernel call does on the GPU:
// the named kernel runs over the grid with argument i bound to [[buffer(i)]], buffers at their
// byte offsets, bytes as the constant block, dispatchThreads(threads, group). Tensors' storages
// are copied into buffers whose base is 16-byte aligned (an MTLBuffer's is page aligned, so the
// byte offset alone decides alignment) and whose end is fenced (canary bytes, then a
// PROT_NONE page), run, and copied back.
//
// Binding follows the kernels' declared signature: buffer(0..4) device pointers (x, weight,
// scale, bias, y), buffer(5) the constant LinearParams block (tests/test_mps_shader.py checks
// the .metal declares exactly these indices in this order). Kernels compiled with a
// threadgroup(0) argument get no threadgroup memory, as compile_shader sets no length: any
// use is reported as an overrun.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

// After every system header: metal_emu.h defines `device`, `threadgroup`, ... as macros.
#include "guarded.h"
#include "metal_emu.h"
#include TMETAL_SHADER

namespace {

struct Arg {
  int kind;           // 0: a buffer (a tensor's storage), 1: bytes (setBytes)
  const void* ptr;    // buffer: the storage's first byte; bytes: the data
  uint64_t length;    // buffer: the storage's bytes; bytes: their count
  uint64_t offset;    // buffer: the tensor's byte offset in its storage
};

constexpr int kBuffers = 5;           // x, weight, scale, bias, y: [[buffer(0..4)]]
constexpr int kParams = kBuffers;     // LinearParams: [[buffer(5)]]
constexpr size_t kNoLengthFence = 1 << 16;  // "threadgroup(0) without a length": catch any use

// A copy of one storage: base 16-byte aligned (canary slack up to the next 16-byte boundary,
// then a PROT_NONE page), so reads past the end fault and writes past it show.
struct Buffer : metal_emu_host::GuardedCopy {
  Buffer(const void* src, size_t bytes)
      : GuardedCopy(src, bytes, (bytes + 15) / 16 * 16 - bytes), src_(src) {}
  void copy_back() const { copy_to(const_cast<void*>(src_)); }
  const void* src_;
};

struct Call {
  std::string name;
  uchar* buf[kBuffers];
  LinearParams p;
  uint64_t threads[3], group[3];
  unsigned seed;
};

template <typename T>
using StaticKernel = void (*)(const T*, const uchar*, const uchar*, const uchar*, T*,
                              LinearParams&, uint3, uint, uint, uint);
template <typename T>
using DynamicKernel = void (*)(const T*, const uchar*, const uchar*, const uchar*, T*,
                               LinearParams&, uchar*, uint3, uint, uint, uint);

uint groups(const Call& c, int d) { return static_cast<uint>(c.threads[d] / c.group[d]); }
uint group_threads(const Call& c) {
  return static_cast<uint>(c.group[0] * c.group[1] * c.group[2]);
}

// A kernel that declares its threadgroup storage (TERNARY_STATIC_SMEM): nothing to set.
template <typename T>
std::string run(StaticKernel<T> f, Call& c) {
  return metal_emu::run_grid(
      groups(c, 0), groups(c, 1), groups(c, 2), group_threads(c), 0, c.seed,
      [&c, f](const metal_emu::ThreadPos& t, uchar*) {
        f(reinterpret_cast<const T*>(c.buf[0]), c.buf[1], c.buf[2], c.buf[3],
          reinterpret_cast<T*>(c.buf[4]), c.p, uint3(t.group[0], t.group[1], t.group[2]), t.tid,
          t.sg, t.lane);
      });
}

// A kernel with a threadgroup(0) argument: compile_shader sets no threadgroup memory length,
// so it gets 0 bytes (followed by a wide fence that reports any use).
template <typename T>
std::string run(DynamicKernel<T> f, Call& c) {
  const std::string err = metal_emu::run_grid(
      groups(c, 0), groups(c, 1), groups(c, 2), group_threads(c), 0, c.seed,
      [&c, f](const metal_emu::ThreadPos& t, uchar* smem) {
        f(reinterpret_cast<const T*>(c.buf[0]), c.buf[1], c.buf[2], c.buf[3],
          reinterpret_cast<T*>(c.buf[4]), c.p, smem, uint3(t.group[0], t.group[1], t.group[2]),
          t.tid, t.sg, t.lane);
      },
      kNoLengthFence);
  if (err.find("threadgroup memory overrun") != std::string::npos)
    return err + " (the kernel takes a threadgroup(0) argument, and compile_shader sets no "
                 "threadgroup memory length)";
  return err;
}

// Byte alignment a [[buffer(i)]] parameter needs of its offset: its element type's.
template <typename T>
size_t element_align(int i) {
  return i == 0 || i == 4 ? alignof(T) : 1;
}

struct Entry {
  const char* name;
  std::string (*run)(Call&);
  size_t (*align)(int);
};

#define TMETAL_STR2(s) #s
#define TMETAL_STR(s) TMETAL_STR2(s)
#define STANDIN_ENTRY(path, fmt, act, tname, FMT, ACT, T)                          \
  {TMETAL_STR(ternary_##path##_##fmt##_##act##_##tname),                           \
   [](Call& c) { return run<T>(&ternary_##path<FMT, ACT, T>, c); }, &element_align<T>},
const Entry kKernels[] = {TERNARY_KERNELS(STANDIN_ENTRY)};
#undef STANDIN_ENTRY
constexpr int kKernelCount = sizeof(kKernels) / sizeof(kKernels[0]);

using metal_emu_host::report;

}  // namespace

extern "C" {

int tmetal_kernel_count() { return kKernelCount; }
const char* tmetal_kernel_name(int i) { return i >= 0 && i < kKernelCount ? kKernels[i].name : ""; }
int tmetal_params_size() { return static_cast<int>(sizeof(LinearParams)); }

// Runs kernel `name` with `nargs` arguments (argument i bound at index i), `threads` threads
// in threadgroups of `group` (both 3-D, unused dimensions 1). Returns 0, or 1 with a message.
int tmetal_dispatch(const char* name, const Arg* args, int nargs, const uint64_t* threads,
                    const uint64_t* group, unsigned seed, char* err, int err_len) {
  const Entry* e = nullptr;
  for (const Entry& k : kKernels)
    if (std::strcmp(name, k.name) == 0) e = &k;
  if (!e) return report(err, err_len, std::string("no kernel named ") + name);
  if (nargs != kParams + 1)
    return report(err, err_len, std::string(name) + " binds [[buffer(0)]] to [[buffer(" +
                                    std::to_string(kParams) + ")]]; got " +
                                    std::to_string(nargs) + " arguments");
  uint64_t total = 1;
  for (int d = 0; d < 3; ++d) {
    if (group[d] == 0 || threads[d] == 0)
      return report(err, err_len, "empty grid or threadgroup dimension");
    // dispatchThreads would run a partial threadgroup at the edge; these kernels' barriers and
    // simdgroup reductions assume whole groups, so a grid that is not whole groups is a bug.
    if (threads[d] % group[d] != 0)
      return report(err, err_len, "threads[" + std::to_string(d) + "] = " +
                                      std::to_string(threads[d]) +
                                      " is not a multiple of group_size " +
                                      std::to_string(group[d]));
    total *= group[d];
  }
  if (total > 1024)
    return report(err, err_len, "threadgroup of " + std::to_string(total) + " threads exceeds 1024");

  Call c;
  c.name = name;
  c.seed = seed;
  for (int d = 0; d < 3; ++d) {
    c.threads[d] = threads[d];
    c.group[d] = group[d];
  }
  // One copy per storage, shared by every argument that views it.
  std::map<const void*, std::unique_ptr<Buffer>> storages;
  for (int i = 0; i < kBuffers; ++i) {
    const Arg& a = args[i];
    const std::string what = "argument " + std::to_string(i) + " ([[buffer(" +
                             std::to_string(i) + ")]], a device pointer)";
    if (a.kind != 0) return report(err, err_len, what + " got bytes, not a buffer");
    if (a.offset >= a.length && a.length > 0)
      return report(err, err_len, what + ": offset " + std::to_string(a.offset) +
                                      " is past the buffer's " + std::to_string(a.length) +
                                      " bytes");
    if (a.offset % e->align(i) != 0)
      return report(err, err_len, what + ": offset " + std::to_string(a.offset) +
                                      " is not aligned to its element type");
    auto& b = storages[a.ptr];
    if (!b) {
      b.reset(new Buffer(a.ptr, a.length));
      if (!b->ok()) return report(err, err_len, "mmap failed");
    } else if (b->bytes() != a.length) {
      return report(err, err_len, what + ": one storage bound with two lengths");
    }
    c.buf[i] = b->data() + a.offset;
  }
  const Arg& pa = args[kParams];
  if (pa.kind == 1) {
    if (pa.length != sizeof(LinearParams))
      return report(err, err_len, "argument " + std::to_string(kParams) +
                                      " (constant LinearParams&) takes " +
                                      std::to_string(sizeof(LinearParams)) + " bytes; got " +
                                      std::to_string(pa.length));
    std::memcpy(&c.p, pa.ptr, sizeof(LinearParams));
  } else {  // a buffer in the constant address space: its bytes at the offset
    if (pa.offset + sizeof(LinearParams) > pa.length)
      return report(err, err_len, "argument 5's buffer holds fewer bytes than LinearParams");
    std::memcpy(&c.p, static_cast<const uchar*>(pa.ptr) + pa.offset, sizeof(LinearParams));
  }

  const std::string msg = e->run(c);
  if (!msg.empty()) return report(err, err_len, std::string(name) + ": " + msg);
  for (auto& kv : storages)
    if (!kv.second->slack_intact())
      return report(err, err_len, std::string(name) + ": store past the end of a buffer");
  for (auto& kv : storages) kv.second->copy_back();
  return 0;
}

}  // extern "C"
