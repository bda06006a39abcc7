/* kvs_gpu_codec.h - GPU decode of encoded KV chunks (every lossy profile:
 * int8, kivi2, kivi4, fp4, cachegen-ref, dense; GPU encode of dense is at
 * the end) straight into a contiguous
 * canonical buffer or into paged KV blocks. The CPU twins are the decoders
 * of codec/ (kvs_codec_decode*): integer codes and rANS symbols are decoded
 * bit for bit the same way; floats agree within the tolerance the tests
 * state (fp32 arithmetic in a different order, same f16 rounding).
 *
 * The host parses and verifies the bytes first (kvs_codec_parse_header and
 * kvs_codec_verify on the host copy: the checksums are checked there, not on
 * the GPU); the kernels still bound every offset they read and report a
 * corrupt stream through the workspace's status word.
 *
 * Every pointer in `out` is a device pointer except k_cache / v_cache, which
 * are host arrays (n_layers entries) of device pointers; block_table is a
 * device pointer. Calls only enqueue work on `stream` (a cudaStream_t, NULL
 * for the default stream); kvs_gpu_codec_status() waits for it and says
 * whether every kernel found its input well-formed.
 *
 * Without CUDA or a device every function returns KVS_ENODEV. */
#ifndef KVS_GPU_CODEC_H
#define KVS_GPU_CODEC_H

#include "kvs_codec.h"
#include "kvs_gpu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Device workspace bytes for decoding this chunk (status word, plane
 * offsets, per-plane decode tables, cache pointer arrays). */
size_t kvs_gpu_codec_workspace_bound(const kvs_codec_info *info);

/* Decodes the whole chunk: d_bytes is the device copy of the encoding
 * (info->total_bytes). KVS_ENOTSUP for lossless (decode it on the CPU or
 * copy raw fp16 instead) and for dense planes whose rotation the kernel
 * does not cover (head_dim not 32, 64 or 128, or blocks not row-aligned). */
kvs_err kvs_gpu_codec_decode(const kvs_codec_info *info, const void *d_bytes,
                             const kvs_codec_out *out, void *d_ws, size_t ws_len, void *stream);

/* Decodes segment g only; d_seg is the device copy of bytes
 * [info->seg_offset[g], info->seg_offset[g+1]). Segments may be decoded in
 * any order as they arrive, with one workspace per concurrent call. */
kvs_err kvs_gpu_codec_decode_segment(const kvs_codec_info *info, uint32_t g, const void *d_seg,
                                     const kvs_codec_out *out, void *d_ws, size_t ws_len,
                                     void *stream);

/* Zeroes the workspace's status word (optional: every decode call does). */
kvs_err kvs_gpu_codec_workspace_init(void *d_ws, void *stream);

/* Waits for `stream` and returns KVS_OK, or KVS_ECORRUPT when a kernel of
 * the last decode call enqueued with this workspace found a malformed
 * stream (that call's output must then not be used), or the CUDA error.
 * Each decode call resets the status word: check it after every call whose
 * output you use (streamed segments: after each segment). */
kvs_err kvs_gpu_codec_status(void *d_ws, void *stream);

/* ---------------------------------------------------------------- encode
 * GPU encode of the dense profile (the others encode on the CPU): the same
 * bytes kvs_codec_encode writes for the same input and parameters, bit for
 * bit. d_kv is a device copy of the canonical layout (f16 or bf16); the
 * statistics, quantisation, rANS and the plane bodies at their container
 * offsets run on the GPU; one copy brings the container to out, where the
 * host writes the headers and checksums around the bodies. out is host
 * memory of kvs_codec_encode_bound() bytes (pinned memory copies fastest).
 * Synchronous: returns when out holds *out_len bytes; uses `stream` and d_ws
 * (kvs_gpu_codec_encode_workspace_bound bytes, about 8 bytes per KV
 * element), and a few KiB of host scratch.
 * KVS_ENOTSUP for other profiles; the CPU encoder's argument errors. */
size_t kvs_gpu_codec_encode_workspace_bound(const kvs_codec_params *p, const kvs_layout *layout,
                                            uint32_t n_tokens);
kvs_err kvs_gpu_codec_encode(const kvs_codec_params *p, const kvs_layout *layout, uint32_t n_tokens,
                             const void *d_kv, void *out, size_t cap, size_t *out_len, void *d_ws,
                             size_t ws_len, void *stream);

/* Where the successful encodes of this process spent their time (monotonic
 * totals, any thread): gpu = statistics, quantisation, rANS and packing on
 * the device with the host steps between them; copy = the encoded container
 * device to host (one copy into out); host = headers and checksums around
 * it. For benchmarks. */
typedef struct kvs_gpu_codec_enc_timing {
  uint64_t calls;
  uint64_t gpu_ns, copy_ns, host_ns;
} kvs_gpu_codec_enc_timing;
void kvs_gpu_codec_encode_timing(kvs_gpu_codec_enc_timing *out);

#ifdef __cplusplus
}
#endif
#endif
