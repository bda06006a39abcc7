/* kvstashd's config file and flags. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvs_svc.h"
#include "svc_int.h"
#include "kvs_test.h"

static void test_defaults(void) {
  kvs_svc_config c;
  kvs_svc_config_defaults(&c);
  CU_ASSERT_STRING_EQUAL(c.listen[0], "tcp://127.0.0.1:7878"); /* loopback only */
  CU_ASSERT_STRING_EQUAL(c.listen[1], "tcp+stream://127.0.0.1:7880"); /* loopback too */
  CU_ASSERT_EQUAL(c.n_listen, 0); /* both apply until a listen option is given */
  CU_ASSERT(strncmp(c.http, "127.0.0.1:", 10) == 0);
  CU_ASSERT_EQUAL(c.durability_sync, 1);
  CU_ASSERT_EQUAL(c.n_tenants, 0);
}

static void test_example_file(void) {
  kvs_svc_config c;
  kvs_svc_config_defaults(&c);
  CU_ASSERT_EQUAL_FATAL(kvs_svc_config_load(&c, kvs_test_src_path("cachesvc/kvstashd.conf.example")),
                        KVS_OK);
  CU_ASSERT_STRING_EQUAL(c.data_dir, "/var/lib/kvstash");
  CU_ASSERT_EQUAL_FATAL(c.n_listen, 3);
  CU_ASSERT_STRING_EQUAL(c.listen[1], "ipc:///run/kvstash/kvstash.sock");
  CU_ASSERT_STRING_EQUAL(c.listen[2], "tcp+stream://127.0.0.1:7880");
  CU_ASSERT_EQUAL(c.ram_bytes, 8ull << 30);
  CU_ASSERT_EQUAL(c.cold_bytes, 4ull << 40);
  CU_ASSERT_EQUAL(c.max_msg, 64ull << 20);
  CU_ASSERT_EQUAL(c.log_level, KVS_LOG_INFO);
}

static void test_flags_override(void) {
  char path[] = "/tmp/kvs-conf-XXXXXX";
  int fd = mkstemp(path);
  CU_ASSERT_FATAL(fd >= 0);
  const char *text = "# comment\n  workers = 3  \n\ndurability=async # trailing\n"
                     "tenant = a:tok1\ntenant = b.c_d-e:tok2\nram_bytes = 1.5M\n";
  CU_ASSERT_EQUAL(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  kvs_svc_config c;
  kvs_svc_config_defaults(&c);
  char cfg[64];
  snprintf(cfg, sizeof cfg, "--config=%s", path);
  char *argv[] = {"kvstashd", "--workers", "5", cfg, "--max-msg=1M", NULL};
  int help = 0;
  CU_ASSERT_EQUAL(kvs_svc_config_args(&c, 5, argv, &help), KVS_OK);
  CU_ASSERT_EQUAL(help, 0);
  CU_ASSERT_EQUAL(c.workers, 5); /* flag over file */
  CU_ASSERT_EQUAL(c.durability_sync, 0);
  CU_ASSERT_EQUAL(c.max_msg, 1u << 20);
  CU_ASSERT_EQUAL(c.ram_bytes, 1572864u);
  CU_ASSERT_EQUAL(c.n_tenants, 2);
  CU_ASSERT_STRING_EQUAL(c.tenants[1].name, "b.c_d-e");
  CU_ASSERT_STRING_EQUAL(c.tenants[1].token, "tok2");
  unlink(path);
}

static void test_rejects(void) {
  kvs_svc_config c;
  kvs_svc_config_defaults(&c);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "nope", "1"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "workers", "0"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "workers", "3x"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "durability", "maybe"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "listen", "http://x"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "tenant", "bad name:tok"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "tenant", "a:"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "max_msg", "10"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "model_cost", "zz:1"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "model_cost", "000102030405060708090a0b0c0d0e0f:2.5"),
                  KVS_OK);
  CU_ASSERT_EQUAL(c.n_model_costs, 1);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "http", "nohostport"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "http", ""), KVS_OK);
  char *argv[] = {"kvstashd", "positional", NULL};
  int help = 0;
  CU_ASSERT_EQUAL(kvs_svc_config_args(&c, 2, argv, &help), KVS_EINVAL);
}

static const kvs_test_case cases[] = {{"defaults", test_defaults},
                                      {"example_file", test_example_file},
                                      {"flags_override", test_flags_override},
                                      {"rejects", test_rejects},
                                      {NULL, NULL}};

/* Seed corpus of fuzz_record: valid records (ok and quarantined), one cut short. */
static int write_record_corpus(const char *dir) {
  int32_t tok[5] = {1, 2, 3, 4, 5};
  uint64_t seg[2] = {10, 30};
  kvs_wire_meta m;
  memset(&m, 0, sizeof m);
  m.model = kvs_hash128_buf("m", 1);
  m.key = kvs_key_content(&m.model, tok, 5);
  m.key_kind = KVS_KEY_KIND_CONTENT;
  m.n_tokens = 5;
  m.n_segments = 2;
  m.value_bytes = 30;
  m.codec_profile = 3;
  m.codec_params = (const uint8_t *)"abc";
  m.codec_params_len = 3;
  m.tokens_le = (const uint8_t *)tok;
  m.seg_end_le = (const uint8_t *)seg;
  m.hits = 7;
  m.pinned = 1;
  uint8_t buf[1024];
  size_t n = 0;
  for (int state = 0; state <= 1; state++) {
    if (kvs__record_encode(&m, (uint8_t)state, buf, sizeof buf, &n) != KVS_OK) return 1;
    char path[1024];
    snprintf(path, sizeof path, "%s/record_%d", dir, state);
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    fwrite(buf, 1, state ? n : n, f);
    fclose(f);
  }
  char path[1024];
  snprintf(path, sizeof path, "%s/record_short", dir);
  FILE *f = fopen(path, "wb");
  if (!f) return 1;
  fwrite(buf, 1, n - 9, f);
  fclose(f);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--write-record-corpus") == 0)
    return write_record_corpus(argv[2]);
  return kvs_test_run("cachesvc_config", cases);
}
