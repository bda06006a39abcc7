/* kvs-serve: request parsing and prompt segments (no model needed), then the
 * real server on SmolLM2 (CPU) answering over HTTP: a chat completion, the
 * same one streamed (same text), completions, errors, and several clients. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvs_model.h"
#include "kvs_test.h"
#include "serve_int.h"

extern char **environ;

/* ------------------------------------------------------------- parsing */
static kvs_err parse(const char *s, int chat, srv_req *r, char *err) {
  return srv_req_parse(s, strlen(s), chat, r, err, 256);
}

static void test_parse_chat(void) {
  srv_req r;
  char err[256];
  const char *b = "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
                  "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":"
                  "\"text\",\"text\":\"b\"}]}],"
                  "\"max_tokens\":7,\"stream\":true,\"stop\":[\"x\",\"yy\"],\"documents\":[\"d1\",{"
                  "\"text\":\"d2\"}],"
                  "\"kvstash\":{\"reuse\":false},\"temperature\":0.7}";
  CU_ASSERT_EQUAL_FATAL(parse(b, 1, &r, err), KVS_OK);
  CU_ASSERT_STRING_EQUAL(r.model, "m");
  CU_ASSERT_EQUAL(r.n_msgs, 2);
  CU_ASSERT_STRING_EQUAL(r.msgs[1].content, "ab");
  CU_ASSERT_EQUAL(r.max_tokens, 7);
  CU_ASSERT_EQUAL(r.stream, 1);
  CU_ASSERT_EQUAL(r.n_stop, 2);
  CU_ASSERT_EQUAL(r.n_docs, 2);
  CU_ASSERT_STRING_EQUAL(r.docs[1], "d2");
  CU_ASSERT_EQUAL(r.reuse, 0);
  srv_req_free(&r);
  /* marked documents are cut out of the last user turn */
  b = "{\"messages\":[{\"role\":\"user\",\"content\":\"<kvs:doc>one</kvs:doc>mid<kvs:doc>two</"
      "kvs:doc>Q?\"}]}";
  CU_ASSERT_EQUAL_FATAL(parse(b, 1, &r, err), KVS_OK);
  CU_ASSERT_EQUAL(r.n_docs, 2);
  CU_ASSERT_STRING_EQUAL(r.docs[0], "one");
  CU_ASSERT_STRING_EQUAL(r.docs[1], "two");
  CU_ASSERT_STRING_EQUAL(r.msgs[0].content, "midQ?");
  CU_ASSERT_EQUAL(r.reuse, 1);
  srv_req_free(&r);
  CU_ASSERT_EQUAL_FATAL(parse("{\"prompt\":\"hi\",\"max_tokens\":null}", 0, &r, err), KVS_OK);
  CU_ASSERT_STRING_EQUAL(r.prompt, "hi");
  CU_ASSERT_EQUAL(r.max_tokens, 0);
  srv_req_free(&r);
}

static void test_parse_errors(void) {
  static const char *bad_chat[] = {
      "",
      "[]",
      "{",
      "{\"messages\":[]}",
      "{\"messages\":{}}",
      "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}",
      "{\"messages\":[{\"role\":1,\"content\":\"x\"}]}",
      "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1.5}",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":99999999}",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":\"yes\"}",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":2}",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[1]}",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"\"]}",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"a\",\"b\",\"c\",\"d\","
      "\"e\"]}",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"documents\":[1]}",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"kvstash\":{\"reuse\":1}}",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"<kvs:doc>open\"}]}",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"close</kvs:doc>\"}]}",
      NULL};
  for (int i = 0; bad_chat[i]; i++) {
    srv_req r;
    char err[256] = "";
    kvs_err e = parse(bad_chat[i], 1, &r, err);
    CU_ASSERT_EQUAL(e, KVS_EINVAL);
    CU_ASSERT(strlen(err) > 0); /* a reason, naming what is wrong */
    if (e != KVS_EINVAL) fprintf(stderr, "accepted: %s\n", bad_chat[i]);
    srv_req_free(&r);
  }
  srv_req r;
  char err[256];
  CU_ASSERT_EQUAL(parse("{\"prompt\":3}", 0, &r, err), KVS_EINVAL);
  srv_req_free(&r);
  /* too many documents */
  char big[4096] = "{\"prompt\":\"q\",\"documents\":[";
  for (int i = 0; i <= SRV_MAX_DOCS; i++)
    strcat(big, i ? ",\"d\"" : "\"d\"");
  strcat(big, "]}");
  CU_ASSERT_EQUAL(parse(big, 0, &r, err), KVS_ETOOBIG);
  srv_req_free(&r);
}

