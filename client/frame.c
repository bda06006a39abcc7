/* frame.c - request frames on the kvstash wire (kvs_wire.h, docs/protocol.md):
 * building and sealing a request, checking that a reply answers it, and the
 * synchronous round trip every simple op uses. Above conn.c (calls), below
 * everything that speaks the protocol. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "kvs_wire.h"

/* A request frame: 128 header bytes (sealed by frame_seal) + payload bytes
 * (written in place by the payload encoders). */
int kvs__frame_new(size_t payload, nng_msg **m) {
  if (nng_msg_alloc(m, KVS_WIRE_HDR_SIZE + payload)) return KVS_ENOMEM;
  memset(nng_msg_body(*m), 0, KVS_WIRE_HDR_SIZE);
  return KVS_OK;
}

uint8_t *kvs__frame_payload(nng_msg *m) { return (uint8_t *)nng_msg_body(m) + KVS_WIRE_HDR_SIZE; }

int kvs__frame_seal(kvs_client *c, nng_msg *m, uint16_t op) {
  kvs_wire_hdr h;
  int rv = kvs_wire_hdr_init(&h, op, atomic_fetch_add(&c->pool.next_id, 1), c->tenant, c->token,
                             strlen(c->token));
  if (rv) return rv;
  h.payload_len = (uint32_t)(nng_msg_len(m) - KVS_WIRE_HDR_SIZE);
  return kvs_wire_hdr_encode(&h, nng_msg_body(m));
}

/* Accepts a response to call->req: right op, RESPONSE flag, status 0. A
 * server error comes back as its kvs_err with the server's message. */
int kvs__check_reply(kvs__call *call, nng_msg *rep) {
  const uint8_t *b = nng_msg_body(rep);
  size_t n = nng_msg_len(rep);
  kvs_wire_hdr h;
  int rv = kvs_wire_hdr_decode(b, n, &h);
  if (rv == KVS_EVERSION && n >= KVS_WIRE_HDR_SIZE) { /* an older or newer kvstashd */
    snprintf(call->errmsg, sizeof call->errmsg,
             "kvstashd at %s speaks wire version %u, this client %u: upgrade the older side",
             call->c->url, (unsigned)kvs__rd16(b + KVS_WIRE_OFF_VERSION),
             (unsigned)KVS_WIRE_VERSION);
    return KVS_EVERSION;
  }
  if (rv) {
    snprintf(call->errmsg, sizeof call->errmsg, "malformed reply from %s (%s)", call->c->url,
             kvs_errname(rv));
    return KVS_EPROTO;
  }
  const uint8_t *q = nng_msg_body(call->req);
  uint16_t op = kvs_wire_hdr_op(q);
  if (!(h.flags & KVS_WIRE_F_RESPONSE) || h.op != op) {
    snprintf(call->errmsg, sizeof call->errmsg, "reply from %s is not an answer to %s",
             call->c->url, kvs_wire_op_name(op));
    return KVS_EPROTO;
  }
  if (h.status < 0) {
    size_t ml = h.payload_len < KVS_WIRE_MAX_ERRMSG ? h.payload_len : KVS_WIRE_MAX_ERRMSG;
    snprintf(call->errmsg, sizeof call->errmsg, "kvstashd %s: %s: %.*s", kvs_wire_op_name(op),
             kvs_errname(h.status), (int)ml, (const char *)b + KVS_WIRE_HDR_SIZE);
    return h.status;
  }
  return KVS_OK;
}

const uint8_t *kvs__reply_payload(nng_msg *rep, size_t *n) {
  *n = nng_msg_len(rep) - KVS_WIRE_HDR_SIZE;
  return (const uint8_t *)nng_msg_body(rep) + KVS_WIRE_HDR_SIZE;
}

/* Seals req and does one round trip; *rep (may be NULL) gets the reply. */
int kvs__frame_roundtrip(kvs_client *c, nng_msg *req, uint16_t op, int idempotent, nng_msg **rep) {
  if (c->cluster) {
    nng_msg_free(req);
    return KVS__NOT_ON_CLUSTER(c);
  }
  int rv = kvs__frame_seal(c, req, op);
  if (rv) {
    nng_msg_free(req);
    return kvs__seterr(c, rv, "bad request header (tenant \"%s\"?)", c->tenant);
  }
  nng_msg *r = NULL;
  rv = kvs__roundtrip(c, req, idempotent, kvs__check_reply, &r);
  if (rv == KVS_OK && rep)
    *rep = r;
  else if (r)
    nng_msg_free(r);
  return rv;
}

int kvs__ping_quiet(kvs_client *c, uint32_t timeout_ms, nng_msg **rep) {
  *rep = NULL;
  nng_msg *m;
  if (kvs__frame_new(0, &m)) return KVS_ENOMEM;
  int rv = kvs__frame_seal(c, m, KVS_OP_PING);
  if (rv) {
    nng_msg_free(m);
    return rv;
  }
  kvs__call *call = kvs__call_new(c, m, kvs_wire_op_idempotent(KVS_OP_PING),
                                  timeout_ms ? timeout_ms : 1, kvs__check_reply, NULL, NULL);
  if (!call) return KVS_ENOMEM;
  kvs__call_start(call);
  rv = kvs__call_wait(call);
  if (rv == KVS_OK) {
    *rep = call->rep;
    call->rep = NULL;
  }
  kvs__call_free(call);
  return rv;
}
