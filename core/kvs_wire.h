/* kvs_wire.h - the binary frames of the kvstash data plane (kvstashd <-> libkvstash).
 *
 * Pure C, no I/O, no allocation: encoders write into caller buffers sized by
 * the *_size() / *_bound() functions, decoders check every length before use,
 * bound every count and return views (pointers into the caller's buffer, valid
 * as long as that buffer is). The byte-offset tables are in docs/protocol.md;
 * this header and that document change together, and the version below is
 * bumped on any incompatible change.
 *
 * Everything on the wire is little-endian. Arrays of int32 token ids and u64
 * segment offsets are exposed as raw little-endian bytes (`*_le` pointers, not
 * necessarily aligned): read them with kvs_wire_rd32()/kvs_wire_rd64(). On the
 * (little-endian) hosts kvstash supports, the bytes of a native int32_t array
 * are exactly its wire form, so an encoder may be given (const uint8_t *)tokens.
 *
 * A frame = 128-byte header + payload (payload_len bytes). Every request gets
 * exactly one response frame with the same request id and op, the RESPONSE
 * flag set and a status (a kvs_err: 0 ok, negative error). An error response's
 * payload is a short UTF-8 message (<= KVS_WIRE_MAX_ERRMSG bytes, no NUL). */
#ifndef KVS_WIRE_H
#define KVS_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "kvs_core.h"
#include "kvs_le.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "kvs_wire assumes a little-endian host"
#endif

/* ------------------------------------------------------------ constants */
#define KVS_WIRE_MAGIC      0x5753564Bu /* "KVSW" as bytes 4B 56 53 57 */
#define KVS_WIRE_VERSION    2u
#define KVS_WIRE_HDR_SIZE   128u
#define KVS_WIRE_TENANT_MAX 32u /* tenant name bytes, [A-Za-z0-9_.-] */
#define KVS_WIRE_TOKEN_MAX  64u /* bearer token bytes */
#define KVS_WIRE_MAX_ERRMSG 256u

/* Hard limits the decoders enforce (a server may configure smaller ones). */
#define KVS_WIRE_MAX_TOKENS       65536u       /* token ids per entry */
#define KVS_WIRE_MAX_SEGMENTS     4096u        /* layer-group segments per entry */
#define KVS_WIRE_MAX_CODEC_PARAMS 4096u        /* opaque codec parameter bytes */
#define KVS_WIRE_MAX_VALUE        (1ull << 34) /* 16 GiB encoded bytes per entry */
#define KVS_WIRE_MAX_PAYLOAD      0xFFFFFFFFu  /* payload_len is a u32 */
#define KVS_WIRE_MAX_LOOKUP       4096u        /* chunks per LOOKUP */
#define KVS_WIRE_MAX_LIST         1024u        /* items per LIST / EXPORT page */
#define KVS_WIRE_MAX_STATS        64u          /* counters in a STATS answer */
#define KVS_WIRE_MAX_TIER         2u /* wire tier numbers: 0 RAM, 1.. the server's disk tiers */

/* The wire ops, one row each; the op enum, the name table, the data plane's
 * fast-path test and the client's retry policy are generated from it.
 * X(id, NAME, idempotent, fast, request payload, response payload):
 *   idempotent  a resend after a lost reply is safe: the client retries it on
 *               a connection error (PUT with KVS_WIRE_F_NX is not; the client
 *               checks that flag itself)
 *   fast        the data plane answers it on an nng task thread (no disk
 *               write); other ops go to a worker thread
 *   payloads    the types below (docs/protocol.md has their byte tables)
 * Adding an op: a row here, its payload types + encoders/decoders below and in
 * wire.c, kvs_wire_req_decode's case, the server's dispatch case
 * (cachesvc/dataplane.c), the client call, docs/protocol.md (docs/architecture.md). */
#define KVS_WIRE_OP_MAP(X)                                                                         \
  X(1, PING, 1, 1, "empty", "text: stream listen URLs")                                            \
  X(2, PUT, 1, 0, "meta + value", "empty")                                                         \
  X(3, GET, 1, 1, "get_req", "get_resp: meta and/or a range of segments")                          \
  X(4, LOOKUP, 1, 1, "lookup_req", "lookup_resp")                                                  \
  X(5, EXISTS, 1, 1, "key_req", "exists_resp")                                                     \
  X(6, DELETE, 0, 0, "key_req", "empty")                                                           \
  X(7, PIN, 0, 0, "key_req", "empty")                                                              \
  X(8, UNPIN, 0, 0, "key_req", "empty")                                                            \
  X(9, TTL, 0, 0, "key_req (arg = seconds, 0 = none)", "empty")                                    \
  X(10, STATS, 1, 1, "empty", "stats_resp")                                                        \
  X(11, LIST, 1, 0, "page_req", "list_resp")                                                       \
  X(12, EXPORT, 1, 0, "page_req", "export_resp (records)")                                         \
  X(13, IMPORT, 1, 0, "import_req (records)", "import_resp")                                       \
  X(14, LEASE, 0, 1, "lease_req", "lease_resp (same-host shared-memory read)")                     \
  X(15, RELEASE, 1, 1, "u64 lease id", "empty")                                                    \
  X(16, PUT_RESERVE, 0, 1, "put_reserve_req",                                                      \
    "put_reserve_resp (a range of the tenant's segment)")                                          \
  X(17, PUT_COMMIT, 0, 0, "put_commit_req (meta of the bytes in the range)", "empty")              \
  X(18, PUT_ABORT, 1, 1, "u64 reservation id", "empty")

