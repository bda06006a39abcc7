/* wire.c - encoders and decoders of the kvstash data-plane frames.
 * The byte-offset tables live in docs/protocol.md. */
#include <string.h>

#include "kvs_wire.h"

_Static_assert(sizeof(kvs_key) == 16, "keys are 16 bytes on the wire");
_Static_assert(offsetof(kvs_layout, rope_scaling) == 32,
               "the wire carries the layout's first 32 bytes");
_Static_assert(KVS_WIRE_HDR_SIZE == 32 + KVS_WIRE_TENANT_MAX + KVS_WIRE_TOKEN_MAX, "header layout");
/* the named header offsets tile the header, each field after the last */
_Static_assert(KVS_WIRE_OFF_MAGIC == 0 && KVS_WIRE_OFF_VERSION == KVS_WIRE_OFF_MAGIC + 4 &&
                   KVS_WIRE_OFF_OP == KVS_WIRE_OFF_VERSION + 2 &&
                   KVS_WIRE_OFF_FLAGS == KVS_WIRE_OFF_OP + 2 &&
                   KVS_WIRE_OFF_STATUS == KVS_WIRE_OFF_FLAGS + 4 &&
                   KVS_WIRE_OFF_REQ_ID == KVS_WIRE_OFF_STATUS + 4 &&
                   KVS_WIRE_OFF_PAYLOAD_LEN == KVS_WIRE_OFF_REQ_ID + 8 &&
                   KVS_WIRE_OFF_TENANT_LEN == KVS_WIRE_OFF_PAYLOAD_LEN + 4 &&
                   KVS_WIRE_OFF_TOKEN_LEN == KVS_WIRE_OFF_TENANT_LEN + 1 &&
                   KVS_WIRE_OFF_RESERVED == KVS_WIRE_OFF_TOKEN_LEN + 1 &&
                   KVS_WIRE_OFF_TENANT == KVS_WIRE_OFF_RESERVED + 2 &&
                   KVS_WIRE_OFF_TOKEN == KVS_WIRE_OFF_TENANT + KVS_WIRE_TENANT_MAX &&
                   KVS_WIRE_HDR_SIZE == KVS_WIRE_OFF_TOKEN + KVS_WIRE_TOKEN_MAX,
               "header offsets");

/* ---------------------------------------------------- little-endian io (core/kvs_le.h) */
static void wrf(uint8_t *p, float f) {
  uint32_t v;
  memcpy(&v, &f, 4);
  kvs__wr32(p, v);
}
static float rdf(const uint8_t *p) {
  uint32_t v = kvs__rd32(p);
  float f;
  memcpy(&f, &v, 4);
  return f;
}
static size_t pad8(size_t n) { return (n + 7u) & ~(size_t)7u; }
static int all_zero(const uint8_t *p, size_t n) {
  uint8_t acc = 0;
  for (size_t i = 0; i < n; i++)
    acc |= p[i];
  return acc == 0;
}

int kvs_wire_tokens_equal(const uint8_t *le, const int32_t *tokens, size_t n) {
  if (n == 0) return 1;
  return memcmp(le, tokens, n * 4) == 0; /* little-endian host: same bytes */
}

const char *kvs_wire_op_name(uint16_t op) {
#define KVS__WIRE_OP_NAME(id, name, idem, fast, rq, rs) [id] = #name,
  static const char *names[] = {[0] = "?", KVS_WIRE_OP_MAP(KVS__WIRE_OP_NAME)};
#undef KVS__WIRE_OP_NAME
  /* with designated ids, this holds only when the ids are exactly 1..KVS__OP_MAX */
  _Static_assert(sizeof names / sizeof names[0] == KVS__OP_MAX + 1, "op ids are 1..KVS__OP_MAX");
  return op <= KVS__OP_MAX ? names[op] : "?";
}

const char *kvs_wire_stat_name(uint32_t i) {
  static const char *names[] = {"entries",
                                "hits",
                                "misses",
                                "puts",
                                "evictions",
                                "quarantines",
                                "expired",
                                "bytes_in",
                                "bytes_out",
                                "requests",
                                "errors",
                                "leases",
                                "lookups",
                                "lookup_chunks",
                                "lookup_chunks_hit",
                                "lookup_tokens",
                                "lookup_tokens_hit"};
  _Static_assert(sizeof names / sizeof names[0] == KVS__STAT_COUNT, "stat names");
  return i < KVS__STAT_COUNT ? names[i] : "?";
}

/* --------------------------------------------------------------- header */
static int tenant_char_ok(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-' || c == '.';
}

kvs_err kvs_wire_hdr_init(kvs_wire_hdr *h, uint16_t op, uint64_t req_id, const char *tenant,
                          const void *token, size_t token_len) {
  if (!h || !tenant) return KVS_EINVAL;
  memset(h, 0, sizeof *h);
  size_t tl = strlen(tenant);
  if (tl == 0 || tl > KVS_WIRE_TENANT_MAX || token_len > KVS_WIRE_TOKEN_MAX) return KVS_EINVAL;
  if (token_len && !token) return KVS_EINVAL;
  for (size_t i = 0; i < tl; i++)
    if (!tenant_char_ok(tenant[i])) return KVS_EINVAL;
  h->magic = KVS_WIRE_MAGIC;
  h->version = KVS_WIRE_VERSION;
  h->op = op;
  h->req_id = req_id;
  h->tenant_len = (uint8_t)tl;
  memcpy(h->tenant, tenant, tl);
  h->token_len = (uint8_t)token_len;
  if (token_len) memcpy(h->token, token, token_len);
  return KVS_OK;
}

kvs_err kvs_wire_hdr_encode(const kvs_wire_hdr *h, uint8_t out[KVS_WIRE_HDR_SIZE]) {
  if (!h || !out) return KVS_EINVAL;
  if (h->tenant_len > KVS_WIRE_TENANT_MAX || h->token_len > KVS_WIRE_TOKEN_MAX) return KVS_EINVAL;
  memset(out, 0, KVS_WIRE_HDR_SIZE);
  kvs__wr32(out + KVS_WIRE_OFF_MAGIC, h->magic);
  kvs__wr16(out + KVS_WIRE_OFF_VERSION, h->version);
  kvs__wr16(out + KVS_WIRE_OFF_OP, h->op);
  kvs__wr32(out + KVS_WIRE_OFF_FLAGS, h->flags);
  kvs__wr32(out + KVS_WIRE_OFF_STATUS, (uint32_t)h->status);
  kvs__wr64(out + KVS_WIRE_OFF_REQ_ID, h->req_id);
  kvs__wr32(out + KVS_WIRE_OFF_PAYLOAD_LEN, h->payload_len);
  out[KVS_WIRE_OFF_TENANT_LEN] = h->tenant_len;
  out[KVS_WIRE_OFF_TOKEN_LEN] = h->token_len;
  memcpy(out + KVS_WIRE_OFF_TENANT, h->tenant, h->tenant_len);
  memcpy(out + KVS_WIRE_OFF_TOKEN, h->token, h->token_len);
  return KVS_OK;
}

/* whole: n is the frame's length (payload_len must match it); otherwise
 * only the header is there. */
