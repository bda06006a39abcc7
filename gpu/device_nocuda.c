/* Built instead of device.cu when kvstash is compiled without CUDA. */
#include "kvs_gpu.h"

int kvs_gpu_compiled(void) { return 0; }
int kvs_gpu_device_count(void) { return 0; }
kvs_err kvs_gpu_device_info(int dev, char *name, size_t len, int *ccmaj, int *ccmin) {
  (void)dev, (void)name, (void)len, (void)ccmaj, (void)ccmin;
  return KVS_ENODEV;
}

kvs_err kvs_gpu_alloc(void **p, size_t n) {
  (void)n;
  if (p) *p = NULL;
  return KVS_ENODEV;
}
void kvs_gpu_free(void *p) { (void)p; }
kvs_err kvs_gpu_alloc_host(void **p, size_t n) {
  (void)n;
  if (p) *p = NULL;
  return KVS_ENODEV;
}
void kvs_gpu_free_host(void *p) { (void)p; }
kvs_err kvs_gpu_host_register(const void *p, size_t n, int read_only) {
  (void)p, (void)n, (void)read_only;
  return KVS_ENODEV;
}
void kvs_gpu_host_unregister(const void *p) { (void)p; }
kvs_err kvs_gpu_memset(void *p, int v, size_t n) {
  (void)p, (void)v, (void)n;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_copy_h2d(void *d, const void *s, size_t n, void *st) {
  (void)d, (void)s, (void)n, (void)st;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_copy_d2h(void *d, const void *s, size_t n, void *st) {
  (void)d, (void)s, (void)n, (void)st;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_copy_d2d(void *d, const void *s, size_t n, void *st) {
  (void)d, (void)s, (void)n, (void)st;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_sync(void *st) {
  (void)st;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_stream_create(void **st) {
  if (st) *st = NULL;
  return KVS_ENODEV;
}
void kvs_gpu_stream_free(void *st) { (void)st; }
kvs_err kvs_gpu_timer_create(kvs_gpu_timer **t) {
  if (t) *t = NULL;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_timer_start(kvs_gpu_timer *t, void *st) {
  (void)t, (void)st;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_timer_stop_ms(kvs_gpu_timer *t, void *st, float *ms) {
  (void)t, (void)st, (void)ms;
  return KVS_ENODEV;
}
void kvs_gpu_timer_free(kvs_gpu_timer *t) { (void)t; }
