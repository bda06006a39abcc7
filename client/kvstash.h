/* kvstash.h - libkvstash, the client library of kvstash.
 *
 * An engine or a RAG pipeline links this library to ask kvstashd which chunks
 * of a prompt are cached, to store the KV of chunks it has computed, and to
 * fetch cached KV back into its own buffers, layer group by layer group, so
 * that decoding group g overlaps fetching g+1.
 *
 *   kvs_client_opts o;
 *   kvs_client_opts_init(&o);          // o.url = KVS_DEFAULT_URL, kvstashd's default
 *   o.url = "tcp://127.0.0.1:7878";    // or wherever kvstashd listens
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
 * Retries: idempotent calls (lookup, get, exists, stats, ping, and put, whose
 * key names its bytes) are retried with exponential backoff on connection
 * errors and on KVS_EBUSY/KVS_EAGAIN replies, within the deadline; delete,
 * pin, unpin, ttl and put with KVS_PUT_NX only when the request never left.
 *
 * Fast paths, on by default (docs/client.md): gets take the fastest way the
 * daemon offers, and fall back to REQ/REP on opts.url for any failure:
 * - Byte stream: at the client's first get (and the first after a
 *   reconnect) one PING asks kvstashd for its byte-stream GET listener of
 *   opts.url's transport (kvstashd's default config has tcp+stream:// on
 *   127.0.0.1:7880); socket gets then go there (kvs_client_stream below).
 *   Opt out with KVS_CLIENT_NO_STREAM.
 * - Same-host shared memory: when kvstashd runs with `shm = on` and the client
 *   is on the same host (an ipc:// URL or tcp:// to loopback, or
 *   KVS_CLIENT_SHM), a get asks for a LEASE, reads the encoded bytes in place from the tenant's
 * shared-memory segment (mapped once per client) and RELEASEs it; every byte
 * decoded is first checked against a stored XXH3. When the server refuses
 * the lease, the segment cannot be mapped, the entry is not in the RAM tier
 * or the lease runs out mid-read, the same get goes through the socket
 * instead. Opt out with KVS_CLIENT_NO_SHM.
 *   Puts use the same segments where gets do: PUT_RESERVE gives a range of
 *   it, the encoder (the GPU's, for a device put with a GPU-encodable
 *   profile) writes the value there, PUT_COMMIT sends only the meta and the
 *   daemon checks the bytes in place; a daemon that does not offer it sends
 *   the put through the socket as before (KVS_CLIENT_NO_SHM_PUT: always).
 * Same API; kvs_client_get_counters() says which path was taken. */
#ifndef KVSTASH_H
#define KVSTASH_H

#include <stddef.h>
#include <stdint.h>

#include "kvs_core.h"