static kvs_err hdr_decode(const uint8_t *buf, size_t n, int whole, kvs_wire_hdr *h) {
  KVS_RETURN_ERROR_IF(!buf || !h, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n < KVS_WIRE_HDR_SIZE, KVS_ETRUNC, "frame shorter than header");
  memset(h, 0, sizeof *h);
  h->magic = kvs__rd32(buf + KVS_WIRE_OFF_MAGIC);
  KVS_RETURN_ERROR_IF(h->magic != KVS_WIRE_MAGIC, KVS_EMAGIC, "frame magic");
  h->version = kvs__rd16(buf + KVS_WIRE_OFF_VERSION);
  KVS_RETURN_ERROR_IF(h->version != KVS_WIRE_VERSION, KVS_EVERSION, "frame version");
  h->op = kvs__rd16(buf + KVS_WIRE_OFF_OP);
  KVS_RETURN_ERROR_IF(h->op == 0 || h->op > KVS__OP_MAX, KVS_ENOTSUP, "frame op");
  h->flags = kvs__rd32(buf + KVS_WIRE_OFF_FLAGS);
  KVS_RETURN_ERROR_IF(h->flags & ~KVS_WIRE_F_KNOWN, KVS_EPROTO, "unknown flags");
  h->status = (int32_t)kvs__rd32(buf + KVS_WIRE_OFF_STATUS);
  h->req_id = kvs__rd64(buf + KVS_WIRE_OFF_REQ_ID);
  h->payload_len = kvs__rd32(buf + KVS_WIRE_OFF_PAYLOAD_LEN);
  KVS_RETURN_ERROR_IF(whole && (uint64_t)h->payload_len != (uint64_t)(n - KVS_WIRE_HDR_SIZE),
                      KVS_ETRUNC, "payload length != frame length");
  h->tenant_len = buf[KVS_WIRE_OFF_TENANT_LEN];
  h->token_len = buf[KVS_WIRE_OFF_TOKEN_LEN];
  h->reserved = kvs__rd16(buf + KVS_WIRE_OFF_RESERVED);
  KVS_RETURN_ERROR_IF(h->reserved != 0, KVS_EPROTO, "reserved header bytes");
  KVS_RETURN_ERROR_IF(h->tenant_len > KVS_WIRE_TENANT_MAX, KVS_EPROTO, "tenant length");
  KVS_RETURN_ERROR_IF(h->token_len > KVS_WIRE_TOKEN_MAX, KVS_EPROTO, "token length");
  int is_resp = (h->flags & KVS_WIRE_F_RESPONSE) != 0;
  KVS_RETURN_ERROR_IF(!is_resp && h->tenant_len == 0, KVS_EPROTO, "request without tenant");
  KVS_RETURN_ERROR_IF(!is_resp && h->status != 0, KVS_EPROTO, "request with a status");
  memcpy(h->tenant, buf + KVS_WIRE_OFF_TENANT, h->tenant_len);
  for (unsigned i = 0; i < h->tenant_len; i++)
    KVS_RETURN_ERROR_IF(!tenant_char_ok(h->tenant[i]), KVS_EPROTO, "tenant characters");
  KVS_RETURN_ERROR_IF(
      !all_zero(buf + KVS_WIRE_OFF_TENANT + h->tenant_len, KVS_WIRE_TENANT_MAX - h->tenant_len),
      KVS_EPROTO, "tenant padding");
  memcpy(h->token, buf + KVS_WIRE_OFF_TOKEN, h->token_len);
  KVS_RETURN_ERROR_IF(
      !all_zero(buf + KVS_WIRE_OFF_TOKEN + h->token_len, KVS_WIRE_TOKEN_MAX - h->token_len),
      KVS_EPROTO, "token padding");
  return KVS_OK;
}

kvs_err kvs_wire_hdr_decode(const uint8_t *buf, size_t n, kvs_wire_hdr *h) {
  return hdr_decode(buf, n, 1, h);
}

kvs_err kvs_wire_hdr_decode_head(const uint8_t buf[KVS_WIRE_HDR_SIZE], kvs_wire_hdr *h) {
  return hdr_decode(buf, KVS_WIRE_HDR_SIZE, 0, h);
}

void kvs_wire_hdr_tenant(const kvs_wire_hdr *h, char out[KVS_WIRE_TENANT_MAX + 1]) {
  size_t n = h->tenant_len <= KVS_WIRE_TENANT_MAX ? h->tenant_len : KVS_WIRE_TENANT_MAX;
  memcpy(out, h->tenant, n);
  out[n] = 0;
}

/* ----------------------------------------------------------------- meta */
size_t kvs_wire_meta_size(const kvs_wire_meta *m) {
  if (!m || m->n_tokens > KVS_WIRE_MAX_TOKENS || m->n_segments > KVS_WIRE_MAX_SEGMENTS ||
      m->codec_params_len > KVS_WIRE_MAX_CODEC_PARAMS)
    return 0;
  return pad8(KVS_WIRE_META_FIXED + 8u * (size_t)m->n_segments + 4u * (size_t)m->n_tokens +
              m->codec_params_len);
}

static void layout_wr(uint8_t *p, const kvs_layout *l) {
  kvs__wr32(p + 0, l->n_layers);
  kvs__wr32(p + 4, l->n_kv_heads);
  kvs__wr32(p + 8, l->head_dim);
  kvs__wr32(p + 12, l->dtype);
  kvs__wr32(p + 16, l->rope_type);
  kvs__wr32(p + 20, l->rope_dims);
  wrf(p + 24, l->rope_theta);
  wrf(p + 28, l->rope_freq_scale);
}
static void layout_rd(const uint8_t *p, kvs_layout *l) {
  l->n_layers = kvs__rd32(p + 0);
  l->n_kv_heads = kvs__rd32(p + 4);
  l->head_dim = kvs__rd32(p + 8);
  l->dtype = kvs__rd32(p + 12);
  l->rope_type = kvs__rd32(p + 16);
  l->rope_dims = kvs__rd32(p + 20);
  l->rope_theta = rdf(p + 24);
  l->rope_freq_scale = rdf(p + 28);
  l->rope_scaling = KVS_ROPE_SCALING_NONE; /* not carried yet (kvs_core.h) */
  l->rope_orig_ctx = l->rope_scale_a = l->rope_scale_b = 0.0f;
}

kvs_err kvs_wire_meta_encode(const kvs_wire_meta *m, uint8_t *out, size_t cap, size_t *written) {
  if (!m || !out) return KVS_EINVAL;
  size_t need = kvs_wire_meta_size(m);
  if (need == 0 || m->n_tokens == 0 || m->n_segments == 0) return KVS_ERANGE;
  if (cap < need) return KVS_ETOOBIG;
  if (!m->tokens_le || !m->seg_end_le || (m->codec_params_len && !m->codec_params))
    return KVS_EINVAL;
  if (m->layout.rope_scaling != KVS_ROPE_SCALING_NONE) return KVS_ENOTSUP; /* not carried yet */
  memset(out, 0, need);
  memcpy(out + 0, m->key.b, 16);
  memcpy(out + 16, m->model.b, 16);
  out[32] = m->key_kind;
  out[33] = m->tier;
  out[34] = m->pinned;
  out[35] = m->flags;
  kvs__wr32(out + 36, m->n_tokens);
  layout_wr(out + 40, &m->layout);
  kvs__wr32(out + 72, m->codec_profile);
  kvs__wr32(out + 76, m->codec_params_len);
  kvs__wr32(out + 80, m->n_segments);
  kvs__wr32(out + 84, m->ttl_s);
  kvs__wr64(out + 88, m->value_bytes);
  kvs__wr64(out + 96, m->checksum);
  kvs__wr64(out + 104, m->created_ms);
  kvs__wr64(out + 112, m->last_used_ms);
  kvs__wr64(out + 120, m->hits);
  size_t o = KVS_WIRE_META_FIXED;
  memcpy(out + o, m->seg_end_le, 8u * m->n_segments);
  o += 8u * m->n_segments;
  memcpy(out + o, m->tokens_le, 4u * m->n_tokens);
  o += 4u * m->n_tokens;
  if (m->codec_params_len) memcpy(out + o, m->codec_params, m->codec_params_len);
  if (written) *written = need;
  return KVS_OK;
}