#define KVS__WIRE_OP_ENUM(id, name, idem, fast, rq, rs) KVS_OP_##name = id,
#define KVS__WIRE_OP_ONE(id, name, idem, fast, rq, rs)  +1
typedef enum { KVS_WIRE_OP_MAP(KVS__WIRE_OP_ENUM) } kvs_wire_op;
enum { KVS__OP_MAX = 0 KVS_WIRE_OP_MAP(KVS__WIRE_OP_ONE) }; /* ids are 1..KVS__OP_MAX */
#undef KVS__WIRE_OP_ENUM
#undef KVS__WIRE_OP_ONE

/* 1 when a resend of op after a lost reply is safe (the client's retry policy). */
static inline int kvs_wire_op_idempotent(uint16_t op) {
  switch (op) {
#define KVS__WIRE_OP_IDEM(id, name, idem, fast, rq, rs)                                            \
  case id: return idem;
    KVS_WIRE_OP_MAP(KVS__WIRE_OP_IDEM)
#undef KVS__WIRE_OP_IDEM
  default: return 0;
  }
}
/* 1 when the data plane answers op on its nng task thread (the fast path). */
static inline int kvs_wire_op_fast(uint16_t op) {
  switch (op) {
#define KVS__WIRE_OP_FAST(id, name, idem, fast, rq, rs)                                            \
  case id: return fast;
    KVS_WIRE_OP_MAP(KVS__WIRE_OP_FAST)
#undef KVS__WIRE_OP_FAST
  default: return 0;
  }
}

/* header flags */
#define KVS_WIRE_F_RESPONSE 0x1u /* set on every response frame */
#define KVS_WIRE_F_NX       0x2u /* PUT: fail with KVS_EEXIST if the key is present */
#define KVS_WIRE_F_SYNC                                                                            \
  0x4u /* PUT/IMPORT: sync the WAL before acknowledging                                            \
          even when the server runs in async mode */
#define KVS_WIRE_F_KNOWN (KVS_WIRE_F_RESPONSE | KVS_WIRE_F_NX | KVS_WIRE_F_SYNC)

typedef enum { KVS_KEY_KIND_PREFIX = 1, KVS_KEY_KIND_CONTENT = 2 } kvs_key_kind;

/* -------------------------------------------------------------- header */
/* Byte offsets of the header fields in a frame (docs/protocol.md; wire.c
 * checks that they tile the 128 bytes). All integers little-endian. */
#define KVS_WIRE_OFF_MAGIC       0u  /* u32 */
#define KVS_WIRE_OFF_VERSION     4u  /* u16 */
#define KVS_WIRE_OFF_OP          6u  /* u16 */
#define KVS_WIRE_OFF_FLAGS       8u  /* u32 */
#define KVS_WIRE_OFF_STATUS      12u /* i32 */
#define KVS_WIRE_OFF_REQ_ID      16u /* u64 */
#define KVS_WIRE_OFF_PAYLOAD_LEN 24u /* u32 */
#define KVS_WIRE_OFF_TENANT_LEN  28u /* u8 */
#define KVS_WIRE_OFF_TOKEN_LEN   29u /* u8 */
#define KVS_WIRE_OFF_RESERVED    30u /* u16, 0 */
#define KVS_WIRE_OFF_TENANT      32u /* KVS_WIRE_TENANT_MAX bytes */
#define KVS_WIRE_OFF_TOKEN       64u /* KVS_WIRE_TOKEN_MAX bytes */

typedef struct kvs_wire_hdr {
  uint32_t magic;                    /* KVS_WIRE_MAGIC */
  uint16_t version;                  /* KVS_WIRE_VERSION */
  uint16_t op;                       /* kvs_wire_op */
  uint32_t flags;                    /* KVS_WIRE_F_* */
  int32_t status;                    /* kvs_err in responses, 0 in requests */
  uint64_t req_id;                   /* chosen by the client, echoed */
  uint32_t payload_len;              /* bytes after the header */
  uint8_t tenant_len;                /* 1..32 in requests */
  uint8_t token_len;                 /* 0..64 */
  uint16_t reserved;                 /* 0 */
  char tenant[KVS_WIRE_TENANT_MAX];  /* not NUL-terminated; zero padded */
  uint8_t token[KVS_WIRE_TOKEN_MAX]; /* zero padded */
} kvs_wire_hdr;

