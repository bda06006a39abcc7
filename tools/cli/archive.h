/* archive.h - the export archive of `kvstash export` / `import`: a stream of
 * entries, each checksummed on its own, between a header and a trailer.
 * Byte offsets are in docs/cli.md ("Archive format"); this header and that
 * table change together, and KVS_ARC_VERSION is bumped on any change.
 *
 *   header  32 bytes: magic "KVSARCHV", u32 version, u32 flags (0),
 *                     u64 created_ms, u64 checksum of bytes 0..23
 *   entry   40-byte head: u32 "KVSE", u32 meta_len, u64 value_len,
 *                     u64 meta checksum, u64 value checksum,
 *                     u64 checksum of head bytes 0..31
 *           then meta (meta_len bytes, kvs_wire_meta encoding with the
 *           server block) and value (value_len encoded bytes)
 *   trailer 32 bytes: u32 "KVST", u32 0, u64 count, u64 chain,
 *                     u64 checksum of bytes 0..23
 * Every checksum is kvs_checksum64 (XXH3-64); chain = running
 * kvs_checksum64(chain || meta checksum || value checksum) over the entries,
 * starting from 0. Little-endian throughout. Nothing in it names a tenant:
 * keys are the clients' unsalted keys, salted again by the importing tenant. */
#ifndef KVS_CLI_ARCHIVE_H
#define KVS_CLI_ARCHIVE_H

#include <stdint.h>
#include <stdio.h>

#include "kvs_core.h"
#include "kvs_err.h"

#define KVS_ARC_MAGIC         "KVSARCHV"
#define KVS_ARC_VERSION       1u
#define KVS_ARC_HEADER_SIZE   32u
#define KVS_ARC_ENTRY_HEAD    40u
#define KVS_ARC_TRAILER_SIZE  32u
#define KVS_ARC_ENTRY_MAGIC   0x4553564Bu /* "KVSE" */
#define KVS_ARC_TRAILER_MAGIC 0x5453564Bu /* "KVST" */
#define KVS_ARC_MAX_META      (1u << 20)  /* a wire meta is < 300 KiB at the limits */

typedef struct kvs_arc_writer {
  FILE *f;
  uint64_t count, chain, bytes;
} kvs_arc_writer;

/* Writes the header. f stays the caller's. */
kvs_err kvs_arc_write_begin(kvs_arc_writer *w, FILE *f, uint64_t created_ms);
kvs_err kvs_arc_write_entry(kvs_arc_writer *w, const uint8_t *meta, uint32_t meta_len,
                            const void *value, uint64_t value_len);
/* Writes the trailer and flushes. */
kvs_err kvs_arc_write_end(kvs_arc_writer *w);

typedef struct kvs_arc_reader {
  FILE *f;
  uint64_t off;       /* bytes consumed */
  uint64_t size;      /* file size when seekable, else UINT64_MAX */
  uint64_t max_value; /* largest value accepted (allocation bound) */
  uint64_t created_ms;
  uint64_t index; /* entries seen (good or bad) */
  uint64_t chain;
  int at_end;
} kvs_arc_reader;

/* One entry as read. meta and value are malloc'd by the reader and owned by
 * the caller after kvs_arc_next returns (free both, also on a bad entry). */
typedef struct kvs_arc_entry {
  uint64_t index;  /* 0-based position in the archive */
  uint64_t offset; /* byte offset of its head */
  uint8_t *meta;
  uint32_t meta_len;
  uint8_t *value;
  uint64_t value_len;
  int key_known; /* key below valid (the meta decoded) */
  kvs_key key;
  const char *why; /* static reason when the entry is bad */
} kvs_arc_entry;

/* Reads and checks the header (KVS_EMAGIC, KVS_EVERSION, KVS_ECHECKSUM,
 * KVS_ETRUNC). max_value 0 = 4 GiB. */
kvs_err kvs_arc_read_begin(kvs_arc_reader *r, FILE *f, uint64_t max_value);
/* The next entry:
 *   KVS_OK        a verified entry: both checksums match, the meta decodes,
 *                 names value_len bytes and carries the value's checksum;
 *   KVS_ECHECKSUM / KVS_ECORRUPT  this entry is bad (e->why says how) and is
 *                 to be skipped; the reader stays in step (its head was sound);
 *   KVS_ENOENT    the trailer was reached and matches (count and chain);
 *   anything else the archive cannot be read further (a bad entry head, a
 *                 truncation, a trailer that does not match): e->why says why.
 * e->meta / e->value are set (or NULL) in every case; free them. */
kvs_err kvs_arc_next(kvs_arc_reader *r, kvs_arc_entry *e);

#endif
