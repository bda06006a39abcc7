/* bench_codec.h - the parts of kvs-bench-codec that need optional pieces:
 * the GPU decode timing (gpu/codec) and the real-KV fidelity harness
 * (model/). Each adds its rows to the JSON line (cJSON, bench_json.h). */
#ifndef KVS_BENCH_CODEC_H
#define KVS_BENCH_CODEC_H
#include <stddef.h>
#include <stdint.h>

#include "bench_json.h"
#include "kvs_core.h"

/* GPU decode GB/s of fp16 output for every lossy profile on kv (T tokens of
 * l): one object per profile appended to rows. */
void bench_codec_gpu(const kvs_layout *l, uint32_t T, const uint16_t *kv, const char *shape,
                     cJSON *rows);
/* Real KV of n MuSiQue items ($KVS_MODEL_PATH, default SmolLM2; items 0..99):
 * KL, margin-aware top-1 and first-token agreement after each profile
 * (bench_real.c). */
void bench_codec_real(int n, cJSON *root);
#endif
