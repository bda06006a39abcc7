/* bench_version.h - `--version` (or -V) for every benchmark binary: the first
 * thing each main() does, before its own argument parsing. */
#ifndef KVS_BENCH_VERSION_H
#define KVS_BENCH_VERSION_H

#include <stdio.h>
#include <string.h>

#include "kvs_core.h"

/* 1 (after printing "NAME VERSION") when argv holds --version or -V. */
static inline int kvs_bench_version(int argc, char **argv, const char *name) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--version") || !strcmp(argv[i], "-V")) {
      printf("%s %s\n", name, kvs_version());
      return 1;
    }
  return 0;
}

#endif
