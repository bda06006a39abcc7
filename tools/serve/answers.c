/* answers.c - the token ids of the server's recent answers, by their text.
 *
 * A conversation's next turn sends an answer back as text; tokenizing that
 * text need not give the ids the model generated (byte-level BPE has many
 * tokenizations of one string, and a model may emit a non-canonical one), and
 * then the history's prefix chain differs from the one stored after the
 * answer from that token on. The prompt builder looks an assistant message up
 * here first and, when the text is one the server produced, uses the ids the
 * model produced (and whose KV was stored). A FIFO bounded in entries and
 * bytes; the text is compared in full (the hash only narrows the search). */
#include <stdlib.h>
#include <string.h>

#include "serve_int.h"

typedef struct ans {
  uint64_t h;
  char *text; /* [n] */
  size_t n;
  int32_t *ids; /* [n_ids] */
  uint32_t n_ids;
} ans;

struct srv_answers {
  ans *e; /* ring of cap entries, oldest at head */
  uint32_t cap, head, count;
  size_t bytes, max_bytes;
};

static uint64_t fnv1a(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
  return h;
}

kvs_err srv_answers_create(uint32_t max_entries, size_t max_bytes, srv_answers **out) {
  if (!out || !max_entries || !max_bytes) return KVS_EINVAL;
  *out = NULL;
  srv_answers *a = calloc(1, sizeof *a);
  if (!a || !(a->e = calloc(max_entries, sizeof *a->e))) {
    free(a);
    return KVS_ENOMEM;
  }
  a->cap = max_entries, a->max_bytes = max_bytes;
  *out = a;
  return KVS_OK;
}

static void drop_oldest(srv_answers *a) {
  ans *x = &a->e[a->head];
  a->bytes -= x->n + x->n_ids * sizeof *x->ids;
  free(x->text), free(x->ids);
  memset(x, 0, sizeof *x);
  a->head = (a->head + 1) % a->cap, a->count--;
}

void srv_answers_free(srv_answers *a) {
  if (!a) return;
  while (a->count)
    drop_oldest(a);
  free(a->e);
  free(a);
}

kvs_err srv_answers_put(srv_answers *a, const char *text, size_t n, const int32_t *ids,
                        uint32_t n_ids) {
  if (!a || (!text && n) || !ids || !n_ids) return KVS_EINVAL;
  size_t sz = n + n_ids * sizeof *ids;
  if (sz > a->max_bytes) return KVS_ETOOBIG;
  ans x = {.h = fnv1a(text, n), .n = n, .n_ids = n_ids};
  x.text = malloc(n ? n : 1), x.ids = malloc(n_ids * sizeof *ids);
  if (!x.text || !x.ids) {
    free(x.text), free(x.ids);
    return KVS_ENOMEM;
  }
  if (n) memcpy(x.text, text, n);
  memcpy(x.ids, ids, n_ids * sizeof *ids);
  while (a->count && (a->count == a->cap || a->bytes + sz > a->max_bytes))
    drop_oldest(a);
  a->e[(a->head + a->count) % a->cap] = x;
  a->count++, a->bytes += sz;
  return KVS_OK;
}

const int32_t *srv_answers_get(const srv_answers *a, const char *text, size_t n, uint32_t *n_ids) {
  if (!a || !text || !n_ids) return NULL;
  uint64_t h = fnv1a(text, n);
  for (uint32_t k = a->count; k-- > 0;) { /* newest first */
    const ans *x = &a->e[(a->head + k) % a->cap];
    if (x->h == h && x->n == n && !memcmp(x->text, text, n)) {
      *n_ids = x->n_ids;
      return x->ids;
    }
  }
  return NULL;
}