static void test_utf8(void) {
  CU_ASSERT_EQUAL(srv_utf8_complete("abc", 3), 3);
  CU_ASSERT_EQUAL(srv_utf8_complete("a\xC3\xA9", 3), 3);     /* é whole */
  CU_ASSERT_EQUAL(srv_utf8_complete("a\xC3", 2), 1);         /* é cut */
  CU_ASSERT_EQUAL(srv_utf8_complete("a\xE2\x82", 3), 1);     /* € cut */
  CU_ASSERT_EQUAL(srv_utf8_complete("a\xE2\x82\xAC", 4), 4); /* € whole */
  CU_ASSERT_EQUAL(srv_utf8_complete("\xF0\x9F\x98", 3), 0);  /* emoji cut */
  CU_ASSERT_EQUAL(srv_utf8_complete("", 0), 0);
}

/* The segments of a chat with history and documents, on the real tokenizer:
 * they tile the prompt, documents are CONTENT and tokenize alone, and the ids
 * equal a whole-string tokenization of the ChatML text. */
static void test_prompt_segments(void) {
  const char *mp = kvs_test_model_path();
  if (!mp) {
    printf("  (no model: prompt segments not checked)\n");
    return;
  }
  kvs_gguf *g = NULL;
  kvs_tok *tok = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs_gguf_open(mp, &g), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_tok_create(g, &tok), KVS_OK);
  srv_req r;
  char err[256];
  const char *b =
      "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
      "{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Hello!\"},"
      "{\"role\":\"user\",\"content\":\"Who wrote it?\"}],"
      "\"documents\":[\"Hamlet is a play by William Shakespeare.\",\"It was written around "
      "1600.\"]}";
  CU_ASSERT_EQUAL_FATAL(parse(b, 1, &r, err), KVS_OK);
  srv_prompt p;
  CU_ASSERT_EQUAL_FATAL(srv_prompt_build(tok, &r, NULL, &p), KVS_OK);
  CU_ASSERT_EQUAL(p.n_segs, 4);
  CU_ASSERT_EQUAL(p.segs[0].kind, SRV_SEG_PREFIX);
  CU_ASSERT_EQUAL(p.segs[1].kind, SRV_SEG_CONTENT);
  CU_ASSERT_EQUAL(p.segs[2].kind, SRV_SEG_CONTENT);
  CU_ASSERT_EQUAL(p.segs[3].kind, SRV_SEG_NEW);
  uint32_t at = 0;
  for (uint32_t i = 0; i < p.n_segs; i++) {
    CU_ASSERT_EQUAL(p.segs[i].start, at);
    at += p.segs[i].len;
  }
  CU_ASSERT_EQUAL(at, p.n_tokens);
  /* a document's ids are those of its text alone */
  kvs_token ids[64];
  size_t n = 0;
  const char *d = "It was written around 1600.\n\n";
  CU_ASSERT_EQUAL(kvs_tok_encode(tok, d, strlen(d), 0, 0, ids, 64, &n), KVS_OK);
  CU_ASSERT_EQUAL(n, p.segs[2].len);
  CU_ASSERT_EQUAL(memcmp(ids, p.tokens + p.segs[2].start, n * sizeof *ids), 0);
  srv_prompt_free(&p);
  srv_req_free(&r);
  /* without documents the prompt equals its ChatML text tokenized in one go */
  b = "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
      "{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Hello!\"},"
      "{\"role\":\"user\",\"content\":\"Who wrote it?\"}]}";
  CU_ASSERT_EQUAL_FATAL(parse(b, 1, &r, err), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(srv_prompt_build(tok, &r, NULL, &p), KVS_OK);
  CU_ASSERT_EQUAL(p.n_segs, 2);
  const char *text = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                     "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n"
                     "Who wrote it?<|im_end|>\n<|im_start|>assistant\n";
  kvs_token all[512];
  CU_ASSERT_EQUAL(kvs_tok_encode(tok, text, strlen(text), 1, 0, all, 512, &n), KVS_OK);
  CU_ASSERT_EQUAL(n, p.n_tokens);
  CU_ASSERT_EQUAL(memcmp(all, p.tokens, n * sizeof *all), 0);
  srv_prompt_free(&p);
  srv_req_free(&r);
  /* a client cannot inject a turn: its "<|im_end|>" is plain text */
  CU_ASSERT_EQUAL_FATAL(
      parse("{\"messages\":[{\"role\":\"user\",\"content\":\"<|im_end|>\"}]}", 1, &r, err), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(srv_prompt_build(tok, &r, NULL, &p), KVS_OK);
  kvs_token end = kvs_tok_find(tok, "<|im_end|>");
  int ends = 0;
  for (uint32_t i = 0; i < p.n_tokens; i++)
    ends += p.tokens[i] == end;
  CU_ASSERT_EQUAL(ends, 1); /* only the template's own */
  srv_prompt_free(&p);
  srv_req_free(&r);
  kvs_tok_free(tok);
  kvs_gguf_free(g);
}

/* The answers' ids by text: found by exact text only, newest first, the
 * oldest evicted by count and by bytes, bad arguments refused. */
static void test_answers(void) {
  srv_answers *a = NULL;
  CU_ASSERT_EQUAL(srv_answers_create(0, 100, &a), KVS_EINVAL);
  CU_ASSERT_EQUAL_FATAL(srv_answers_create(3, 1000, &a), KVS_OK);
  int32_t i1[] = {1, 2, 3}, i2[] = {4, 5}, i3[] = {6}, i4[] = {7, 8};
  uint32_t n = 0;
  CU_ASSERT_EQUAL(srv_answers_put(a, "one", 3, i1, 3), KVS_OK);
  CU_ASSERT_EQUAL(srv_answers_put(a, "two", 3, i2, 2), KVS_OK);
  const int32_t *g = srv_answers_get(a, "one", 3, &n);
  CU_ASSERT_PTR_NOT_NULL_FATAL(g);
  CU_ASSERT_EQUAL(n, 3);
  CU_ASSERT_EQUAL(memcmp(g, i1, sizeof i1), 0);
  CU_ASSERT_PTR_NULL(srv_answers_get(a, "on", 2, &n));          /* a prefix is not the text */
  CU_ASSERT_PTR_NULL(srv_answers_get(a, "one!", 4, &n));        /* nor a longer one */
  CU_ASSERT_EQUAL(srv_answers_put(a, "one", 3, i3, 1), KVS_OK); /* the same text again */
  g = srv_answers_get(a, "one", 3, &n);
  CU_ASSERT(g && n == 1 && g[0] == 6);                           /* newest first */
  CU_ASSERT_EQUAL(srv_answers_put(a, "four", 4, i4, 2), KVS_OK); /* 4th entry: "one"(1) goes */
  g = srv_answers_get(a, "one", 3, &n);
  CU_ASSERT(g && n == 1); /* the newer "one" is still there */
  CU_ASSERT_PTR_NOT_NULL(srv_answers_get(a, "two", 3, &n));
  CU_ASSERT_PTR_NOT_NULL(srv_answers_get(a, "four", 4, &n));
  CU_ASSERT_EQUAL(srv_answers_put(a, "x", 1, NULL, 0), KVS_EINVAL);
  srv_answers_free(a);
  /* bytes: 3 + 3*4 = 15 per entry, 40 bytes hold two */
  CU_ASSERT_EQUAL_FATAL(srv_answers_create(100, 40, &a), KVS_OK);
  CU_ASSERT_EQUAL(srv_answers_put(a, "aaa", 3, i1, 3), KVS_OK);
  CU_ASSERT_EQUAL(srv_answers_put(a, "bbb", 3, i1, 3), KVS_OK);
  CU_ASSERT_EQUAL(srv_answers_put(a, "ccc", 3, i1, 3), KVS_OK);
  CU_ASSERT_PTR_NULL(srv_answers_get(a, "aaa", 3, &n));
  CU_ASSERT_PTR_NOT_NULL(srv_answers_get(a, "ccc", 3, &n));
  int32_t big[16] = {0};
  CU_ASSERT_EQUAL(srv_answers_put(a, "d", 1, big, 16), KVS_ETOOBIG); /* over the whole budget */
  srv_answers_free(a);
}

/* A conversation's prefix chain must not change between its turns: the
 * prompt of turn 1 (up to the assistant opening) is the start of turn 2's
 * prompt, and an answer the server produced comes back as the ids it
 * generated, even where they are not the tokenizer's own for that text. */
static void test_turn_ids(void) {
  const char *mp = kvs_test_model_path();
  if (!mp) {
    printf("  (no model: turn ids not checked)\n");
    return;
  }
  kvs_gguf *g = NULL;
  kvs_tok *tok = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs_gguf_open(mp, &g), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_tok_create(g, &tok), KVS_OK);
  srv_req r1, r2;
  char err[256];
  /* user text that starts with a space and a newline: where "user\n" and the
   * text tokenized together and apart could differ */
  CU_ASSERT_EQUAL_FATAL(
      parse("{\"messages\":[{\"role\":\"user\",\"content\":\" \\n  Tell me about rivers.\"}]}", 1,
            &r1, err),
      KVS_OK);
  CU_ASSERT_EQUAL_FATAL(
      parse("{\"messages\":[{\"role\":\"user\",\"content\":\" \\n  Tell me about rivers.\"},"
            "{\"role\":\"assistant\",\"content\":\"Rivers flow.\"},"
            "{\"role\":\"user\",\"content\":\"And lakes?\"}]}",
            1, &r2, err),
      KVS_OK);
  srv_prompt p1, p2;
  CU_ASSERT_EQUAL_FATAL(srv_prompt_build(tok, &r1, NULL, &p1), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(srv_prompt_build(tok, &r2, NULL, &p2), KVS_OK);
  CU_ASSERT_FATAL(p2.n_tokens > p1.n_tokens);
  CU_ASSERT_EQUAL(memcmp(p1.tokens, p2.tokens, p1.n_tokens * sizeof *p1.tokens), 0);
  srv_prompt_free(&p2);
  /* the answer's ids: deliberately not the tokenizer's (one id per byte) */
  kvs_token ids[32];
  size_t n = 0;
  CU_ASSERT_EQUAL(kvs_tok_encode(tok, "Rivers flow.", 12, 0, 0, ids, 32, &n), KVS_OK);
  int32_t odd[3] = {ids[n - 1], ids[0], ids[n - 1]};
  srv_answers *a = NULL;
  CU_ASSERT_EQUAL_FATAL(srv_answers_create(8, 1 << 16, &a), KVS_OK);
  CU_ASSERT_EQUAL(srv_answers_put(a, "Rivers flow.", 12, odd, 3), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(srv_prompt_build(tok, &r2, a, &p2), KVS_OK);
  CU_ASSERT_EQUAL(memcmp(p1.tokens, p2.tokens, p1.n_tokens * sizeof *p1.tokens), 0);
  CU_ASSERT_EQUAL(memcmp(p2.tokens + p1.n_tokens, odd, sizeof odd),
                  0); /* right after the opening */
  CU_ASSERT_EQUAL(p2.tokens[p1.n_tokens + 3], kvs_tok_find(tok, "<|im_end|>"));
  srv_prompt_free(&p2);
  srv_answers_free(a);
  srv_prompt_free(&p1);
  srv_req_free(&r1);
  srv_req_free(&r2);
  kvs_tok_free(tok);
  kvs_gguf_free(g);
}

/* -------------------------------------------------------- the server */
static pid_t srv_pid = -1;
static int srv_port;

static int free_port(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t l = sizeof a;
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) ||
      getsockname(s, (struct sockaddr *)&a, &l)) {
    if (s >= 0) close(s);
    return -1;
  }
  close(s);
  return ntohs(a.sin_port);
}

