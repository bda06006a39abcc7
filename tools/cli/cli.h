/* cli.h - internals of the `kvstash` admin CLI (tools/cli), shared by main.c
 * and the files of verbs. Not installed. */
#ifndef KVS_CLI_H
#define KVS_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "kvs_wire.h"
#include "kvstash.h"
#include "kvstash_admin.h"

#define KVS_WIRE_MAX_LIST_CLI KVS_WIRE_MAX_LIST

/* Exit codes (docs/cli.md, `kvstash --help`). */
enum {
  CLI_OK = 0,
  CLI_FAIL = 1,        /* the operation failed (or, for doctor, a check failed) */
  CLI_USAGE = 2,       /* bad verb, option or argument */
  CLI_UNREACHABLE = 3, /* kvstashd did not answer (data plane or HTTP) */
  CLI_AUTH = 4         /* token or admin token refused */
};

typedef struct cli {
  /* settings: flag > environment > config file > default */
  char url[512];  /* data plane, tcp:// or ipc:// */
  char http[256]; /* control plane host:port ("" = none) */
  char tenant[64];
  char token[128];
  char admin_token[128];
  char model_path[1024]; /* GGUF of the reference engine ("" = not found) */
  uint32_t timeout_ms;   /* connect + request deadline base */
  int json;              /* --json: one JSON document on stdout */
  int progress;          /* progress bars on stderr (stdout is a terminal) */
  kvs_client *c;         /* opened by cli_client() */
} cli;

/* The verbs: argc/argv start at the verb's name (argv[0]); each returns an
 * exit code. */
typedef int (*cli_verb_fn)(cli *x, int argc, char **argv);
int cmd_status(cli *x, int argc, char **argv);
int cmd_ls(cli *x, int argc, char **argv);
int cmd_show(cli *x, int argc, char **argv);
int cmd_evict(cli *x, int argc, char **argv);
int cmd_pin(cli *x, int argc, char **argv); /* pin and unpin */
int cmd_ttl(cli *x, int argc, char **argv);
int cmd_export(cli *x, int argc, char **argv);
int cmd_import(cli *x, int argc, char **argv);
int cmd_warmup(cli *x, int argc, char **argv);
int cmd_bench(cli *x, int argc, char **argv);
int cmd_doctor(cli *x, int argc, char **argv);
int cmd_cluster(cli *x, int argc, char **argv); /* cmd_cluster.c */

/* Prints a verb's help (usage, options, example) to stdout. */
void cli_verb_help(const char *verb);
/* Usage error: message on stderr, a hint, returns CLI_USAGE. */
int cli_usage_err(const char *verb, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Operation error: "kvstash VERB: message" on stderr, and with --json an
 * {"error","code","message"} document on stdout; returns the exit code of e. */
int cli_fail(cli *x, const char *verb, kvs_err e, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
int cli_exit_of(kvs_err e);

/* Opens the data-plane client and checks it with a PING (reachability and
 * the token). On error prints why and returns the exit code (3, 4, 1). */
int cli_client(cli *x, const char *verb);

/* HTTP control plane: one request, the body in *body (malloc'd, NUL-ended),
 * the status in *status. KVS_ECONN when the server cannot be reached. */
kvs_err cli_http(cli *x, const char *method, const char *path, int *status, char **body);
/* GET of a /v1/ JSON document: KVS_EAUTH on 401, KVS_ENOENT on 404, the
 * server's error code otherwise; *out parsed (cJSON_Delete). */
kvs_err cli_http_json(cli *x, const char *method, const char *path, cJSON **out);

/* A key: 32 hex digits, or an unambiguous prefix (>= 4 hex) of a key of this
 * tenant (resolved through LIST). On error prints why and returns an exit code. */
int cli_resolve_key(cli *x, const char *verb, const char *s, kvs_key *out);

/* Every entry of the tenant (LIST pages). *items malloc'd. */
kvs_err cli_list_all(cli *x, kvs_admin_item **items, size_t *n);

/* Parsing: sizes (K/M/G/T, powers of 1024), durations (s, m, h, d; bare = s). */
int cli_parse_size(const char *s, uint64_t *out);
int cli_parse_duration(const char *s, uint64_t *seconds);
/* Formatting into buf: "1.5 MiB", "3m", "2h", "-". Returns buf. */
const char *cli_fmt_bytes(uint64_t b, char *buf, size_t cap);
const char *cli_fmt_age(uint64_t ms_ago, char *buf, size_t cap);
/* A wire tier number's name on the server ("ram", "disk", "cold"): load the
 * server's tier rows once connected (STATS), then look them up. */
void cli_tier_names_load(cli *x);
void cli_tier_names_http(cli *x); /* the same from /v1/info's tiers */
const char *cli_tier_name(unsigned tier);
/* A codec profile's name ("int8", "dense", ...; "?" when unknown here). */
const char *cli_profile_name(int profile);

/* JSON of one listed entry (for ls, evict). */
cJSON *cli_item_json(const kvs_admin_item *it);
/* Prints j (pretty) on stdout and frees it. */
void cli_print_json(cJSON *j);

/* Progress bar on stderr (only when x->progress): label, done/total units
 * (total 0 = unknown), bytes for the rate. Call cli_progress_end once. */
typedef struct cli_progress {
  const char *label;
  const char *unit; /* set after start: the rate in units/s ("tokens/s"), else bytes/s */
  uint64_t total, done, bytes;
  uint64_t t0_ns, last_ns;
  int on;
} cli_progress;
void cli_progress_start(cli *x, cli_progress *p, const char *label, uint64_t total);
void cli_progress_add(cli_progress *p, uint64_t units, uint64_t bytes);
void cli_progress_end(cli_progress *p);

/* The reference engine's GGUF: --model, $KVS_MODEL_PATH or
 * ~/.cache/kvstash/models/SmolLM2-135M-Instruct.Q4_1.gguf. */
void cli_default_model_path(char *out, size_t cap);

#endif
