/* kvs_engines.h - the engine adapters shipped with kvstash: the ops table of
 * blend/kvs_engine.h over the reference models (CPU: model/, CUDA:
 * model/cuda/). The llama.cpp adapter (engines/llamacpp/kvs_llama.h) is built
 * separately when libllama is found.
 *
 * Ownership: an engine borrows its model; free the engine (kvs_engine_free)
 * before the model. */
#ifndef KVS_ENGINES_H
#define KVS_ENGINES_H

#include "kvs_core.h"
#include "kvs_engine.h"

#ifdef __cplusplus
extern "C" {
#endif

struct kvs_model;
struct kvs_gpu_model;

/* The CPU reference engine (engines/engine_cpu.c): host memory, fp16 KV. */
kvs_err kvs_model_engine(struct kvs_model *m, kvs_engine **out);

/* The CUDA reference engine (engines/engine_gpu.c, info.mem =
 * KVS_ENGINE_MEM_DEVICE). `id` is the model id of the CPU model the weights
 * came from (kvs_model_get_id). Without CUDA no kvs_gpu_model can exist. */
kvs_err kvs_gpu_model_engine(struct kvs_gpu_model *g, const kvs_model_id *id, kvs_engine **out);

#ifdef __cplusplus
}
#endif
#endif
