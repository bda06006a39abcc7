/* Device memory through libkvstash (ctest label gpu; exit 77 without a CUDA
 * device): put from device memory, get into device memory (whole and a head
 * range, raw and codec; into paged device blocks), compared with the host
 * copy. Runs against the real kvstashd (skipped when it is not built). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_gpu.h"
#include "kvs_test.h"
#include "client_int.h"
#include "codec_seam.h"
#include "kvstash.h"
#include "server.h"

static test_server srv;
static kvs_client *cl;
static const kvs_layout lay = {.n_layers = 4,
                               .n_kv_heads = 4,
                               .head_dim = 64,
                               .dtype = KVS_DTYPE_F16,
                               .rope_type = KVS_ROPE_NORM,
                               .rope_dims = 64,
                               .rope_theta = 10000.0f,
                               .rope_freq_scale = 1.0f};

static void roundtrip(const char *profile) {
  int id = kvs_profile_from_name(profile);
  if (id < 0) return;
  const uint32_t T = 128;
  unsigned long long st = 11;
  size_t nb = kvs_layout_token_bytes(&lay) * T;
  uint16_t *kv = malloc(nb), *back = malloc(nb);
  for (size_t i = 0; i < nb / 2; i++)
    kv[i] = kvs_f32_to_f16(kvs_test_randf(&st));
  int32_t tok[128];
  for (int i = 0; i < 128; i++)
    tok[i] = i * 3 + id;
  kvs_model_id m = kvs_hash128_buf(profile, strlen(profile));
  kvs_span sp = {0, T};
  kvs_chunk ch;
  kvs_chunk_spans(&m, tok, T, &sp, 1, &ch);
  void *dkv = NULL, *dout = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_alloc(&dkv, nb), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_alloc(&dout, nb), KVS_OK);
  kvs_gpu_copy_h2d(dkv, kv, nb, NULL);
  kvs_gpu_sync(NULL);
  kvs_put_opts po = {.profile = (uint32_t)id, .flags = KVS_PUT_DEVICE};
  CU_ASSERT_EQUAL(kvs_put(cl, &m, tok, &ch, &lay, dkv, &po), KVS_OK);
  kvs_get_opts go = {.flags = KVS_GET_DEVICE};
  CU_ASSERT_EQUAL(kvs_get(cl, &m, tok, &ch, &lay, dout, nb, &go), KVS_OK);
  kvs_gpu_copy_d2h(back, dout, nb, NULL);
  kvs_gpu_sync(NULL);
  if (!strcmp(profile, "raw") || !strcmp(profile, "lossless")) {
    CU_ASSERT(memcmp(back, kv, nb) == 0);
  } else {
    /* lossy: decoded by the GPU kernels; the host decode of the same bytes is the twin */
    uint16_t *ref = malloc(nb);
    CU_ASSERT_EQUAL(kvs_get(cl, &m, tok, &ch, &lay, ref, nb, NULL), KVS_OK);
    double num = 0, den = 0;
    for (size_t i = 0; i < nb / 2; i++) {
      double a = kvs_f16_to_f32(back[i]), b = kvs_f16_to_f32(ref[i]);
      num += (a - b) * (a - b), den += b * b;
    }
    CU_ASSERT(den > 0 && num / den < 1e-6);
    free(ref);
  }
  /* heads [2, 4) into device memory */
  kvs_get_opts ho = {.flags = KVS_GET_DEVICE, .head_begin = 2, .head_end = 4};
  CU_ASSERT_EQUAL(kvs_get(cl, &m, tok, &ch, &lay, dout, nb / 2, &ho), KVS_OK);
  kvs_gpu_copy_d2h(back, dout, nb / 2, NULL);
  kvs_gpu_sync(NULL);
  if (!strcmp(profile, "raw"))
    CU_ASSERT(memcmp(back, kv + 2 * lay.head_dim, 2 * lay.head_dim * 2) == 0);
  kvs_gpu_free(dkv);
  kvs_gpu_free(dout);
  free(kv), free(back);
}

