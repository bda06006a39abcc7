/* cmd_archive.c - export and import: the tenant's entries streamed page by
 * page (EXPORT) into an archive (archive.h), and back entry by entry
 * (IMPORT), each verified before it is sent. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "archive.h"
#include "cli.h"

int cmd_export(cli *x, int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return cli_verb_help("export"), 0;
  static struct option lo[] = {{"page", 1, 0, 'p'}, {0, 0, 0, 0}};
  long page = 64;
  optind = 0;
  opterr = 0;
  for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
    char *end;
    if (c != 'p') return cli_usage_err("export", "unknown option '%s'", argv[optind - 1]);
    page = strtol(optarg, &end, 10);
    if (*end || page < 1 || page > KVS_WIRE_MAX_LIST)
      return cli_usage_err("export", "--page takes 1..%u", KVS_WIRE_MAX_LIST);
  }
  if (optind != argc - 1) return cli_usage_err("export", "one FILE expected ('-' = stdout)");
  const char *file = argv[optind];
  int to_stdout = !strcmp(file, "-");
  if (to_stdout && x->json) return cli_usage_err("export", "--json needs stdout: give a FILE");
  int rc = cli_client(x, "export");
  if (rc) return rc;
  /* a count first, for the progress bar */
  uint64_t total = 0;
  if (x->progress) {
    kvs_admin_item *v;
    size_t n;
    if (cli_list_all(x, &v, &n) == KVS_OK) total = n, free(v);
  }
  char part[1100];
  snprintf(part, sizeof part, "%s.part", file);
  FILE *f = to_stdout ? stdout : fopen(part, "wb");
  if (!f) return cli_fail(x, "export", KVS_EIO, "cannot write %s", part);
  kvs_arc_writer w;
  cli_progress pr;
  cli_progress_start(x, &pr, "export", total);
  kvs_err e = kvs_arc_write_begin(&w, f, kvs_wall_ms());
  kvs_admin_cursor cur;
  kvs_admin_cursor_init(&cur);
  uint64_t value_bytes = 0;
  while (e == KVS_OK && !cur.done) {
    kvs_admin_page *p = NULL;
    e = kvs_admin_export(x->c, &cur, (uint32_t)page, &p);
    if (e) {
      rc = cli_fail(x, "export", e, "EXPORT: %s", kvs_client_errmsg(x->c));
      break;
    }
    for (size_t i = 0; i < kvs_admin_page_count(p) && e == KVS_OK; i++) {
      const kvs_admin_record *r = kvs_admin_page_record(p, i);
      e = kvs_arc_write_entry(&w, r->meta, (uint32_t)r->meta_len, r->value, r->value_bytes);
      value_bytes += r->value_bytes;
      cli_progress_add(&pr, 1, r->value_bytes);
    }
    kvs_admin_page_free(p);
  }
  if (e == KVS_OK) e = kvs_arc_write_end(&w);
  cli_progress_end(&pr);
  if (!to_stdout && fclose(f) != 0 && e == KVS_OK) e = KVS_EIO;
  if (e != KVS_OK) {
    if (!to_stdout) remove(part);
    return rc ? rc : cli_fail(x, "export", e, "writing %s: %s", file, kvs_strerror(e));
  }
  if (!to_stdout && rename(part, file) != 0) {
    remove(part);
    return cli_fail(x, "export", KVS_EIO, "cannot rename %s to %s", part, file);
  }
  char b1[32], b2[32];
  if (x->json) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "file", file);
    cJSON_AddStringToObject(j, "tenant", x->tenant);
    cJSON_AddNumberToObject(j, "entries", (double)w.count);
    cJSON_AddNumberToObject(j, "value_bytes", (double)value_bytes);
    cJSON_AddNumberToObject(j, "archive_bytes", (double)w.bytes);
    cli_print_json(j);
  } else {
    fprintf(to_stdout ? stderr : stdout, "exported %llu entries (%s of values, archive %s) to %s\n",
            (unsigned long long)w.count, cli_fmt_bytes(value_bytes, b1, sizeof b1),
            cli_fmt_bytes(w.bytes, b2, sizeof b2), file);
  }
  return CLI_OK;
}

