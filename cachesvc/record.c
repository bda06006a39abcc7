/* record.c - the metadata record kvstashd keeps in RocksDB (see svc_int.h). */
#include <string.h>

#include "svc_int.h"

size_t kvs__record_size(const kvs_wire_meta *m) {
  size_t ml = kvs_wire_meta_size(m);
  return ml ? KVS__REC_HEAD + ml : 0;
}

kvs_err kvs__record_encode(const kvs_wire_meta *m, uint8_t state, uint8_t *out, size_t cap,
                           size_t *written) {
  size_t need = kvs__record_size(m);
  if (!need) return KVS_ERANGE;
  if (cap < need) return KVS_ETOOBIG;
  size_t ml = 0;
  KVS_TRY(kvs_wire_meta_encode(m, out + KVS__REC_HEAD, cap - KVS__REC_HEAD, &ml));
  uint32_t magic = KVS__REC_MAGIC;
  uint16_t ver = 1;
  memcpy(out, &magic, 4);
  memcpy(out + 4, &ver, 2);
  out[6] = state;
  out[7] = 0;
  uint64_t ck = kvs_checksum64(out + KVS__REC_HEAD, ml);
  memcpy(out + 8, &ck, 8);
  if (written) *written = KVS__REC_HEAD + ml;
  return KVS_OK;
}

kvs_err kvs__record_decode(const uint8_t *p, size_t n, kvs_wire_meta *m, uint8_t *state) {
  KVS_RETURN_ERROR_IF(!p || !m, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(n < KVS__REC_HEAD, KVS_ETRUNC, "record head");
  KVS_RETURN_ERROR_IF(kvs_wire_rd32(p, 0) != KVS__REC_MAGIC, KVS_EMAGIC, "record magic");
  KVS_RETURN_ERROR_IF((p[4] | p[5] << 8) != 1, KVS_EVERSION, "record version");
  KVS_RETURN_ERROR_IF(p[6] > 1 || p[7] != 0, KVS_ECORRUPT, "record state");
  KVS_RETURN_ERROR_IF(kvs_wire_rd64(p + 8, 0) !=
                          kvs_checksum64(p + KVS__REC_HEAD, n - KVS__REC_HEAD),
                      KVS_ECHECKSUM, "record checksum");
  size_t used = 0;
  KVS_TRY(kvs_wire_meta_decode(p + KVS__REC_HEAD, n - KVS__REC_HEAD, m, &used));
  KVS_RETURN_ERROR_IF(used != n - KVS__REC_HEAD, KVS_ECORRUPT, "record length");
  if (state) *state = p[6];
  return KVS_OK;
}
