/* kvstash.h - libkvstash, the client library of kvstash.
 *
 * An engine or a RAG pipeline links this library to ask kvstashd which chunks
 * of a prompt are cached, to store the KV of chunks it has computed, and to
 * fetch cached KV back into its own buffers, layer group by layer group, so
 * that decoding group g overlaps fetching g+1.
 *
 *   kvs_client_opts o;
 *   kvs_client_opts_init(&o);
 *   o.url = "tcp://127.0.0.1:7070";
 *   o.tenant = "team-a";
 *   kvs_client *c;
 *   if (kvs_client_create(&o, &c) != KVS_OK) ...kvs_client_errmsg(c)...
 *   ...
 *   kvs_client_free(c);
 *
 * Threads: a kvs_client is safe to share between threads; underneath it is a
 * pool of nng REQ sockets and contexts, one context per call in flight.
 * Errors: every call returns a kvs_err (0 ok, negative error, see kvs_err.h);
 * kvs_client_errmsg() says what went wrong in words.
 * Deadlines: every network call finishes (successfully or with
 * KVS_ETIMEDOUT) within opts.request_timeout_ms, retries included.
 * Retries: idempotent calls (everything except put/delete/pin/unpin/ttl, which
 * are retried only when the request provably never left) are retried with
 * exponential backoff on connection errors and on KVS_EBUSY/KVS_EAGAIN
 * replies, within the deadline. */
#ifndef KVSTASH_H
#define KVSTASH_H

#include <stddef.h>
#include <stdint.h>

#include "kvs_core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVSTASH_VERSION_MAJOR 0
#define KVSTASH_VERSION_MINOR 1
/* "0.1.0 wire=N codec=yes|no" - static string. */
const char *kvs_client_version(void);

/* ------------------------------------------------------------- chunking */
/* A chunk of a token sequence and its key. Keys are computed exactly as the
 * server computes them (before it salts them with the tenant secret). */
/* Key kinds (the same numbers as on the wire). */
#define KVS_CHUNK_PREFIX 1u  /* multi-turn: hash chain, K at absolute positions */
#define KVS_CHUNK_CONTENT 2u /* RAG: position-independent, K as if at position 0 */

typedef struct kvs_chunk {
  kvs_key key;
  uint32_t start;    /* first token of the chunk in the caller's sequence */
  uint32_t n_tokens; /* tokens in the chunk */
  uint32_t kind;     /* KVS_CHUNK_PREFIX or KVS_CHUNK_CONTENT */
} kvs_chunk;

/* A caller-given span of tokens (a RAG passage). */
typedef struct kvs_span {
  uint32_t start;
  uint32_t n_tokens;
} kvs_span;

#define KVS_DEFAULT_CHUNK_TOKENS 256u
/* Flag: also emit the trailing partial chunk (fewer than chunk_tokens). By
 * default only full chunks are produced, since a partial tail changes as a
 * conversation grows and its key would never hit again. */
#define KVS_CHUNK_TAIL 1u

/* Number of prefix chunks kvs_chunk_prefix produces for n_tokens. */
size_t kvs_chunk_prefix_count(size_t n_tokens, uint32_t chunk_tokens, unsigned flags);
/* Multi-turn: split tokens[n_tokens] into fixed-size chunks chained as a hash
 * list (chunk i's key covers tokens 0..end of chunk i). Writes *n_out chunks
 * into out[cap]; KVS_ERANGE (with *n_out set to the count needed) when cap is
 * too small. */
kvs_err kvs_chunk_prefix(const kvs_model_id *model, const int32_t *tokens, size_t n_tokens,
                         uint32_t chunk_tokens, unsigned flags, kvs_chunk *out, size_t cap,
                         size_t *n_out);
/* RAG: one content chunk per span (position-independent keys), out[n_spans].
 * KVS_ERANGE when a span is empty or runs past n_tokens. */
kvs_err kvs_chunk_spans(const kvs_model_id *model, const int32_t *tokens, size_t n_tokens,
                        const kvs_span *spans, size_t n_spans, kvs_chunk *out);

/* ----------------------------------------------------------- connection */
typedef struct kvs_client kvs_client;

typedef struct kvs_client_opts {
  const char *url;             /* "tcp://host:port" or "ipc:///path"; required */
  const char *tenant;          /* namespace; NULL or "" = "default" */
  const char *token;           /* auth token; NULL = none */
  uint32_t connect_timeout_ms; /* create waits this long for a first connection (2000) */
  uint32_t request_timeout_ms; /* deadline of every call, retries included (10000) */
  uint32_t n_sockets;          /* sockets (connections) in the pool (2) */
  uint32_t max_retries;        /* extra attempts of an idempotent call (3) */
  uint32_t retry_backoff_ms;   /* first backoff; doubles each retry, with jitter (10) */
  uint32_t max_msg_bytes;      /* largest reply accepted (1 GiB) */
  uint32_t flags;              /* KVS_CLIENT_* */
} kvs_client_opts;

/* Do not wait for a first connection in kvs_client_create: calls made while
 * the server is down fail with KVS_ECONN at their deadline. */
#define KVS_CLIENT_LAZY 1u

/* Fills the defaults given above; url must still be set. */
void kvs_client_opts_init(kvs_client_opts *o);
/* Opens the pool. On failure *out is still set when the handle could be made
 * (so that kvs_client_errmsg can say why) and must be freed; it is NULL only
 * on KVS_EINVAL/KVS_ENOMEM. KVS_ECONN when no connection was made within
 * connect_timeout_ms (unless KVS_CLIENT_LAZY). The strings in o are copied. */
kvs_err kvs_client_create(const kvs_client_opts *o, kvs_client **out);
/* Closes every socket; calls in flight on other threads end with
 * KVS_ECLOSED. kvs_client_free(NULL) does nothing. */
void kvs_client_free(kvs_client *c);
/* The message of the last error this thread got from c, or "" - a thread-local
 * copy, valid until this thread's next call on any client. */
const char *kvs_client_errmsg(kvs_client *c);
/* Connections currently up (over all sockets of the pool). */
int kvs_client_connected(kvs_client *c);

#ifdef __cplusplus
}
#endif
#endif