kvs_err kvs_wire_meta_decode(const uint8_t *p, size_t n, kvs_wire_meta *m, size_t *consumed) {
  KVS_RETURN_ERROR_IF(!p || !m, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n < KVS_WIRE_META_FIXED, KVS_ETRUNC, "meta fixed part");
  memset(m, 0, sizeof *m);
  memcpy(m->key.b, p, 16);
  memcpy(m->model.b, p + 16, 16);
  m->key_kind = p[32];
  m->tier = p[33];
  m->pinned = p[34];
  m->flags = p[35];
  KVS_RETURN_ERROR_IF(m->key_kind != KVS_KEY_KIND_PREFIX && m->key_kind != KVS_KEY_KIND_CONTENT,
                      KVS_EPROTO, "key kind");
  KVS_RETURN_ERROR_IF(m->tier > KVS_WIRE_MAX_TIER || m->pinned > 1 || m->flags != 0, KVS_EPROTO,
                      "meta bytes");
  m->n_tokens = kvs__rd32(p + 36);
  layout_rd(p + 40, &m->layout);
  m->codec_profile = kvs__rd32(p + 72);
  m->codec_params_len = kvs__rd32(p + 76);
  m->n_segments = kvs__rd32(p + 80);
  m->ttl_s = kvs__rd32(p + 84);
  m->value_bytes = kvs__rd64(p + 88);
  m->checksum = kvs__rd64(p + 96);
  m->created_ms = kvs__rd64(p + 104);
  m->last_used_ms = kvs__rd64(p + 112);
  m->hits = kvs__rd64(p + 120);
  KVS_RETURN_ERROR_IF(m->n_tokens == 0 || m->n_tokens > KVS_WIRE_MAX_TOKENS, KVS_ERANGE,
                      "token count");
  KVS_RETURN_ERROR_IF(m->n_segments == 0 || m->n_segments > KVS_WIRE_MAX_SEGMENTS, KVS_ERANGE,
                      "segment count");
  KVS_RETURN_ERROR_IF(m->codec_params_len > KVS_WIRE_MAX_CODEC_PARAMS, KVS_ERANGE,
                      "codec params length");
  KVS_RETURN_ERROR_IF(m->value_bytes > KVS_WIRE_MAX_VALUE, KVS_ETOOBIG, "value size");
  size_t need = kvs_wire_meta_size(m);
  KVS_RETURN_ERROR_IF(n < need, KVS_ETRUNC, "meta variable part");
  size_t o = KVS_WIRE_META_FIXED;
  m->seg_end_le = p + o;
  o += 8u * m->n_segments;
  m->tokens_le = p + o;
  o += 4u * m->n_tokens;
  m->codec_params = p + o;
  o += m->codec_params_len;
  KVS_RETURN_ERROR_IF(!all_zero(p + o, need - o), KVS_EPROTO, "meta padding");
  uint64_t prev = 0;
  for (uint32_t g = 0; g < m->n_segments; g++) {
    uint64_t e = kvs_wire_rd64(m->seg_end_le, g);
    KVS_RETURN_ERROR_IF(e < prev, KVS_ECORRUPT, "segment offsets decrease");
    prev = e;
  }
  KVS_RETURN_ERROR_IF(prev != m->value_bytes, KVS_ECORRUPT, "last segment end != value size");
  if (consumed) *consumed = need;
  return KVS_OK;
}

void kvs_wire_meta_seg_range(const kvs_wire_meta *m, uint32_t g, uint64_t *off, uint64_t *len) {
  uint64_t s = g ? kvs_wire_rd64(m->seg_end_le, g - 1) : 0;
  uint64_t e = kvs_wire_rd64(m->seg_end_le, g);
  *off = s;
  *len = e - s;
}

/* ------------------------------------------------------------------ PUT */
kvs_err kvs_wire_put_decode(const uint8_t *p, size_t n, kvs_wire_meta *m, const uint8_t **value) {
  size_t used = 0;
  KVS_TRY(kvs_wire_meta_decode(p, n, m, &used));
  KVS_RETURN_ERROR_IF((uint64_t)(n - used) != m->value_bytes, KVS_ETRUNC,
                      "PUT value length != meta value_bytes");
  if (value) *value = p + used;
  return KVS_OK;
}

/* ------------------------------------------------------------------ GET */
size_t kvs_wire_get_req_size(const kvs_wire_get_req *r) {
  if (!r || r->n_tokens > KVS_WIRE_MAX_TOKENS) return 0;
  return KVS_WIRE_GET_REQ_FIXED + 4u * (size_t)r->n_tokens;
}

kvs_err kvs_wire_get_req_encode(const kvs_wire_get_req *r, uint8_t *out, size_t cap,
                                size_t *written) {
  if (!r || !out || !r->tokens_le) return KVS_EINVAL;
  if (r->n_tokens == 0 || r->n_tokens > KVS_WIRE_MAX_TOKENS) return KVS_ERANGE;
  size_t need = kvs_wire_get_req_size(r);
  if (cap < need) return KVS_ETOOBIG;
  memcpy(out, r->key.b, 16);
  memcpy(out + 16, r->model.b, 16);
  kvs__wr32(out + 32, r->flags);
  kvs__wr32(out + 36, r->seg_first);
  kvs__wr32(out + 40, r->seg_count);
  kvs__wr32(out + 44, r->n_tokens);
  memcpy(out + 48, r->tokens_le, 4u * r->n_tokens);
  if (written) *written = need;
  return KVS_OK;
}

kvs_err kvs_wire_get_req_decode(const uint8_t *p, size_t n, kvs_wire_get_req *r) {
  KVS_RETURN_ERROR_IF(!p || !r, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n < KVS_WIRE_GET_REQ_FIXED, KVS_ETRUNC, "GET fixed part");
  memset(r, 0, sizeof *r);
  memcpy(r->key.b, p, 16);
  memcpy(r->model.b, p + 16, 16);
  r->flags = kvs__rd32(p + 32);
  r->seg_first = kvs__rd32(p + 36);
  r->seg_count = kvs__rd32(p + 40);
  r->n_tokens = kvs__rd32(p + 44);
  KVS_RETURN_ERROR_IF(r->flags & ~KVS_WIRE_GET_META, KVS_EPROTO, "GET flags");
  KVS_RETURN_ERROR_IF(r->n_tokens == 0 || r->n_tokens > KVS_WIRE_MAX_TOKENS, KVS_ERANGE,
                      "GET token count");
  KVS_RETURN_ERROR_IF(n != KVS_WIRE_GET_REQ_FIXED + 4u * (size_t)r->n_tokens, KVS_ETRUNC,
                      "GET length");
  KVS_RETURN_ERROR_IF(r->seg_count != KVS_WIRE_SEG_ALL && r->seg_first > KVS_WIRE_MAX_SEGMENTS,
                      KVS_ERANGE, "GET segment range");
  r->tokens_le = p + KVS_WIRE_GET_REQ_FIXED;
  return KVS_OK;
}

kvs_err kvs_wire_get_resp_encode_head(const kvs_wire_get_resp *r, const kvs_wire_meta *meta,
                                      uint8_t *out, size_t cap, size_t *written) {
  if (!r || !out) return KVS_EINVAL;
  size_t ml = 0;
  if (meta) {
    ml = kvs_wire_meta_size(meta);
    if (ml == 0) return KVS_ERANGE;
  }
  if (cap < KVS_WIRE_GET_RESP_FIXED + ml) return KVS_ETOOBIG;
  memset(out, 0, KVS_WIRE_GET_RESP_FIXED);
  kvs__wr32(out + 0, r->seg_first);
  kvs__wr32(out + 4, r->seg_count);
  kvs__wr64(out + 8, r->byte_off);
  kvs__wr64(out + 16, r->byte_len);
  kvs__wr64(out + 24, r->value_bytes);
  kvs__wr64(out + 32, r->checksum);
  kvs__wr32(out + 40, (uint32_t)ml);
  if (meta) KVS_TRY(kvs_wire_meta_encode(meta, out + KVS_WIRE_GET_RESP_FIXED, ml, NULL));
  if (written) *written = KVS_WIRE_GET_RESP_FIXED + ml;
  return KVS_OK;
}

static kvs_err get_resp_decode(const uint8_t *p, size_t n, uint64_t absent, kvs_wire_get_resp *r);

