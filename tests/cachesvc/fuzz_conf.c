/* Fuzz target: the kvstashd.conf parser (core/conf.c) through kvstashd's
 * options (cachesvc/config.c). Any input: an answer, never a crash; an
 * error is one line; a file that parses parses the same again. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_conf.h"
#include "kvs_svc.h"

static kvs_err set_cb(void *ctx, const char *key, const char *value, char *why, size_t cap) {
  kvs_err rc = kvs_svc_config_set(ctx, key, value);
  if (rc != KVS_OK) {
    size_t n = strlen(kvs_svc_config_error());
    if (n >= cap) n = cap - 1;
    memcpy(why, kvs_svc_config_error(), n);
    why[n] = 0;
  }
  return rc;
}

static kvs_err count_cb(void *ctx, const char *key, const char *value, char *why, size_t cap) {
  (*(size_t *)ctx)++;
  if (!*key || strchr(key, '-') || strchr(key, '=')) abort(); /* keys are normalized */
  return KVS_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static kvs_svc_config c; /* large: not on the stack */
  kvs_svc_config_defaults(&c);
  char err[700];
  kvs_err rc = kvs_conf_parse_mem((const char *)data, size, "fuzz", set_cb, &c, err, sizeof err);
  if (rc != KVS_OK && (!err[0] || strchr(err, '\n'))) abort();
  size_t n1 = 0, n2 = 0;
  kvs_err a = kvs_conf_parse_mem((const char *)data, size, "fuzz", count_cb, &n1, err, sizeof err);
  kvs_err b = kvs_conf_parse_mem((const char *)data, size, "fuzz", count_cb, &n2, err, sizeof err);
  if (a != b || n1 != n2) abort();
  return 0;
}
