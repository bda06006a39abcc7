/* Fuzz target: the byte-stream framing (kvstashd's tcp+stream:// listeners,
 * docs/protocol.md "Byte streams"). The input is what arrives on one
 * connection; it is cut into frames the way both ends do it:
 *  - a server reads 128 header bytes, checks them with
 *    kvs_wire_hdr_decode_head, bounds payload_len by KVS_WIRE_STREAM_MAX_REQ,
 *    then reads the payload and decodes the request;
 *  - a client reading a GET answer reads the fixed part, gets the head length
 *    (kvs_wire_get_resp_head_len), decodes the head alone, then reads the
 *    value bytes where they belong.
 * Whatever the bytes: no read outside the input, nothing allocated beyond the
 * bounds, and the piecewise decoders agree with the whole-frame ones. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_wire.h"

static volatile uint64_t sink;

static void touch(const uint8_t *p, size_t n) {
  uint64_t s = 0;
  for (size_t i = 0; i < n; i++)
    s += p[i];
  sink += s;
}

/* The server side: returns the bytes consumed by one frame, 0 to stop (the
 * connection would be closed, or the input ends mid-frame). */
static size_t server_frame(const uint8_t *p, size_t n) {
  if (n < KVS_WIRE_HDR_SIZE) return 0;
  kvs_wire_hdr h;
  if (kvs_wire_hdr_decode_head(p, &h) != KVS_OK) return 0; /* answered, then closed */
  if (h.payload_len > KVS_WIRE_STREAM_MAX_REQ) return 0;   /* ETOOBIG, then closed */
  size_t need = KVS_WIRE_HDR_SIZE + (size_t)h.payload_len;
  if (n < need) return 0;        /* truncated: the frame deadline closes it */
  uint8_t *frame = malloc(need); /* bounded above: at most 128 + STREAM_MAX_REQ */
  if (!frame) return 0;
  memcpy(frame, p, need);
  /* the whole-frame decoder accepts the header the piecewise one accepted */
  kvs_wire_hdr h2;
  if (kvs_wire_hdr_decode(frame, need, &h2) != KVS_OK || memcmp(&h, &h2, sizeof h) != 0) abort();
  kvs_wire_req r;
  if (kvs_wire_req_decode(frame, need, &r) == KVS_OK && r.hdr.op == KVS_OP_GET)
    touch(r.u.get.tokens_le, 4u * r.u.get.n_tokens);
  free(frame);
  return need;
}

/* The client side, reading a GET answer. */
static size_t client_answer(const uint8_t *p, size_t n) {
  if (n < KVS_WIRE_HDR_SIZE) return 0;
  kvs_wire_hdr h;
  if (kvs_wire_hdr_decode_head(p, &h) != KVS_OK) return 0;
  size_t total = KVS_WIRE_HDR_SIZE + (size_t)h.payload_len;
  const uint8_t *q = p + KVS_WIRE_HDR_SIZE;
  size_t avail = n - KVS_WIRE_HDR_SIZE;
  if (h.status != 0 || h.op != KVS_OP_GET) return total <= n ? total : 0;
  if (avail < KVS_WIRE_GET_RESP_FIXED) return 0;
  size_t head_len = 0;
  if (kvs_wire_get_resp_head_len(q, h.payload_len, &head_len) != KVS_OK) return 0;
  if (head_len < KVS_WIRE_GET_RESP_FIXED || head_len > h.payload_len ||
      head_len > KVS_WIRE_GET_RESP_FIXED + KVS_WIRE_MAX_META)
    abort();
  if (avail < head_len) return 0;
  uint8_t *head = malloc(head_len);
  if (!head) return 0;
  memcpy(head, q, head_len);
  kvs_wire_get_resp r;
  kvs_err rc = kvs_wire_get_resp_decode_head(head, head_len, h.payload_len, &r);
  if (rc == KVS_OK) {
    if (r.bytes != NULL || r.byte_len != (uint64_t)h.payload_len - head_len) abort();
    if (avail >= h.payload_len) { /* the whole answer is there: same verdict */
      kvs_wire_get_resp w;
      if (kvs_wire_get_resp_decode(q, h.payload_len, &w) != KVS_OK || w.byte_len != r.byte_len ||
          w.meta_len != r.meta_len || w.checksum != r.checksum)
        abort();
      touch(w.bytes, (size_t)w.byte_len);
    }
  }
  free(head);
  return rc == KVS_OK && total <= n ? total : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* copy so the sanitizer sees reads past the end */
  uint8_t *buf = malloc(size ? size : 1);
  if (!buf) return 0;
  memcpy(buf, data, size);
  for (size_t off = 0, k; off < size && (k = server_frame(buf + off, size - off)) > 0;)
    off += k;
  for (size_t off = 0, k; off < size && (k = client_answer(buf + off, size - off)) > 0;)
    off += k;
  free(buf);
  return 0;
}