kvs_err kvs_wire_get_resp_head_len(const uint8_t fixed[KVS_WIRE_GET_RESP_FIXED],
                                   uint32_t payload_len, size_t *head_len) {
  KVS_RETURN_ERROR_IF(!fixed || !head_len, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(payload_len < KVS_WIRE_GET_RESP_FIXED, KVS_ETRUNC, "GET answer fixed part");
  uint32_t ml = kvs__rd32(fixed + 40);
  KVS_RETURN_ERROR_IF(ml > KVS_WIRE_MAX_META, KVS_ETOOBIG, "GET answer meta length");
  KVS_RETURN_ERROR_IF(ml > payload_len - KVS_WIRE_GET_RESP_FIXED, KVS_ETRUNC, "GET answer meta");
  *head_len = KVS_WIRE_GET_RESP_FIXED + (size_t)ml;
  return KVS_OK;
}

kvs_err kvs_wire_get_resp_decode_head(const uint8_t *p, size_t head_len, uint32_t payload_len,
                                      kvs_wire_get_resp *r) {
  KVS_RETURN_ERROR_IF(!p || !r, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(head_len < KVS_WIRE_GET_RESP_FIXED, KVS_ETRUNC, "GET answer fixed part");
  size_t want = 0;
  KVS_TRY(kvs_wire_get_resp_head_len(p, payload_len, &want));
  KVS_RETURN_ERROR_IF(want != head_len, KVS_EPROTO, "GET answer head length");
  KVS_TRY(get_resp_decode(p, head_len, (uint64_t)payload_len - head_len, r));
  r->bytes = NULL;
  return KVS_OK;
}

kvs_err kvs_wire_get_resp_decode(const uint8_t *p, size_t n, kvs_wire_get_resp *r) {
  KVS_RETURN_ERROR_IF(!p || !r, KVS_EINVAL, "null");
  return get_resp_decode(p, n, 0, r);
}

/* n bytes at p; `absent` value bytes of the payload are not in p (stream
 * head) and count as if they followed. */
static kvs_err get_resp_decode(const uint8_t *p, size_t n, uint64_t absent, kvs_wire_get_resp *r) {
  KVS_RETURN_ERROR_IF(n < KVS_WIRE_GET_RESP_FIXED, KVS_ETRUNC, "GET answer fixed part");
  memset(r, 0, sizeof *r);
  r->seg_first = kvs__rd32(p);
  r->seg_count = kvs__rd32(p + 4);
  r->byte_off = kvs__rd64(p + 8);
  r->byte_len = kvs__rd64(p + 16);
  r->value_bytes = kvs__rd64(p + 24);
  r->checksum = kvs__rd64(p + 32);
  r->meta_len = kvs__rd32(p + 40);
  KVS_RETURN_ERROR_IF(kvs__rd32(p + 44) != 0, KVS_EPROTO, "GET answer reserved");
  KVS_RETURN_ERROR_IF(r->value_bytes > KVS_WIRE_MAX_VALUE, KVS_ETOOBIG, "value size");
  KVS_RETURN_ERROR_IF(r->byte_off > r->value_bytes || r->byte_len > r->value_bytes - r->byte_off,
                      KVS_ERANGE, "GET answer byte range");
  size_t rest = n - KVS_WIRE_GET_RESP_FIXED;
  KVS_RETURN_ERROR_IF(r->meta_len > rest, KVS_ETRUNC, "GET answer meta");
  if (r->meta_len) {
    size_t used = 0;
    KVS_TRY(kvs_wire_meta_decode(p + KVS_WIRE_GET_RESP_FIXED, r->meta_len, &r->meta, &used));
    KVS_RETURN_ERROR_IF(used != r->meta_len, KVS_EPROTO, "GET answer meta length");
    KVS_RETURN_ERROR_IF(r->meta.value_bytes != r->value_bytes || r->meta.checksum != r->checksum,
                        KVS_EPROTO, "GET answer meta disagrees");
  }
  rest -= r->meta_len;
  KVS_RETURN_ERROR_IF((uint64_t)rest + absent != r->byte_len, KVS_ETRUNC, "GET answer bytes");
  r->bytes = p + KVS_WIRE_GET_RESP_FIXED + r->meta_len;
  return KVS_OK;
}

/* --------------------------------------------------------------- LOOKUP */
size_t kvs_wire_lookup_req_size(uint32_t n_chunks, uint32_t n_tokens) {
  return KVS_WIRE_LOOKUP_FIXED + (size_t)KVS_WIRE_LOOKUP_CHUNK * n_chunks + 4u * (size_t)n_tokens;
}

kvs_err kvs_wire_lookup_req_encode(const kvs_model_id *model, uint32_t mode,
                                   const kvs_wire_lookup_chunk *chunks, uint32_t n_chunks,
                                   const int32_t *tokens, uint32_t n_tokens, uint8_t *out,
                                   size_t cap, size_t *written) {
  if (!model || !chunks || !tokens || !out) return KVS_EINVAL;
  if (mode > KVS_WIRE_LOOKUP_PREFIX || n_chunks == 0 || n_chunks > KVS_WIRE_MAX_LOOKUP ||
      n_tokens == 0 || n_tokens > KVS_WIRE_LOOKUP_MAX_TOKENS)
    return KVS_ERANGE;
  size_t need = kvs_wire_lookup_req_size(n_chunks, n_tokens);
  if (cap < need) return KVS_ETOOBIG;
  memset(out, 0, KVS_WIRE_LOOKUP_FIXED);
  memcpy(out, model->b, 16);
  kvs__wr32(out + 16, mode);
  kvs__wr32(out + 20, n_chunks);
  kvs__wr32(out + 24, n_tokens);
  uint8_t *c = out + KVS_WIRE_LOOKUP_FIXED;
  for (uint32_t i = 0; i < n_chunks; i++, c += KVS_WIRE_LOOKUP_CHUNK) {
    if (chunks[i].tok_len == 0 || chunks[i].tok_off > n_tokens ||
        chunks[i].tok_len > n_tokens - chunks[i].tok_off)
      return KVS_ERANGE;
    memcpy(c, chunks[i].key.b, 16);
    kvs__wr32(c + 16, chunks[i].tok_off);
    kvs__wr32(c + 20, chunks[i].tok_len);
  }
  memcpy(c, tokens, 4u * (size_t)n_tokens);
  if (written) *written = need;
  return KVS_OK;
}

kvs_err kvs_wire_lookup_req_decode(const uint8_t *p, size_t n, kvs_wire_lookup_req *r) {
  KVS_RETURN_ERROR_IF(!p || !r, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n < KVS_WIRE_LOOKUP_FIXED, KVS_ETRUNC, "LOOKUP fixed part");
  memset(r, 0, sizeof *r);
  memcpy(r->model.b, p, 16);
  r->mode = kvs__rd32(p + 16);
  r->n_chunks = kvs__rd32(p + 20);
  r->n_tokens = kvs__rd32(p + 24);
  KVS_RETURN_ERROR_IF(kvs__rd32(p + 28) != 0, KVS_EPROTO, "LOOKUP reserved");
  KVS_RETURN_ERROR_IF(r->mode > KVS_WIRE_LOOKUP_PREFIX, KVS_EPROTO, "LOOKUP mode");
  KVS_RETURN_ERROR_IF(r->n_chunks == 0 || r->n_chunks > KVS_WIRE_MAX_LOOKUP, KVS_ERANGE,
                      "LOOKUP chunk count");
  KVS_RETURN_ERROR_IF(r->n_tokens == 0 || r->n_tokens > KVS_WIRE_LOOKUP_MAX_TOKENS, KVS_ERANGE,
                      "LOOKUP token count");
  KVS_RETURN_ERROR_IF(n != kvs_wire_lookup_req_size(r->n_chunks, r->n_tokens), KVS_ETRUNC,
                      "LOOKUP length");
  r->chunks_raw = p + KVS_WIRE_LOOKUP_FIXED;
  r->tokens_le = r->chunks_raw + (size_t)KVS_WIRE_LOOKUP_CHUNK * r->n_chunks;
  for (uint32_t i = 0; i < r->n_chunks; i++) {
    kvs_wire_lookup_chunk c;
    kvs_wire_lookup_chunk_at(r, i, &c);
    KVS_RETURN_ERROR_IF(c.tok_len == 0 || c.tok_len > KVS_WIRE_MAX_TOKENS ||
                            c.tok_off > r->n_tokens || c.tok_len > r->n_tokens - c.tok_off,
                        KVS_ERANGE, "LOOKUP chunk token range");
  }
  return KVS_OK;
}

void kvs_wire_lookup_chunk_at(const kvs_wire_lookup_req *r, uint32_t i, kvs_wire_lookup_chunk *c) {
  const uint8_t *q = r->chunks_raw + (size_t)KVS_WIRE_LOOKUP_CHUNK * i;
  memcpy(c->key.b, q, 16);
  c->tok_off = kvs__rd32(q + 16);
  c->tok_len = kvs__rd32(q + 20);
}

size_t kvs_wire_lookup_resp_size(uint32_t n_chunks) { return 8u + pad8(n_chunks); }

kvs_err kvs_wire_lookup_resp_encode(uint32_t n_prefix, const uint8_t *status, uint32_t n_chunks,
                                    uint8_t *out, size_t cap, size_t *written) {
  if (!status || !out || n_chunks > KVS_WIRE_MAX_LOOKUP || n_prefix > n_chunks) return KVS_EINVAL;
  size_t need = kvs_wire_lookup_resp_size(n_chunks);
  if (cap < need) return KVS_ETOOBIG;
  memset(out, 0, need);
  kvs__wr32(out, n_chunks);
  kvs__wr32(out + 4, n_prefix);
  memcpy(out + 8, status, n_chunks);
  if (written) *written = need;
  return KVS_OK;
}

kvs_err kvs_wire_lookup_resp_decode(const uint8_t *p, size_t n, kvs_wire_lookup_resp *r) {
  KVS_RETURN_ERROR_IF(!p || !r, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n < 8, KVS_ETRUNC, "LOOKUP answer");
  r->n_chunks = kvs__rd32(p);
  r->n_prefix = kvs__rd32(p + 4);
  KVS_RETURN_ERROR_IF(r->n_chunks > KVS_WIRE_MAX_LOOKUP || r->n_prefix > r->n_chunks, KVS_ERANGE,
                      "LOOKUP answer counts");
  KVS_RETURN_ERROR_IF(n != kvs_wire_lookup_resp_size(r->n_chunks), KVS_ETRUNC,
                      "LOOKUP answer length");
  r->status = p + 8;
  for (uint32_t i = 0; i < r->n_chunks; i++)
    KVS_RETURN_ERROR_IF(r->status[i] > 3, KVS_EPROTO, "LOOKUP answer status");
  for (uint32_t i = 0; i < r->n_prefix; i++)
    KVS_RETURN_ERROR_IF(r->status[i] == 0, KVS_EPROTO, "LOOKUP answer prefix");
  return KVS_OK;
}

/* --------------------------------------------------------- key requests */
kvs_err kvs_wire_key_req_encode(const kvs_wire_key_req *r, uint8_t *out, size_t cap,
                                size_t *written) {
  if (!r || !out) return KVS_EINVAL;
  if (cap < KVS_WIRE_KEY_REQ_SIZE) return KVS_ETOOBIG;
  memset(out, 0, KVS_WIRE_KEY_REQ_SIZE);
  memcpy(out, r->key.b, 16);
  memcpy(out + 16, r->model.b, 16);
  kvs__wr32(out + 32, r->arg);
  if (written) *written = KVS_WIRE_KEY_REQ_SIZE;
  return KVS_OK;
}

kvs_err kvs_wire_key_req_decode(const uint8_t *p, size_t n, kvs_wire_key_req *r) {
  KVS_RETURN_ERROR_IF(!p || !r, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n != KVS_WIRE_KEY_REQ_SIZE, KVS_ETRUNC, "key request length");
  memcpy(r->key.b, p, 16);
  memcpy(r->model.b, p + 16, 16);
  r->arg = kvs__rd32(p + 32);
  KVS_RETURN_ERROR_IF(kvs__rd32(p + 36) != 0, KVS_EPROTO, "key request reserved");
  return KVS_OK;
}

kvs_err kvs_wire_exists_resp_encode(const kvs_wire_exists_resp *r, uint8_t *out, size_t cap,
                                    size_t *written) {
  if (!r || !out) return KVS_EINVAL;
  if (cap < KVS_WIRE_EXISTS_RESP_SIZE) return KVS_ETOOBIG;
  memset(out, 0, KVS_WIRE_EXISTS_RESP_SIZE);
  out[0] = r->present;
  out[1] = r->tier;
  out[2] = r->pinned;
  kvs__wr64(out + 8, r->value_bytes);
  if (written) *written = KVS_WIRE_EXISTS_RESP_SIZE;
  return KVS_OK;
}

kvs_err kvs_wire_exists_resp_decode(const uint8_t *p, size_t n, kvs_wire_exists_resp *r) {
  KVS_RETURN_ERROR_IF(!p || !r, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n != KVS_WIRE_EXISTS_RESP_SIZE, KVS_ETRUNC, "EXISTS answer length");
  r->present = p[0];
  r->tier = p[1];
  r->pinned = p[2];
  r->value_bytes = kvs__rd64(p + 8);
  KVS_RETURN_ERROR_IF(r->present > 1 || r->tier > KVS_WIRE_MAX_TIER || r->pinned > 1, KVS_EPROTO,
                      "EXISTS answer bytes");
  return KVS_OK;
}

/* ---------------------------------------------------------------- STATS */
size_t kvs_wire_stats_resp_size(uint32_t n, uint32_t n_tiers) {
  return 8u + 8u * (size_t)n + (size_t)KVS_WIRE_TIER_ROW_SIZE * n_tiers;
}

kvs_err kvs_wire_stats_resp_encode_tiers(const uint64_t *v, uint32_t n,
                                         const kvs_wire_tier_row *rows, uint32_t n_tiers,
                                         uint8_t *out, size_t cap, size_t *written) {
  if (!v || !out || n > KVS_WIRE_MAX_STATS || n_tiers > KVS_WIRE_MAX_TIER_ROWS ||
      (n_tiers && !rows))
    return KVS_EINVAL;
  size_t need = kvs_wire_stats_resp_size(n, n_tiers);
  if (cap < need) return KVS_ETOOBIG;
  kvs__wr32(out, n);
  kvs__wr32(out + 4, n_tiers);
  for (uint32_t i = 0; i < n; i++)
    kvs__wr64(out + 8 + 8 * i, v[i]);
  for (uint32_t i = 0; i < n_tiers; i++) {
    uint8_t *r = out + 8 + 8 * (size_t)n + (size_t)KVS_WIRE_TIER_ROW_SIZE * i;
    memset(r, 0, KVS_WIRE_TIER_ROW_SIZE);
    size_t nl = strnlen(rows[i].name, sizeof rows[i].name);
    if (nl == 0 || nl > KVS_WIRE_TIER_NAME_MAX) return KVS_EINVAL;
    memcpy(r + KVS_WIRE_TIER_OFF_NAME, rows[i].name, nl);
    r[KVS_WIRE_TIER_OFF_TIER] = rows[i].tier;
    r[KVS_WIRE_TIER_OFF_PRESENT] = rows[i].present ? 1 : 0;
    kvs__wr64(r + KVS_WIRE_TIER_OFF_USED, rows[i].used);
    kvs__wr64(r + KVS_WIRE_TIER_OFF_CAPACITY, rows[i].capacity);
    kvs__wr64(r + KVS_WIRE_TIER_OFF_ENTRIES, rows[i].entries);
  }
  if (written) *written = need;
  return KVS_OK;
}

kvs_err kvs_wire_stats_resp_encode(const uint64_t *v, uint32_t n, uint8_t *out, size_t cap,
                                   size_t *written) {
  return kvs_wire_stats_resp_encode_tiers(v, n, NULL, 0, out, cap, written);
}

static int tier_name_ok(const uint8_t *p) {
  size_t i = 0;
  for (; i < KVS_WIRE_TIER_NAME_MAX + 1 && p[i]; i++)
    if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9') || p[i] == '_' ||
          p[i] == '-'))
      return 0;
  if (i == 0 || i > KVS_WIRE_TIER_NAME_MAX) return 0;
  for (; i < KVS_WIRE_TIER_NAME_MAX + 1; i++) /* NUL padding */
    if (p[i]) return 0;
  return 1;
}