int cmd_import(cli *x, int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return cli_verb_help("import"), 0;
  static struct option lo[] = {{"verify-only", 0, 0, 'v'}, {0, 0, 0, 0}};
  int verify_only = 0;
  optind = 0;
  opterr = 0;
  for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
    if (c != 'v') return cli_usage_err("import", "unknown option '%s'", argv[optind - 1]);
    verify_only = 1;
  }
  if (optind != argc - 1) return cli_usage_err("import", "one FILE expected ('-' = stdin)");
  const char *file = argv[optind];
  FILE *f = !strcmp(file, "-") ? stdin : fopen(file, "rb");
  if (!f) return cli_fail(x, "import", KVS_ENOENT, "cannot read %s", file);
  int rc = verify_only ? CLI_OK : cli_client(x, "import");
  if (rc) {
    if (f != stdin) fclose(f);
    return rc;
  }
  kvs_arc_reader r;
  kvs_err e = kvs_arc_read_begin(&r, f, 0);
  if (e) {
    if (f != stdin) fclose(f);
    return cli_fail(x, "import", e, "%s is not a kvstash archive (%s)", file, kvs_strerror(e));
  }
  cli_progress pr; /* the entry count is only known at the trailer: bytes of the file */
  cli_progress_start(x, &pr, verify_only ? "verify (bytes)" : "import (bytes)",
                     r.size != UINT64_MAX ? r.size : 0);
  uint64_t last_off = r.off;
  uint64_t n_ok = 0, n_bad = 0, n_refused = 0, bytes = 0;
  const char *fatal = NULL;
  kvs_err fatal_e = KVS_OK;
  cJSON *j = x->json ? cJSON_CreateObject() : NULL;
  cJSON *skipped = j ? cJSON_AddArrayToObject(j, "skipped") : NULL;
  for (;;) {
    kvs_arc_entry en;
    e = kvs_arc_next(&r, &en);
    if (e == KVS_ENOENT) break;
    char hex[33] = "unknown";
    if (en.key_known) kvs_hash128_hex(&en.key, hex);
    const char *why = en.why;
    int refused = 0;
    if (e == KVS_OK && !verify_only) {
      kvs_err se = kvs_admin_import(x->c, en.meta, en.meta_len, en.value, en.value_len);
      if (se == KVS_ECONN || se == KVS_EAUTH) { /* nothing more will go through */
        free(en.meta);
        free(en.value);
        cli_progress_end(&pr);
        cJSON_Delete(j);
        if (f != stdin) fclose(f);
        return cli_fail(x, "import", se, "after %llu entries: %s", (unsigned long long)n_ok,
                        kvs_client_errmsg(x->c));
      }
      if (se) {
        n_refused++;
        refused = 1;
        why = kvs_client_errmsg(x->c);
        e = se;
      }
    }
    if (e == KVS_OK) {
      n_ok++;
      bytes += en.value_len;
    } else if (refused || e == KVS_ECHECKSUM || e == KVS_ECORRUPT) {
      if (!refused) n_bad++;
      if (!why) why = kvs_strerror(e);
      fprintf(stderr, "kvstash import: entry %llu (offset %llu, key %s) skipped: %s\n",
              (unsigned long long)en.index, (unsigned long long)en.offset, hex, why);
      if (skipped) {
        cJSON *s = cJSON_CreateObject();
        cJSON_AddNumberToObject(s, "index", (double)en.index);
        cJSON_AddNumberToObject(s, "offset", (double)en.offset);
        cJSON_AddStringToObject(s, "key", hex);
        cJSON_AddStringToObject(s, "error", kvs_errname(e));
        cJSON_AddStringToObject(s, "reason", why);
        cJSON_AddItemToArray(skipped, s);
      }
    } else {
      fatal = why ? why : kvs_strerror(e);
      fatal_e = e;
      free(en.meta);
      free(en.value);
      break;
    }
    cli_progress_add(&pr, r.off - last_off, en.value_len);
    last_off = r.off;
    free(en.meta);
    free(en.value);
  }
  cli_progress_end(&pr);
  if (f != stdin) fclose(f);
  if (fatal)
    fprintf(stderr, "kvstash import: stopped at byte %llu: %s; %llu entries before it were %s\n",
            (unsigned long long)r.off, fatal, (unsigned long long)n_ok,
            verify_only ? "sound" : "imported");
  char b[32];
  if (j) {
    cJSON_AddStringToObject(j, "file", file);
    cJSON_AddStringToObject(j, "tenant", x->tenant);
    cJSON_AddBoolToObject(j, "verify_only", verify_only);
    cJSON_AddNumberToObject(j, "imported", verify_only ? 0 : (double)n_ok);
    cJSON_AddNumberToObject(j, "sound", (double)n_ok);
    cJSON_AddNumberToObject(j, "bad", (double)n_bad);
    cJSON_AddNumberToObject(j, "refused", (double)n_refused);
    cJSON_AddNumberToObject(j, "value_bytes", (double)bytes);
    cJSON_AddBoolToObject(j, "complete", fatal == NULL);
    if (fatal) {
      cJSON_AddStringToObject(j, "stopped", fatal);
      cJSON_AddStringToObject(j, "stopped_error", kvs_errname(fatal_e));
    }
    cli_print_json(j);
  } else {
    printf("%s %llu entries (%s)%s", verify_only ? "verified" : "imported",
           (unsigned long long)n_ok, cli_fmt_bytes(bytes, b, sizeof b), "");
    if (n_bad || n_refused)
      printf("; skipped %llu bad, %llu refused by the server", (unsigned long long)n_bad,
             (unsigned long long)n_refused);
    printf("%s\n", fatal ? "; archive unreadable past that point" : "");
  }
  return fatal || n_bad || n_refused ? CLI_FAIL : CLI_OK;
}
