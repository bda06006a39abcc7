/* Fuzz target: a PING answer as a (hostile or broken) server could send it,
 * read by kvs_client_stream(c, "auto"). Input: the client's URL up to the
 * first newline, then the answer's payload. Nothing may crash; an accepted
 * pick is a NUL-terminated stream URL of the client's transport that fits. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *nl = memchr(data, '\n', size);
  if (!nl || (size_t)(nl - data) >= 512) return 0;
  char url[512];
  memcpy(url, data, (size_t)(nl - data));
  url[nl - data] = 0;
  const uint8_t *adv = nl + 1;
  size_t n = size - (size_t)(adv - data);
  char out[64];
  if (kvs__stream_pick(adv, n, url, out, sizeof out) == KVS_OK) {
    if (strnlen(out, sizeof out) >= sizeof out) abort();
    const char *want = strncmp(url, "ipc://", 6) ? "tcp+stream://" : "ipc+stream://";
    if (strncmp(out, want, 13)) abort();
  }
  return 0;
}