/* The device decode of one group checks its checksum while the GPU runs:
 * a flipped payload byte fails the group (ECHECKSUM), never passes, and the
 * device buffers stay usable (the intact bytes decode right after). */
static void test_device_checksum(void) {
  int id = kvs_profile_from_name("int8");
  if (id < 0) return;
  const uint32_t T = 64;
  unsigned long long st = 5;
  size_t nb = kvs_layout_token_bytes(&lay) * T;
  uint16_t *kv = malloc(nb);
  for (size_t i = 0; i < nb / 2; i++)
    kv[i] = kvs_f32_to_f16(kvs_test_randf(&st));
  kvs__encoded e;
  memset(&e, 0, sizeof e);
  CU_ASSERT_EQUAL_FATAL(kvs__encode((uint32_t)id, 1, NULL, &lay, T, kv, &e), KVS_OK);
  kvs__decoder *dec = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs__decoder_open((uint32_t)id, &lay, T, e.bytes, e.seg_end[0], &dec),
                        KVS_OK);
  CU_ASSERT_FATAL(kvs__decoder_groups(dec) >= 2 && e.n_segs >= 3);
  kvs__devslot s;
  const char *dma = getenv("KVS_CLIENT_DMA"); /* as the client reads it */
  CU_ASSERT_EQUAL_FATAL(kvs__devslot_init(&s, dec, e.len, dma && !strcmp(dma, "staged")), KVS_OK);
  void *dout = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_alloc(&dout, nb), KVS_OK);
  uint8_t *g1 = e.bytes + e.seg_end[1];
  size_t len1 = e.seg_end[2] - e.seg_end[1];
  g1[len1 - 3] ^= 0x40; /* a payload byte of group 1 */
  CU_ASSERT_EQUAL(kvs__decoder_decode_device(dec, 1, g1, len1, dout, nb, NULL, KVS_DTYPE_F16, 0,
                                             lay.n_kv_heads, &s),
                  KVS_ECHECKSUM);
  g1[len1 - 3] ^= 0x40;
  CU_ASSERT_EQUAL(kvs__decoder_decode_device(dec, 1, g1, len1, dout, nb, NULL, KVS_DTYPE_F16, 0,
                                             lay.n_kv_heads, &s),
                  KVS_OK);
  /* a wrong group index in the header: refused before any copy */
  CU_ASSERT_EQUAL(kvs__decoder_decode_device(dec, 0, g1, len1, dout, nb, NULL, KVS_DTYPE_F16, 0,
                                             lay.n_kv_heads, &s),
                  KVS_ECORRUPT);
  kvs__devslot_free(&s);
  kvs__decoder_free(dec);
  kvs__encoded_free(&e);
  kvs_gpu_free(dout);
  free(kv);
}

/* Many chunks fetched at once into device memory: groups of every chunk
 * decode concurrently on pooled device buffers; each lands where it belongs. */
