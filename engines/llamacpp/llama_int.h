/* llama_int.h - internals of the llama.cpp adapter shared by its files. */
#ifndef KVS_LLAMA_INT_H
#define KVS_LLAMA_INT_H

/* ggml's type id of F16 (enum ggml_type, ggml.h); kvs_llama.c checks it
 * against the header it is built with. */
#define KVS_GGML_TYPE_F16 1u
/* More streams than any context has (llama.cpp's LLAMA_MAX_SEQ is 256). */
#define KVS_LLAMA_MAX_STREAMS 1024u
/* Sequences the engine (kvs_llama_engine) hands out at most. */
#define KVS_LLAMA_MAX_SEQS 256u

#endif
