/* GPU decode timing for kvs-bench-codec: not built yet in this tree. */
#include <stdio.h>

#include "bench_codec.h"

void bench_codec_gpu(const kvs_layout *l, uint32_t T, const uint16_t *kv, const char *shape,
                     char *json, size_t cap, size_t *jn) {
  (void)l, (void)T, (void)kv, (void)shape, (void)json, (void)cap, (void)jn;
  printf("--gpu: GPU codec decode is not built in this tree\n");
}