static void test_batch_device(void) {
  int id = kvs_profile_from_name("int8");
  if (id < 0) return;
  enum { N = 12, CT = 32 };
  unsigned long long st = 9;
  size_t cb = kvs_layout_token_bytes(&lay) * CT;
  uint16_t *kv = malloc(cb * N), *back = malloc(cb * N), *ref = malloc(cb * N);
  for (size_t i = 0; i < cb * N / 2; i++)
    kv[i] = kvs_f32_to_f16(kvs_test_randf(&st));
  int32_t tok[N * CT];
  for (int i = 0; i < N * CT; i++)
    tok[i] = 7 * i + 1;
  kvs_model_id m = kvs_hash128_buf("batch", 5);
  kvs_chunk ch[N];
  size_t nc = 0;
  CU_ASSERT_EQUAL_FATAL(kvs_chunk_prefix(&m, tok, N * CT, CT, 0, ch, N, &nc), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(nc, N);
  const void *kvp[N];
  void *outs[N], *houts[N];
  uint64_t caps[N];
  void *dout = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_alloc(&dout, cb * N), KVS_OK);
  for (int c = 0; c < N; c++) {
    kvp[c] = (uint8_t *)kv + c * cb;
    outs[c] = (uint8_t *)dout + c * cb;
    houts[c] = (uint8_t *)ref + c * cb;
    caps[c] = cb;
  }
  kvs_put_opts po = {.profile = (uint32_t)id, .layers_per_group = 1};
  CU_ASSERT_EQUAL_FATAL(kvs_put_batch(cl, &m, tok, ch, N, &lay, kvp, &po, NULL), KVS_OK);
  kvs_get_opts go = {.flags = KVS_GET_DEVICE, .window = 3};
  for (int round = 0; round < 2; round++) { /* the second reuses the pooled buffers */
    CU_ASSERT_EQUAL(kvs_get_batch(cl, &m, tok, ch, N, &lay, outs, caps, &go, NULL), KVS_OK);
    kvs_gpu_copy_d2h(back, dout, cb * N, NULL);
    CU_ASSERT_EQUAL(kvs_get_batch(cl, &m, tok, ch, N, &lay, houts, caps, NULL, NULL), KVS_OK);
    double num = 0, den = 0;
    for (size_t i = 0; i < cb * N / 2; i++) {
      double a = kvs_f16_to_f32(back[i]), b = kvs_f16_to_f32(ref[i]);
      num += (a - b) * (a - b), den += b * b;
    }
    CU_ASSERT(den > 0 && num / den < 1e-6);
  }
  kvs_gpu_free(dout);
  free(kv), free(back), free(ref);
}

/* A device get into paged device blocks (kvs_get_opts.paged with
 * KVS_GET_DEVICE: device caches, a device block table, shuffled): int8 is
 * decoded by the GPU kernels into the blocks, raw on the host and copied in
 * block run by block run. Read back, it equals the host get of the same
 * entry (int8: within the GPU/CPU twin tolerance; raw: exactly). */
static void paged_device(const char *profile) {
  int id = kvs_profile_from_name(profile);
  if (id < 0) return;
  const uint32_t T = 100, BS = 16, NB = 9;
  unsigned long long st = 23;
  size_t nb = kvs_layout_token_bytes(&lay) * T, row = (size_t)lay.n_kv_heads * lay.head_dim * 2;
  uint16_t *kv = malloc(nb), *ref = malloc(nb), *back = malloc(nb);
  for (size_t i = 0; i < nb / 2; i++)
    kv[i] = kvs_f32_to_f16(kvs_test_randf(&st));
  int32_t tok[100];
  for (int i = 0; i < 100; i++)
    tok[i] = i * 5 + id;
  kvs_model_id m = kvs_hash128_buf("paged", 5);
  kvs_span sp = {0, T};
  kvs_chunk ch;
  kvs_chunk_spans(&m, tok, T, &sp, 1, &ch);
  kvs_put_opts po = {.profile = (uint32_t)id, .layers_per_group = 2};
  CU_ASSERT_EQUAL_FATAL(kvs_put(cl, &m, tok, &ch, &lay, kv, &po), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_get(cl, &m, tok, &ch, &lay, ref, nb, NULL), KVS_OK);
  int32_t bt[9] = {8, 2, 6, 0, 4, 7, 1, 3, 5}; /* 7 used of 9 */
  void *kc[4], *vc[4], *dbt = NULL;
  size_t cache = (size_t)NB * BS * row;
  for (int l = 0; l < 4; l++) {
    CU_ASSERT_EQUAL_FATAL(kvs_gpu_alloc(&kc[l], cache), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(kvs_gpu_alloc(&vc[l], cache), KVS_OK);
  }
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_alloc(&dbt, sizeof bt), KVS_OK);
  kvs_gpu_copy_h2d(dbt, bt, sizeof bt, NULL);
  kvs_gpu_sync(NULL);
  kvs_paged_kv pg = {kc, vc, dbt, BS, NB, lay.n_layers};
  kvs_get_opts go = {.flags = KVS_GET_DEVICE, .paged = &pg};
  int rv = kvs_get(cl, &m, tok, &ch, &lay, NULL, 0, &go);
  CU_ASSERT_EQUAL(rv, KVS_OK);
  if (rv) fprintf(stderr, "paged device get (%s): %s\n", profile, kvs_client_errmsg(cl));
  uint8_t *hc = malloc(cache);
  size_t plane = (size_t)T * row;
  for (uint32_t l = 0; l < lay.n_layers; l++)
    for (uint32_t k = 0; k < 2; k++) {
      kvs_gpu_copy_d2h(hc, k ? vc[l] : kc[l], cache, NULL);
      kvs_gpu_sync(NULL);
      for (uint32_t t = 0; t < T; t++)
        memcpy((uint8_t *)back + (2 * (size_t)l + k) * plane + (size_t)t * row,
               hc + ((size_t)bt[t / BS] * BS + t % BS) * row, row);
    }
  if (!strcmp(profile, "raw")) {
    CU_ASSERT(memcmp(back, ref, nb) == 0);
  } else {
    double num = 0, den = 0;
    for (size_t i = 0; i < nb / 2; i++) {
      double a = kvs_f16_to_f32(back[i]), b = kvs_f16_to_f32(ref[i]);
      num += (a - b) * (a - b), den += b * b;
    }
    CU_ASSERT(den > 0 && num / den < 1e-6);
  }
  /* an entry of the device block table outside num_blocks is refused */
  bt[0] = 9;
  kvs_gpu_copy_h2d(dbt, bt, sizeof bt, NULL);
  kvs_gpu_sync(NULL);
  CU_ASSERT_EQUAL(kvs_get(cl, &m, tok, &ch, &lay, NULL, 0, &go), KVS_EINVAL);
  for (int l = 0; l < 4; l++)
    kvs_gpu_free(kc[l]), kvs_gpu_free(vc[l]);
  kvs_gpu_free(dbt);
  free(hc), free(kv), free(ref), free(back);
}