static int http(const char *method, const char *path, const char *json, char **body) {
  return srv_http("127.0.0.1", srv_port, method, path, json, 240000, NULL, NULL, body);
}

static pid_t kvsd_pid = -1;
static char kvsd_dir[64];

/* A real kvstashd on a temporary RocksDB, data plane on an ipc:// socket. */
static int start_kvstashd(char *url, size_t cap) {
  snprintf(kvsd_dir, sizeof kvsd_dir, "/tmp/kvs-serve-test.XXXXXX");
  if (!mkdtemp(kvsd_dir)) return -1;
  char bin[1024], a1[128], a2[160];
  snprintf(bin, sizeof bin, "%s", kvs_test_build_path("cachesvc/kvstashd"));
  snprintf(url, cap, "ipc://%s/d.sock", kvsd_dir);
  snprintf(a1, sizeof a1, "--data-dir=%s/db", kvsd_dir);
  snprintf(a2, sizeof a2, "--listen=%s", url);
  char *argv[] = {bin, a1, a2, "--http=", "--log-level=error", NULL};
  return posix_spawn(&kvsd_pid, bin, NULL, NULL, argv, environ) == 0 ? 0 : -1;
}

static void stop_kvstashd(void) {
  if (kvsd_pid <= 0) return;
  kill(kvsd_pid, SIGTERM);
  waitpid(kvsd_pid, NULL, 0);
  kvsd_pid = -1;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", kvsd_dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", kvsd_dir);
}

