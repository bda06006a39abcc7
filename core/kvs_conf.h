/* kvs_conf.h - the `key = value` format of kvstashd.conf, one parser for
 * kvstashd (cachesvc/config.c) and the kvstash CLI (which reads tokens from
 * the same file). Library kvs_conf (core/), not part of libkvstash.
 *
 * The format (docs/kvstashd.md, "Configuration"):
 *   - one `key = value` per line; whitespace around key and value is ignored;
 *     dashes in a key are underscores (`max-msg` = `max_msg`);
 *   - a blank line, or one whose first non-blank character is `#`, is skipped;
 *   - an unquoted value ends at a `#` that follows whitespace (a comment) or
 *     at the end of the line; a `#` inside a word (`tok#1`) is kept;
 *   - "double quotes" keep everything, `#` and spaces included, with \" and
 *     \\ as the only escapes; 'single quotes' keep everything literally; after
 *     the closing quote only whitespace or a comment may follow;
 *   - a line is at most KVS_CONF_LINE_MAX bytes, a file at most
 *     KVS_CONF_FILE_MAX; no NUL bytes.
 * Every error is one line, "NAME:LINE: what" (NAME is the path or the name
 * given), written into the caller's buffer. */
#ifndef KVS_CONF_H
#define KVS_CONF_H

#include <stddef.h>
#include <stdint.h>

#include "kvs_err.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVS_CONF_LINE_MAX 4096u
#define KVS_CONF_FILE_MAX (1u << 20)
#define KVS_CONF_KEY_MAX  64u

/* Called for each `key = value` in file order. Return KVS_OK to go on; any
 * error stops the parse, and `why` (why_cap bytes, "" on entry) says what is
 * wrong in one line without the file position (the parser adds it). key and
 * value are valid during the call only. */
typedef kvs_err (*kvs_conf_fn)(void *ctx, const char *key, const char *value, char *why,
                               size_t why_cap);

/* Parses text[0..n) (need not be NUL-terminated). name is used in error
 * messages. KVS_EINVAL (format or callback error, or the callback's own
 * code) with err filled; err may be NULL. */
kvs_err kvs_conf_parse_mem(const char *text, size_t n, const char *name, kvs_conf_fn fn, void *ctx,
                           char *err, size_t err_cap);
/* Reads path whole (at most KVS_CONF_FILE_MAX) and parses it. An unreadable
 * file: the errno's kvs_err, err = "PATH: strerror". */
kvs_err kvs_conf_parse_file(const char *path, kvs_conf_fn fn, void *ctx, char *err, size_t err_cap);

/* The value of the last `key` line of path (a key given twice: the last
 * wins, as in kvstashd, except for the repeated keys listen/tenant/
 * model_cost, where this gives the last one). KVS_ENOENT when absent;
 * KVS_ERANGE when longer than cap - 1. */
kvs_err kvs_conf_get(const char *path, const char *key, char *out, size_t cap, char *err,
                     size_t err_cap);
/* The token of `tenant = NAME:TOKEN` in path, for `kvstash -t NAME`.
 * KVS_ENOENT (err says so) when path names no such tenant. */
kvs_err kvs_conf_tenant_token(const char *path, const char *tenant, char *token, size_t cap,
                              char *err, size_t err_cap);

/* Levenshtein distance (bytes; inputs longer than KVS_CONF_KEY_MAX count
 * as far from everything). */
size_t kvs_conf_edit_distance(const char *a, const char *b);
/* The candidate nearest to word when it is near enough to be a typo (at
 * most 2 edits, or a third of the word's length when longer); NULL when
 * none is. Returns one of cands. */
const char *kvs_conf_suggest(const char *word, const char *const *cands, size_t n);
/* A byte size: a decimal number (fractions allowed, "1.5G") with an
 * optional K/M/G/T suffix (powers of 1024, either case), optionally followed
 * by i and/or B ("KiB", "kb", "GB"); at most 1.8e19. KVS_EINVAL when s is not
 * such a size, KVS_ERANGE when it is too large; *out untouched then. The one
 * size parser of kvstashd's config, cluster_capacity and the CLI. */
kvs_err kvs_conf_parse_size(const char *s, uint64_t *out);
/* A TCP port in decimal digits only, 1..65535. */
kvs_err kvs_conf_port(const char *s, int *port);
/* "HOST:PORT" (HOST may be empty or [v6]): kvs_hostport_split (kvs_net.h)
 * without the host. */
kvs_err kvs_conf_hostport(const char *s, int *port);

#ifdef __cplusplus
}
#endif
#endif