/* Fills a request header. tenant: 1..32 chars of [A-Za-z0-9_.-]; token may be
 * NULL (no auth) or up to 64 bytes. KVS_EINVAL otherwise. */
kvs_err kvs_wire_hdr_init(kvs_wire_hdr *h, uint16_t op, uint64_t req_id, const char *tenant,
                          const void *token, size_t token_len);
/* Writes exactly KVS_WIRE_HDR_SIZE bytes. */
kvs_err kvs_wire_hdr_encode(const kvs_wire_hdr *h, uint8_t out[KVS_WIRE_HDR_SIZE]);
/* Decodes and checks a header at the start of a frame of n bytes: magic,
 * version, op, flags, tenant/token lengths and characters, padding, and
 * payload_len == n - KVS_WIRE_HDR_SIZE. A request must carry a tenant. */
kvs_err kvs_wire_hdr_decode(const uint8_t *buf, size_t n, kvs_wire_hdr *h);
/* Copies the tenant into out (NUL-terminated). */
void kvs_wire_hdr_tenant(const kvs_wire_hdr *h, char out[KVS_WIRE_TENANT_MAX + 1]);
const char *kvs_wire_op_name(uint16_t op); /* "PUT", ..., "?" */
/* Fields of an encoded header, read or changed in place (hdr: KVS_WIRE_HDR_SIZE bytes). */
static inline uint16_t kvs_wire_hdr_op(const uint8_t *hdr) {
  return kvs__rd16(hdr + KVS_WIRE_OFF_OP);
}
static inline uint64_t kvs_wire_hdr_req_id(const uint8_t *hdr) {
  return kvs__rd64(hdr + KVS_WIRE_OFF_REQ_ID);
}
static inline int32_t kvs_wire_hdr_status(const uint8_t *hdr) {
  return (int32_t)kvs__rd32(hdr + KVS_WIRE_OFF_STATUS);
}
static inline void kvs_wire_hdr_add_flags(uint8_t *hdr, uint32_t flags) {
  kvs__wr32(hdr + KVS_WIRE_OFF_FLAGS, kvs__rd32(hdr + KVS_WIRE_OFF_FLAGS) | flags);
}

/* ------------------------------------------------------- entry metadata */
/* What the server knows of an entry. In a PUT the client fills the first
 * block; the server fills the second (ignored on PUT).
 * Segment g of the value spans [g ? seg_end[g-1] : 0, seg_end[g]); segments
 * are layer groups chosen by the client's codec; seg_end[n_segments-1] ==
 * value_bytes. Encoded size: kvs_wire_meta_size(). */
typedef struct kvs_wire_meta {
  kvs_key key; /* unsalted client key (kvs_key_prefix/_content) */
  kvs_model_id model;
  uint8_t key_kind;       /* kvs_key_kind */
  uint32_t n_tokens;      /* 1..KVS_WIRE_MAX_TOKENS */
  kvs_layout layout;      /* of the decoded KV */
  uint32_t codec_profile; /* codec's profile id, opaque to the server */
  uint32_t codec_params_len;
  uint32_t n_segments;         /* 1..KVS_WIRE_MAX_SEGMENTS */
  uint32_t ttl_s;              /* 0 = no expiry */
  uint64_t value_bytes;        /* encoded bytes */
  uint64_t checksum;           /* kvs_checksum64 of the encoded bytes */
  const uint8_t *tokens_le;    /* n_tokens x int32 LE */
  const uint8_t *codec_params; /* codec_params_len bytes */
  const uint8_t *seg_end_le;   /* n_segments x u64 LE */
  /* server-maintained */
  uint8_t tier; /* 0 RAM, 1 + the server's disk tier (1 disk, 2 cold) */
  uint8_t pinned;
  uint8_t flags; /* reserved, 0 */
  uint64_t created_ms, last_used_ms, hits;
} kvs_wire_meta;

#define KVS_WIRE_META_FIXED 128u
size_t kvs_wire_meta_size(const kvs_wire_meta *m); /* 0 when counts exceed the limits */
kvs_err kvs_wire_meta_encode(const kvs_wire_meta *m, uint8_t *out, size_t cap, size_t *written);
/* Decodes and validates (counts, kind, segment offsets monotone and ending at
 * value_bytes). *consumed = meta size. Views point into p. */
kvs_err kvs_wire_meta_decode(const uint8_t *p, size_t n, kvs_wire_meta *m, size_t *consumed);
/* Byte range of segment g (g < n_segments). */
void kvs_wire_meta_seg_range(const kvs_wire_meta *m, uint32_t g, uint64_t *off, uint64_t *len);

