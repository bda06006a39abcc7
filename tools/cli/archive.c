/* archive.c - writer and reader of the export archive (archive.h). The
 * reader trusts nothing: every length is checked against the file size (when
 * known) and a bound before anything is allocated, and every byte is covered
 * by a checksum before it is used. */
#include <stdlib.h>
#include <string.h>

#include "archive.h"
#include "kvs_wire.h"

static uint64_t chain_next(uint64_t chain, uint64_t meta_ck, uint64_t value_ck) {
  uint8_t b[24];
  kvs__wr64(b, chain);
  kvs__wr64(b + 8, meta_ck);
  kvs__wr64(b + 16, value_ck);
  return kvs_checksum64(b, sizeof b);
}

static kvs_err put(kvs_arc_writer *w, const void *p, size_t n) {
  if (n && fwrite(p, 1, n, w->f) != n) return KVS_EIO;
  w->bytes += n;
  return KVS_OK;
}

kvs_err kvs_arc_write_begin(kvs_arc_writer *w, FILE *f, uint64_t created_ms) {
  memset(w, 0, sizeof *w);
  w->f = f;
  uint8_t h[KVS_ARC_HEADER_SIZE];
  memcpy(h, KVS_ARC_MAGIC, 8);
  kvs__wr32(h + 8, KVS_ARC_VERSION);
  kvs__wr32(h + 12, 0);
  kvs__wr64(h + 16, created_ms);
  kvs__wr64(h + 24, kvs_checksum64(h, 24));
  return put(w, h, sizeof h);
}

kvs_err kvs_arc_write_entry(kvs_arc_writer *w, const uint8_t *meta, uint32_t meta_len,
                            const void *value, uint64_t value_len) {
  if (!meta || meta_len == 0 || meta_len > KVS_ARC_MAX_META || (value_len && !value))
    return KVS_EINVAL;
  uint8_t h[KVS_ARC_ENTRY_HEAD];
  uint64_t mck = kvs_checksum64(meta, meta_len), vck = kvs_checksum64(value, (size_t)value_len);
  kvs__wr32(h, KVS_ARC_ENTRY_MAGIC);
  kvs__wr32(h + 4, meta_len);
  kvs__wr64(h + 8, value_len);
  kvs__wr64(h + 16, mck);
  kvs__wr64(h + 24, vck);
  kvs__wr64(h + 32, kvs_checksum64(h, 32));
  KVS_TRY(put(w, h, sizeof h));
  KVS_TRY(put(w, meta, meta_len));
  KVS_TRY(put(w, value, (size_t)value_len));
  w->count++;
  w->chain = chain_next(w->chain, mck, vck);
  return KVS_OK;
}

kvs_err kvs_arc_write_end(kvs_arc_writer *w) {
  uint8_t t[KVS_ARC_TRAILER_SIZE];
  kvs__wr32(t, KVS_ARC_TRAILER_MAGIC);
  kvs__wr32(t + 4, 0);
  kvs__wr64(t + 8, w->count);
  kvs__wr64(t + 16, w->chain);
  kvs__wr64(t + 24, kvs_checksum64(t, 24));
  KVS_TRY(put(w, t, sizeof t));
  return fflush(w->f) == 0 ? KVS_OK : KVS_EIO;
}

/* ---------------------------------------------------------------- reader */
static kvs_err get(kvs_arc_reader *r, void *p, size_t n) {
  if (n && fread(p, 1, n, r->f) != n) return ferror(r->f) ? KVS_EIO : KVS_ETRUNC;
  r->off += n;
  return KVS_OK;
}

kvs_err kvs_arc_read_begin(kvs_arc_reader *r, FILE *f, uint64_t max_value) {
  memset(r, 0, sizeof *r);
  r->f = f;
  r->max_value = max_value ? max_value : (4ull << 30);
  r->size = UINT64_MAX;
  long here = ftell(f);
  if (here >= 0 && fseek(f, 0, SEEK_END) == 0) {
    long end = ftell(f);
    if (end >= here && fseek(f, here, SEEK_SET) == 0) r->size = (uint64_t)(end - here);
  }
  uint8_t h[KVS_ARC_HEADER_SIZE];
  KVS_TRY(get(r, h, sizeof h));
  KVS_RETURN_ERROR_IF(memcmp(h, KVS_ARC_MAGIC, 8) != 0, KVS_EMAGIC, "archive magic");
  KVS_RETURN_ERROR_IF(kvs__rd64(h + 24) != kvs_checksum64(h, 24), KVS_ECHECKSUM, "archive header");
  KVS_RETURN_ERROR_IF(kvs__rd32(h + 8) != KVS_ARC_VERSION, KVS_EVERSION, "archive version");
  KVS_RETURN_ERROR_IF(kvs__rd32(h + 12) != 0, KVS_EVERSION, "archive flags");
  r->created_ms = kvs__rd64(h + 16);
  return KVS_OK;
}

