/* Fuzz target: the export-archive reader of `kvstash import` (tools/cli/
 * archive.h). Whatever the bytes, it must end with an error or the trailer,
 * never read out of bounds, never allocate past the input, and hand back
 * only entries whose checksums and metadata it verified. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "archive.h"
#include "kvs_wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *buf = malloc(size ? size : 1);
  if (!buf) return 0;
  memcpy(buf, data, size);
  FILE *f = fmemopen(buf, size ? size : 1, "rb");
  if (!f) {
    free(buf);
    return 0;
  }
  if (size == 0) fgetc(f); /* an empty stream */
  kvs_arc_reader r;
  if (kvs_arc_read_begin(&r, f, 1u << 26) == KVS_OK) {
    for (int i = 0; i < 100000; i++) {
      kvs_arc_entry e;
      kvs_err rc = kvs_arc_next(&r, &e);
      if (rc == KVS_OK) {
        kvs_wire_meta m;
        size_t used = 0;
        if (kvs_wire_meta_decode(e.meta, e.meta_len, &m, &used) != KVS_OK ||
            m.value_bytes != e.value_len ||
            kvs_checksum64(e.value, (size_t)e.value_len) != m.checksum)
          abort();
        if (e.value_len > size) abort();
      }
      free(e.meta);
      free(e.value);
      if (rc != KVS_OK && rc != KVS_ECHECKSUM && rc != KVS_ECORRUPT) break;
    }
  }
  fclose(f);
  free(buf);
  return 0;
}
