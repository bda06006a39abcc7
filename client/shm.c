/* shm.c - the same-host fast path's plumbing: the tenant segments mapped
 * read-only (once per client, kept until kvs_client_free), and the client's
 * worker threads that decode in place. get.c drives them. Calls no other
 * file of client/. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "client_int.h"
#include "kvs_gpu.h"

/* --------------------------------------------- same-host fast path */
uint64_t kvs__wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int kvs_client_shm_enabled(kvs_client *c) { return c ? atomic_load(&c->shm.on) : 0; }
kvs_err kvs__shm_map(kvs_client *c, const char *name, int register_host, kvs__shmmap **out,
                     char *errbuf, size_t errlen) {
  *out = NULL;
  if (!name || name[0] != '/' || strlen(name) >= sizeof((kvs__shmmap *)0)->name) {
    snprintf(errbuf, errlen, "bad segment name");
    return KVS_EPROTO;
  }
  pthread_mutex_lock(&c->shm.mu);
  kvs__shmmap *m = c->shm.maps;
  while (m && strcmp(m->name, name))
    m = m->next;
  kvs_err rv = KVS_OK;
  if (!m) {
    /* mapped under shm_mu: two gets of a new segment map it once */
    int fd = shm_open(name, O_RDONLY | O_CLOEXEC, 0);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size <= 0) {
      int e = errno;
      snprintf(errbuf, errlen, "cannot open segment %s: %s", name, strerror(e));
      rv = e == EACCES || e == EPERM ? KVS_EPERM : e == ENOENT ? KVS_ENOENT : KVS_EIO;
    } else {
      void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
      m = p == MAP_FAILED ? NULL : calloc(1, sizeof *m);
      if (!m) {
        snprintf(errbuf, errlen, "cannot map segment %s: %s", name,
                 p == MAP_FAILED ? strerror(errno) : "no memory");
        if (p != MAP_FAILED) munmap(p, (size_t)st.st_size);
        rv = KVS_EIO;
      } else {
        snprintf(m->name, sizeof m->name, "%s", name);
        m->base = p;
        m->size = (uint64_t)st.st_size;
        m->next = c->shm.maps;
        c->shm.maps = m;
        atomic_fetch_add(&c->ctr.shm_maps, 1);
      }
    }
    if (fd >= 0) close(fd);
  }
  if (m && register_host && !m->registered) {
    /* once per mapping: copies to the device are then DMA from the segment */
    m->registered = kvs_gpu_host_register(m->base, (size_t)m->size, 1) == KVS_OK ? 1 : -1;
  }
  pthread_mutex_unlock(&c->shm.mu);
  *out = m;
  return rv;
}

kvs_err kvs__shm_map_rw(kvs_client *c, const char *name, int register_host, kvs__shmmap **out,
                        char *errbuf, size_t errlen) {
  kvs__shmmap *m = NULL;
  *out = NULL;
  KVS_TRY(kvs__shm_map(c, name, 0, &m, errbuf, errlen));
  kvs_err rv = KVS_OK;
  pthread_mutex_lock(&c->shm.mu);
  if (!m->wbase) {
    int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    void *p = fd < 0 ? MAP_FAILED
                     : mmap(NULL, (size_t)m->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      snprintf(errbuf, errlen, "cannot map segment %s for writing: %s", name, strerror(e));
      rv = e == EACCES || e == EPERM ? KVS_EPERM : e == ENOENT ? KVS_ENOENT : KVS_EIO;
    } else {
      m->wbase = p;
    }
    if (fd >= 0) close(fd);
  }
  if (m->wbase && register_host && !m->wregistered)
    m->wregistered = kvs_gpu_host_register(m->wbase, (size_t)m->size, 0) == KVS_OK ? 1 : -1;
  pthread_mutex_unlock(&c->shm.mu);
  if (rv == KVS_OK) *out = m;
  return rv;
}

static void *worker_main(void *arg) {
  kvs_client *c = arg;
  pthread_mutex_lock(&c->shm.mu);
  for (;;) {
    while (!c->shm.jobs && !c->shm.work_stop)
      pthread_cond_wait(&c->shm.work_cv, &c->shm.mu);
    kvs__job *j = c->shm.jobs;
    if (!j) break; /* stopping, and nothing is left */
    c->shm.jobs = j->next;
    if (!c->shm.jobs) c->shm.jobs_tail = NULL;
    pthread_mutex_unlock(&c->shm.mu);
    j->fn(j->arg);
    free(j);
    pthread_mutex_lock(&c->shm.mu);
  }
  pthread_mutex_unlock(&c->shm.mu);
  return NULL;
}

kvs_err kvs__work_submit(kvs_client *c, void (*fn)(void *), void *arg) {
  kvs__job *j = malloc(sizeof *j);
  if (!j) return KVS_ENOMEM;
  *j = (kvs__job){fn, arg, NULL};
  pthread_mutex_lock(&c->shm.mu);
  if (c->shm.work_stop) {
    pthread_mutex_unlock(&c->shm.mu);
    free(j);
    return KVS_ECLOSED;
  }
  if (!c->shm.workers) { /* first use: opts.n_workers, or one thread per core, 2..16 */
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    int want = n < 2 ? 2 : n > 16 ? 16 : (int)n;
    if (c->o.n_workers) want = (int)c->o.n_workers;
    c->shm.workers = calloc((size_t)want, sizeof *c->shm.workers);
    for (int i = 0; c->shm.workers && i < want; i++)
      if (pthread_create(&c->shm.workers[i], NULL, worker_main, c) == 0) c->shm.n_workers++;
  }
  if (c->shm.n_workers == 0) {
    pthread_mutex_unlock(&c->shm.mu);
    free(j);
    return KVS_ENOMEM;
  }
  if (c->shm.jobs_tail)
    c->shm.jobs_tail->next = j;
  else
    c->shm.jobs = j;
  c->shm.jobs_tail = j;
  pthread_cond_signal(&c->shm.work_cv);
  pthread_mutex_unlock(&c->shm.mu);
  return KVS_OK;
}

void kvs__shm_workers_stop(kvs_client *c) {
  pthread_mutex_lock(&c->shm.mu);
  c->shm.work_stop = 1;
  pthread_cond_broadcast(&c->shm.work_cv);
  pthread_mutex_unlock(&c->shm.mu);
  for (int i = 0; i < c->shm.n_workers; i++)
    pthread_join(c->shm.workers[i], NULL);
}

void kvs__shm_unmap_all(kvs_client *c) {
  for (kvs__shmmap *m = c->shm.maps; m;) {
    kvs__shmmap *next = m->next;
    if (m->registered) kvs_gpu_host_unregister(m->base);
    munmap((void *)(uintptr_t)m->base, (size_t)m->size);
    if (m->wbase) {
      if (m->wregistered == 1) kvs_gpu_host_unregister(m->wbase);
      munmap(m->wbase, (size_t)m->size);
    }
    free(m);
    m = next;
  }
  c->shm.maps = NULL;
  free(c->shm.workers);
  c->shm.workers = NULL;
}