/* ---------------------------------------------------------------- PUT */
/* payload = meta || value (exactly meta.value_bytes bytes). A client sending
 * a large value writes the meta with kvs_wire_meta_encode and appends the
 * value (no need to build the payload in one buffer). */
kvs_err kvs_wire_put_decode(const uint8_t *p, size_t n, kvs_wire_meta *m, const uint8_t **value);

/* ---------------------------------------------------------------- GET */
/* A GET names an entry by key and proves it wants exactly this chunk: model
 * id and token ids must match the stored ones (else KVS_EMODEL / KVS_ETOKENS).
 * It returns the meta (flag GET_META) and/or segments [seg_first, seg_first +
 * seg_count) (seg_count KVS_WIRE_SEG_ALL = to the end; 0 = none). A client
 * streaming by layer group sends GET_META first, then keeps several GETs of
 * single segments in flight, decoding segment g while g+1 is arriving. */
#define KVS_WIRE_GET_META 0x1u
#define KVS_WIRE_SEG_ALL  0xFFFFFFFFu
typedef struct kvs_wire_get_req {
  kvs_key key;
  kvs_model_id model;
  uint32_t flags; /* KVS_WIRE_GET_* */
  uint32_t seg_first;
  uint32_t seg_count;
  uint32_t n_tokens; /* 1..KVS_WIRE_MAX_TOKENS */
  const uint8_t *tokens_le;
} kvs_wire_get_req;
#define KVS_WIRE_GET_REQ_FIXED 48u
size_t kvs_wire_get_req_size(const kvs_wire_get_req *r);
kvs_err kvs_wire_get_req_encode(const kvs_wire_get_req *r, uint8_t *out, size_t cap,
                                size_t *written);
kvs_err kvs_wire_get_req_decode(const uint8_t *p, size_t n, kvs_wire_get_req *r);

typedef struct kvs_wire_get_resp {
  uint32_t seg_first, seg_count; /* the segments actually returned */
  uint64_t byte_off, byte_len;   /* their byte range within the value */
  uint64_t value_bytes;          /* whole value */
  uint64_t checksum;             /* of the whole value */
  uint32_t meta_len;             /* 0 when the meta was not asked for */
  kvs_wire_meta meta;            /* valid when meta_len > 0 */
  const uint8_t *bytes;          /* byte_len bytes */
} kvs_wire_get_resp;
#define KVS_WIRE_GET_RESP_FIXED 48u
/* Writes the fixed part + the meta (when meta != NULL); the caller appends
 * byte_len bytes of value after *written. */
kvs_err kvs_wire_get_resp_encode_head(const kvs_wire_get_resp *r, const kvs_wire_meta *meta,
                                      uint8_t *out, size_t cap, size_t *written);
kvs_err kvs_wire_get_resp_decode(const uint8_t *p, size_t n, kvs_wire_get_resp *r);

/* ------------------------------------------------------------- LOOKUP */
/* For a token sequence cut into chunks, which chunks are cached. Each chunk
 * names its key and its token range within the shared token array; the server
 * checks model and tokens of every candidate. mode PREFIX stops at the first
 * miss (for prefix chains: the answer's n_prefix is the longest cached prefix
 * in chunks); mode EACH answers every chunk (content keys). */
#define KVS_WIRE_LOOKUP_EACH   0u
#define KVS_WIRE_LOOKUP_PREFIX 1u
typedef struct kvs_wire_lookup_chunk {
  kvs_key key;
  uint32_t tok_off, tok_len; /* within tokens; tok_len >= 1 */
} kvs_wire_lookup_chunk;
typedef struct kvs_wire_lookup_req {
  kvs_model_id model;
  uint32_t mode;
  uint32_t n_chunks;         /* 1..KVS_WIRE_MAX_LOOKUP */
  uint32_t n_tokens;         /* 1..KVS_WIRE_MAX_TOKENS * 16 */
  const uint8_t *chunks_raw; /* n_chunks x 24 bytes; read with kvs_wire_lookup_chunk_at */
  const uint8_t *tokens_le;
} kvs_wire_lookup_req;
#define KVS_WIRE_LOOKUP_FIXED      32u
#define KVS_WIRE_LOOKUP_CHUNK      24u
#define KVS_WIRE_LOOKUP_MAX_TOKENS (KVS_WIRE_MAX_TOKENS * 16u)
size_t kvs_wire_lookup_req_size(uint32_t n_chunks, uint32_t n_tokens);
/* chunks: n_chunks native structs; tokens: n_tokens int32. */
kvs_err kvs_wire_lookup_req_encode(const kvs_model_id *model, uint32_t mode,
                                   const kvs_wire_lookup_chunk *chunks, uint32_t n_chunks,
                                   const int32_t *tokens, uint32_t n_tokens, uint8_t *out,
                                   size_t cap, size_t *written);