#ifdef __cplusplus
extern "C" {
#endif
KVS_API_BEGIN

#define KVSTASH_VERSION_MAJOR 0
#define KVSTASH_VERSION_MINOR 1
/* "0.1.0 wire=N codec=yes|no" - static string. */
const char *kvs_client_version(void);
/* The public structs as compiled (for bindings that mirror them): one line a
 * struct, "NAME SIZE FIELD@OFFSET:SIZE ...", lines joined by '\n'. Writes at
 * most cap bytes, NUL-terminated (out may be NULL with cap 0); returns the
 * text's length without the NUL (abi.c). */
size_t kvs_abi_layout(char *out, size_t cap);

/* ------------------------------------------------------------- chunking */
/* A chunk of a token sequence and its key. Keys are computed exactly as the
 * server computes them (before it salts them with the tenant secret). */
/* Key kinds (the same numbers as on the wire). */
#define KVS_CHUNK_PREFIX  1u /* multi-turn: hash chain, K at absolute positions */
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

/* Where kvstashd listens when its config names no `listen` (its default,
 * docs/kvstashd.md); kvs_client_opts_init puts it in opts.url. A test
 * (client_defaults) checks that the two agree. */
#define KVS_DEFAULT_URL "tcp://127.0.0.1:7878"

typedef struct kvs_client_opts {
  const char *url; /* "tcp://host:port", "ipc:///path" or "tls+tcp://host:port" (KVS_DEFAULT_URL) */
  const char *tenant;          /* namespace; NULL or "" = "default" */
  const char *token;           /* auth token; NULL = none */
  uint32_t connect_timeout_ms; /* create waits this long for a first connection (2000) */
  uint32_t request_timeout_ms; /* deadline of every call, retries included (10000) */
  uint32_t n_sockets;          /* sockets (connections) in the pool (2) */
  uint32_t max_retries;        /* extra attempts of an idempotent call (3) */
  uint32_t retry_backoff_ms;   /* first backoff; doubles each retry, with jitter (10) */
  uint32_t max_msg_bytes;      /* largest reply accepted (1 GiB) */
  uint32_t flags;              /* KVS_CLIENT_* */
  /* tls+tcp:// only (NULL otherwise): PEM file of the CA (or the self-signed
   * certificate) that the server's certificate must chain to - required, the
   * server is always verified; the name to verify (NULL = the URL's host);
   * a PEM holding a client certificate and its key (NULL = none). */
  const char *tls_ca_file;
  const char *tls_server_name;
  const char *tls_cert_key_file;
  /* Tuning (0 = the default; docs/client.md "Tuning" names the environment
   * variables read only when these are left at 0): threads that decode
   * same-host gets in place (one per core, 2..16; at most 256). */
  uint32_t n_workers;
} kvs_client_opts;

/* Do not wait for a first connection in kvs_client_create: calls made while
 * the server is down fail with KVS_ECONN at their deadline. */
#define KVS_CLIENT_LAZY 1u
/* Never use the shared-memory fast path (every byte through the socket). */
#define KVS_CLIENT_NO_SHM 2u
/* Try the shared-memory fast path whatever the URL (by default only for
 * ipc:// and tcp:// to a loopback address), e.g. for tcp:// to this host's
 * own address. Harmless when the server is elsewhere: the segment cannot be
 * opened and gets fall back to the socket. */
#define KVS_CLIENT_SHM 4u
/* Do not look for the daemon's byte-stream listener: socket gets stay on
 * REQ/REP unless kvs_client_stream names a stream. ($KVS_CLIENT_STREAM=off
 * does the same for a program whose options cannot be changed; the flag is
 * the way to say it in code.) */
#define KVS_CLIENT_NO_STREAM 8u
/* A device get of a value leased whole in shared memory decodes group by
 * group instead of all groups in one launch sequence (for comparisons;
 * $KVS_CLIENT_BATCH=0 does the same). */
#define KVS_CLIENT_NO_WHOLE_DECODE 16u
/* Device gets copy each encoded segment into a pinned buffer in 256 KiB
 * pieces (checksummed as copied, each piece DMA'd at once) instead of one DMA
 * from where the bytes lie ($KVS_CLIENT_DMA=staged does the same). */
#define KVS_CLIENT_DMA_STAGED 32u
/* Device puts copy the KV to the host and encode there even when the
 * profile has a GPU encoder (for comparisons; $KVS_CLIENT_GPU_ENCODE=0). */
#define KVS_CLIENT_HOST_ENCODE 64u
/* Puts always send their bytes through the socket, never through the
 * shared-memory put (PUT_RESERVE / PUT_COMMIT, used by default where gets
 * use shared memory; for comparisons; $KVS_CLIENT_SHM_PUT=0, read at each
 * put, does the same). */
#define KVS_CLIENT_NO_SHM_PUT 128u

/* Byte-stream GETs: kvstashd listening on `tcp+stream://HOST:PORT` (or
 * `ipc+stream:///path`, docs/kvstashd.md) answers GETs as plain frames on a
 * stream, the value written from its RAM tier to the socket and read here
 * into a reused buffer, with no nng message in between. A client finds that
 * listener by itself (at its first get, see above); this call names one
 * instead, or with "auto" asks for it now. After it the client's socket gets
 * go there (a pool of connections, dialed on demand, one request each at a
 * time); everything else stays on opts.url. When the stream cannot be
 * reached, or a connection drops before its answer began, the same get goes
 * through opts.url, so nothing fails for it. Set once, best before the
 * client's first get (it replaces what the client found by itself); the URL
 * is copied. KVS_EINVAL for another scheme, KVS_EBUSY when already set by
 * this call.
 * "auto" asks the daemon (one PING, now) which byte-stream listeners it has
 * and takes the one of opts.url's transport (tcp:// or ipc://), a wildcard
 * host replaced by opts.url's; KVS_ENOENT when it has none (gets then stay on
 * opts.url), KVS_ENOTSUP for tls+tcp://, or the PING's error. */
kvs_err kvs_client_stream(kvs_client *c, const char *stream_url);

/* Fills the defaults given above (url = KVS_DEFAULT_URL). */
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
/* What a client's gets did (monotonic counters since kvs_client_create). */
typedef struct kvs_client_counters {
  uint64_t gets;              /* gets started */
  uint64_t shm_gets;          /* gets served from shared memory under a lease */
  uint64_t shm_fallbacks;     /* gets that tried a lease and went through the socket */
  uint64_t shm_regroups;      /* groups re-fetched by socket: the lease ran out mid-read */
  uint64_t shm_bytes;         /* encoded bytes read in place */
  uint64_t leases;            /* leases granted */
  uint64_t releases;          /* RELEASEs the server confirmed */
  uint64_t release_lost;      /* RELEASEs refused (lease expired first) or not delivered */
  uint64_t shm_maps;          /* segments mapped */
  uint64_t stream_gets;       /* GET requests answered over the byte stream */
  uint64_t stream_fallbacks;  /* GET requests the stream could not carry (sent by REQ/REP) */
  uint64_t shm_puts;          /* puts written in place into shared memory (PUT_COMMIT sent) */
  uint64_t sock_puts;         /* puts whose bytes crossed the socket (PUT sent) */
  uint64_t shm_put_fallbacks; /* puts that tried shared memory and went through the socket */
} kvs_client_counters;
kvs_err kvs_client_get_counters(kvs_client *c, kvs_client_counters *out);
/* 1 when gets of c will try the shared-memory path (the URL or flags allow
 * it and the server has not refused it). */
int kvs_client_shm_enabled(kvs_client *c);

/* Optional, at the end of a process, once every client is freed: releases
 * the network layer's global state (nng's threads and what its reaper still
 * holds), so that leak checkers see a clean exit. No client may be used
 * after it. */
void kvs_client_lib_fini(void);

/* ------------------------------------------------------------- simple ops */
/* Liveness and auth check (a PING round trip). */
kvs_err kvs_ping(kvs_client *c);

typedef struct kvs_entry_info {
  int present; /* 0/1 */
  int tier;    /* 0 RAM, else the server's disk tier (kvs_stats_tiers: 1 disk, 2 cold) */
  int pinned;
  uint64_t value_bytes; /* encoded bytes */
} kvs_entry_info;
/* Whether `key` of `model` is stored for this tenant. */
kvs_err kvs_exists(kvs_client *c, const kvs_model_id *model, const kvs_key *key,
                   kvs_entry_info *info);
/* KVS_ENOENT when absent. */
kvs_err kvs_delete(kvs_client *c, const kvs_key *key);
kvs_err kvs_pin(kvs_client *c, const kvs_key *key);
kvs_err kvs_unpin(kvs_client *c, const kvs_key *key);
/* Expire `key` ttl_s seconds from now (0 = never). */
kvs_err kvs_ttl(kvs_client *c, const kvs_key *key, uint32_t ttl_s);

/* Server counters: v[0..*n) in the order of kvs_stat_name(i); at most cap. */
kvs_err kvs_stats(kvs_client *c, uint64_t *v, size_t cap, size_t *n);
const char *kvs_stat_name(uint32_t i); /* "entries", "hits", ... or "?" */

/* One storage tier of the server, from the same STATS answer (wire version
 * 2): RAM first, then the server's disk tiers hottest first. */
typedef struct kvs_tier_stat {
  char name[16];     /* "ram", "disk", "cold", ... (the server's tier list) */
  unsigned tier;     /* its number in kvs_entry_info.tier and LIST items (0 = RAM) */
  int present;       /* configured on the server (0: e.g. no cold_dir) */
  uint64_t used;     /* bytes held */
  uint64_t capacity; /* byte budget */
  uint64_t entries;  /* entries held (RAM: those with a RAM copy, also counted below) */
} kvs_tier_stat;
/* rows[0..*n), at most cap. A client of a cluster (etcd://) gets
 * KVS_ENOTSUP: the tiers are per node (open a client on a node's URL). */
kvs_err kvs_stats_tiers(kvs_client *c, kvs_tier_stat *rows, size_t cap, size_t *n);

/* ---------------------------------------------------------------- lookup */
#define KVS_LOOKUP_EACH   0u /* answer every chunk (content keys) */
#define KVS_LOOKUP_PREFIX 1u /* stop at the first miss (prefix chains) */
/* Which of chunks[n_chunks] (cut from tokens[n_tokens] by kvs_chunk_*) are
 * cached: status[i] = 0 when not, 1 + tier when it is (model and tokens
 * checked by the server). *n_prefix (may be NULL) = leading chunks cached.
 * Any number of chunks: large batches are split into several requests. */
kvs_err kvs_lookup(kvs_client *c, const kvs_model_id *model, const int32_t *tokens, size_t n_tokens,
                   const kvs_chunk *chunks, size_t n_chunks, uint32_t mode, uint8_t *status,
                   size_t *n_prefix);

/* ------------------------------------------------------------------- put */
/* Profiles: KVS_PROFILE_RAW (0, uncompressed, always there) or one of the
 * codec's (kvs_codec.h: 1 lossless, 2 int8, 3 kivi2, 4 kivi4, 5 fp4,
 * 6 cachegen-ref, 7 dense) when libkvstash was built with the codec. */
#define KVS_PROFILE_RAW 0u
/* Id of "raw", "lossless", "int8", ...; -1 when unknown or not built in. */
int kvs_profile_from_name(const char *name);
/* 1 when the codec is compiled in (profiles other than raw work). */
int kvs_client_has_codec(void);

struct kvs_codec_params; /* kvs_codec.h */
typedef struct kvs_put_opts {
  uint32_t profile;          /* KVS_PROFILE_RAW default */
  uint32_t layers_per_group; /* segment granularity of streamed gets (0 = 1); a device get
                                decodes a group per step, so a few layers per group (4 for
                                32 layers) keep per-group costs off a large prefix hit */
  uint32_t ttl_s;            /* 0 = no expiry */
  uint32_t flags;            /* KVS_PUT_* */
  /* NULL: the profile's defaults (kvs_codec_params_default). Else the codec
   * parameters to encode with (e.g. the dense profile's quantizer steps:
   * K = V = 0.1 met parity on SmolLM2 MuSiQue items 0-19, not on 20-39: see
   * bench/RESULTS.md, codec); its profile must equal `profile`
   * (KVS_EINVAL otherwise); its layers_per_group, when 0, is taken from
   * above. The decoder reads every parameter from the stored header. */
  const struct kvs_codec_params *codec;
} kvs_put_opts;
#define KVS_PUT_NX   1u /* fail with KVS_EEXIST when the key is stored */
#define KVS_PUT_SYNC 2u /* the server syncs its log before answering */
#define KVS_PUT_DEVICE                                                                             \
  4u /* kv is CUDA device memory (dense: GPU-encoded; else copied to the host) */

/* Stores the KV of chunk (tokens[chunk->start .. +n_tokens)) under
 * chunk->key. kv: canonical layout of `layout` for chunk->n_tokens tokens,
 *   (n_layers, 2 [K,V], n_tokens, n_kv_heads, head_dim), F16 or BF16.
 * o may be NULL (defaults). Encodes on the calling thread. A put of the same
 * key carries the same bytes, so it is retried like an idempotent call
 * (except with KVS_PUT_NX). */
kvs_err kvs_put(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                const kvs_chunk *chunk, const kvs_layout *layout, const void *kv,
                const kvs_put_opts *o);

/* ------------------------------------------------------------------- get */
/* A get in flight (kvs_get_start) or a put in flight (kvs_put_start). */
typedef struct kvs_op kvs_op;

/* Called when layers [layer_begin, layer_end) of the output are decoded
 * (groups arrive in any order in kvs_get_start, in order in kvs_get). */
typedef void (*kvs_group_fn)(void *user, uint32_t layer_begin, uint32_t layer_end);

/* A paged destination for a get: an engine's block table (vLLM-style paged
 * KV) instead of one contiguous buffer. Per layer l, K and V caches
 * k_cache[l], v_cache[l], each (num_blocks, block_size, heads, head_dim) of
 * the get's output dtype, heads = head_end - head_begin; token t of the chunk
 * lands in block block_table[t / block_size], slot t % block_size (its heads
 * one contiguous row). block_table has ceil(n_tokens / block_size) entries,
 * each in [0, num_blocks). With KVS_GET_DEVICE the caches and block_table
 * are device memory (k_cache / v_cache themselves are host arrays of device
 * pointers); otherwise host memory. Lossy and lossless codec entries are
 * decoded straight into the blocks (on the GPU for a device get of a lossy
 * profile); raw entries are decoded to a staging buffer and copied in, block
 * run by block run. Everything it points to must stay valid until the get
 * ends (kvs_get returns, or kvs_op_wait for kvs_get_start). */
typedef struct kvs_paged_kv {
  void *const *k_cache;       /* [n_layers] */
  void *const *v_cache;       /* [n_layers] */
  const int32_t *block_table; /* [ceil(n_tokens / block_size)] */
  uint32_t block_size, num_blocks;
  uint32_t n_layers; /* entries of k_cache / v_cache: the layout's n_layers */
} kvs_paged_kv;

typedef struct kvs_get_opts {
  uint32_t dtype;      /* output element type: 0 = stored dtype, or KVS_DTYPE_F32 */
  uint32_t head_begin; /* fetch only KV heads [head_begin, head_end); */
  uint32_t head_end;   /*   head_end 0 = all heads */
  uint32_t window;     /* segment requests in flight (0 = 4) */
  uint32_t flags;      /* KVS_GET_* */
  kvs_group_fn on_group;
  void *user;
  /* NULL: the output is out (contiguous, canonical layout). Else the paged
   * destination above; out must then be NULL and out_cap 0. */
  const kvs_paged_kv *paged;
} kvs_get_opts;
#define KVS_GET_DEVICE                                                                             \
  1u /* out is CUDA device memory: lossy codec profiles are decoded by                             \
        the GPU kernels, raw/lossless on the host then copied */

/* Bytes of the output of a get of n_tokens tokens under opts o (NULL =
 * defaults): 2 * n_layers * n_tokens * heads * head_dim * dtype size. */
uint64_t kvs_get_bound(const kvs_layout *layout, uint32_t n_tokens, const kvs_get_opts *o);

/* Fetches chunk's KV into out (out_cap >= kvs_get_bound), laid out as the
 * canonical layout with kv_heads = head_end - head_begin:
 *   (n_layers, 2 [K,V], n_tokens, heads, head_dim)
 * or, with o->paged (out NULL), into the engine's paged blocks (kvs_paged_kv)
 * streamed by layer group: group g is decoded (and o->on_group called, on this
 * thread, in layer order) while later groups are still arriving. The server
 * checks model and token ids (KVS_EMODEL / KVS_ETOKENS), layout must equal the
 * stored one (KVS_ELAYOUT), KVS_ENOENT on a miss. On an error, out's content
 * is unspecified. */
kvs_err kvs_get(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                const kvs_chunk *chunk, const kvs_layout *layout, void *out, uint64_t out_cap,
                const kvs_get_opts *o);

/* Asynchronous get: returns at once with *op; o->on_group is called on an
 * nng thread as each group lands (any order). tokens are copied; out must stay
 * valid until kvs_op_wait returns. */
kvs_err kvs_get_start(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                      const kvs_chunk *chunk, const kvs_layout *layout, void *out, uint64_t out_cap,
                      const kvs_get_opts *o, kvs_op **op);
/* Asynchronous put: encodes on this thread, then returns while the bytes
 * travel. kv may be reused as soon as this returns. */
kvs_err kvs_put_start(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                      const kvs_chunk *chunk, const kvs_layout *layout, const void *kv,
                      const kvs_put_opts *o, kvs_op **op);
/* Waits until layers [0, layer_end) of a get are decoded (0 = the whole op).
 * Returns the op's error if it failed. */
kvs_err kvs_op_wait_layers(kvs_op *op, uint32_t layer_end);
/* Waits for the whole op; returns its result. The error message is then
 * this thread's kvs_client_errmsg. */
kvs_err kvs_op_wait(kvs_op *op);
/* 1 when finished (kvs_op_wait would not block). */
int kvs_op_done(kvs_op *op);
/* When the op finished, on kvs_now_ns()'s clock (for a get: every group
 * decoded into its destination); 0 while it is in flight. */
uint64_t kvs_op_finished_ns(kvs_op *op);
/* Waits for the op, then frees it (before kvs_client_free of its client: a
 * device get gives its device buffers back to the client). kvs_op_free(NULL)
 * does nothing. */
void kvs_op_free(kvs_op *op);

/* Batches: n gets (or puts) in flight at once; returns the first error, and
 * per-chunk results in rv[n] when rv != NULL. outs[i] sized by kvs_get_bound
 * for chunks[i]. */
kvs_err kvs_get_batch(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                      const kvs_chunk *chunks, size_t n, const kvs_layout *layout,
                      void *const *outs, const uint64_t *out_caps, const kvs_get_opts *o,
                      kvs_err *rv);
kvs_err kvs_put_batch(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                      const kvs_chunk *chunks, size_t n, const kvs_layout *layout,
                      const void *const *kvs, const kvs_put_opts *o, kvs_err *rv);

KVS_API_END
#ifdef __cplusplus
}
#endif
#endif
