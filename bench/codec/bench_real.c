/* Real-KV fidelity for kvs-bench-codec: not built yet in this tree. */
#include <stdio.h>

#include "bench_codec.h"

void bench_codec_real(int n, char *json, size_t cap, size_t *jn) {
  (void)n;
  printf("--real: the real-KV harness is not built in this tree\n");
  *jn += (size_t)snprintf(json + *jn, cap - *jn, ",\"best_at_parity\":null");
}
