/* api.c - OpenAI request bodies into srv_req (cJSON), bounded and checked. */
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve_int.h"

#define DOC_OPEN  "<kvs:doc>"
#define DOC_CLOSE "</kvs:doc>"

static kvs_err fail(char *err, size_t cap, kvs_err code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (cap) vsnprintf(err, cap, fmt, ap);
  va_end(ap);
  return code;
}

static char *dupn(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (!d) return NULL;
  memcpy(d, s, n);
  d[n] = 0;
  return d;
}

/* A message's content: a string, or an array of {"type":"text","text":...}
 * parts (joined). Other part types are refused: this server reads text. */
static kvs_err content_text(const cJSON *c, char **out, char *err, size_t cap) {
  if (cJSON_IsString(c))
    return (*out = dupn(c->valuestring, strlen(c->valuestring))) ? KVS_OK : KVS_ENOMEM;
  if (cJSON_IsNull(c) || !c) return (*out = dupn("", 0)) ? KVS_OK : KVS_ENOMEM;
  if (!cJSON_IsArray(c))
    return fail(err, cap, KVS_EINVAL, "content must be a string or an array of text parts");
  size_t n = 0;
  const cJSON *p;
  cJSON_ArrayForEach(p, c) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "type");
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(p, "text");
    if (!cJSON_IsString(t) || strcmp(t->valuestring, "text") || !cJSON_IsString(x))
      return fail(err, cap, KVS_EINVAL,
                  "content parts: only {\"type\":\"text\",\"text\":...} is supported");
    n += strlen(x->valuestring);
  }
  char *s = malloc(n + 1);
  if (!s) return KVS_ENOMEM;
  size_t o = 0;
  cJSON_ArrayForEach(p, c) {
    const char *x = cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring;
    size_t l = strlen(x);
    memcpy(s + o, x, l);
    o += l;
  }
  s[o] = 0;
  *out = s;
  return KVS_OK;
}

static kvs_err add_doc(srv_req *r, const char *s, size_t n, char *err, size_t cap) {
  if (r->n_docs >= SRV_MAX_DOCS)
    return fail(err, cap, KVS_ETOOBIG, "more than %d documents", SRV_MAX_DOCS);
  if (!r->docs && !(r->docs = calloc(SRV_MAX_DOCS, sizeof *r->docs))) return KVS_ENOMEM;
  if (!(r->docs[r->n_docs] = dupn(s, n))) return KVS_ENOMEM;
  r->n_docs++;
  return KVS_OK;
}

/* Cuts <kvs:doc>...</kvs:doc> spans out of *text into documents. */
static kvs_err take_marked_docs(srv_req *r, char **text, char *err, size_t cap) {
  char *s = *text, *o = s, *p = s;
  for (;;) {
    char *a = strstr(p, DOC_OPEN);
    if (!a) break;
    char *b = strstr(a + strlen(DOC_OPEN), DOC_CLOSE);
    if (!b) return fail(err, cap, KVS_EINVAL, "'" DOC_OPEN "' without '" DOC_CLOSE "'");
    memmove(o, p, (size_t)(a - p));
    o += a - p;
    const char *d = a + strlen(DOC_OPEN);
    KVS_TRY(add_doc(r, d, (size_t)(b - d), err, cap));
    p = b + strlen(DOC_CLOSE);
  }
  if (strstr(p, DOC_CLOSE))
    return fail(err, cap, KVS_EINVAL, "'" DOC_CLOSE "' without '" DOC_OPEN "'");
  size_t rest = strlen(p);
  memmove(o, p, rest + 1);
  return KVS_OK;
}