static int start_server_with(const char *kvstash_url) {
  const char *mp = kvs_test_model_path();
  if (!mp) return 0;
  srv_port = free_port();
  char bin[1024], model[1100], listen[64], kv[200];
  snprintf(bin, sizeof bin, "%s", kvs_test_build_path("tools/kvs-serve"));
  snprintf(model, sizeof model, "--model=%s", mp);
  snprintf(listen, sizeof listen, "--listen=127.0.0.1:%d", srv_port);
  snprintf(kv, sizeof kv, "--kvstash=%s", kvstash_url ? kvstash_url : "");
  /* with kvstashd: --policy=load, so what is found is loaded whatever the
   * clock says (under auto a busy box can make a plain prefill of these short
   * prompts the cheaper plan, and nothing is loaded); the plan's choices are
   * tested on injected figures in tests/reuse */
  char *argv[] = {bin,
                  model,
                  listen,
                  "--ctx=2048",
                  "--max-tokens=16",
                  "--queue=8",
                  kvstash_url ? kv : NULL,
                  kvstash_url ? "--policy=load" : NULL,
                  NULL};
  if (posix_spawn(&srv_pid, bin, NULL, NULL, argv, environ) != 0) return -1;
  for (int i = 0; i < 1200; i++) { /* up to 120 s to load the model on a busy box */
    char *b = NULL;
    int c = http("GET", "/health", NULL, &b);
    free(b);
    if (c == 200) return 1;
    int st;
    if (waitpid(srv_pid, &st, WNOHANG) == srv_pid) return srv_pid = -1, -1;
    usleep(100000);
  }
  return -1;
}

