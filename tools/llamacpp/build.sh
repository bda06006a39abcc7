#!/usr/bin/env bash
# tools/llamacpp/build.sh - build llama.cpp's C library (CPU only) from the
# PyPI sdist of llama-cpp-python, which vendors llama.cpp under vendor/llama.cpp,
# then build our reference dumper (kvs-llama-ref, ref.c here) against it.
#
#   tools/llamacpp/build.sh          -> ~/.cache/kvstash/llama.cpp/{src,build,bin}
#
# Idempotent: a second run only rebuilds what changed. Needs network once (pip).
# Environment: KVS_LLAMA_DIR (default ~/.cache/kvstash/llama.cpp), JOBS (default 2).
set -euo pipefail
VERSION=0.3.16 # llama-cpp-python; pins the vendored llama.cpp
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${KVS_LLAMA_DIR:-$HOME/.cache/kvstash/llama.cpp}
jobs=${JOBS:-2}
mkdir -p "$dir"
sdist="$dir/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
  python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$dir"
fi
src="$dir/src"
if [ ! -f "$src/.version-$VERSION" ]; then
  rm -rf "$src"
  mkdir -p "$src"
  tar -xzf "$sdist" -C "$src" --strip-components=1
  touch "$src/.version-$VERSION"
fi
lc="$src/vendor/llama.cpp"
cmake -S "$lc" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_TOOLS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_OPENMP=ON -DGGML_NATIVE=ON >/dev/null
cmake --build "$dir/build" -j "$jobs" --target llama
mkdir -p "$dir/bin"
libdir="$dir/build/bin"
cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -o "$dir/bin/kvs-llama-ref" "$here/ref.c" \
  -I"$lc/include" -I"$lc/ggml/include" -L"$libdir" -lllama -lggml -lggml-base \
  -Wl,-rpath,"$libdir" -lm
echo "$dir/bin/kvs-llama-ref"