kvs_err kvs_wire_lookup_req_decode(const uint8_t *p, size_t n, kvs_wire_lookup_req *r);
void kvs_wire_lookup_chunk_at(const kvs_wire_lookup_req *r, uint32_t i, kvs_wire_lookup_chunk *c);

/* answer: per chunk 0 = not cached, 1 + tier when cached (and model/tokens match). */
typedef struct kvs_wire_lookup_resp {
  uint32_t n_chunks;
  uint32_t n_prefix;     /* leading chunks cached */
  const uint8_t *status; /* n_chunks bytes */
} kvs_wire_lookup_resp;
size_t kvs_wire_lookup_resp_size(uint32_t n_chunks);
kvs_err kvs_wire_lookup_resp_encode(uint32_t n_prefix, const uint8_t *status, uint32_t n_chunks,
                                    uint8_t *out, size_t cap, size_t *written);
kvs_err kvs_wire_lookup_resp_decode(const uint8_t *p, size_t n, kvs_wire_lookup_resp *r);

/* ------------------------------- EXISTS / DELETE / PIN / UNPIN / TTL */
typedef struct kvs_wire_key_req {
  kvs_key key;
  kvs_model_id model; /* EXISTS: must match; others: ignored (zero) */
  uint32_t arg;       /* TTL: seconds from now, 0 = never expire; others 0 */
} kvs_wire_key_req;
#define KVS_WIRE_KEY_REQ_SIZE 40u
kvs_err kvs_wire_key_req_encode(const kvs_wire_key_req *r, uint8_t *out, size_t cap,
                                size_t *written);
kvs_err kvs_wire_key_req_decode(const uint8_t *p, size_t n, kvs_wire_key_req *r);

typedef struct kvs_wire_exists_resp {
  uint8_t present; /* 0/1 */
  uint8_t tier;
  uint8_t pinned;
  uint64_t value_bytes;
} kvs_wire_exists_resp;
#define KVS_WIRE_EXISTS_RESP_SIZE 16u
kvs_err kvs_wire_exists_resp_encode(const kvs_wire_exists_resp *r, uint8_t *out, size_t cap,
                                    size_t *written);
kvs_err kvs_wire_exists_resp_decode(const uint8_t *p, size_t n, kvs_wire_exists_resp *r);

/* -------------------------------------------------------------- STATS */
/* Counters for the requesting tenant's view of the server (global where a
 * counter is not per tenant), in this order; a newer server may send more.
 * Bytes per tier are in the answer's tier rows (version 2; version 1 had
 * bytes_t0..bytes_t2 counters after entries). */
typedef enum {
  KVS_STAT_ENTRIES = 0,
  KVS_STAT_HITS,
  KVS_STAT_MISSES,
  KVS_STAT_PUTS,
  KVS_STAT_EVICTIONS,
  KVS_STAT_QUARANTINES,
  KVS_STAT_EXPIRED,
  KVS_STAT_BYTES_IN,
  KVS_STAT_BYTES_OUT,
  KVS_STAT_REQUESTS,
  KVS_STAT_ERRORS,
  KVS_STAT_LEASES, /* shared-memory leases held now (a gauge, all tenants) */
  /* LOOKUP (what an engine asks before a prefill): requests, chunks and their
   * tokens asked about, and those cached. A chunk a PREFIX lookup did not probe
   * (after its first miss) counts as asked and not cached. HITS/MISSES above
   * count segment GETs and LEASEs, one per request. */
  KVS_STAT_LOOKUPS,
  KVS_STAT_LOOKUP_CHUNKS,
  KVS_STAT_LOOKUP_CHUNKS_HIT,
  KVS_STAT_LOOKUP_TOKENS,
  KVS_STAT_LOOKUP_TOKENS_HIT,
  KVS__STAT_COUNT
} kvs_wire_stat;
const char *kvs_wire_stat_name(uint32_t i); /* "entries", ... or "?" */
/* One tier of the server (RAM first, then its disk tiers hottest first):
 * 48 bytes on the wire, at the offsets below. */