static void test_paged_int8(void) { paged_device("int8"); }
static void test_paged_raw(void) { paged_device("raw"); }

/* A dense put from device memory is encoded on the GPU straight into the
 * request frame (room for the largest meta, trimmed): what the daemon stores
 * is the CPU encoder's encoding, bit for bit (same size, same decoded KV),
 * with one layer group or several, an uneven last group included. */
static void test_dense_device_put(void) {
  int id = kvs_profile_from_name("dense");
  if (id < 0) return;
  const uint32_t T = 200;
  unsigned long long st = 21;
  size_t nb = kvs_layout_token_bytes(&lay) * T;
  uint16_t *kv = malloc(nb), *a = malloc(nb), *b = malloc(nb);
  for (size_t i = 0; i < nb / 2; i++)
    kv[i] = kvs_f32_to_f16(kvs_test_randf(&st));
  int32_t tok[200];
  for (uint32_t i = 0; i < T; i++)
    tok[i] = (int32_t)(i * 7 + 1);
  void *dkv = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_alloc(&dkv, nb), KVS_OK);
  kvs_gpu_copy_h2d(dkv, kv, nb, NULL);
  kvs_gpu_sync(NULL);
  const uint32_t lpgs[] = {1, 3, 4};
  for (int k = 0; k < 3; k++) {
    kvs_model_id md = kvs_hash128_buf("dense-dev", 9), mh = kvs_hash128_buf("dense-host", 10);
    md.b[0] ^= (uint8_t)k, mh.b[0] ^= (uint8_t)k;
    kvs_span sp = {0, T};
    kvs_chunk cd, chh;
    kvs_chunk_spans(&md, tok, T, &sp, 1, &cd);
    kvs_chunk_spans(&mh, tok, T, &sp, 1, &chh);
    kvs_put_opts pd = {
        .profile = (uint32_t)id, .layers_per_group = lpgs[k], .flags = KVS_PUT_DEVICE};
    kvs_put_opts ph = {.profile = (uint32_t)id, .layers_per_group = lpgs[k]};
    CU_ASSERT_EQUAL(kvs_put(cl, &md, tok, &cd, &lay, dkv, &pd), KVS_OK);
    CU_ASSERT_EQUAL(kvs_put(cl, &mh, tok, &chh, &lay, kv, &ph), KVS_OK);
    kvs_entry_info id_, ih;
    CU_ASSERT_EQUAL(kvs_exists(cl, &md, &cd.key, &id_), KVS_OK);
    CU_ASSERT_EQUAL(kvs_exists(cl, &mh, &chh.key, &ih), KVS_OK);
    CU_ASSERT(id_.present && ih.present && id_.value_bytes == ih.value_bytes);
    memset(a, 0, nb), memset(b, 0x55, nb);
    CU_ASSERT_EQUAL(kvs_get(cl, &md, tok, &cd, &lay, a, nb, NULL), KVS_OK);
    CU_ASSERT_EQUAL(kvs_get(cl, &mh, tok, &chh, &lay, b, nb, NULL), KVS_OK);
    CU_ASSERT(memcmp(a, b, nb) == 0);
  }
  kvs_gpu_free(dkv);
  free(kv), free(a), free(b);
}