kvs_err kvs_wire_stats_resp_decode(const uint8_t *p, size_t n, kvs_wire_stats_resp *r) {
  KVS_RETURN_ERROR_IF(!p || !r, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n < 8, KVS_ETRUNC, "STATS answer");
  memset(r, 0, sizeof *r);
  r->n = kvs__rd32(p);
  r->n_tiers = kvs__rd32(p + 4);
  KVS_RETURN_ERROR_IF(r->n > KVS_WIRE_MAX_STATS, KVS_ERANGE, "STATS count");
  KVS_RETURN_ERROR_IF(r->n_tiers > KVS_WIRE_MAX_TIER_ROWS, KVS_ERANGE, "STATS tier rows");
  KVS_RETURN_ERROR_IF(n != kvs_wire_stats_resp_size(r->n, r->n_tiers), KVS_ETRUNC, "STATS length");
  for (uint32_t i = 0; i < r->n; i++)
    r->v[i] = kvs_wire_rd64(p + 8, i);
  for (uint32_t i = 0; i < r->n_tiers; i++) {
    const uint8_t *q = p + 8 + 8 * (size_t)r->n + (size_t)KVS_WIRE_TIER_ROW_SIZE * i;
    kvs_wire_tier_row *t = &r->tiers[i];
    KVS_RETURN_ERROR_IF(!tier_name_ok(q + KVS_WIRE_TIER_OFF_NAME), KVS_EPROTO, "STATS tier name");
    int pad = 0;
    for (unsigned j = 0; j < 6; j++)
      pad |= q[KVS_WIRE_TIER_OFF_PAD + j];
    KVS_RETURN_ERROR_IF(pad || q[KVS_WIRE_TIER_OFF_PRESENT] > 1, KVS_EPROTO, "STATS tier row");
    memcpy(t->name, q + KVS_WIRE_TIER_OFF_NAME, KVS_WIRE_TIER_NAME_MAX + 1);
    t->tier = q[KVS_WIRE_TIER_OFF_TIER];
    t->present = q[KVS_WIRE_TIER_OFF_PRESENT];
    t->used = kvs__rd64(q + KVS_WIRE_TIER_OFF_USED);
    t->capacity = kvs__rd64(q + KVS_WIRE_TIER_OFF_CAPACITY);
    t->entries = kvs__rd64(q + KVS_WIRE_TIER_OFF_ENTRIES);
  }
  return KVS_OK;
}