#define KVS_WIRE_MAX_TIER_ROWS     16u
#define KVS_WIRE_TIER_NAME_MAX     15u /* [a-z0-9_-], NUL-padded to 16 bytes */
#define KVS_WIRE_TIER_ROW_SIZE     48u
#define KVS_WIRE_TIER_OFF_NAME     0u  /* char[16] */
#define KVS_WIRE_TIER_OFF_TIER     16u /* u8: its number in meta/EXISTS/LIST (0 = RAM) */
#define KVS_WIRE_TIER_OFF_PRESENT  17u /* u8: 1 configured, 0 absent */
#define KVS_WIRE_TIER_OFF_PAD      18u /* 6 zero bytes */
#define KVS_WIRE_TIER_OFF_USED     24u /* u64 bytes held */
#define KVS_WIRE_TIER_OFF_CAPACITY 32u /* u64 byte budget */
#define KVS_WIRE_TIER_OFF_ENTRIES  40u /* u64 entries (RAM: those with a RAM copy) */
typedef struct kvs_wire_tier_row {
  char name[KVS_WIRE_TIER_NAME_MAX + 1];
  uint8_t tier, present;
  uint64_t used, capacity, entries;
} kvs_wire_tier_row;
/* The answer: n u32 | n_tiers u32 | n x u64 counters | n_tiers x tier row. */
typedef struct kvs_wire_stats_resp {
  uint32_t n;
  uint64_t v[KVS_WIRE_MAX_STATS];
  uint32_t n_tiers;
  kvs_wire_tier_row tiers[KVS_WIRE_MAX_TIER_ROWS];
} kvs_wire_stats_resp;
size_t kvs_wire_stats_resp_size(uint32_t n, uint32_t n_tiers);
/* Counters only (no tier rows). */
kvs_err kvs_wire_stats_resp_encode(const uint64_t *v, uint32_t n, uint8_t *out, size_t cap,
                                   size_t *written);
kvs_err kvs_wire_stats_resp_encode_tiers(const uint64_t *v, uint32_t n,
                                         const kvs_wire_tier_row *rows, uint32_t n_tiers,
                                         uint8_t *out, size_t cap, size_t *written);
kvs_err kvs_wire_stats_resp_decode(const uint8_t *p, size_t n, kvs_wire_stats_resp *r);

/* -------------------------------------------------- LIST / EXPORT pages */
/* A page request: start after `cursor` (opaque, from the previous answer;
 * has_cursor 0 = from the start), at most `limit` items (<= KVS_WIRE_MAX_LIST;
 * EXPORT pages are also cut by the server's max message size). */
typedef struct kvs_wire_page_req {
  uint8_t has_cursor;
  uint8_t cursor[16];
  uint32_t limit;
} kvs_wire_page_req;
#define KVS_WIRE_PAGE_REQ_SIZE 24u
kvs_err kvs_wire_page_req_encode(const kvs_wire_page_req *r, uint8_t *out, size_t cap,
                                 size_t *written);
kvs_err kvs_wire_page_req_decode(const uint8_t *p, size_t n, kvs_wire_page_req *r);

typedef struct kvs_wire_list_item {
  kvs_key key;
  kvs_model_id model;
  uint32_t n_tokens;
  uint8_t key_kind, tier, pinned;
  uint64_t value_bytes, hits, last_used_ms, created_ms;
  uint32_t ttl_s;
} kvs_wire_list_item;
#define KVS_WIRE_LIST_ITEM_SIZE  80u
#define KVS_WIRE_PAGE_RESP_FIXED 24u
/* Page answer head: n items, more (1 = call again with next_cursor). */
typedef struct kvs_wire_page_resp {
  uint32_t n;
  uint8_t more;
  uint8_t next_cursor[16];
  const uint8_t *items; /* LIST: n x 80 bytes; EXPORT: n records */
  size_t items_len;
} kvs_wire_page_resp;
kvs_err kvs_wire_page_resp_encode_head(uint32_t n, uint8_t more, const uint8_t next_cursor[16],
                                       uint8_t *out, size_t cap, size_t *written);
/* op = KVS_OP_LIST checks n * 80 == items_len; KVS_OP_EXPORT walks the records. */
kvs_err kvs_wire_page_resp_decode(uint16_t op, const uint8_t *p, size_t n, kvs_wire_page_resp *r);
kvs_err kvs_wire_list_item_encode(const kvs_wire_list_item *it, uint8_t *out, size_t cap);
void kvs_wire_list_item_decode(const uint8_t *p, kvs_wire_list_item *it); /* p: 80 bytes */

/* ------------------------------------------ records (EXPORT / IMPORT) */
/* record = u64 rec_len || PUT payload (meta || value) || zero pad to 8, with
 * the meta's server block carrying created/hits/pin/ttl so an import restores
 * them. IMPORT request = u32 n || u32 0 || n records. */
#define KVS_WIRE_IMPORT_FIXED 8u
size_t kvs_wire_record_size(const kvs_wire_meta *m); /* incl. length and pad */
/* Writes a record head (length + meta); the caller appends value_bytes bytes
 * and zero padding up to kvs_wire_record_size(). */
kvs_err kvs_wire_record_encode_head(const kvs_wire_meta *m, uint8_t *out, size_t cap,
                                    size_t *written);
/* Iterates records: the cursor (p, n) advances past one record per call;
 * KVS_ENOENT at the end. */
kvs_err kvs_wire_record_next(const uint8_t **p, size_t *n, kvs_wire_meta *m, const uint8_t **value);
kvs_err kvs_wire_import_req_decode(const uint8_t *p, size_t n, uint32_t *count,
                                   const uint8_t **records, size_t *records_len);
