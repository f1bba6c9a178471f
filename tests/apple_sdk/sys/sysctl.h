// Minimal stand-in for the macOS SDK's <sys/sysctl.h>: only sysctlbyname, with the SDK's
// signature, the one declaration csrc/cpu/neon/detect.cpp takes from it. Used on Linux by
// tests/test_apple_arm64.py, to type-check detect.cpp's Apple branch for arm64-apple-macos13
// and to build that branch for the host against a stub that answers for the kernel. Never part
// of a build of the package.
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif
int sysctlbyname(const char* name, void* oldp, size_t* oldlenp, void* newp, size_t newlen);
#ifdef __cplusplus
}
#endif