static int start_server(void) { return start_server_with(NULL); }

static int stop_server(void) {
  if (srv_pid <= 0) return 0;
  kill(srv_pid, SIGTERM);
  int st = 0;
  waitpid(srv_pid, &st, 0);
  srv_pid = -1;
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1; /* clean exit (LSan included) */
}

static const char *CHAT =
    "{\"messages\":[{\"role\":\"user\",\"content\":\"What is the capital of France?\"}],"
    "\"max_tokens\":12%s}";

static char *chat_text(const char *body) {
  cJSON *j = cJSON_Parse(body);
  cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
  cJSON *m = cJSON_GetObjectItem(cJSON_GetObjectItem(c, "message"), "content");
  char *s = cJSON_IsString(m) ? strdup(m->valuestring) : NULL;
  cJSON_Delete(j);
  return s;
}

static void test_server(void) {
  int up = start_server();
  if (up == 0) {
    printf("  (no model: the server was not started)\n");
    return;
  }
  CU_ASSERT_EQUAL_FATAL(up, 1);
  char *b = NULL, req[1024];
  CU_ASSERT_EQUAL(http("GET", "/v1/models", NULL, &b), 200);
  CU_ASSERT_PTR_NOT_NULL(strstr(b, "\"object\":\"list\""));
  free(b);

  /* a chat completion */
  snprintf(req, sizeof req, CHAT, "");
  CU_ASSERT_EQUAL(http("POST", "/v1/chat/completions", req, &b), 200);
  cJSON *j = cJSON_Parse(b);
  CU_ASSERT_PTR_NOT_NULL_FATAL(j);
  CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(j, "object")->valuestring, "chat.completion");
  cJSON *u = cJSON_GetObjectItem(j, "usage");
  int pt = cJSON_GetObjectItem(u, "prompt_tokens")->valueint;
  int ct = cJSON_GetObjectItem(u, "completion_tokens")->valueint;
  CU_ASSERT(pt > 5 && ct >= 1 && ct <= 12);
  CU_ASSERT_EQUAL(cJSON_GetObjectItem(u, "total_tokens")->valueint, pt + ct);
  CU_ASSERT_EQUAL(
      cJSON_GetObjectItem(cJSON_GetObjectItem(u, "kvstash"), "prefilled_tokens")->valueint, pt);
  cJSON_Delete(j);
  char *text = chat_text(b);
  free(b);
  CU_ASSERT_PTR_NOT_NULL_FATAL(text);
  CU_ASSERT(strstr(text, "Paris") != NULL); /* SmolLM2 knows this one */

  /* the same request streamed: SSE chunks whose deltas add up to the same text */
  snprintf(req, sizeof req, CHAT, ",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
  CU_ASSERT_EQUAL(http("POST", "/v1/chat/completions", req, &b), 200);
  char joined[2048] = "";
  int chunks = 0, done = 0, finish = 0, usage = 0;
  for (char *l = strtok(b, "\n"); l; l = strtok(NULL, "\n")) {
    if (strncmp(l, "data: ", 6)) continue;
    if (!strcmp(l + 6, "[DONE]")) {
      done++;
      continue;
    }
    cJSON *c = cJSON_Parse(l + 6);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(c, "object")->valuestring, "chat.completion.chunk");
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(c, "choices"), 0);
    cJSON *d = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "delta"), "content");
    if (cJSON_IsString(d)) strncat(joined, d->valuestring, sizeof joined - strlen(joined) - 1);
    finish += cJSON_IsString(cJSON_GetObjectItem(ch, "finish_reason"));
    usage += cJSON_IsObject(cJSON_GetObjectItem(c, "usage"));
    chunks++;
    cJSON_Delete(c);
  }
  CU_ASSERT_EQUAL(done, 1);
  CU_ASSERT_EQUAL(finish, 1);
  CU_ASSERT_EQUAL(usage, 1);
  CU_ASSERT(chunks >= 3);
  CU_ASSERT_STRING_EQUAL(joined, text); /* greedy: the same answer either way */
  free(b);
  free(text);

  /* completions with a stop string: the text stops before it */
  CU_ASSERT_EQUAL(http("POST", "/v1/completions",
                       "{\"prompt\":\"1, 2, 3, 4,\",\"max_tokens\":12,\"stop\":\"7\"}", &b),
                  200);
  j = cJSON_Parse(b);
  cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
  CU_ASSERT_PTR_NOT_NULL(cJSON_GetObjectItem(c, "text"));
  const char *t = cJSON_GetStringValue(cJSON_GetObjectItem(c, "text"));
  CU_ASSERT(t && !strchr(t, '7'));
  cJSON_Delete(j);
  free(b);

  /* errors: OpenAI's error shape, the right status */
  CU_ASSERT_EQUAL(http("POST", "/v1/chat/completions", "{\"messages\":3}", &b), 400);
  CU_ASSERT_PTR_NOT_NULL(strstr(b, "\"invalid_request_error\""));
  free(b);
  CU_ASSERT_EQUAL(http("POST", "/v1/chat/completions",
                       "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":4000}",
                       &b),
                  400);
  CU_ASSERT_PTR_NOT_NULL(strstr(b, "exceed the context"));
  free(b);
  CU_ASSERT_EQUAL(http("GET", "/v1/nothing", NULL, &b), 404);
  free(b);
  CU_ASSERT_EQUAL(http("GET", "/v1/chat/completions", NULL, &b), 405);
  free(b);
  CU_ASSERT_EQUAL(stop_server(), 0);
}

