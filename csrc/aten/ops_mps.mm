// ops_mps.mm: the MPS glue for ternary::linear_i8 / linear_i2 / linear_q8. Built on macOS only,
// into the optional module ternary_ops._C_mps (setup.py, csrc/aten/mps_module.cpp); it takes
// nothing from ternary_ops._C but the op schemas, and everything else from headers.
//
// Validates and allocates the output (linear_frame.h), and encodes one compute dispatch on
// PyTorch's own MPS command buffer through the public torch/mps.h API. Nothing here commits or waits:
// the dispatch rides in the command buffer PyTorch commits anyway, so a model's layers batch
// into few command buffers (per-op commit + wait is what made Metal slower than the CPU).
// No buffer is created per call: the kernels read the tensors' own MTLBuffers at their byte
// offsets, quantize activations in threadgroup memory, and take scalars through setBytes.
//
// The Metal source (csrc/metal/*.metal with csrc/ternary_format.h inlined, embedded into
// metal_source.h by tools/metal_source.py at build time) is compiled once, at first use, with
// the geometry constants of ternary_metal_config.h as macros; pipeline states are cached per
// kernel name. Metal errors become Python exceptions.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <torch/mps.h>

#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "aten/linear_frame.h"
#include "metal/metal_source.h"
#include "metal/ternary_metal_config.h"

