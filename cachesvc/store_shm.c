/* store_shm.c - the store's bottom layer: refcounted value buffers, the
 * shared-memory segments (one per tenant) and the lease table
 * (store_int.h). */
#include <dirent.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "store_int.h"

#define MAX_LEASES 65536

/* --------------------------------------------------------------- buffers */
kvs__buf *kvs__buf_new(size_t len) {
  kvs__buf *b = malloc(sizeof *b + (len ? len : 1));
  if (!b) return NULL;
  atomic_init(&b->refs, 1);
  b->len = len;
  b->data = b->inline_data;
  b->shm = NULL;
  b->shm_off = 0;
  return b;
}
kvs__buf *kvs__buf_new_shm(kvs__shm *m, size_t len) {
  uint64_t off;
  if (!m || !kvs__shm_alloc(m, len, &off)) return NULL;
  kvs__buf *b = malloc(sizeof *b);
  if (!b) {
    kvs__shm_free(m, off, len);
    return NULL;
  }
  atomic_init(&b->refs, 1);
  b->len = len;
  b->data = kvs__shm_base(m) + off;
  b->shm = m;
  b->shm_off = off;
  return b;
}
static atomic_int g_zero_freed;
void kvs__buf_zero_freed(int on) {
  if (on) atomic_store(&g_zero_freed, 1);
}

void kvs__buf_ref(kvs__buf *b) { atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed); }
void kvs__buf_unref(kvs__buf *b) {
  if (b && atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1) {
    /* the last ref: no reader and no lease sees these bytes any more */
    if (atomic_load_explicit(&g_zero_freed, memory_order_relaxed) && b->len)
      sodium_memzero(b->data, b->len);
    if (b->shm) kvs__shm_free(b->shm, b->shm_off, b->len); /* the range may be reused now */
    free(b);
  }
}
void kvs__vref_release(kvs__vref *v) {
  if (!v) return;
  kvs__buf_unref(v->buf);
  free(v->meta);
  memset(v, 0, sizeof *v);
}

/* -------------------------------------------------------------- segments */
void kvs__sh_init(kvs__store *s) { /* names this daemon's segments: stable across restarts */
  uint8_t h[16];
  crypto_generichash(h, 16, (const uint8_t *)"I", 1, s->secret, sizeof s->secret);
  snprintf(s->inst, sizeof s->inst, "%02x%02x%02x%02x", h[0], h[1], h[2], h[3]);
  snprintf(s->nonce, sizeof s->nonce, "%08x", randombytes_random());
  /* segments a previous run of this store left behind (killed): unlink */
  char prefix[32];
  int pl = snprintf(prefix, sizeof prefix, "kvstash-%s-", s->inst);
  DIR *dd = opendir("/dev/shm");
  struct dirent *de;
  while (dd && (de = readdir(dd))) {
    if (strncmp(de->d_name, prefix, (size_t)pl) != 0) continue;
    char nm[300];
    snprintf(nm, sizeof nm, "/%s", de->d_name);
    if (shm_unlink(nm) == 0) KVS_LOGI("shm", "stale segment removed", "name=%s", nm);
  }
  if (dd) closedir(dd);
}

kvs__shm *kvs__sh_seg_for(kvs__store *s, const uint8_t tid[8]) {
  if (!s->cfg.shm) return NULL;
  kvs__shm *m = NULL;
  pthread_mutex_lock(&s->shm_mu);
  for (int i = 0; i < s->nsegs; i++)
    if (memcmp(s->segs[i].tid, tid, 8) == 0) m = s->segs[i].seg;
  if (!m && s->nsegs < KVS__MAX_SEGS) {
    char name[KVS_WIRE_SHM_NAME_MAX + 1];
    kvs_hash128 h;
    memcpy(h.b, tid, 8);
    memset(h.b + 8, 0, 8);
    char hex[33];
    kvs_hash128_hex(&h, hex);
    hex[16] = 0;
    snprintf(name, sizeof name, "/kvstash-%s-%s-%s", s->inst, s->nonce, hex);
    m = kvs__shm_create(name, s->cfg.shm_bytes ? s->cfg.shm_bytes : s->cfg.ram_bytes);
    if (m) {
      memcpy(s->segs[s->nsegs].tid, tid, 8);
      s->segs[s->nsegs++].seg = m;
    }
  }
  pthread_mutex_unlock(&s->shm_mu);
  return m;
}

kvs__buf *kvs__sh_copy(kvs__store *s, const kvs__skey *k, const uint8_t *value, size_t n) {
  kvs__buf *b = kvs__buf_new_shm(kvs__sh_seg_for(s, k->b), n);
  if (!b) b = kvs__buf_new(n);
  if (b) memcpy(b->data, value, n);
  return b;
}

/* ---------------------------------------------------------------- leases */
kvs_err kvs__sh_lease_add(kvs__store *s, const uint8_t tid[8], kvs__buf *b, uint64_t now,
                          kvs__lease *out) {
  if (s->nleases >= MAX_LEASES) return KVS_EBUSY;
  if (s->nleases == s->capleases) {
    size_t nc = s->capleases ? 2 * s->capleases : 256;
    kvs__lease *nl = realloc(s->leases, nc * sizeof *nl);
    if (!nl) return KVS_ENOMEM;
    s->leases = nl;
    s->capleases = nc;
  }
  kvs__lease *l = &s->leases[s->nleases++];
  l->id = ++s->lease_seq;
  l->expires_ms = now + s->cfg.lease_ms;
  memcpy(l->tid, tid, 8);
  l->b = b;
  kvs__buf_ref(b); /* the lease's */
  *out = *l;
  return KVS_OK;
}

kvs_err kvs__store_release(kvs__store *s, const uint8_t tenant_id[8], uint64_t lease_id) {
  kvs__buf *b = NULL;
  pthread_mutex_lock(&s->mu);
  for (size_t i = 0; i < s->nleases; i++)
    if (s->leases[i].id == lease_id && memcmp(s->leases[i].tid, tenant_id, 8) == 0) {
      b = s->leases[i].b;
      s->leases[i] = s->leases[--s->nleases];
      break;
    }
  pthread_mutex_unlock(&s->mu);
  if (!b) return KVS_ENOENT;
  kvs__buf_unref(b);
  return KVS_OK;
}

void kvs__sh_expire(kvs__store *s, uint64_t now, int all) {
  enum { B = 256 };
  kvs__buf *drop[B];
  int n;
  do {
    n = 0;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->nleases && n < B;) {
      if (all || s->leases[i].expires_ms <= now) {
        drop[n++] = s->leases[i].b;
        s->leases[i] = s->leases[--s->nleases];
      } else {
        i++;
      }
    }
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < n; i++)
      kvs__buf_unref(drop[i]);
  } while (n == B);
}

void kvs__sh_free(kvs__store *s) {
  kvs__sh_expire(s, 0, 1);
  free(s->leases);
  s->leases = NULL;
  for (int i = 0; i < s->nsegs; i++)
    kvs__shm_destroy(s->segs[i].seg); /* no buffer left */
  s->nsegs = 0;
}
