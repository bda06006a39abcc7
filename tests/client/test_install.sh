#!/usr/bin/env bash
# Installs the "client" component into a temporary prefix, then builds a tiny
# program against it twice: with `pkg-config --cflags --libs kvstash`, and
# with CMake's find_package(kvstash). Both must compile, link and run. Then the
# same into a Debian multiarch /usr layout (DESTDIR; the library built again
# from the source, Release, only its target: about 40 s on 2 cores).
#   test_install.sh BUILD_DIR CC [EXTRA_CFLAGS]
set -euo pipefail
build=$1 cc=$2 extra=${3:-}
tmp=$(mktemp -d /tmp/kvs-install-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --component client --prefix "$tmp/prefix" >/dev/null
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
cat > "$tmp/hello.c" <<'C'
#include <stdio.h>
#include <string.h>
#include <kvstash.h>
int main(void) {
  kvs_model_id m = kvs_hash128_buf("m", 1);
  int32_t tok[600];
  for (int i = 0; i < 600; i++) tok[i] = i;
  kvs_chunk ch[4];
  size_t n = 0;
  if (kvs_chunk_prefix(&m, tok, 600, 256, 0, ch, 4, &n) || n != 2) return 1;
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = "ipc:///tmp/kvs-install-test-nobody.sock";
  o.connect_timeout_ms = 50;
  kvs_client *c = NULL;
  kvs_err rv = kvs_client_create(&o, &c);
  printf("kvstash %s: create on a dead url -> %s (%s)\n", kvs_client_version(), kvs_errname(rv),
         kvs_client_errmsg(c));
  kvs_client_free(c);
  kvs_client_lib_fini();
  return rv == KVS_ECONN ? 0 : 1;
}
C
flags=$(pkg-config --cflags --libs kvstash)
echo "pkg-config --cflags --libs kvstash: $flags"
# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Werror $extra "$tmp/hello.c" -o "$tmp/hello_pc" $flags
LD_LIBRARY_PATH="$tmp/prefix/lib" "$tmp/hello_pc"

mkdir -p "$tmp/proj"
cp "$tmp/hello.c" "$tmp/proj/"
cat > "$tmp/proj/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.16)
project(hello C)
find_package(kvstash 0.1 REQUIRED)
add_executable(hello hello.c)
target_link_libraries(hello PRIVATE kvstash::kvstash)
CM
cmake -S "$tmp/proj" -B "$tmp/proj/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_C_FLAGS="$extra" >/dev/null
cmake --build "$tmp/proj/build" >/dev/null
"$tmp/proj/build/hello"

# A Debian multiarch /usr install: the source configured with prefix /usr
# (GNUInstallDirs then picks libdir lib/<multiarch>), only the library built,
# installed under DESTDIR. kvstash.pc must resolve to DESTDIR/usr/include and
# DESTDIR/usr/lib/<multiarch> (it once gave /usr/lib/include: ${pcfiledir}/../..
# from a libdir two levels deep), and pkg-config and find_package must build.
src=$(cd "$(dirname "$0")/../.." && pwd)
usr=$tmp/usr-build root=$tmp/root
cmake -S "$src" -B "$usr" -DCMAKE_BUILD_TYPE=Release -DKVS_CUDA=OFF -DCMAKE_INSTALL_PREFIX=/usr \
  -DCMAKE_C_COMPILER="$cc" >"$tmp/usr-configure.log" 2>&1 || { cat "$tmp/usr-configure.log"; exit 1; }
libdir=$(sed -n 's/^CMAKE_INSTALL_LIBDIR:PATH=//p' "$usr/CMakeCache.txt")
case $libdir in
  lib/*-linux-*) ;;
  *) echo "prefix /usr: expected a multiarch libdir (lib/<triplet>), got '$libdir'"; exit 1 ;;
esac
cmake --build "$usr" -j2 --target kvstash >"$tmp/usr-build.log" 2>&1 || { tail -30 "$tmp/usr-build.log"; exit 1; }
DESTDIR=$root cmake --install "$usr" --component client >/dev/null
pcdir=$root/usr/$libdir/pkgconfig
[ -f "$pcdir/kvstash.pc" ] || { echo "no kvstash.pc in $pcdir"; exit 1; }
inc=$(PKG_CONFIG_PATH=$pcdir pkg-config --variable=includedir kvstash)
lib=$(PKG_CONFIG_PATH=$pcdir pkg-config --variable=libdir kvstash)
echo "multiarch /usr: libdir $libdir, .pc includedir=$inc libdir=$lib"
[ "$(realpath -m "$inc")" = "$root/usr/include" ] || { echo "includedir resolves to $(realpath -m "$inc"), not $root/usr/include"; exit 1; }
[ "$(realpath -m "$lib")" = "$root/usr/$libdir" ] || { echo "libdir resolves to $(realpath -m "$lib"), not $root/usr/$libdir"; exit 1; }
# shellcheck disable=SC2046
"$cc" -std=c11 -Wall -Werror "$tmp/hello.c" -o "$tmp/hello_usr" $(PKG_CONFIG_PATH=$pcdir pkg-config --cflags --libs kvstash)
LD_LIBRARY_PATH="$root/usr/$libdir" "$tmp/hello_usr"
cmake -S "$tmp/proj" -B "$tmp/proj/build-usr" -DCMAKE_PREFIX_PATH="$root/usr" \
  -DCMAKE_C_COMPILER="$cc" >/dev/null
cmake --build "$tmp/proj/build-usr" >/dev/null
LD_LIBRARY_PATH="$root/usr/$libdir" "$tmp/proj/build-usr/hello"

# The Python package without its own library: `pip install ./client/python`
# into a venv (offline: setuptools from Debian), then import it against the
# installed library.
if /usr/bin/python3 -m venv --system-site-packages "$tmp/venv" >/dev/null 2>&1; then
  cp -r "$src/client/python" "$tmp/pysrc"
  # KVSTASH_NO_BUILD: the package without its own library (test_wheel.sh
  # checks the one that carries it); it loads the installed one
  KVSTASH_NO_BUILD=1 KVSTASH_SOURCE_DIR=$src \
    "$tmp/venv/bin/pip" install -q --no-build-isolation --no-index "$tmp/pysrc"
  preload=""
  case "$extra" in *address*) preload=$("$cc" -print-file-name=libasan.so) ;; esac
  (cd "$tmp" && KVSTASH_LIB="$tmp/prefix/lib/libkvstash.so" LD_PRELOAD="$preload" \
    ASAN_OPTIONS=detect_leaks=0 "$tmp/venv/bin/python" -c \
    "import kvstash; c = kvstash.chunk_prefix(b'm' * 16, list(range(600)), 256); assert len(c) == 2; print('pip-installed', kvstash.__file__)")
else
  echo "python3 -m venv unavailable: pip install not checked"
fi
echo "install test: ok"
