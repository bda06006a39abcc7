/* serve_int.h - kvs-serve internals: the OpenAI-shaped request, the prompt
 * cut into segments, and the generation worker. Not installed.
 *
 * Threads: the HTTP loop (libevent) parses requests and queues jobs; one
 * worker thread owns the engine and runs jobs in arrival order (the engine
 * serves one sequence at a time; see docs/serve.md for what continuous
 * batching would take). The worker hands text back to the loop through the
 * job's outbox (mutex) and an event it activates. */
#ifndef KVS_SERVE_INT_H
#define KVS_SERVE_INT_H

#include <stddef.h>
#include <stdint.h>

#include "kvs_core.h"

#define SRV_MAX_MSGS       256
#define SRV_MAX_DOCS       32
#define SRV_MAX_STOP       4
#define SRV_MAX_TOKENS_OUT 4096
#define SRV_MAX_BODY       (8u << 20)

/* ------------------------------------------------------------ requests */
typedef struct srv_msg {
  char *role;    /* "system" | "user" | "assistant" | "tool" */
  char *content; /* owned */
} srv_msg;

typedef struct srv_req {
  int chat;      /* 1: /v1/chat/completions, 0: /v1/completions */
  char *model;   /* as the client named it (may be NULL) */
  srv_msg *msgs; /* [n_msgs] (chat) */
  size_t n_msgs;
  char *prompt; /* (completions) */
  char **docs;  /* [n_docs] RAG documents: "documents" field, or <kvs:doc> marks */
  size_t n_docs;
  char *stop[SRV_MAX_STOP];
  size_t n_stop;
  uint32_t max_tokens; /* 0 = the server's default */
  int stream;
  int include_usage; /* stream_options.include_usage */
  int reuse;         /* kvstash.reuse (default 1) */
} srv_req;

/* Parses an OpenAI request body (JSON, len bytes, need not be NUL-terminated).
 * On error returns KVS_EINVAL / KVS_ETOOBIG / KVS_ENOMEM and writes a
 * one-line reason into err[errcap] (with the offending field). *r is owned by
 * the caller afterwards: srv_req_free (also after an error). */
kvs_err srv_req_parse(const char *body, size_t len, int chat, srv_req *r, char *err, size_t errcap);
void srv_req_free(srv_req *r);

/* ------------------------------------------------------------- prompts */
typedef enum { SRV_SEG_PREFIX = 0, SRV_SEG_CONTENT = 1, SRV_SEG_NEW = 2 } srv_seg_kind;

typedef struct srv_seg {
  uint32_t kind; /* srv_seg_kind */
  uint32_t start, len;
} srv_seg;

/* The prompt as token ids cut into segments (what reuse keys on): for chat,
 * the turns before the last user message are a PREFIX (a conversation's
 * history, reused by prefix chain); each document is a CONTENT segment
 * tokenized alone (reused by content key wherever it lands); the last user
 * turn and the assistant opening are NEW. */
typedef struct srv_prompt {
  int32_t *tokens; /* [n_tokens], owned */
  uint32_t n_tokens;
  srv_seg segs[SRV_MAX_DOCS + 2];
  uint32_t n_segs;
} srv_prompt;

/* ------------------------------------------------------------ answers
 * The token ids of the server's recent answers, by their text (answers.c): a
 * conversation's next turn gets back the ids the model generated, not a
 * re-tokenization of their text (which can differ, and would break the
 * prefix chain stored after the answer). FIFO, at most max_entries answers
 * and max_bytes of text + ids. Not thread-safe (the worker's own). */
typedef struct srv_answers srv_answers;
kvs_err srv_answers_create(uint32_t max_entries, size_t max_bytes, srv_answers **out);
void srv_answers_free(srv_answers *a);
/* Copies text[n] and ids[n_ids]; evicts the oldest to make room. */
kvs_err srv_answers_put(srv_answers *a, const char *text, size_t n, const int32_t *ids,
                        uint32_t n_ids);
/* The ids of the newest answer whose text is exactly text[n], or NULL.
 * Valid until the next put. */
const int32_t *srv_answers_get(const srv_answers *a, const char *text, size_t n, uint32_t *n_ids);

struct kvs_tok;
/* ChatML text of the request, tokenized segment by segment: every turn is
 * "<|im_start|>" (special) + "role\n" + content (each plain text, apart) +
 * "<|im_end|>" (special) + "\n", so a user turn has the same ids in the
 * history of a later turn as when it was the last one. An assistant message
 * found in answers (may be NULL) gets the ids the model generated. */
kvs_err srv_prompt_build(const struct kvs_tok *tok, const srv_req *r, const srv_answers *answers,
                         srv_prompt *p);
void srv_prompt_free(srv_prompt *p);

/* Of a UTF-8 byte string, the length of its longest prefix that ends on a
 * whole code point (what may be streamed without cutting a character). */
size_t srv_utf8_complete(const char *s, size_t n);

/* ---------------------------------------------------- a small client
 * One blocking HTTP/1.0 exchange with host:port (the server closes after its
 * answer, so a streamed body needs no chunk decoding). on_data, when given,
 * sees the body's bytes as they arrive (SSE timing); the whole body is also
 * returned in *body (malloc'd, NUL-terminated; may be NULL when not wanted).
 * Returns the HTTP status, or 0 when the server could not be reached or did
 * not answer within timeout_ms. */
typedef void (*srv_http_data_fn)(void *ctx, const char *data, size_t n);
int srv_http(const char *host, int port, const char *method, const char *path, const char *json,
             int timeout_ms, srv_http_data_fn on_data, void *ctx, char **body);

#endif
