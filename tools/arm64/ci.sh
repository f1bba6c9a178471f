#!/usr/bin/env bash
# tools/arm64/ci.sh: proves the ARM NEON kernels on an x86-64 host (see docs/NEON.md).
#
#   1. the native harness cross-compiled for aarch64 and run under qemu-user, once per CPU model:
#      max (dotprod + i8mm) must pick neon_i8mm, neoverse-n1 (no i8mm) neon_dotprod, cortex-a53
#      (no dotprod) neon; every available set must match the scalar definitions exactly;
#      the same with clang (Apple's compiler family) under -cpu max;
#   2. the native harness with AddressSanitizer + UBSan on the host;
#   3. the whole extension in an arm64 Debian chroot (debootstrap, qemu binfmt): built there with
#      setup.py (so setup.py's arm64 path is what is tested), then tests/test_neon.py.
#
# Closes with "N passed, N failed" (one per step above) and exits non-zero on any failure.
# The chroot (with the aarch64 torch wheel) and its build directory are cached under
# $TERNARY_ARM64_CACHE (default /var/cache/ternary-ops-arm64), keyed by SCRIPT_VERSION; the
# extension rebuilds incrementally (ninja) when only some sources changed.
#
# Env: TERNARY_ARM64_CACHE, TERNARY_ARM64_SKIP_CHROOT=1 (steps 1-2 only), TERNARY_ARM64_SEED.
set -uo pipefail

SCRIPT_VERSION=1
SUITE=bookworm
# The aarch64 torch wheels on PyPI from 2.10 on depend on the CUDA runtime packages; 2.9.1's is
# CPU-only (about 100 MB). The chroot builds the extension against it.
TORCH_VERSION=2.9.1
PYVER=3.11  # bookworm's python3

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${TERNARY_ARM64_CACHE:-/var/cache/ternary-ops-arm64}
KEY="$SUITE-py$PYVER-torch$TORCH_VERSION-v$SCRIPT_VERSION"
ROOTFS="$CACHE/$KEY/rootfs"
BUILD="$ROOT/build/arm64"
HOST_PY=${PYTHON:-python3}
SEED_ARGS=()
[ -n "${TERNARY_ARM64_SEED:-}" ] && SEED_ARGS=(--seed "$TERNARY_ARM64_SEED")

passed=0
failed=0
t_start=$SECONDS

step() {  # step NAME CMD...: runs CMD, counts it, never aborts the script
  local name=$1 t0=$SECONDS
  shift
  echo "=== $name"
  if "$@"; then
    passed=$((passed + 1))
    echo "--- ok: $name ($((SECONDS - t0)) s)"
  else
    failed=$((failed + 1))
    echo "--- FAIL: $name ($((SECONDS - t0)) s)"
  fi
}