static kvs_err parse_obj(const cJSON *j, int chat, srv_req *r, char *err, size_t cap) {
  if (!cJSON_IsObject(j)) return fail(err, cap, KVS_EINVAL, "the body must be a JSON object");
  r->chat = chat, r->reuse = 1;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "model");
  if (v && !cJSON_IsString(v)) return fail(err, cap, KVS_EINVAL, "'model' must be a string");
  if (v && !(r->model = dupn(v->valuestring, strlen(v->valuestring)))) return KVS_ENOMEM;

  v = cJSON_GetObjectItemCaseSensitive(j, "max_completion_tokens");
  if (!v || cJSON_IsNull(v)) v = cJSON_GetObjectItemCaseSensitive(j, "max_tokens");
  if (v && !cJSON_IsNull(v)) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > SRV_MAX_TOKENS_OUT ||
        v->valuedouble != (double)(uint32_t)v->valuedouble)
      return fail(err, cap, KVS_EINVAL, "'max_tokens' must be an integer in 1..%d",
                  SRV_MAX_TOKENS_OUT);
    r->max_tokens = (uint32_t)v->valuedouble;
  }
  v = cJSON_GetObjectItemCaseSensitive(j, "stream");
  if (v && !cJSON_IsNull(v)) {
    if (!cJSON_IsBool(v)) return fail(err, cap, KVS_EINVAL, "'stream' must be a boolean");
    r->stream = cJSON_IsTrue(v);
  }
  v = cJSON_GetObjectItemCaseSensitive(j, "stream_options");
  if (v && cJSON_IsObject(v))
    r->include_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(v, "include_usage"));
  v = cJSON_GetObjectItemCaseSensitive(j, "n");
  if (v && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 1))
    return fail(err, cap, KVS_EINVAL, "'n' must be 1 (one choice per request)");
  v = cJSON_GetObjectItemCaseSensitive(j, "stop");
  if (cJSON_IsString(v)) {
    if (!(r->stop[r->n_stop++] = dupn(v->valuestring, strlen(v->valuestring)))) return KVS_ENOMEM;
  } else if (cJSON_IsArray(v)) {
    const cJSON *s;
    cJSON_ArrayForEach(s, v) {
      if (!cJSON_IsString(s)) return fail(err, cap, KVS_EINVAL, "'stop' entries must be strings");
      if (r->n_stop >= SRV_MAX_STOP)
        return fail(err, cap, KVS_EINVAL, "at most %d stop sequences", SRV_MAX_STOP);
      if (!(r->stop[r->n_stop++] = dupn(s->valuestring, strlen(s->valuestring)))) return KVS_ENOMEM;
    }
  } else if (v && !cJSON_IsNull(v))
    return fail(err, cap, KVS_EINVAL, "'stop' must be a string or an array of strings");
  for (size_t i = 0; i < r->n_stop; i++)
    if (!r->stop[i][0]) return fail(err, cap, KVS_EINVAL, "'stop' entries must not be empty");

  v = cJSON_GetObjectItemCaseSensitive(j, "kvstash");
  if (v && !cJSON_IsNull(v)) {
    if (!cJSON_IsObject(v)) return fail(err, cap, KVS_EINVAL, "'kvstash' must be an object");
    const cJSON *ru = cJSON_GetObjectItemCaseSensitive(v, "reuse");
    if (ru && !cJSON_IsBool(ru))
      return fail(err, cap, KVS_EINVAL, "'kvstash.reuse' must be a boolean");
    if (ru) r->reuse = cJSON_IsTrue(ru);
  }
  v = cJSON_GetObjectItemCaseSensitive(j, "documents");
  if (v && !cJSON_IsNull(v)) {
    if (!cJSON_IsArray(v)) return fail(err, cap, KVS_EINVAL, "'documents' must be an array");
    const cJSON *d;
    cJSON_ArrayForEach(d, v) {
      const cJSON *t = cJSON_IsObject(d) ? cJSON_GetObjectItemCaseSensitive(d, "text") : d;
      if (!cJSON_IsString(t))
        return fail(err, cap, KVS_EINVAL,
                    "'documents' entries must be strings or {\"text\": string}");
      KVS_TRY(add_doc(r, t->valuestring, strlen(t->valuestring), err, cap));
    }
  }

  if (!chat) {
    v = cJSON_GetObjectItemCaseSensitive(j, "prompt");
    if (!cJSON_IsString(v)) return fail(err, cap, KVS_EINVAL, "'prompt' must be a string");
    if (!(r->prompt = dupn(v->valuestring, strlen(v->valuestring)))) return KVS_ENOMEM;
    return take_marked_docs(r, &r->prompt, err, cap);
  }
  v = cJSON_GetObjectItemCaseSensitive(j, "messages");
  if (!cJSON_IsArray(v)) return fail(err, cap, KVS_EINVAL, "'messages' must be an array");
  int n = cJSON_GetArraySize(v);
  if (n < 1 || n > SRV_MAX_MSGS)
    return fail(err, cap, KVS_EINVAL, "'messages' must hold 1..%d messages", SRV_MAX_MSGS);
  if (!(r->msgs = calloc((size_t)n, sizeof *r->msgs))) return KVS_ENOMEM;
  const cJSON *m;
  int last_user = -1, i = 0;
  cJSON_ArrayForEach(m, v) {
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
    if (!cJSON_IsString(role))
      return fail(err, cap, KVS_EINVAL, "messages[%d].role must be a string", i);
    const char *rs = role->valuestring;
    if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant") &&
        strcmp(rs, "developer") && strcmp(rs, "tool"))
      return fail(err, cap, KVS_EINVAL,
                  "messages[%d].role '%.32s' is not system, developer, user, assistant or tool", i,
                  rs);
    if (!(r->msgs[i].role = dupn(rs, strlen(rs)))) return KVS_ENOMEM;
    r->n_msgs++;
    kvs_err e =
        content_text(cJSON_GetObjectItemCaseSensitive(m, "content"), &r->msgs[i].content, err, cap);
    if (e) return e == KVS_EINVAL ? fail(err, cap, e, "messages[%d]: %s", i, err) : e;
    if (!strcmp(rs, "user")) last_user = i;
    i++;
  }
  /* marked documents are taken from the last user turn only: earlier turns are
   * history, reused as a prefix */
  if (last_user >= 0) KVS_TRY(take_marked_docs(r, &r->msgs[last_user].content, err, cap));
  return KVS_OK;
}

