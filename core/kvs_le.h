/* kvs_le.h - explicit little-endian byte loads and stores, the one copy for
 * host C and CUDA device code (the codec format, the wire frames, the stored
 * records, the CLI's archives and the GGUF reader all use these).
 *
 * Every multi-byte field kvstash writes is little-endian and is read with
 * these byte loads, so no parser depends on host alignment or byte order.
 * p need not be aligned. Plain C; no allocation, no I/O. */
#ifndef KVS_LE_H
#define KVS_LE_H

#include <stdint.h>

#if defined(__CUDACC__)
#define KVS_LE_FN __host__ __device__ __forceinline__
#else
#define KVS_LE_FN static inline
#endif

KVS_LE_FN uint16_t kvs__rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
KVS_LE_FN uint32_t kvs__rd32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
KVS_LE_FN uint64_t kvs__rd64(const uint8_t *p) {
  return (uint64_t)kvs__rd32(p) | ((uint64_t)kvs__rd32(p + 4) << 32);
}
KVS_LE_FN void kvs__wr16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}
KVS_LE_FN void kvs__wr32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}
KVS_LE_FN void kvs__wr64(uint8_t *p, uint64_t v) {
  kvs__wr32(p, (uint32_t)v);
  kvs__wr32(p + 4, (uint32_t)(v >> 32));
}

#endif
