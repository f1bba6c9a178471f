// device.cu: what the launchers ask of the current device (SM count, L2 size, compute
// capability), read once per device, and whether launches use programmatic dependent launch.
#include <cstdlib>
#include <cstring>

#include "common.cuh"

namespace ternary::cuda {

// Attribute A of the current device, read once per device; `fallback` when it cannot be read
// (or is below 1: every attribute read here is a positive count or version).
template <cudaDeviceAttr A>
int device_attr(int fallback) {
  static int value_of[64] = {0};  // per device, 0 = not yet read
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return fallback;
  if (value_of[dev] == 0) {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, A, dev) != cudaSuccess || v < 1) return fallback;
    value_of[dev] = v;
  }
  return value_of[dev];
}

int device_major() { return device_attr<cudaDevAttrComputeCapabilityMajor>(0); }

bool pdl_enabled() {
  static const bool env_on = [] {
    const char* v = std::getenv("TERNARY_OPS_CUDA_PDL");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return env_on && device_major() >= 9;
}

int device_sms() { return device_attr<cudaDevAttrMultiProcessorCount>(1); }

int64_t device_l2_bytes() { return device_attr<cudaDevAttrL2CacheSize>(0); }

}  // namespace ternary::cuda
