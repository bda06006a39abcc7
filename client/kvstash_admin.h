/* kvstash_admin.h - the admin calls of libkvstash: list a tenant's entries,
 * export them as self-contained records and import records back, over the
 * data plane (LIST, EXPORT, IMPORT of docs/protocol.md). Used by the
 * `kvstash` CLI (tools/cli); key ops and counters (kvs_delete, kvs_pin,
 * kvs_ttl, kvs_stats, ...) are in kvstash.h.
 *
 * Everything here acts on the client's tenant (kvs_client_opts.tenant): the
 * server salts keys per tenant, so one tenant's listing never shows another's.
 * Internal to this tree for now (not installed). */
#ifndef KVSTASH_ADMIN_H
#define KVSTASH_ADMIN_H

#include <stddef.h>
#include <stdint.h>

#include "kvstash.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One entry as LIST sees it (no value, no token ids). */
typedef struct kvs_admin_item {
  kvs_key key; /* the client's (unsalted) key */
  kvs_model_id model;
  uint32_t n_tokens;
  uint8_t kind; /* KVS_CHUNK_PREFIX / KVS_CHUNK_CONTENT */
  uint8_t tier; /* 0 RAM, 1 disk, 2 cold disk */
  uint8_t pinned;
  uint64_t value_bytes, hits, last_used_ms, created_ms;
  uint32_t ttl_s; /* 0 = no expiry */
} kvs_admin_item;

/* Where a paged walk stands. Zero it (or kvs_admin_cursor_init) to start;
 * `done` is set once the last page was returned. */
typedef struct kvs_admin_cursor {
  uint8_t has; /* 0 = from the start */
  uint8_t done;
  uint8_t next[16]; /* opaque, from the server */
} kvs_admin_cursor;
void kvs_admin_cursor_init(kvs_admin_cursor *cur);

/* Next page of at most limit (1..1024) entries into out[limit]; *n gets the
 * count (0 is possible on the last page). Advances cur. */
kvs_err kvs_admin_list(kvs_client *c, kvs_admin_cursor *cur, uint32_t limit, kvs_admin_item *out,
                       size_t *n);

/* One exported entry: its metadata in the wire encoding (kvs_wire_meta of
 * core/kvs_wire.h, with the server block: created, hits, pin, TTL) and its
 * encoded value. Views into the page that holds them. */
typedef struct kvs_admin_record {
  kvs_key key;
  const uint8_t *meta;
  size_t meta_len;
  const uint8_t *value;
  uint64_t value_bytes;
  uint64_t checksum; /* kvs_checksum64 of value, as stored */
} kvs_admin_record;

typedef struct kvs_admin_page kvs_admin_page;
/* Next EXPORT page: at most limit records (the server also cuts a page at its
 * max message size). *out owned by the caller (kvs_admin_page_free); records
 * stay valid until then. Advances cur. */
kvs_err kvs_admin_export(kvs_client *c, kvs_admin_cursor *cur, uint32_t limit,
                         kvs_admin_page **out);
size_t kvs_admin_page_count(const kvs_admin_page *p);
/* i < count; pointer valid until kvs_admin_page_free. */
const kvs_admin_record *kvs_admin_page_record(const kvs_admin_page *p, size_t i);
void kvs_admin_page_free(kvs_admin_page *p);

/* Imports one entry (meta in the wire encoding, value of the meta's
 * value_bytes), restoring its pin, TTL, hits and creation time. The server
 * writes it whole or not at all (one RocksDB WriteBatch). KVS_ECORRUPT when
 * meta does not decode or does not match value (length or checksum: nothing
 * is sent); KVS_EIO when the server refused the entry. */
kvs_err kvs_admin_import(kvs_client *c, const uint8_t *meta, size_t meta_len, const void *value,
                         uint64_t value_bytes);

#ifdef __cplusplus
}
#endif
#endif