typedef struct kvs_wire_import_resp {
  uint32_t n_ok, n_failed;
} kvs_wire_import_resp;
kvs_err kvs_wire_import_resp_encode(const kvs_wire_import_resp *r, uint8_t *out, size_t cap,
                                    size_t *written);
kvs_err kvs_wire_import_resp_decode(const uint8_t *p, size_t n, kvs_wire_import_resp *r);

/* ------------------------------------------------ LEASE / RELEASE (shm) */
/* Same-host fast path (kvstashd `shm = on`): the value's bytes stay in the
 * tenant's shared-memory segment and the answer says where. The server never
 * frees or reuses a leased range until the lease is released or expires.
 * Request: release_id u64 (a previous lease to release in the same round
 * trip, 0 = none) || a GET request (flags: GET_META; segment fields ignored).
 * KVS_EAGAIN when the entry is cached but not in shared memory: use GET. */
#define KVS_WIRE_SHM_NAME_MAX 64u
typedef struct kvs_wire_lease_req {
  uint64_t release_id;
  kvs_wire_get_req get;
} kvs_wire_lease_req;
kvs_err kvs_wire_lease_req_decode(const uint8_t *p, size_t n, kvs_wire_lease_req *r);

typedef struct kvs_wire_lease_resp {
  uint64_t lease_id;
  uint64_t expires_ms; /* wall clock; the range may be reused after it */
  uint64_t offset;     /* of the value in the segment */
  uint64_t value_bytes;
  uint64_t checksum;                        /* of the value */
  char shm_name[KVS_WIRE_SHM_NAME_MAX + 1]; /* shm_open name, NUL-terminated */
  uint32_t meta_len;
  kvs_wire_meta meta; /* valid when meta_len > 0 */
} kvs_wire_lease_resp;
#define KVS_WIRE_LEASE_RESP_FIXED 120u /* 5 x u64, name[64], meta_len u32, pad u32 */
/* Writes fixed part + meta (when meta != NULL). */
kvs_err kvs_wire_lease_resp_encode(const kvs_wire_lease_resp *r, const kvs_wire_meta *meta,
                                   uint8_t *out, size_t cap, size_t *written);
kvs_err kvs_wire_lease_resp_decode(const uint8_t *p, size_t n, kvs_wire_lease_resp *r);

/* ------------------------------- PUT_RESERVE / PUT_COMMIT / PUT_ABORT (shm) */
/* The same-host put (kvstashd `shm = on`): the client asks for a range of its
 * tenant's shared-memory segment (PUT_RESERVE), writes the encoded value at
 * the range's start, then PUT_COMMIT hands the meta; the server checks the
 * meta against the reservation and the value's checksum on the bytes in
 * place before it stores them. The range is the reservation's until it is
 * committed, aborted, expires (expires_ms) or its connection closes.
 * docs/protocol.md "PUT_RESERVE / PUT_COMMIT / PUT_ABORT". */
typedef struct kvs_wire_put_reserve_req {
  kvs_key key;
  kvs_model_id model;
  uint64_t bytes; /* 1..KVS_WIRE_MAX_VALUE: the most the value will take */
} kvs_wire_put_reserve_req;
#define KVS_WIRE_PUT_RESERVE_REQ_SIZE 48u /* key, model, bytes u64, reserved u64 */
kvs_err kvs_wire_put_reserve_req_encode(const kvs_wire_put_reserve_req *r, uint8_t *out, size_t cap,
                                        size_t *written);
kvs_err kvs_wire_put_reserve_req_decode(const uint8_t *p, size_t n, kvs_wire_put_reserve_req *r);

typedef struct kvs_wire_put_reserve_resp {
  uint64_t resv_id;
  uint64_t expires_ms;                      /* wall clock: commit before it */
  uint64_t offset;                          /* of the range in the segment */
  uint64_t bytes;                           /* of the range (= the request's bytes) */
  char shm_name[KVS_WIRE_SHM_NAME_MAX + 1]; /* shm_open name, NUL-terminated */
} kvs_wire_put_reserve_resp;
#define KVS_WIRE_PUT_RESERVE_RESP_SIZE 96u /* 4 x u64, name[64] */
kvs_err kvs_wire_put_reserve_resp_encode(const kvs_wire_put_reserve_resp *r, uint8_t *out,
                                         size_t cap, size_t *written);
kvs_err kvs_wire_put_reserve_resp_decode(const uint8_t *p, size_t n, kvs_wire_put_reserve_resp *r);

/* PUT_COMMIT: resv_id u64 || reserved u64 || meta (no value: the value is
 * the range's first meta.value_bytes bytes). */
