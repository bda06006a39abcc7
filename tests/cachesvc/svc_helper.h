/* svc_helper.h - what the kvstashd tests use to run the real daemon and talk
 * to it frame by frame (the client library is tested on its own, elsewhere).
 *
 * th_daemon starts build/cachesvc/kvstashd on a free loopback port with a
 * temporary data dir, and stops it (SIGTERM, then SIGKILL after a bound). */
#ifndef KVS_SVC_HELPER_H
#define KVS_SVC_HELPER_H

#include <nng/nng.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kvs_wire.h"

typedef struct th_daemon {
  pid_t pid;
  char dir[256];  /* temp dir: data/, cold/, log, ipc socket */
  char url[300];  /* tcp://127.0.0.1:PORT */
  char ipc[300];  /* ipc://DIR/kvs.sock */
  char surl[300]; /* tcp+stream://127.0.0.1:SPORT (byte-stream GET listener) */
  int port, http_port, sport;
  char log[300];
} th_daemon;

/* Creates the temp dir on first use (keeps it on restarts), picks free ports
 * (new ones each start), starts the daemon with the extra --key=value args
 * (NULL-terminated) and waits until it answers PING. 0 on success. */
int th_daemon_start(th_daemon *d, const char *const *extra);
/* SIGTERM and wait (bounded); returns the exit status, -1 if it had to be
 * killed. When it is not 0 the daemon's log is on stderr already (callers
 * need not dump it). */
int th_daemon_stop(th_daemon *d);
void th_daemon_kill9(th_daemon *d);
/* Removes the temp dir. */
void th_daemon_cleanup(th_daemon *d);
/* Prints the daemon's log to stderr (on failure). */
void th_daemon_dump_log(const th_daemon *d);

typedef struct th_conn {
  nng_socket s;
  int open;
  char tenant[33];
  char token[65];
  uint64_t next_id;
} th_conn;

/* Dials url; every call waits at most timeout_ms for its answer. */
int th_connect(th_conn *c, const char *url, const char *tenant, const char *token, int timeout_ms);
/* Same over tls+tcp://, trusting the certificates in ca_file. */
int th_connect_tls(th_conn *c, const char *url, const char *ca_file, const char *tenant,
                   const char *token, int timeout_ms);
int th_free_port(void);
void th_close(th_conn *c);
/* Sends one request frame; returns the answer's status, or KVS_ETIMEDOUT /
 * KVS_ECONN on transport failure, KVS_EPROTO when the answer is malformed or
 * does not echo the request id and op. *reply (malloc'd, may be NULL) gets the
 * answer payload. */
int th_call(th_conn *c, uint16_t op, uint32_t flags, const void *payload, size_t n, uint8_t **reply,
            size_t *reply_len);
/* Sends raw bytes as a frame; returns the status of the answer (no id check). */
int th_send_raw(th_conn *c, const void *frame, size_t n, uint8_t **reply, size_t *reply_len);

/* A deterministic chunk made from a seed. */
typedef struct th_chunk {
  kvs_model_id model;
  kvs_key key;
  int32_t *tokens;
  uint32_t n_tokens;
  uint8_t *value;
  size_t vbytes;
  uint32_t n_seg;
  uint64_t *seg_end;
  uint32_t ttl_s;
} th_chunk;
void th_chunk_make(th_chunk *c, uint64_t seed, uint32_t n_tokens, size_t vbytes, uint32_t n_seg);
void th_chunk_free(th_chunk *c);
int th_put(th_conn *c, const th_chunk *ch, uint32_t flags);
/* GET of the whole value with meta; on KVS_OK *value (malloc'd) holds the
 * bytes, already checked against the answer's checksum and segment table. */
int th_get(th_conn *c, const th_chunk *ch, uint8_t **value, size_t *len);
int th_key_op(th_conn *c, uint16_t op, const th_chunk *ch, uint32_t arg, uint8_t **reply,
              size_t *reply_len);
int th_stats(th_conn *c, uint64_t v[KVS__STAT_COUNT]);
/* The whole STATS answer (counters + tier rows); th_tier finds a row by name
 * (NULL when absent). */
int th_stats_tiers(th_conn *c, kvs_wire_stats_resp *out);
const kvs_wire_tier_row *th_tier(const kvs_wire_stats_resp *s, const char *name);
/* LEASE (releasing release_id in the same trip); *out decoded on KVS_OK. */
int th_lease(th_conn *c, const th_chunk *ch, uint64_t release_id, kvs_wire_lease_resp *out);
int th_release(th_conn *c, uint64_t lease_id);
/* Maps a segment read-only (munmap(p, *size) when done); NULL on failure. */
const uint8_t *th_shm_map(const char *name, size_t *size);

/* ---- the byte-stream listener (tcp+stream://), driven by nng's stream API */
typedef struct th_sconn {
  nng_stream *s;
  char tenant[33];
  char token[65];
  uint64_t next_id;
  int timeout_ms;
} th_sconn;
/* Dials a tcp+stream:// or ipc+stream:// URL. 0 on success. */
int th_sconnect(th_sconn *c, const char *url, const char *tenant, const char *token,
                int timeout_ms);
void th_sclose(th_sconn *c);
/* Exactly n bytes out / in: KVS_OK, KVS_ECONN (closed) or KVS_ETIMEDOUT. */
int th_swrite(th_sconn *c, const void *p, size_t n);
int th_sread(th_sconn *c, void *p, size_t n);
/* One answer frame: header checked, payload (malloc'd, may be NULL) read
 * whole. Returns the status, or a transport / KVS_EPROTO error. */
int th_sread_answer(th_sconn *c, kvs_wire_hdr *h, uint8_t **payload);
/* A request of op over the stream and its answer (see th_call). */
int th_scall(th_sconn *c, uint16_t op, const void *payload, size_t n, uint8_t **reply,
             size_t *reply_len);
/* GET of segments [seg_first, +seg_count) (with meta) over the stream: the
 * head is read first, then the value bytes straight into *value (malloc'd,
 * checked against the checksum when the whole value came). */
int th_sget(th_sconn *c, const th_chunk *ch, uint32_t seg_first, uint32_t seg_count,
            uint8_t **value, size_t *len);
/* th_sget in two halves: the request, then its answer (hdr: the answer's
 * KVS_WIRE_HDR_SIZE bytes when already read by the caller, else NULL). */
int th_sget_send(th_sconn *c, const th_chunk *ch, uint32_t seg_first, uint32_t seg_count,
                 uint64_t *id);
int th_sget_recv(th_sconn *c, uint64_t id, const uint8_t *hdr, uint8_t **value, size_t *len);

/* A plain HTTP/1.0 GET or POST to 127.0.0.1:port; returns the status code
 * (or -1) and the body (malloc'd). */
int th_http(int port, const char *method, const char *path, char **body);
/* Waits (bounded: 20 s) until the daemon's write-behind backlog (durability =
 * ram) is empty, read from /metrics: the writer holds a ref on a value until
 * it is on disk, so eviction skips it and a DELETE frees its range only then.
 * 1 when empty, 0 on timeout. */
int th_wait_written(const th_daemon *d);

#endif