/* ---------------------------------------------------------- LIST/EXPORT */
kvs_err kvs_wire_page_req_encode(const kvs_wire_page_req *r, uint8_t *out, size_t cap,
                                 size_t *written) {
  if (!r || !out) return KVS_EINVAL;
  if (cap < KVS_WIRE_PAGE_REQ_SIZE) return KVS_ETOOBIG;
  if (r->limit == 0 || r->limit > KVS_WIRE_MAX_LIST || r->has_cursor > 1) return KVS_ERANGE;
  memset(out, 0, KVS_WIRE_PAGE_REQ_SIZE);
  out[0] = r->has_cursor;
  kvs__wr32(out + 4, r->limit);
  if (r->has_cursor) memcpy(out + 8, r->cursor, 16);
  if (written) *written = KVS_WIRE_PAGE_REQ_SIZE;
  return KVS_OK;
}

kvs_err kvs_wire_page_req_decode(const uint8_t *p, size_t n, kvs_wire_page_req *r) {
  KVS_RETURN_ERROR_IF(!p || !r, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n != KVS_WIRE_PAGE_REQ_SIZE, KVS_ETRUNC, "page request length");
  memset(r, 0, sizeof *r);
  r->has_cursor = p[0];
  KVS_RETURN_ERROR_IF(r->has_cursor > 1 || p[1] || p[2] || p[3], KVS_EPROTO, "page request bytes");
  r->limit = kvs__rd32(p + 4);
  KVS_RETURN_ERROR_IF(r->limit == 0 || r->limit > KVS_WIRE_MAX_LIST, KVS_ERANGE, "page limit");
  memcpy(r->cursor, p + 8, 16);
  KVS_RETURN_ERROR_IF(!r->has_cursor && !all_zero(r->cursor, 16), KVS_EPROTO, "page cursor");
  return KVS_OK;
}

kvs_err kvs_wire_page_resp_encode_head(uint32_t n, uint8_t more, const uint8_t next_cursor[16],
                                       uint8_t *out, size_t cap, size_t *written) {
  if (!out || n > KVS_WIRE_MAX_LIST || more > 1) return KVS_EINVAL;
  if (cap < KVS_WIRE_PAGE_RESP_FIXED) return KVS_ETOOBIG;
  memset(out, 0, KVS_WIRE_PAGE_RESP_FIXED);
  kvs__wr32(out, n);
  out[4] = more;
  if (next_cursor) memcpy(out + 8, next_cursor, 16);
  if (written) *written = KVS_WIRE_PAGE_RESP_FIXED;
  return KVS_OK;
}

kvs_err kvs_wire_page_resp_decode(uint16_t op, const uint8_t *p, size_t n, kvs_wire_page_resp *r) {
  KVS_RETURN_ERROR_IF(!p || !r, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n < KVS_WIRE_PAGE_RESP_FIXED, KVS_ETRUNC, "page answer");
  memset(r, 0, sizeof *r);
  r->n = kvs__rd32(p);
  r->more = p[4];
  KVS_RETURN_ERROR_IF(r->n > KVS_WIRE_MAX_LIST || r->more > 1, KVS_ERANGE, "page answer head");
  memcpy(r->next_cursor, p + 8, 16);
  r->items = p + KVS_WIRE_PAGE_RESP_FIXED;
  r->items_len = n - KVS_WIRE_PAGE_RESP_FIXED;
  if (op == KVS_OP_LIST) {
    KVS_RETURN_ERROR_IF(r->items_len != (size_t)KVS_WIRE_LIST_ITEM_SIZE * r->n, KVS_ETRUNC,
                        "LIST answer length");
    return KVS_OK;
  }
  KVS_RETURN_ERROR_IF(op != KVS_OP_EXPORT, KVS_EINVAL, "page op");
  const uint8_t *q = r->items;
  size_t left = r->items_len;
  for (uint32_t i = 0; i < r->n; i++) {
    kvs_wire_meta m;
    const uint8_t *v;
    kvs_err e = kvs_wire_record_next(&q, &left, &m, &v);
    KVS_RETURN_ERROR_IF(e == KVS_ENOENT, KVS_ETRUNC, "EXPORT answer records");
    KVS_TRY(e);
  }
  KVS_RETURN_ERROR_IF(left != 0, KVS_EPROTO, "EXPORT answer trailing bytes");
  return KVS_OK;
}

kvs_err kvs_wire_list_item_encode(const kvs_wire_list_item *it, uint8_t *out, size_t cap) {
  if (!it || !out) return KVS_EINVAL;
  if (cap < KVS_WIRE_LIST_ITEM_SIZE) return KVS_ETOOBIG;
  memset(out, 0, KVS_WIRE_LIST_ITEM_SIZE);
  memcpy(out, it->key.b, 16);
  memcpy(out + 16, it->model.b, 16);
  kvs__wr32(out + 32, it->n_tokens);
  out[36] = it->key_kind;
  out[37] = it->tier;
  out[38] = it->pinned;
  kvs__wr64(out + 40, it->value_bytes);
  kvs__wr64(out + 48, it->hits);
  kvs__wr64(out + 56, it->last_used_ms);
  kvs__wr64(out + 64, it->created_ms);
  kvs__wr32(out + 72, it->ttl_s);
  return KVS_OK;
}

void kvs_wire_list_item_decode(const uint8_t *p, kvs_wire_list_item *it) {
  memset(it, 0, sizeof *it);
  memcpy(it->key.b, p, 16);
  memcpy(it->model.b, p + 16, 16);
  it->n_tokens = kvs__rd32(p + 32);
  it->key_kind = p[36];
  it->tier = p[37];
  it->pinned = p[38];
  it->value_bytes = kvs__rd64(p + 40);
  it->hits = kvs__rd64(p + 48);
  it->last_used_ms = kvs__rd64(p + 56);
  it->created_ms = kvs__rd64(p + 64);
  it->ttl_s = kvs__rd32(p + 72);
}

/* -------------------------------------------------------------- records */
size_t kvs_wire_record_size(const kvs_wire_meta *m) {
  size_t ml = kvs_wire_meta_size(m);
  if (ml == 0 || m->value_bytes > KVS_WIRE_MAX_VALUE) return 0;
  return 8u + pad8(ml + (size_t)m->value_bytes);
}

kvs_err kvs_wire_record_encode_head(const kvs_wire_meta *m, uint8_t *out, size_t cap,
                                    size_t *written) {
  if (!m || !out) return KVS_EINVAL;
  size_t ml = kvs_wire_meta_size(m);
  if (ml == 0) return KVS_ERANGE;
  if (cap < 8 + ml) return KVS_ETOOBIG;
  kvs__wr64(out, ml + m->value_bytes);
  KVS_TRY(kvs_wire_meta_encode(m, out + 8, cap - 8, NULL));
  if (written) *written = 8 + ml;
  return KVS_OK;
}