ensure_host_tools() {
  local missing=()
  command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
  command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v update-binfmts >/dev/null || missing+=(binfmt-support)
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

build_cross_harness() {
  "$HOST_PY" "$ROOT/tools/native_build.py" harness -o "$BUILD/harness-aarch64" --arch aarch64 \
    --cxx aarch64-linux-gnu-g++ --static >/dev/null
}

show_result() {  # show_result RC LOG: the first failures and the closing lines, then RC
  grep -m 20 '^FAIL' "$2"
  tail -n 2 "$2"
  return "$1"
}

run_qemu_harness() {  # CPU EXPECTED_SET
  local log="$BUILD/harness-$1.log"
  qemu-aarch64-static -cpu "$1" "$BUILD/harness-aarch64" --expect "$2" "${SEED_ARGS[@]}" > "$log" 2>&1
  show_result $? "$log"
}

# Apple's toolchain is clang: the same kernels built by clang (against the GCC cross sysroot)
# must pass too (clang's own unrolling, FP contraction defaults and intrinsic headers).
run_clang_harness() {
  local log="$BUILD/harness-clang.log"
  "$HOST_PY" "$ROOT/tools/native_build.py" harness -o "$BUILD/harness-aarch64-clang" --arch aarch64 \
    --cxx "clang++ --target=aarch64-linux-gnu --gcc-toolchain=/usr" --static >/dev/null || return 1
  qemu-aarch64-static -cpu max "$BUILD/harness-aarch64-clang" --expect neon_i8mm \
    "${SEED_ARGS[@]}" > "$log" 2>&1
  show_result $? "$log"
}

run_host_sanitized_harness() {
  local log="$BUILD/harness-asan.log"
  "$HOST_PY" "$ROOT/tools/native_build.py" harness -o "$BUILD/harness-asan" --sanitize >/dev/null || return 1
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    "$BUILD/harness-asan" "${SEED_ARGS[@]}" > "$log" 2>&1
  show_result $? "$log"
}

# ------------------------------------------------------------------------------------------
# arm64 chroot
# ------------------------------------------------------------------------------------------
ensure_binfmt() {
  local d=/proc/sys/fs/binfmt_misc
  [ -e "$d/status" ] || mount -t binfmt_misc binfmt_misc "$d" || return 1
  [ -e "$d/qemu-aarch64" ] || update-binfmts --enable qemu-aarch64 || return 1
  grep -q '^enabled' "$d/qemu-aarch64" || { echo "qemu-aarch64 binfmt handler is disabled"; return 1; }
  # F (fix binary) lets the handler run inside a chroot that has no qemu of its own.
  grep -q '^flags:.*F' "$d/qemu-aarch64" || echo "warning: qemu-aarch64 binfmt lacks the F flag"
}

make_rootfs() {
  [ -e "$ROOTFS/.ternary-ready" ] && { echo "cached rootfs $ROOTFS"; return 0; }
  local tmp="$ROOTFS.tmp" site
  rm -rf "$tmp" && mkdir -p "$tmp" || return 1
  echo "debootstrap $SUITE arm64 into $tmp"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-dev,g++,ninja-build \
    "$SUITE" "$tmp" > "$CACHE/$KEY/debootstrap.log" 2>&1 ||
    { tail -n 20 "$CACHE/$KEY/debootstrap.log"; return 1; }
  # Python packages for aarch64, resolved and unpacked by the host's pip (fast, no emulation).
  # torch without its dependency list: its markers would be evaluated for the host (x86-64).
  site="$tmp/usr/local/lib/python$PYVER/dist-packages"
  local plat=(--platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64
              --platform manylinux2014_aarch64 --python-version "$PYVER" --only-binary=:all:
              --no-compile --target "$site" -q)
  "$HOST_PY" -m pip install "${plat[@]}" --no-deps "torch==$TORCH_VERSION" &&
    "$HOST_PY" -m pip install "${plat[@]}" --upgrade filelock typing-extensions sympy networkx \
      jinja2 fsspec numpy safetensors pytest setuptools wheel || return 1
  rm -rf "$site/bin"  # console scripts with host shebangs; use python3 -m
  touch "$tmp/.ternary-ready" && mv "$tmp" "$ROOTFS"
}

MOUNTED=()
mount_chroot() {
  local d
  for d in proc dev sys; do
    mountpoint -q "$ROOTFS/$d" && continue
    mount --bind "/$d" "$ROOTFS/$d" || return 1
    MOUNTED+=("$ROOTFS/$d")
  done
}
unmount_chroot() {
  local m
  for m in "${MOUNTED[@]}"; do umount -l "$m" 2>/dev/null; done
  MOUNTED=()
}
trap unmount_chroot EXIT

in_chroot() {  # in_chroot COMMAND: runs a shell command in the repository copy inside the chroot
  chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    MAX_JOBS=2 TERNARY_NEON_EXPECT=neon_i8mm /bin/sh -c "cd /work/ternary-ops && $1"
}

sync_sources() {
  # Fresh copy of the tree, keeping the chroot's build/ and built module for incremental builds
  # (tar keeps mtimes, so ninja rebuilds only what changed).
  local dst="$ROOTFS/work/ternary-ops"
  mkdir -p "$dst" || return 1
  find "$dst" -mindepth 1 -maxdepth 1 ! -name build ! -name ternary_ops -exec rm -rf {} +
  find "$dst/ternary_ops" -mindepth 1 ! -name '_C*.so' -delete 2>/dev/null
  (cd "$ROOT" && tar --exclude=./build --exclude=./.git --exclude='*.so' \
     --exclude=__pycache__ --exclude=.pytest_cache -cf - .) | tar -xf - -C "$dst"
}

build_in_chroot() {
  # --force: setuptools decides whether to relink from ops.cpp and the core sources alone, so a
  # change confined to csrc/cpu/neon/*.cpp would leave a stale module; ninja and setup.py's ISA
  # objects stay incremental either way.
  in_chroot "python3 setup.py -q build_ext --inplace --force > /tmp/ternary-build.log 2>&1 ||
             { tail -n 40 /tmp/ternary-build.log; exit 1; }; echo \"compiler runs: \$(grep -c '^c++\|^\[[0-9]' /tmp/ternary-build.log)\""
}

test_in_chroot() {
  in_chroot "python3 -m pytest -q -p no:cacheprovider tests/test_neon.py 2>&1 | tail -n 15; exit \$?"
}

chroot_steps() {
  step "arm64 chroot: binfmt_misc handler for qemu-aarch64" ensure_binfmt || return
  step "arm64 chroot: Debian $SUITE + torch $TORCH_VERSION (cache $KEY)" make_rootfs
  [ -e "$ROOTFS/.ternary-ready" ] || return
  mount_chroot || { failed=$((failed + 1)); echo "--- FAIL: cannot bind-mount into $ROOTFS"; return; }
  sync_sources
  step "arm64 chroot: build the extension with setup.py" build_in_chroot &&
    step "arm64 chroot: tests/test_neon.py (ops dispatch to NEON, match the reference)" test_in_chroot
  unmount_chroot
}

# ------------------------------------------------------------------------------------------
step "host tools (aarch64 cross compiler, qemu-user-static, debootstrap)" ensure_host_tools
mkdir -p "$BUILD" "$CACHE/$KEY"
if step "cross-compile the native harness for aarch64" build_cross_harness; then
  step "harness under qemu -cpu max (dotprod+i8mm): expects neon_i8mm" run_qemu_harness max neon_i8mm
  step "harness under qemu -cpu neoverse-n1 (no i8mm): expects neon_dotprod" \
    run_qemu_harness neoverse-n1 neon_dotprod
  step "harness under qemu -cpu cortex-a53 (no dotprod): expects neon" \
    run_qemu_harness cortex-a53 neon
fi
if command -v clang++ >/dev/null; then
  step "harness built with clang, under qemu -cpu max: expects neon_i8mm" run_clang_harness
else
  echo "(no clang++ on this host: clang build of the harness not checked)"
fi
step "host harness with AddressSanitizer + UBSan" run_host_sanitized_harness
if [ "${TERNARY_ARM64_SKIP_CHROOT:-0}" != 1 ]; then
  chroot_steps
fi
echo "arm64 checks took $((SECONDS - t_start)) s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
