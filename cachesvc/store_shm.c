/* store_shm.c - the store's bottom layer: refcounted value buffers, the
 * shared-memory segments (one per tenant) and the lease table
 * (store_int.h). */
#include <dirent.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "store_int.h"

#define MAX_LEASES 65536
#define MAX_RESV   4096

/* --------------------------------------------------------------- buffers */
kvs__buf *kvs__buf_new(size_t len) {
  kvs__buf *b = malloc(sizeof *b + (len ? len : 1));
  if (!b) return NULL;
  atomic_init(&b->refs, 1);
  b->len = len;
  b->data = b->inline_data;
  b->shm = NULL;
  b->shm_off = 0;
  b->release = NULL;
  b->owner = NULL;
  return b;
}
kvs__buf *kvs__buf_wrap(uint8_t *data, size_t len, void (*release)(void *), void *owner) {
  kvs__buf *b = kvs__buf_new(0);
  if (!b) {
    release(owner);
    return NULL;
  }
  b->len = len;
  b->data = data;
  b->release = release;
  b->owner = owner;
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
  b->release = NULL;
  b->owner = NULL;
  return b;
}
void kvs__buf_shm_trim(kvs__buf *b, size_t len) {
  if (!len || len >= b->len) return;
  if (b->shm) { /* the allocator works in 64-byte units: free whole units past len */
    uint64_t keep = ((uint64_t)len + 63) & ~(uint64_t)63;
    uint64_t had = ((uint64_t)b->len + 63) & ~(uint64_t)63;
    if (had > keep) kvs__shm_free(b->shm, b->shm_off + keep, had - keep);
  }
  b->len = len;
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
    if (b->release) b->release(b->owner);
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
    for (size_t i = 0; i < s->nresv && n < B;) {
      if (all || s->resv[i].expires_ms <= now) {
        drop[n++] = s->resv[i].b;
        s->resv[i] = s->resv[--s->nresv];
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
  free(s->resv);
  s->resv = NULL;
  for (int i = 0; i < s->nsegs; i++)
    kvs__shm_destroy(s->segs[i].seg); /* no buffer left */
  s->nsegs = 0;
}

/* ------------------------------------------------ shared-memory puts */
static uint64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

kvs_err kvs__store_reserve(kvs__store *s, const uint8_t tid[8], const kvs_key *key,
                           const kvs_model_id *model, uint64_t bytes, uint32_t conn,
                           kvs__resv_out *out) {
  memset(out, 0, sizeof *out);
  if (!s->cfg.shm) return KVS_ENOTSUP;
  if (atomic_load(&s->closing)) return KVS_EBUSY;
  if (bytes == 0 || bytes > KVS_WIRE_MAX_VALUE) return KVS_ERANGE;
  kvs__shm *m = kvs__sh_seg_for(s, tid);
  if (!m) return KVS_EAGAIN;
  kvs__buf *b = kvs__buf_new_shm(m, (size_t)bytes);
  if (!b) { /* full: ranges of expired reservations and leases may come back */
    kvs__sh_expire(s, wall_ms(), 0);
    b = kvs__buf_new_shm(m, (size_t)bytes);
  }
  if (!b) return KVS_EAGAIN;
  kvs_err rc = KVS_OK;
  pthread_mutex_lock(&s->mu);
  if (s->nresv >= MAX_RESV) {
    rc = KVS_EBUSY;
  } else if (s->nresv == s->capresv) {
    size_t nc = s->capresv ? 2 * s->capresv : 64;
    kvs__resv *nr = realloc(s->resv, nc * sizeof *nr);
    if (!nr) {
      rc = KVS_ENOMEM;
    } else {
      s->resv = nr;
      s->capresv = nc;
    }
  }
  if (rc == KVS_OK) {
    kvs__resv *r = &s->resv[s->nresv++];
    r->id = ++s->resv_seq;
    r->expires_ms = wall_ms() + s->cfg.lease_ms;
    memcpy(r->tid, tid, 8);
    r->conn = conn;
    r->key = *key;
    r->model = *model;
    r->b = b; /* the reservation's ref */
    out->id = r->id;
    out->expires_ms = r->expires_ms;
    out->offset = b->shm_off;
    out->bytes = bytes;
    snprintf(out->shm_name, sizeof out->shm_name, "%s", kvs__shm_name(m));
  }
  pthread_mutex_unlock(&s->mu);
  if (rc != KVS_OK) kvs__buf_unref(b);
  return rc;
}

/* Removes reservation id of tid from the table (mu held): its buffer, or NULL. */
static kvs__buf *resv_remove(kvs__store *s, const uint8_t tid[8], uint64_t id, kvs_key *key,
                             kvs_model_id *model) {
  for (size_t i = 0; i < s->nresv; i++)
    if (s->resv[i].id == id && memcmp(s->resv[i].tid, tid, 8) == 0) {
      kvs__buf *b = s->resv[i].b;
      if (key) *key = s->resv[i].key;
      if (model) *model = s->resv[i].model;
      s->resv[i] = s->resv[--s->nresv];
      return b;
    }
  return NULL;
}

kvs_err kvs__store_resv_take(kvs__store *s, const uint8_t tid[8], uint64_t id, kvs_key *key,
                             kvs_model_id *model, kvs__buf **b) {
  uint64_t now = wall_ms();
  int expired = 0;
  pthread_mutex_lock(&s->mu);
  for (size_t i = 0; i < s->nresv; i++)
    if (s->resv[i].id == id && memcmp(s->resv[i].tid, tid, 8) == 0) {
      expired = s->resv[i].expires_ms <= now; /* not swept yet: as good as gone */
      break;
    }
  *b = resv_remove(s, tid, id, key, model);
  pthread_mutex_unlock(&s->mu);
  if (*b && expired) {
    kvs__buf_unref(*b);
    *b = NULL;
  }
  return *b ? KVS_OK : KVS_ENOENT;
}

kvs_err kvs__store_resv_abort(kvs__store *s, const uint8_t tid[8], uint64_t id) {
  pthread_mutex_lock(&s->mu);
  kvs__buf *b = resv_remove(s, tid, id, NULL, NULL);
  pthread_mutex_unlock(&s->mu);
  if (!b) return KVS_ENOENT;
  kvs__buf_unref(b);
  return KVS_OK;
}

void kvs__store_resv_drop_conn(kvs__store *s, uint32_t conn) {
  enum { B = 64 };
  kvs__buf *drop[B];
  int n;
  if (!conn) return;
  do {
    n = 0;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->nresv && n < B;) {
      if (s->resv[i].conn == conn) {
        drop[n++] = s->resv[i].b;
        s->resv[i] = s->resv[--s->nresv];
      } else {
        i++;
      }
    }
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < n; i++)
      kvs__buf_unref(drop[i]);
  } while (n == B);
}

size_t kvs__store_resv_count(kvs__store *s) {
  pthread_mutex_lock(&s->mu);
  size_t n = s->nresv;
  pthread_mutex_unlock(&s->mu);
  return n;
}