namespace ternary {
namespace {

namespace tm = ternary::metal;

// The compiled library and its pipelines, for the one device PyTorch's MPS backend uses.
struct MetalState {
  std::mutex mu;
  id<MTLDevice> device = nil;
  id<MTLLibrary> library = nil;
  std::string compile_error;  // set once if compiling failed; every later call reports it
  std::unordered_map<std::string, id<MTLComputePipelineState>> pipelines;
};

MetalState& state() {
  static MetalState* s = new MetalState();  // never destroyed: outlives interpreter teardown
  return *s;
}

std::string describe(NSError* error) {
  return error ? std::string([[error localizedDescription] UTF8String]) : std::string("unknown");
}

MTLCompileOptions* compile_options() {
  MTLCompileOptions* options = [MTLCompileOptions new];
  NSMutableDictionary* macros = [NSMutableDictionary dictionary];
#define TERNARY_ADD_MACRO(name) macros[@ #name] = @(name);
  TERNARY_METAL_MACROS(TERNARY_ADD_MACRO)
#undef TERNARY_ADD_MACRO
  options.preprocessorMacros = macros;
  // IEEE float: act="int8" needs kActQMax / amax correctly rounded (fast math allows 2.5 ulp) and
  // x * inv not re-associated, or quantized activations would differ from the reference.
#if defined(__MAC_15_0) && __MAC_OS_X_VERSION_MAX_ALLOWED >= __MAC_15_0
  if (@available(macOS 15.0, *)) {
    options.mathMode = MTLMathModeSafe;
    options.mathFloatingPointFunctions = MTLMathFloatingPointFunctionsPrecise;
    return options;
  }
#endif
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wdeprecated-declarations"
  options.fastMathEnabled = NO;
#pragma clang diagnostic pop
  return options;
}

// Pipeline state of kernel `name` on `device`, compiling the library at first use. Throws
// (c10::Error -> RuntimeError in Python) on any Metal failure; never inside dispatch blocks.
id<MTLComputePipelineState> pipeline(id<MTLDevice> device, const std::string& name) {
  MetalState& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  TORCH_CHECK(s.compile_error.empty(), "ternary_ops: compiling the Metal kernels failed: ",
              s.compile_error);
  if (s.library == nil) {
    @autoreleasepool {
      NSError* error = nil;
      NSString* source = [NSString stringWithUTF8String:kTernaryMetalSource];
      s.library = [device newLibraryWithSource:source options:compile_options() error:&error];
      if (s.library == nil) {
        s.compile_error = describe(error);
        TORCH_CHECK(false, "ternary_ops: compiling the Metal kernels failed: ", s.compile_error);
      }
      s.device = device;
    }
  }
  TORCH_CHECK(device == s.device, "ternary_ops: the Metal kernels were compiled for another "
              "device than the one this tensor lives on");
  auto it = s.pipelines.find(name);
  if (it != s.pipelines.end()) return it->second;
  id<MTLComputePipelineState> pso = nil;
  @autoreleasepool {
    id<MTLFunction> fn = [s.library newFunctionWithName:[NSString stringWithUTF8String:name.c_str()]];
    TORCH_CHECK(fn != nil, "ternary_ops: Metal kernel '", name, "' is missing from the library",
                name.find("bf16") != std::string::npos
                    ? " (bfloat16 kernels need Metal 3.1: macOS 14 or newer)" : "");
    NSError* error = nil;
    pso = [device newComputePipelineStateWithFunction:fn error:&error];
    TORCH_CHECK(pso != nil, "ternary_ops: creating the pipeline for '", name,
                "' failed: ", describe(error));
  }
  s.pipelines.emplace(name, pso);
  return pso;
}

// The MTLBuffer behind an MPS tensor's storage, and the tensor's first byte in it.
id<MTLBuffer> buffer_of(const at::Tensor& t) {
  return (__bridge id<MTLBuffer>)const_cast<void*>(t.storage().data());
}
NSUInteger offset_of(const at::Tensor& t) {
  return static_cast<NSUInteger>(t.storage_offset() * t.element_size());
}

// x, scale and bias reach the kernels as float32, float16 or bfloat16 only (check_linear_args
// and as_kernel_vector see to that).
uint32_t dtype_code(at::ScalarType t) {
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16,
              "ternary_ops: unsupported dtype ", t);
  return t == at::kFloat ? TERNARY_DT_F32 : t == at::kHalf ? TERNARY_DT_F16 : TERNARY_DT_BF16;
}

// The kernels read scale and bias in float32, float16 or bfloat16 directly; anything else
// (float64 cannot live on MPS, but be safe) is converted once, here.
at::Tensor as_kernel_vector(const at::Tensor& t) {
  const auto dt = t.scalar_type();
  at::Tensor v = t.reshape({-1});
  if (dt != at::kFloat && dt != at::kHalf && dt != at::kBFloat16) v = v.to(at::kFloat);
  return v.contiguous();
}

at::Tensor linear_mps(WeightFormat f, const at::Tensor& x, const at::Tensor& weight,
                      const at::Tensor& scale, int64_t out_features,
                      const c10::optional<at::Tensor>& bias, c10::string_view act,
                      const RmsNormArgs* norm) {
  LinearCall c =
      prepare_linear(f, c10::DeviceType::MPS, x, weight, scale, out_features, bias, act,
                     norm);
  if (c.done) return c.out;
  const LinearShape& s = c.shape;
  const at::Tensor& out = c.out;
  TORCH_CHECK_VALUE(s.M < (int64_t(1) << 31) && s.N < (int64_t(1) << 31) &&
                        s.K < (int64_t(1) << 31),
                    op_name(f), ": M, N and K must each be below 2^31 on MPS");

  // Views with unit stride along K are read in place; anything else is made contiguous.
  const at::Tensor x2 = c.x2d.contiguous();
  const at::Tensor& w = c.weight;
  const at::Tensor sc = as_kernel_vector(scale);
  const at::Tensor b = bias.has_value() ? as_kernel_vector(*bias) : sc;  // bound, unread

  // q8 runs the i8 kernels: they take any int8 weight (int32 dots, float decode).
  const bool i2 = f == WeightFormat::I2, act_int8 = s.act == ActMode::Int8;
  const uint32_t dtype = dtype_code(x.scalar_type());
  id<MTLBuffer> wbuf = buffer_of(w);
  id<MTLDevice> device = [wbuf device];
  const tm::Launch L = tm::plan_launch(i2, act_int8, s.M, s.N, s.K,
                                       static_cast<int>(x.element_size()),
                                       [device maxThreadgroupMemoryLength]);
  const std::string name = tm::kernel_name(L.path, i2, act_int8, static_cast<int>(dtype));
  id<MTLComputePipelineState> pso = pipeline(device, name);
  TORCH_CHECK(pso.maxTotalThreadsPerThreadgroup >= L.threads, "ternary_ops: Metal kernel '",
              name, "' allows ", static_cast<unsigned long>(pso.maxTotalThreadsPerThreadgroup),
              " threads per threadgroup, it needs ", L.threads);

  tm::Params p{};
  p.M = static_cast<uint32_t>(s.M);
  p.N = static_cast<uint32_t>(s.N);
  p.K = static_cast<uint32_t>(s.K);
  p.units = static_cast<uint32_t>(tm::row_units(i2, s.N));
  p.scale_stride = sc.numel() == 1 ? 0 : 1;
  p.scale_dtype = dtype_code(sc.scalar_type());
  p.has_bias = bias.has_value() ? 1 : 0;
  p.bias_dtype = dtype_code(b.scalar_type());
  // MTLBuffer base addresses are (far more than) 16-byte aligned: the offset decides.
  p.w_aligned = tm::weight_rows_aligned(offset_of(w), s.K) ? 1 : 0;

  id<MTLBuffer> xbuf = buffer_of(x2), sbuf = buffer_of(sc), bbuf = buffer_of(b),
                ybuf = buffer_of(out);
  const NSUInteger xoff = offset_of(x2), woff = offset_of(w), soff = offset_of(sc),
                   boff = offset_of(b), yoff = offset_of(out);
  // Encode on PyTorch's serial queue, into its current command buffer; no commit, no wait.
  // Nothing in this block throws (libdispatch cannot carry C++ exceptions).
  dispatch_sync(torch::mps::get_dispatch_queue(), ^{
    id<MTLCommandBuffer> cb = torch::mps::get_command_buffer();  // ends PyTorch's open encoder
    id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
    [enc setComputePipelineState:pso];
    [enc setBuffer:xbuf offset:xoff atIndex:0];
    [enc setBuffer:wbuf offset:woff atIndex:1];
    [enc setBuffer:sbuf offset:soff atIndex:2];
    [enc setBuffer:bbuf offset:boff atIndex:3];
    [enc setBuffer:ybuf offset:yoff atIndex:4];
    [enc setBytes:&p length:sizeof(p) atIndex:5];
    [enc setThreadgroupMemoryLength:L.smem atIndex:0];
    [enc dispatchThreadgroups:MTLSizeMake(L.groups_x, L.groups_y, 1)
        threadsPerThreadgroup:MTLSizeMake(L.threads, 1, 1)];
    [enc endEncoding];
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ternary, MPS, m) {
  m.impl("linear_i8", &linear_i8_entry<linear_mps>);
  m.impl("linear_i2", &linear_i2_entry<linear_mps>);
  m.impl("linear_q8", &linear_q8_entry<linear_mps>);
}

}  // namespace ternary