typedef struct kvs_wire_put_commit_req {
  uint64_t resv_id;
  kvs_wire_meta meta; /* views into the frame */
} kvs_wire_put_commit_req;
#define KVS_WIRE_PUT_COMMIT_FIXED 16u
size_t kvs_wire_put_commit_req_size(const kvs_wire_meta *m); /* 0 when m is invalid */
kvs_err kvs_wire_put_commit_req_encode(uint64_t resv_id, const kvs_wire_meta *m, uint8_t *out,
                                       size_t cap, size_t *written);
kvs_err kvs_wire_put_commit_req_decode(const uint8_t *p, size_t n, kvs_wire_put_commit_req *r);

/* --------------------------------------------------------- byte streams */
/* kvstashd's byte-stream listeners (`listen = tcp+stream://...` or
 * `ipc+stream://...`, docs/protocol.md "Byte streams") carry these same frames
 * back to back on a plain TCP or IPC connection, without nng's message
 * framing: the header's payload_len (bytes 24..27) is the length prefix. One
 * request at a time per connection; each request gets exactly one answer
 * frame. A reader takes the 128 header bytes, checks them with
 * kvs_wire_hdr_decode_head, bounds payload_len (before allocating anything),
 * then reads the payload. So that a GET answer's value can be read straight
 * into its destination, its head (fixed part + meta) can be decoded before
 * the value bytes arrive. */

/* Largest request payload a stream listener reads: a GET (or LEASE) of
 * KVS_WIRE_MAX_TOKENS tokens. Bigger: KVS_ETOOBIG and the connection closed. */
#define KVS_WIRE_STREAM_MAX_REQ (KVS_WIRE_GET_REQ_FIXED + 8u + 4u * KVS_WIRE_MAX_TOKENS)
/* Upper bound of an encoded meta (kvs_wire_meta_size at every hard limit). */
#define KVS_WIRE_MAX_META                                                                          \
  (KVS_WIRE_META_FIXED + 8u * KVS_WIRE_MAX_SEGMENTS + 4u * KVS_WIRE_MAX_TOKENS +                   \
   KVS_WIRE_MAX_CODEC_PARAMS)

/* The checks of kvs_wire_hdr_decode on a header read without its payload
 * (every field but the frame length; h->payload_len is what follows). */
kvs_err kvs_wire_hdr_decode_head(const uint8_t buf[KVS_WIRE_HDR_SIZE], kvs_wire_hdr *h);
/* From the fixed part of a GET answer whose payload is payload_len bytes:
 * *head_len = fixed part + meta, the bytes to read before the value.
 * KVS_ETRUNC / KVS_ETOOBIG when the meta cannot fit. */
kvs_err kvs_wire_get_resp_head_len(const uint8_t fixed[KVS_WIRE_GET_RESP_FIXED],
                                   uint32_t payload_len, size_t *head_len);
/* Decodes a GET answer's head (p: head_len bytes from kvs_wire_get_resp_head_len)
 * with every check of kvs_wire_get_resp_decode; r->bytes is NULL: the
 * r->byte_len value bytes are the rest of the payload (checked to be
 * payload_len - head_len). Views point into p. */
kvs_err kvs_wire_get_resp_decode_head(const uint8_t *p, size_t head_len, uint32_t payload_len,
                                      kvs_wire_get_resp *r);

/* ------------------------------------------------------ whole requests */
/* A decoded request, as the server sees it (views into the frame). */
typedef struct kvs_wire_req {
  kvs_wire_hdr hdr;
  union {
    struct {
      kvs_wire_meta meta;
      const uint8_t *value;
    } put;
    kvs_wire_get_req get;
    kvs_wire_lookup_req lookup;
    kvs_wire_key_req key;
    kvs_wire_page_req page;
    struct {
      uint32_t count;
      const uint8_t *records;
      size_t records_len;
    } import;
    kvs_wire_lease_req lease;
    uint64_t release_id;
    kvs_wire_put_reserve_req reserve;
    kvs_wire_put_commit_req commit;
    uint64_t abort_id;
  } u;
} kvs_wire_req;
/* Header + payload of a request frame, per op; every payload fully checked. */
kvs_err kvs_wire_req_decode(const uint8_t *buf, size_t n, kvs_wire_req *r);

/* ------------------------------------------------------------ helpers */
/* Element i of an LE u32 / u64 array (core/kvs_le.h does the byte loads). */
static inline uint32_t kvs_wire_rd32(const uint8_t *p, size_t i) { return kvs__rd32(p + 4 * i); }
static inline uint64_t kvs_wire_rd64(const uint8_t *p, size_t i) { return kvs__rd64(p + 8 * i); }
/* 1 when the n LE int32 at le equal tokens[0..n). */
int kvs_wire_tokens_equal(const uint8_t *le, const int32_t *tokens, size_t n);

#ifdef __cplusplus
}
#endif
#endif