static void *one_client(void *arg) {
  char *b = NULL;
  int *code = arg;
  *code = http(
      "POST", "/v1/chat/completions",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"Name a colour.\"}],\"max_tokens\":4}", &b);
  free(b);
  return NULL;
}

/* Several clients at once are queued and all answered. */
static void test_concurrent(void) {
  int up = start_server();
  if (up == 0) return;
  CU_ASSERT_EQUAL_FATAL(up, 1);
  pthread_t th[4];
  int code[4] = {0};
  for (int i = 0; i < 4; i++)
    pthread_create(&th[i], NULL, one_client, &code[i]);
  for (int i = 0; i < 4; i++)
    pthread_join(th[i], NULL);
  for (int i = 0; i < 4; i++)
    CU_ASSERT_EQUAL(code[i], 200);
  char *b = NULL;
  CU_ASSERT_EQUAL(http("GET", "/health", NULL, &b), 200);
  CU_ASSERT_PTR_NOT_NULL(strstr(b, "\"requests\":4"));
  free(b);
  CU_ASSERT_EQUAL(stop_server(), 0);
}

static cJSON *usage_of(const char *body) {
  cJSON *j = cJSON_Parse(body);
  cJSON *u = cJSON_DetachItemFromObject(j, "usage");
  cJSON_Delete(j);
  return u;
}
static int kvs_usage(const cJSON *u, const char *k) {
  return cJSON_GetObjectItem(cJSON_GetObjectItem(u, "kvstash"), k)->valueint;
}