kvs_err kvs_wire_record_next(const uint8_t **pp, size_t *np, kvs_wire_meta *m,
                             const uint8_t **value) {
  KVS_RETURN_ERROR_IF(!pp || !np || !*pp || !m, KVS_EINVAL, "null");
  const uint8_t *p = *pp;
  size_t n = *np;
  if (n == 0) return KVS_ENOENT;
  KVS_RETURN_ERROR_IF(n < 8, KVS_ETRUNC, "record length");
  uint64_t rl = kvs__rd64(p);
  KVS_RETURN_ERROR_IF(rl > n - 8, KVS_ETRUNC, "record body");
  size_t padded = pad8((size_t)rl);
  KVS_RETURN_ERROR_IF(padded > n - 8, KVS_ETRUNC, "record padding");
  KVS_TRY(kvs_wire_put_decode(p + 8, (size_t)rl, m, value));
  KVS_RETURN_ERROR_IF(!all_zero(p + 8 + rl, padded - (size_t)rl), KVS_EPROTO, "record pad bytes");
  *pp = p + 8 + padded;
  *np = n - 8 - padded;
  return KVS_OK;
}

kvs_err kvs_wire_import_req_decode(const uint8_t *p, size_t n, uint32_t *count,
                                   const uint8_t **records, size_t *records_len) {
  KVS_RETURN_ERROR_IF(!p || !count || !records || !records_len, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n < KVS_WIRE_IMPORT_FIXED, KVS_ETRUNC, "IMPORT head");
  *count = kvs__rd32(p);
  KVS_RETURN_ERROR_IF(kvs__rd32(p + 4) != 0, KVS_EPROTO, "IMPORT reserved");
  KVS_RETURN_ERROR_IF(*count == 0 || *count > KVS_WIRE_MAX_LIST, KVS_ERANGE, "IMPORT count");
  const uint8_t *q = p + KVS_WIRE_IMPORT_FIXED;
  size_t left = n - KVS_WIRE_IMPORT_FIXED;
  *records = q;
  *records_len = left;
  for (uint32_t i = 0; i < *count; i++) {
    kvs_wire_meta m;
    const uint8_t *v;
    kvs_err e = kvs_wire_record_next(&q, &left, &m, &v);
    KVS_RETURN_ERROR_IF(e == KVS_ENOENT, KVS_ETRUNC, "IMPORT records");
    KVS_TRY(e);
  }
  KVS_RETURN_ERROR_IF(left != 0, KVS_EPROTO, "IMPORT trailing bytes");
  return KVS_OK;
}

kvs_err kvs_wire_import_resp_encode(const kvs_wire_import_resp *r, uint8_t *out, size_t cap,
                                    size_t *written) {
  if (!r || !out) return KVS_EINVAL;
  if (cap < 8) return KVS_ETOOBIG;
  kvs__wr32(out, r->n_ok);
  kvs__wr32(out + 4, r->n_failed);
  if (written) *written = 8;
  return KVS_OK;
}

kvs_err kvs_wire_import_resp_decode(const uint8_t *p, size_t n, kvs_wire_import_resp *r) {
  KVS_RETURN_ERROR_IF(!p || !r, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n != 8, KVS_ETRUNC, "IMPORT answer length");
  r->n_ok = kvs__rd32(p);
  r->n_failed = kvs__rd32(p + 4);
  return KVS_OK;
}

/* -------------------------------------------------------- LEASE/RELEASE */
kvs_err kvs_wire_lease_req_decode(const uint8_t *p, size_t n, kvs_wire_lease_req *r) {
  KVS_RETURN_ERROR_IF(!p || !r, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n < 8, KVS_ETRUNC, "LEASE release id");
  r->release_id = kvs__rd64(p);
  return kvs_wire_get_req_decode(p + 8, n - 8, &r->get);
}

kvs_err kvs_wire_lease_resp_encode(const kvs_wire_lease_resp *r, const kvs_wire_meta *meta,
                                   uint8_t *out, size_t cap, size_t *written) {
  if (!r || !out) return KVS_EINVAL;
  size_t ml = meta ? kvs_wire_meta_size(meta) : 0;
  if (meta && ml == 0) return KVS_ERANGE;
  if (cap < KVS_WIRE_LEASE_RESP_FIXED + ml) return KVS_ETOOBIG;
  size_t nl = strnlen(r->shm_name, KVS_WIRE_SHM_NAME_MAX + 1);
  if (nl == 0 || nl > KVS_WIRE_SHM_NAME_MAX) return KVS_EINVAL;
  memset(out, 0, KVS_WIRE_LEASE_RESP_FIXED);
  kvs__wr64(out, r->lease_id);
  kvs__wr64(out + 8, r->expires_ms);
  kvs__wr64(out + 16, r->offset);
  kvs__wr64(out + 24, r->value_bytes);
  kvs__wr64(out + 32, r->checksum);
  memcpy(out + 40, r->shm_name, nl);
  kvs__wr32(out + 104, (uint32_t)ml);
  if (meta) KVS_TRY(kvs_wire_meta_encode(meta, out + KVS_WIRE_LEASE_RESP_FIXED, ml, NULL));
  if (written) *written = KVS_WIRE_LEASE_RESP_FIXED + ml;
  return KVS_OK;
}

kvs_err kvs_wire_lease_resp_decode(const uint8_t *p, size_t n, kvs_wire_lease_resp *r) {
  KVS_RETURN_ERROR_IF(!p || !r, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n < KVS_WIRE_LEASE_RESP_FIXED, KVS_ETRUNC, "LEASE answer");
  memset(r, 0, sizeof *r);
  r->lease_id = kvs__rd64(p);
  r->expires_ms = kvs__rd64(p + 8);
  r->offset = kvs__rd64(p + 16);
  r->value_bytes = kvs__rd64(p + 24);
  r->checksum = kvs__rd64(p + 32);
  memcpy(r->shm_name, p + 40, KVS_WIRE_SHM_NAME_MAX);
  r->shm_name[KVS_WIRE_SHM_NAME_MAX] = 0;
  size_t nl = strlen(r->shm_name);
  KVS_RETURN_ERROR_IF(nl == 0 || r->shm_name[0] != '/', KVS_EPROTO, "LEASE segment name");
  KVS_RETURN_ERROR_IF(!all_zero(p + 40 + nl, KVS_WIRE_SHM_NAME_MAX - nl), KVS_EPROTO,
                      "LEASE name padding");
  KVS_RETURN_ERROR_IF(r->value_bytes > KVS_WIRE_MAX_VALUE ||
                          r->offset > UINT64_MAX - r->value_bytes,
                      KVS_ERANGE, "LEASE range");
  r->meta_len = kvs__rd32(p + 104);
  KVS_RETURN_ERROR_IF(kvs__rd32(p + 108) != 0 || !all_zero(p + 112, 8), KVS_EPROTO,
                      "LEASE reserved");
  KVS_RETURN_ERROR_IF(r->meta_len != n - KVS_WIRE_LEASE_RESP_FIXED, KVS_ETRUNC, "LEASE meta");
  if (r->meta_len) {
    size_t used = 0;
    KVS_TRY(kvs_wire_meta_decode(p + KVS_WIRE_LEASE_RESP_FIXED, r->meta_len, &r->meta, &used));
    KVS_RETURN_ERROR_IF(used != r->meta_len || r->meta.value_bytes != r->value_bytes ||
                            r->meta.checksum != r->checksum,
                        KVS_EPROTO, "LEASE meta disagrees");
  }
  return KVS_OK;
}

/* ------------------------------------ PUT_RESERVE / PUT_COMMIT / PUT_ABORT */
kvs_err kvs_wire_put_reserve_req_encode(const kvs_wire_put_reserve_req *r, uint8_t *out, size_t cap,
                                        size_t *written) {
  if (!r || !out) return KVS_EINVAL;
  if (r->bytes == 0 || r->bytes > KVS_WIRE_MAX_VALUE) return KVS_ERANGE;
  if (cap < KVS_WIRE_PUT_RESERVE_REQ_SIZE) return KVS_ETOOBIG;
  memcpy(out, r->key.b, 16);
  memcpy(out + 16, r->model.b, 16);
  kvs__wr64(out + 32, r->bytes);
  kvs__wr64(out + 40, 0);
  if (written) *written = KVS_WIRE_PUT_RESERVE_REQ_SIZE;
  return KVS_OK;
}

