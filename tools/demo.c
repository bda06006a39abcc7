/* kvs-demo - the main job of kvstash, end to end, as far as it exists today.
 * Run through `tools/dev demo`. It prints only what it computed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_core.h"
#include "kvs_gpu.h"

static kvs_err hash_file(const char *path, kvs_hash128 *out, size_t *bytes) {
  FILE *f = fopen(path, "rb");
  if (!f) return KVS_ENOENT;
  kvs_hasher *h = kvs_hasher_create();
  if (!h) {
    fclose(f);
    return KVS_ENOMEM;
  }
  static unsigned char buf[1 << 20];
  size_t n;
  *bytes = 0;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
    kvs_hasher_update(h, buf, n);
    *bytes += n;
  }
  int err = ferror(f);
  fclose(f);
  *out = kvs_hasher_digest(h);
  kvs_hasher_free(h);
  return err ? KVS_EIO : KVS_OK;
}

int main(void) {
  printf("kvstash demo\n");
  char name[256] = "-";
  int maj = 0, min = 0;
  if (kvs_gpu_device_count() > 0) kvs_gpu_device_info(0, name, sizeof name, &maj, &min);
  printf("  CUDA compiled: %s; GPU now: %s\n", kvs_gpu_compiled() ? "yes" : "no",
         kvs_gpu_device_count() > 0 ? name : "none (CPU path)");
  const char *model = getenv("KVS_MODEL_PATH");
  if (!model) {
    fprintf(stderr, "demo: KVS_MODEL_PATH is not set (run through tools/dev demo)\n");
    return 1;
  }
  kvs_hash128 h;
  size_t bytes = 0;
  uint64_t t0 = kvs_now_ns();
  kvs_err e = hash_file(model, &h, &bytes);
  if (e) {
    fprintf(stderr, "demo: cannot read %s: %s\n", model, kvs_strerror(e));
    return 1;
  }
  char hex[33];
  kvs_hash128_hex(&h, hex);
  printf("  model file: %s (%zu bytes), content hash %s in %.1f ms\n", model, bytes, hex,
         (kvs_now_ns() - t0) / 1e6);
  return 0;
}