/* A dense put from device memory through shared memory (a daemon with shm =
 * on): the GPU encoder's one device-to-host copy lands in the reserved range
 * of the client's registered mapping; then, with the registration undone, in
 * the pinned bounce buffer and from there the range. Each stores the CPU
 * encoder's bytes (same size, same decode as a host put through the socket). */
static void test_dense_device_put_shm(void) {
  int id = kvs_profile_from_name("dense");
  if (id < 0) return;
  test_server ss;
  memset(&ss, 0, sizeof ss);
  CU_ASSERT_EQUAL_FATAL(test_server_start_flag(&ss, "real", "--shm=on --shm_bytes=64M"), 0);
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = ss.url;
  o.tenant = "gpu";
  kvs_client *c = NULL, *h = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs_client_create(&o, &c), KVS_OK);
  o.flags = KVS_CLIENT_NO_SHM_PUT;
  CU_ASSERT_EQUAL_FATAL(kvs_client_create(&o, &h), KVS_OK);
  const uint32_t T = 160;
  unsigned long long st = 33;
  size_t nb = kvs_layout_token_bytes(&lay) * T;
  uint16_t *kv = malloc(nb), *a = malloc(nb), *b = malloc(nb);
  for (size_t i = 0; i < nb / 2; i++)
    kv[i] = kvs_f32_to_f16(kvs_test_randf(&st));
  int32_t tok[160];
  for (uint32_t i = 0; i < T; i++)
    tok[i] = (int32_t)(i * 5 + 2);
  void *dkv = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_alloc(&dkv, nb), KVS_OK);
  kvs_gpu_copy_h2d(dkv, kv, nb, NULL);
  kvs_gpu_sync(NULL);
  for (int k = 0; k < 2; k++) {
    if (k == 1) { /* as if cudaHostRegister had failed: the bounce buffer */
      pthread_mutex_lock(&c->shm.mu);
      for (kvs__shmmap *m = c->shm.maps; m; m = m->next)
        if (m->wregistered == 1) {
          kvs_gpu_host_unregister(m->wbase);
          m->wregistered = -1;
        }
      pthread_mutex_unlock(&c->shm.mu);
    }
    kvs_model_id md = kvs_hash128_buf("shm-dev", 7), mh = kvs_hash128_buf("shm-host", 8);
    md.b[0] ^= (uint8_t)k, mh.b[0] ^= (uint8_t)k;
    kvs_span sp = {0, T};
    kvs_chunk cd, chh;
    kvs_chunk_spans(&md, tok, T, &sp, 1, &cd);
    kvs_chunk_spans(&mh, tok, T, &sp, 1, &chh);
    kvs_put_opts pd = {.profile = (uint32_t)id, .layers_per_group = 3, .flags = KVS_PUT_DEVICE};
    kvs_put_opts ph = {.profile = (uint32_t)id, .layers_per_group = 3};
    CU_ASSERT_EQUAL(kvs_put(c, &md, tok, &cd, &lay, dkv, &pd), KVS_OK);
    CU_ASSERT_EQUAL(kvs_put(h, &mh, tok, &chh, &lay, kv, &ph), KVS_OK);
    kvs_entry_info id_, ih;
    CU_ASSERT_EQUAL(kvs_exists(c, &md, &cd.key, &id_), KVS_OK);
    CU_ASSERT_EQUAL(kvs_exists(h, &mh, &chh.key, &ih), KVS_OK);
    CU_ASSERT(id_.present && ih.present && id_.value_bytes == ih.value_bytes);
    memset(a, 0, nb), memset(b, 0x55, nb);
    CU_ASSERT_EQUAL(kvs_get(h, &md, tok, &cd, &lay, a, nb, NULL), KVS_OK);
    CU_ASSERT_EQUAL(kvs_get(h, &mh, tok, &chh, &lay, b, nb, NULL), KVS_OK);
    CU_ASSERT(memcmp(a, b, nb) == 0);
    /* and loaded back into device memory by the shm client */
    void *dout = NULL;
    CU_ASSERT_EQUAL_FATAL(kvs_gpu_alloc(&dout, nb), KVS_OK);
    kvs_get_opts go = {.flags = KVS_GET_DEVICE};
    CU_ASSERT_EQUAL(kvs_get(c, &md, tok, &cd, &lay, dout, nb, &go), KVS_OK);
    memset(a, 0, nb);
    kvs_gpu_copy_d2h(a, dout, nb, NULL);
    kvs_gpu_sync(NULL);
    double num = 0, den = 0; /* the GPU decode vs the host decode: the kernels' twin */
    for (size_t i = 0; i < nb / 2; i++) {
      double x = kvs_f16_to_f32(a[i]), y = kvs_f16_to_f32(b[i]);
      num += (x - y) * (x - y), den += y * y;
    }
    CU_ASSERT(den > 0 && num / den < 1e-6);
    kvs_gpu_free(dout);
  }
  kvs_client_counters kc;
  CU_ASSERT_EQUAL(kvs_client_get_counters(c, &kc), KVS_OK);
  CU_ASSERT_EQUAL(kc.shm_puts, 2);
  CU_ASSERT_EQUAL(kc.sock_puts, 0);
  kvs_gpu_free(dkv);
  kvs_client_free(c);
  kvs_client_free(h);
  test_server_stop(&ss);
  free(kv), free(a), free(b);
}

