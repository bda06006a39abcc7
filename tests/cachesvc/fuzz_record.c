/* Fuzz target: the metadata record kvstashd reads back from RocksDB at
 * start-up (cachesvc/record.c). A record that does not decode is dropped;
 * one that does must re-encode to the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "svc_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *buf = malloc(size ? size : 1);
  if (!buf) return 0;
  memcpy(buf, data, size);
  kvs_wire_meta m;
  uint8_t state = 0;
  if (kvs__record_decode(buf, size, &m, &state) == KVS_OK) {
    size_t n = kvs__record_size(&m);
    uint8_t *again = malloc(n);
    size_t w = 0;
    if (!again || n != size || kvs__record_encode(&m, state, again, n, &w) != KVS_OK || w != n ||
        memcmp(again, buf, n) != 0)
      abort();
    free(again);
  }
  free(buf);
  return 0;
}
