/* cli_helper.h - runs the `kvstash` binary (build/tools/cli/kvstash) the way
 * an operator would and captures what it prints. */
#ifndef KVS_CLI_HELPER_H
#define KVS_CLI_HELPER_H

#include <cjson/cJSON.h>

/* Settings passed through the environment (KVS_URL, ...); NULL = unset.
 * KVS_CONFIG is always /dev/null so that no user config leaks in. */
typedef struct cli_env {
  const char *url, *http, *tenant, *token, *admin_token, *model_path;
} cli_env;

/* Runs kvstash with args (NULL-terminated), stdin from /dev/null; *out gets
 * stdout (malloc'd, NUL-ended; may be NULL). Returns the exit code, -1 when
 * it did not exit normally. stderr goes to the test's stderr. */
int cli_run(const cli_env *env, char **out, const char *const *args);
/* Same, with stderr captured into *err too (malloc'd, NUL-ended; at most 1 MiB). */
int cli_run_err(const cli_env *env, char **out, char **err, const char *const *args);
/* Same, stdout parsed as one JSON document (*j NULL when it does not parse;
 * cJSON_Delete it). */
int cli_run_json(const cli_env *env, cJSON **j, const char *const *args);
#define CLI_ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

#endif