static kvs_err stop(kvs_arc_entry *e, kvs_err err, const char *why) {
  e->why = why;
  return KVS_ERR_AT(err, why);
}

kvs_err kvs_arc_next(kvs_arc_reader *r, kvs_arc_entry *e) {
  memset(e, 0, sizeof *e);
  e->index = r->index;
  e->offset = r->off;
  if (r->at_end) return KVS_ENOENT;
  uint8_t h[KVS_ARC_ENTRY_HEAD];
  kvs_err err = get(r, h, 4);
  if (err) return stop(e, err, "archive ends without a trailer");
  uint32_t magic = kvs__rd32(h);
  if (magic == KVS_ARC_TRAILER_MAGIC) {
    if ((err = get(r, h + 4, KVS_ARC_TRAILER_SIZE - 4))) return stop(e, err, "truncated trailer");
    if (kvs__rd64(h + 24) != kvs_checksum64(h, 24))
      return stop(e, KVS_ECHECKSUM, "trailer checksum");
    if (kvs__rd32(h + 4) != 0) return stop(e, KVS_ECORRUPT, "trailer reserved bytes");
    if (kvs__rd64(h + 8) != r->index)
      return stop(e, KVS_ECORRUPT, "trailer count differs from the entries read");
    if (kvs__rd64(h + 16) != r->chain)
      return stop(e, KVS_ECHECKSUM,
                  "trailer chain checksum differs (entries missing or reordered)");
    uint8_t extra;
    if (fread(&extra, 1, 1, r->f) == 1) return stop(e, KVS_ECORRUPT, "bytes after the trailer");
    r->at_end = 1;
    return KVS_ENOENT;
  }
  if (magic != KVS_ARC_ENTRY_MAGIC) return stop(e, KVS_EMAGIC, "no entry or trailer here");
  if ((err = get(r, h + 4, KVS_ARC_ENTRY_HEAD - 4))) return stop(e, err, "truncated entry head");
  if (kvs__rd64(h + 32) != kvs_checksum64(h, 32))
    return stop(e, KVS_ECHECKSUM, "entry head checksum (lengths cannot be trusted)");
  uint32_t ml = kvs__rd32(h + 4);
  uint64_t vl = kvs__rd64(h + 8), mck = kvs__rd64(h + 16), vck = kvs__rd64(h + 24);
  if (ml == 0 || ml > KVS_ARC_MAX_META) return stop(e, KVS_ECORRUPT, "metadata length");
  if (vl > r->max_value) return stop(e, KVS_ETOOBIG, "value larger than the import bound");
  if (r->size != UINT64_MAX && (uint64_t)ml + vl > r->size - r->off)
    return stop(e, KVS_ETRUNC, "entry runs past the end of the file");
  r->index++;
  r->chain = chain_next(r->chain, mck, vck);
  e->meta = malloc(ml);
  e->value = malloc(vl ? (size_t)vl : 1);
  if (!e->meta || !e->value) return stop(e, KVS_ENOMEM, "no memory for the entry");
  e->meta_len = ml;
  e->value_len = vl;
  if ((err = get(r, e->meta, ml)) || (err = get(r, e->value, (size_t)vl)))
    return stop(e, err, "truncated entry");
  /* the head was sound: from here on a bad entry is skipped, the stream goes on */
  kvs_wire_meta m;
  size_t used = 0;
  int meta_ok = kvs_checksum64(e->meta, ml) == mck;
  if (meta_ok && kvs_wire_meta_decode(e->meta, ml, &m, &used) == KVS_OK && used == ml) {
    e->key_known = 1;
    e->key = m.key;
  }
  if (!meta_ok) return stop(e, KVS_ECHECKSUM, "metadata checksum mismatch");
  if (!e->key_known) return stop(e, KVS_ECORRUPT, "metadata does not decode");
  if (kvs_checksum64(e->value, (size_t)vl) != vck)
    return stop(e, KVS_ECHECKSUM, "value checksum mismatch");
  if (m.value_bytes != vl || m.checksum != vck)
    return stop(e, KVS_ECORRUPT, "metadata does not describe this value");
  return KVS_OK;
}
