/* shm.c - the shared-memory segments of the same-host fast path.
 *
 * One POSIX shared-memory object per tenant (mode 0600: readable by the
 * daemon's user only), mapped read-write by the daemon and read-only by
 * clients on the same host. The RAM tier places its copies of that tenant's
 * values here; a LEASE tells a client where a value lies, and the range is not
 * freed (so not reused) while a lease or a reader holds its buffer.
 *
 * The allocator is first-fit over a sorted list of free extents, 64-byte
 * aligned, coalescing on free. Its own mutex; never called with it held
 * across anything else. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "svc_int.h"

typedef struct ext {
  uint64_t off, len;
} ext;

struct kvs__shm {
  char name[KVS_WIRE_SHM_NAME_MAX + 1];
  uint8_t *base;
  uint64_t size;
  pthread_mutex_t mu;
  ext *free;
  size_t nfree, capfree;
  uint64_t used;
};

#define ALIGN 64u

kvs__shm *kvs__shm_create(const char *name, uint64_t size) {
  if (strlen(name) > KVS_WIRE_SHM_NAME_MAX || size < ALIGN) return NULL;
  kvs__shm *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  snprintf(m->name, sizeof m->name, "%s", name);
  int fd = shm_open(name, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    KVS_LOGE("shm", "shm_open failed", "name=%s err=\"%s\"", name, strerror(errno));
    free(m);
    return NULL;
  }
  (void)fchmod(fd, 0600); /* whatever the umask: the daemon's user only */
  size &= ~(uint64_t)(ALIGN - 1);
  if (ftruncate(fd, (off_t)size) != 0) {
    KVS_LOGE("shm", "ftruncate failed", "name=%s err=\"%s\"", name, strerror(errno));
    close(fd);
    shm_unlink(name);
    free(m);
    return NULL;
  }
  void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) {
    shm_unlink(name);
    free(m);
    return NULL;
  }
  m->base = p;
  m->size = size;
  m->capfree = 64;
  m->free = malloc(m->capfree * sizeof *m->free);
  if (!m->free) {
    kvs__shm_destroy(m);
    return NULL;
  }
  m->free[0] = (ext){0, size};
  m->nfree = 1;
  pthread_mutex_init(&m->mu, NULL);
  KVS_LOGI("shm", "segment created", "name=%s bytes=%llu", name, (unsigned long long)size);
  return m;
}

void kvs__shm_destroy(kvs__shm *m) {
  if (!m) return;
  if (m->base) munmap(m->base, (size_t)m->size);
  shm_unlink(m->name);
  free(m->free);
  pthread_mutex_destroy(&m->mu);
  free(m);
}

const char *kvs__shm_name(const kvs__shm *m) { return m->name; }
uint8_t *kvs__shm_base(const kvs__shm *m) { return m->base; }

static uint64_t round_len(uint64_t len) { return (len + ALIGN - 1) & ~(uint64_t)(ALIGN - 1); }

int kvs__shm_alloc(kvs__shm *m, uint64_t len, uint64_t *off) {
  uint64_t need = round_len(len ? len : 1);
  int ok = 0;
  pthread_mutex_lock(&m->mu);
  for (size_t i = 0; i < m->nfree; i++) {
    if (m->free[i].len < need) continue;
    *off = m->free[i].off;
    m->free[i].off += need;
    m->free[i].len -= need;
    if (m->free[i].len == 0) {
      memmove(&m->free[i], &m->free[i + 1], (m->nfree - i - 1) * sizeof *m->free);
      m->nfree--;
    }
    m->used += need;
    ok = 1;
    break;
  }
  pthread_mutex_unlock(&m->mu);
  return ok;
}

void kvs__shm_free(kvs__shm *m, uint64_t off, uint64_t len) {
  uint64_t n = round_len(len ? len : 1);
  pthread_mutex_lock(&m->mu);
  size_t i = 0;
  while (i < m->nfree && m->free[i].off < off)
    i++;
  int merged = 0;
  if (i > 0 && m->free[i - 1].off + m->free[i - 1].len == off) { /* join the one before */
    m->free[i - 1].len += n;
    merged = 1;
    if (i < m->nfree && off + n == m->free[i].off) { /* and the one after */
      m->free[i - 1].len += m->free[i].len;
      memmove(&m->free[i], &m->free[i + 1], (m->nfree - i - 1) * sizeof *m->free);
      m->nfree--;
    }
  } else if (i < m->nfree && off + n == m->free[i].off) {
    m->free[i].off = off;
    m->free[i].len += n;
    merged = 1;
  }
  if (!merged) {
    if (m->nfree == m->capfree) {
      ext *nf = realloc(m->free, 2 * m->capfree * sizeof *nf);
      if (!nf) { /* leak the range rather than corrupt the list */
        pthread_mutex_unlock(&m->mu);
        return;
      }
      m->free = nf;
      m->capfree *= 2;
    }
    memmove(&m->free[i + 1], &m->free[i], (m->nfree - i) * sizeof *m->free);
    m->free[i] = (ext){off, n};
    m->nfree++;
  }
  m->used -= n;
  pthread_mutex_unlock(&m->mu);
}

uint64_t kvs__shm_used(kvs__shm *m) {
  pthread_mutex_lock(&m->mu);
  uint64_t u = m->used;
  pthread_mutex_unlock(&m->mu);
  return u;
}
