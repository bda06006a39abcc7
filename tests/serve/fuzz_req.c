/* libFuzzer target: kvs-serve's request parser over arbitrary bytes, both
 * endpoints. Must never crash or leak; an accepted request frees cleanly. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "serve_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  for (int chat = 0; chat < 2; chat++) {
    srv_req r;
    char err[256];
    kvs_err e = srv_req_parse((const char *)data, size, chat, &r, err, sizeof err);
    if (e == KVS_OK && chat && (r.n_msgs < 1 || !r.msgs)) abort(); /* accepted chats have turns */
    if (e == KVS_OK && !chat && !r.prompt) abort();
    srv_req_free(&r);
  }
  if (size) (void)srv_utf8_complete((const char *)data, size);
  return 0;
}