kvs_err kvs_wire_put_reserve_req_decode(const uint8_t *p, size_t n, kvs_wire_put_reserve_req *r) {
  KVS_RETURN_ERROR_IF(!p || !r, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n != KVS_WIRE_PUT_RESERVE_REQ_SIZE, KVS_ETRUNC, "PUT_RESERVE length");
  memcpy(r->key.b, p, 16);
  memcpy(r->model.b, p + 16, 16);
  r->bytes = kvs__rd64(p + 32);
  KVS_RETURN_ERROR_IF(r->bytes == 0 || r->bytes > KVS_WIRE_MAX_VALUE, KVS_ETOOBIG,
                      "PUT_RESERVE bytes");
  KVS_RETURN_ERROR_IF(kvs__rd64(p + 40) != 0, KVS_EPROTO, "PUT_RESERVE reserved");
  return KVS_OK;
}

kvs_err kvs_wire_put_reserve_resp_encode(const kvs_wire_put_reserve_resp *r, uint8_t *out,
                                         size_t cap, size_t *written) {
  if (!r || !out) return KVS_EINVAL;
  if (cap < KVS_WIRE_PUT_RESERVE_RESP_SIZE) return KVS_ETOOBIG;
  size_t nl = strnlen(r->shm_name, KVS_WIRE_SHM_NAME_MAX + 1);
  if (nl == 0 || nl > KVS_WIRE_SHM_NAME_MAX || r->shm_name[0] != '/') return KVS_EINVAL;
  memset(out, 0, KVS_WIRE_PUT_RESERVE_RESP_SIZE);
  kvs__wr64(out, r->resv_id);
  kvs__wr64(out + 8, r->expires_ms);
  kvs__wr64(out + 16, r->offset);
  kvs__wr64(out + 24, r->bytes);
  memcpy(out + 32, r->shm_name, nl);
  if (written) *written = KVS_WIRE_PUT_RESERVE_RESP_SIZE;
  return KVS_OK;
}

kvs_err kvs_wire_put_reserve_resp_decode(const uint8_t *p, size_t n, kvs_wire_put_reserve_resp *r) {
  KVS_RETURN_ERROR_IF(!p || !r, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n != KVS_WIRE_PUT_RESERVE_RESP_SIZE, KVS_ETRUNC, "PUT_RESERVE answer");
  memset(r, 0, sizeof *r);
  r->resv_id = kvs__rd64(p);
  r->expires_ms = kvs__rd64(p + 8);
  r->offset = kvs__rd64(p + 16);
  r->bytes = kvs__rd64(p + 24);
  memcpy(r->shm_name, p + 32, KVS_WIRE_SHM_NAME_MAX);
  r->shm_name[KVS_WIRE_SHM_NAME_MAX] = 0;
  size_t nl = strlen(r->shm_name);
  KVS_RETURN_ERROR_IF(nl == 0 || r->shm_name[0] != '/', KVS_EPROTO, "PUT_RESERVE segment name");
  KVS_RETURN_ERROR_IF(!all_zero(p + 32 + nl, KVS_WIRE_SHM_NAME_MAX - nl), KVS_EPROTO,
                      "PUT_RESERVE name padding");
  KVS_RETURN_ERROR_IF(r->resv_id == 0, KVS_EPROTO, "PUT_RESERVE id");
  KVS_RETURN_ERROR_IF(r->bytes == 0 || r->bytes > KVS_WIRE_MAX_VALUE ||
                          r->offset > UINT64_MAX - r->bytes,
                      KVS_ERANGE, "PUT_RESERVE range");
  return KVS_OK;
}

size_t kvs_wire_put_commit_req_size(const kvs_wire_meta *m) {
  size_t ms = m ? kvs_wire_meta_size(m) : 0;
  return ms ? KVS_WIRE_PUT_COMMIT_FIXED + ms : 0;
}

kvs_err kvs_wire_put_commit_req_encode(uint64_t resv_id, const kvs_wire_meta *m, uint8_t *out,
                                       size_t cap, size_t *written) {
  if (!m || !out) return KVS_EINVAL;
  size_t need = kvs_wire_put_commit_req_size(m);
  if (!need) return KVS_ERANGE;
  if (cap < need) return KVS_ETOOBIG;
  kvs__wr64(out, resv_id);
  kvs__wr64(out + 8, 0);
  KVS_TRY(kvs_wire_meta_encode(m, out + KVS_WIRE_PUT_COMMIT_FIXED, need - KVS_WIRE_PUT_COMMIT_FIXED,
                               NULL));
  if (written) *written = need;
  return KVS_OK;
}

kvs_err kvs_wire_put_commit_req_decode(const uint8_t *p, size_t n, kvs_wire_put_commit_req *r) {
  KVS_RETURN_ERROR_IF(!p || !r, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n < KVS_WIRE_PUT_COMMIT_FIXED, KVS_ETRUNC, "PUT_COMMIT head");
  r->resv_id = kvs__rd64(p);
  KVS_RETURN_ERROR_IF(r->resv_id == 0, KVS_EPROTO, "PUT_COMMIT id");
  KVS_RETURN_ERROR_IF(kvs__rd64(p + 8) != 0, KVS_EPROTO, "PUT_COMMIT reserved");
  size_t used = 0;
  KVS_TRY(kvs_wire_meta_decode(p + KVS_WIRE_PUT_COMMIT_FIXED, n - KVS_WIRE_PUT_COMMIT_FIXED,
                               &r->meta, &used));
  KVS_RETURN_ERROR_IF(used != n - KVS_WIRE_PUT_COMMIT_FIXED, KVS_EPROTO,
                      "PUT_COMMIT bytes after the meta");
  return KVS_OK;
}

/* ------------------------------------------------------- whole request */
kvs_err kvs_wire_req_decode(const uint8_t *buf, size_t n, kvs_wire_req *r) {
  KVS_RETURN_ERROR_IF(!buf || !r, KVS_EINVAL, "null");
  memset(r, 0, sizeof *r);
  KVS_TRY(kvs_wire_hdr_decode(buf, n, &r->hdr));
  KVS_RETURN_ERROR_IF(r->hdr.flags & KVS_WIRE_F_RESPONSE, KVS_EPROTO, "response sent as request");
  const uint8_t *p = buf + KVS_WIRE_HDR_SIZE;
  size_t pn = n - KVS_WIRE_HDR_SIZE;
  switch (r->hdr.op) {
  case KVS_OP_PING:
  case KVS_OP_STATS:
    KVS_RETURN_ERROR_IF(pn != 0, KVS_EPROTO, "payload on an empty op");
    return KVS_OK;
  case KVS_OP_PUT: return kvs_wire_put_decode(p, pn, &r->u.put.meta, &r->u.put.value);
  case KVS_OP_GET: return kvs_wire_get_req_decode(p, pn, &r->u.get);
  case KVS_OP_LOOKUP: return kvs_wire_lookup_req_decode(p, pn, &r->u.lookup);
  case KVS_OP_EXISTS:
  case KVS_OP_DELETE:
  case KVS_OP_PIN:
  case KVS_OP_UNPIN:
  case KVS_OP_TTL: return kvs_wire_key_req_decode(p, pn, &r->u.key);
  case KVS_OP_LIST:
  case KVS_OP_EXPORT: return kvs_wire_page_req_decode(p, pn, &r->u.page);
  case KVS_OP_IMPORT:
    return kvs_wire_import_req_decode(p, pn, &r->u.import.count, &r->u.import.records,
                                      &r->u.import.records_len);
  case KVS_OP_LEASE: return kvs_wire_lease_req_decode(p, pn, &r->u.lease);
  case KVS_OP_RELEASE:
    KVS_RETURN_ERROR_IF(pn != 8, KVS_ETRUNC, "RELEASE length");
    r->u.release_id = kvs__rd64(p);
    return KVS_OK;
  case KVS_OP_PUT_RESERVE: return kvs_wire_put_reserve_req_decode(p, pn, &r->u.reserve);
  case KVS_OP_PUT_COMMIT: return kvs_wire_put_commit_req_decode(p, pn, &r->u.commit);
  case KVS_OP_PUT_ABORT:
    KVS_RETURN_ERROR_IF(pn != 8, KVS_ETRUNC, "PUT_ABORT length");
    r->u.abort_id = kvs__rd64(p);
    return KVS_OK;
  default: return KVS_ERR_AT(KVS_ENOTSUP, "op");
  }
}