static void test_raw(void) { roundtrip("raw"); }
static void test_lossless(void) { roundtrip("lossless"); }
static void test_int8(void) { roundtrip("int8"); }
static void test_kivi4(void) { roundtrip("kivi4"); }

static const kvs_test_case cases[] = {{"raw", test_raw},
                                      {"lossless", test_lossless},
                                      {"int8", test_int8},
                                      {"kivi4", test_kivi4},
                                      {"device_checksum", test_device_checksum},
                                      {"batch_device", test_batch_device},
                                      {"paged_int8", test_paged_int8},
                                      {"paged_raw", test_paged_raw},
                                      {"dense_device_put", test_dense_device_put},
                                      {"dense_device_put_shm", test_dense_device_put_shm},
                                      {NULL, NULL}};

int main(void) {
  if (kvs_gpu_device_count() < 1) {
    fprintf(stderr, "SKIP: no CUDA device\n");
    return KVS_TEST_SKIP;
  }
  int rv = test_server_start(&srv, "real");
  if (rv) return rv;
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = srv.url;
  o.tenant = "gpu";
  if (kvs_client_create(&o, &cl) == KVS_OK)
    rv = kvs_test_run("client_gpu", cases);
  else
    rv = 1;
  kvs_client_free(cl);
  test_server_stop(&srv);
  kvs_client_lib_fini();
  return rv;
}