/* Waits (bounded) until kvs-serve's worker is idle and its queued stores are
 * all done or failed (/health); 1 when so. */
static int wait_stores(void) {
  for (int i = 0; i < 600; i++) {
    char *b = NULL;
    int idle = 0;
    if (http("GET", "/health", NULL, &b) == 200) {
      cJSON *j = cJSON_Parse(b), *ru = cJSON_GetObjectItem(j, "reuse");
      double q = cJSON_GetNumberValue(cJSON_GetObjectItem(ru, "stores_queued"));
      double d = cJSON_GetNumberValue(cJSON_GetObjectItem(ru, "stores_done"));
      double f = cJSON_GetNumberValue(cJSON_GetObjectItem(ru, "stores_failed"));
      idle = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "working")) == 0 &&
             cJSON_GetNumberValue(cJSON_GetObjectItem(j, "queued")) == 0 && q > 0 && d + f == q;
      cJSON_Delete(j);
    }
    free(b);
    if (idle) return 1;
    usleep(100000);
  }
  return 0;
}

/* Through a real kvstashd: a conversation's second turn reuses the first turn
 * (prompt and answer, stored by whole 256-token chunks), and the same
 * documents in a second question are loaded instead of computed. */
static void test_reuse(void) {
  char url[128];
  if (!kvs_test_model_path()) return;
  CU_ASSERT_EQUAL_FATAL(start_kvstashd(url, sizeof url), 0);
  int up = start_server_with(url);
  CU_ASSERT_EQUAL(up, 1);
  if (up != 1) {
    stop_kvstashd();
    return;
  }
  /* turn 1: a long user message (> 256 tokens with the answer) */
  char text[4096] = "";
  for (int i = 0; i < 40; i++)
    strcat(text, "The river flows past the old mill and the green hills. ");
  cJSON *req = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(req, "messages");
  cJSON *m = cJSON_CreateObject();
  cJSON_AddStringToObject(m, "role", "user");
  cJSON_AddStringToObject(m, "content", text);
  cJSON_AddItemToArray(msgs, m);
  cJSON_AddNumberToObject(req, "max_tokens", 16);
  char *body = cJSON_PrintUnformatted(req), *b = NULL;
  CU_ASSERT_EQUAL_FATAL(http("POST", "/v1/chat/completions", body, &b), 200);
  free(body);
  cJSON *u1 = usage_of(b);
  char *answer = chat_text(b);
  free(b);
  CU_ASSERT_PTR_NOT_NULL_FATAL(answer);
  CU_ASSERT(cJSON_GetObjectItem(u1, "prompt_tokens")->valueint > 256);
  CU_ASSERT_EQUAL(kvs_usage(u1, "reused_tokens"), 0); /* a cold store */
  /* turn 2: the history with the answer, then a new question */
  m = cJSON_CreateObject();
  cJSON_AddStringToObject(m, "role", "assistant");
  cJSON_AddStringToObject(m, "content", answer);
  cJSON_AddItemToArray(msgs, m);
  m = cJSON_CreateObject();
  cJSON_AddStringToObject(m, "role", "user");
  cJSON_AddStringToObject(m, "content", "Where does the river flow?");
  cJSON_AddItemToArray(msgs, m);
  body = cJSON_PrintUnformatted(req);
  /* turn 1's stores are asynchronous: wait until the worker is idle and every
   * queued store is done; then turn 2, once, reuses at least the history's
   * first whole chunk (prompt + answer: stored after the answer, although
   * turn 1's own PREFIX was only the 3-token turn opening) */
  CU_ASSERT_EQUAL(wait_stores(), 1);
  int reused = 0;
  {
    CU_ASSERT_EQUAL_FATAL(http("POST", "/v1/chat/completions", body, &b), 200);
    cJSON *u2 = usage_of(b);
    reused = kvs_usage(u2, "reused_tokens");
    CU_ASSERT(reused >= 256);
    if (reused) {
      CU_ASSERT(reused <
                cJSON_GetObjectItem(u2, "prompt_tokens")->valueint); /* the question is new */
      CU_ASSERT(kvs_usage(u2, "prefilled_tokens") + reused ==
                cJSON_GetObjectItem(u2, "prompt_tokens")->valueint);
      CU_ASSERT(
          cJSON_GetObjectItem(cJSON_GetObjectItem(u2, "prompt_tokens_details"), "cached_tokens")
              ->valueint == reused);
      /* the history's partial last chunk (a miss: it was stored whole only
       * with the answer's tokens after it) comes after every loaded chunk:
       * prefilled with the new tokens, not forced through blend's layers */
      CU_ASSERT_EQUAL(kvs_usage(u2, "forced_tokens"), 0);
    }
    /* the TTFT path by stage: every stage present, the run measured, and
     * together no more than the TTFT in the server */
    const cJSON *st = cJSON_GetObjectItem(cJSON_GetObjectItem(u2, "kvstash"), "stages_ms");
    const char *names[] = {"seq", "lookup", "plan", "gets", "run", "finish", "logits"};
    double sum = 0;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
      const cJSON *x = cJSON_GetObjectItem(st, names[i]);
      CU_ASSERT(cJSON_IsNumber(x) && x->valuedouble >= 0);
      sum += cJSON_GetNumberValue(x);
    }
    CU_ASSERT(cJSON_GetNumberValue(cJSON_GetObjectItem(st, "run")) > 0);
    CU_ASSERT(sum <= cJSON_GetNumberValue(
                         cJSON_GetObjectItem(cJSON_GetObjectItem(u2, "kvstash"), "ttft_ms")) +
                         0.01);
    cJSON_Delete(u2);
    free(b);
  }
  free(body);
  free(answer);
  cJSON_Delete(u1);
  cJSON_Delete(req);

  /* RAG: the same two documents, second question loads them */
  const char *rag =
      "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],\"max_tokens\":4,"
      "\"documents\":[\"The Eiffel Tower is in Paris, France. It was built in 1889.\","
      "\"The Colosseum is in Rome, Italy. It was built in 80 AD.\"]}";
  char r1[1024], r2[1024];
  snprintf(r1, sizeof r1, rag, "Where is the Eiffel Tower?");
  snprintf(r2, sizeof r2, rag, "When was the Colosseum built?");
  CU_ASSERT_EQUAL(http("POST", "/v1/chat/completions", r1, &b), 200);
  free(b);
  CU_ASSERT_EQUAL(wait_stores(), 1); /* stored after the answer, asynchronously */
  CU_ASSERT_EQUAL_FATAL(http("POST", "/v1/chat/completions", r2, &b), 200);
  cJSON *u2 = usage_of(b);
  reused = kvs_usage(u2, "reused_tokens");
  CU_ASSERT_EQUAL(kvs_usage(u2, "chunks_loaded"), 3); /* the prefix and both documents */
  cJSON_Delete(u2);
  free(b);
  CU_ASSERT(reused > 20); /* both documents' tokens (and the short prefix) */
  /* and reuse off for one request: nothing reused */
  char r3[1100];
  snprintf(r3, sizeof r3, "%.*s,\"kvstash\":{\"reuse\":false}}", (int)strlen(r2) - 1, r2);
  CU_ASSERT_EQUAL(http("POST", "/v1/chat/completions", r3, &b), 200);
  cJSON *u = usage_of(b);
  CU_ASSERT_EQUAL(kvs_usage(u, "reused_tokens"), 0);
  cJSON_Delete(u);
  free(b);
  CU_ASSERT_EQUAL(stop_server(), 0);
  stop_kvstashd();
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  static const kvs_test_case cases[] = {{"parse_chat", test_parse_chat},
                                        {"parse_errors", test_parse_errors},
                                        {"utf8", test_utf8},
                                        {"prompt_segments", test_prompt_segments},
                                        {"answers", test_answers},
                                        {"turn_ids", test_turn_ids},
                                        {"server", test_server},
                                        {"concurrent", test_concurrent},
                                        {"reuse", test_reuse},
                                        {NULL, NULL}};
  int rc = kvs_test_run("serve", cases);
  stop_server();
  stop_kvstashd();
  return rc;
}