kvs_err srv_req_parse(const char *body, size_t len, int chat, srv_req *r, char *err,
                      size_t errcap) {
  memset(r, 0, sizeof *r);
  if (errcap) err[0] = 0;
  if (len > SRV_MAX_BODY) return fail(err, errcap, KVS_ETOOBIG, "body over %u bytes", SRV_MAX_BODY);
  const char *end = NULL;
  cJSON *j = cJSON_ParseWithLengthOpts(body, len, &end, 0);
  if (!j)
    return fail(err, errcap, KVS_EINVAL, "the body is not valid JSON (near byte %zu)",
                end && end >= body ? (size_t)(end - body) : (size_t)0);
  kvs_err e = parse_obj(j, chat, r, err, errcap);
  cJSON_Delete(j);
  return e;
}

void srv_req_free(srv_req *r) {
  if (!r) return;
  for (size_t i = 0; i < r->n_msgs; i++)
    free(r->msgs[i].role), free(r->msgs[i].content);
  free(r->msgs);
  for (size_t i = 0; i < r->n_docs; i++)
    free(r->docs[i]);
  free(r->docs);
  for (size_t i = 0; i < r->n_stop; i++)
    free(r->stop[i]);
  free(r->model);
  free(r->prompt);
  memset(r, 0, sizeof *r);
}

size_t srv_utf8_complete(const char *s, size_t n) {
  /* walk back over at most 3 continuation bytes to the last lead byte */
  size_t i = n, back = 0;
  while (i > 0 && back < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80)
    i--, back++;
  if (i == 0) return back ? 0 : n; /* only continuation bytes: nothing complete to add */
  unsigned char c = (unsigned char)s[i - 1];
  size_t need = c < 0x80             ? 1
                : (c & 0xE0) == 0xC0 ? 2
                : (c & 0xF0) == 0xE0 ? 3
                : (c & 0xF8) == 0xF0 ? 4
                                     : 1;
  return back + 1 >= need ? n : i - 1;
}
