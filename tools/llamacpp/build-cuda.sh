#!/usr/bin/env bash
# tools/llamacpp/build-cuda.sh - build llama.cpp's C library with CUDA (for the
# H100 run of kvs-bench-llamacpp) from the same pinned llama-cpp-python sdist
# that build.sh uses, into its own directory.
#
#   tools/llamacpp/build-cuda.sh     -> ~/.cache/kvstash/llama.cpp-cuda/{src,build}
#
# Then configure kvstash with KVS_LLAMA_DIR=~/.cache/kvstash/llama.cpp-cuda
# (tools/llamacpp/pack-h100.sh does that and packs the binary with its .so).
# Environment: KVS_LLAMA_CUDA_DIR (default ~/.cache/kvstash/llama.cpp-cuda),
# JOBS (default 2), CUDA_ARCH (default 90a = H100), NVCC (default
# /usr/local/cuda/bin/nvcc). Slow on 2 cores (ggml-cuda is hundreds of
# template instances); a second run only rebuilds what changed.
set -euo pipefail
VERSION=0.3.16 # llama-cpp-python; pins the vendored llama.cpp (same as build.sh)
dir=${KVS_LLAMA_CUDA_DIR:-$HOME/.cache/kvstash/llama.cpp-cuda}
cpu_dir=${KVS_LLAMA_DIR:-$HOME/.cache/kvstash/llama.cpp}
jobs=${JOBS:-2}
arch=${CUDA_ARCH:-90a}
nvcc=${NVCC:-/usr/local/cuda/bin/nvcc}
[ -x "$nvcc" ] || { echo "build-cuda.sh: no nvcc at $nvcc" >&2; exit 1; }
mkdir -p "$dir"
sdist="$dir/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
  if [ -f "$cpu_dir/llama_cpp_python-$VERSION.tar.gz" ]; then
    cp "$cpu_dir/llama_cpp_python-$VERSION.tar.gz" "$sdist"
  else
    python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$dir"
  fi
fi
src="$dir/src"
if [ ! -f "$src/.version-$VERSION" ]; then
  rm -rf "$src"
  mkdir -p "$src"
  tar -xzf "$sdist" -C "$src" --strip-components=1
  touch "$src/.version-$VERSION"
fi
lc="$src/vendor/llama.cpp"
# GGML_NATIVE=OFF: the H100 host's CPU is not this one; AVX2 is a safe floor.
cmake -S "$lc" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_TOOLS=OFF -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
  -DCMAKE_CUDA_COMPILER="$nvcc" -DGGML_METAL=OFF -DGGML_OPENMP=ON -DGGML_NATIVE=OFF \
  -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON >/dev/null
cmake --build "$dir/build" -j "$jobs" --target llama
ls "$dir/build/bin"/*.so
