// guarded.h: host-side helpers of the emulator's C entry points (harness.cpp, standin.cpp).
// Plain C++: include it before metal_emu.h, whose address-space macros would rename words here.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <string>

namespace metal_emu_host {

// A copy of `bytes` bytes followed by `slack` canary bytes (0xC3) and then a PROT_NONE page, so
// a read past the slack faults and a write into it shows (slack_intact). The slack also sets
// the base's alignment: the page end minus bytes + slack.
class GuardedCopy {
 public:
  GuardedCopy(const void* src, size_t bytes, size_t slack = 0) : bytes_(bytes), slack_(slack) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t used = bytes + slack;
    span_ = (used + page - 1) / page * page + page;
    void* base = mmap(nullptr, span_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return;
    base_ = static_cast<unsigned char*>(base);
    mprotect(base_ + span_ - page, page, PROT_NONE);
    data_ = base_ + span_ - page - used;
    std::memset(data_ + bytes, 0xC3, slack);
    if (bytes) std::memcpy(data_, src, bytes);
  }
  ~GuardedCopy() {
    if (base_) munmap(base_, span_);
  }
  GuardedCopy(const GuardedCopy&) = delete;
  GuardedCopy& operator=(const GuardedCopy&) = delete;
  bool ok() const { return base_ != nullptr; }
  unsigned char* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  bool slack_intact() const {
    for (size_t i = 0; i < slack_; ++i)
      if (data_[bytes_ + i] != 0xC3) return false;
    return true;
  }
  void copy_to(void* dst) const {
    if (bytes_) std::memcpy(dst, data_, bytes_);
  }

 private:
  size_t bytes_, slack_;
  unsigned char* base_ = nullptr;
  unsigned char* data_ = nullptr;
  size_t span_ = 0;
};

// The C entry points' error convention: 1, with `msg` in err[0 .. err_len).
inline int report(char* err, int err_len, const std::string& msg) {
  if (err && err_len > 0) std::snprintf(err, static_cast<size_t>(err_len), "%s", msg.c_str());
  return 1;
}

}  // namespace metal_emu_host
