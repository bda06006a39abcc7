/* bench_json.h - the last line of every bench: one JSON object, built with
 * cJSON (never by hand: no buffer to overrun, strings escaped, NaN and inf
 * written as null). bench/plot.py and the JSONL files of bench/results read it. */
#ifndef KVS_BENCH_JSON_H
#define KVS_BENCH_JSON_H
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

/* Adds v under key with the digits printf(fmt) shows (e.g. "%.4f", "%.3e"),
 * so the JSON carries what the table prints; a NaN or inf becomes null. */
static inline cJSON *bench_json_num(cJSON *o, const char *key, const char *fmt, double v) {
  char b[64];
  snprintf(b, sizeof b, fmt, v);
  return cJSON_AddNumberToObject(o, key, strtod(b, NULL));
}

/* Prints root on one line (then a newline) and frees it. 0, or 1 when it
 * could not be printed (no memory): a message on stderr. */
static inline int bench_json_print(cJSON *root) {
  char *s = root ? cJSON_PrintUnformatted(root) : NULL;
  cJSON_Delete(root);
  if (!s) {
    fprintf(stderr, "bench: cannot build the JSON line (no memory)\n");
    return 1;
  }
  printf("%s\n", s);
  fflush(stdout);
  cJSON_free(s);
  return 0;
}
#endif
