/* codec_seam.h - the client's small seam over the KV codec (codec/: the raw
 * profile and the compressed ones), behind one interface.
 *
 * A stored value is always laid out as wire segment 0 = a prefix that
 * describes the rest (the codec's header + segment directory, or the raw
 * descriptor below), then one wire segment per data segment. */
#ifndef KVS_CODEC_SEAM_H
#define KVS_CODEC_SEAM_H

#include "kvstash.h"

/* Raw profile (id 0 = KVS_CODEC_RAW; the other codec ids start at 1):
 * uncompressed, head-major, defined in codec/kvs_codec_format.h and
 * docs/codec-format.md ("Raw profile"): wire segment 0 is its 40-byte
 * descriptor, data segment 1 + g*H + h holds group g's layers for KV head h,
 * so a range of heads of a group is one contiguous run of segments (how a
 * tensor-parallel rank fetches its heads without moving the others). */

/* An encoded value with its segment table (seg_end[n_segs], wire form). */
typedef struct kvs__encoded {
  uint8_t *bytes; /* owned unless borrowed (the caller's buffer) */
  int borrowed;
  size_t len;
  uint64_t *seg_end;
  uint32_t n_segs;
} kvs__encoded;
void kvs__encoded_free(kvs__encoded *e);

/* Encodes kv (canonical layout, n_tokens) with profile (KVS_PROFILE_RAW or a
 * codec id) and params (NULL: the profile's defaults; see kvs_put_opts). */
kvs_err kvs__encode(uint32_t profile, uint32_t layers_per_group,
                    const struct kvs_codec_params *params, const kvs_layout *layout,
                    uint32_t n_tokens, const void *kv, kvs__encoded *out);

/* The same into dst (dst_cap >= kvs__encode_bound(); NULL: allocated), e.g.
 * a range of a shared-memory segment; out->bytes is then dst, borrowed. */
kvs_err kvs__encode_to(uint32_t profile, uint32_t layers_per_group,
                       const struct kvs_codec_params *params, const kvs_layout *layout,
                       uint32_t n_tokens, const void *kv, void *dst, size_t dst_cap,
                       kvs__encoded *out);
/* The bytes kvs__encode may write for these arguments (0: an argument error). */
size_t kvs__encode_bound(uint32_t profile, uint32_t layers_per_group,
                         const struct kvs_codec_params *params, const kvs_layout *layout,
                         uint32_t n_tokens);

/* The same from device memory d_kv, encoded on the GPU (the dense profile's
 * GPU encoder: the bytes kvs__encode writes, bit for bit); only the encoded
 * bytes cross PCIe. KVS_ENOTSUP when the profile has no GPU encoder or no
 * codec, CUDA or device is there (the caller copies to the host instead;
 * a client with KVS_CLIENT_HOST_ENCODE does not call it).
 * dst (may be NULL: allocated): where the bytes go (e.g. a request frame, so
 * they are not copied again), at least kvs__encode_device_bound() bytes;
 * out->bytes is then dst, borrowed. */
kvs_err kvs__encode_device(uint32_t profile, uint32_t layers_per_group,
                           const struct kvs_codec_params *params, const kvs_layout *layout,
                           uint32_t n_tokens, const void *d_kv, void *dst, size_t dst_cap,
                           kvs__encoded *out);
/* The bytes kvs__encode_device may write for these arguments; 0 when it
 * would return KVS_ENOTSUP or an argument error. */
size_t kvs__encode_device_bound(uint32_t profile, uint32_t layers_per_group,
                                const struct kvs_codec_params *params, const kvs_layout *layout,
                                uint32_t n_tokens);

/* A parsed prefix: how to fetch and decode the data segments. */
typedef struct kvs__decoder kvs__decoder;
/* prefix = wire segment 0. Checks it against the stored meta's layout and
 * token count. *out owned by the caller (kvs__decoder_free). */
kvs_err kvs__decoder_open(uint32_t profile, const kvs_layout *layout, uint32_t n_tokens,
                          const uint8_t *prefix, size_t len, kvs__decoder **out);
void kvs__decoder_free(kvs__decoder *d);
uint32_t kvs__decoder_groups(const kvs__decoder *d);
/* Layers [*lb, *le) of group g. */
void kvs__decoder_group_layers(const kvs__decoder *d, uint32_t g, uint32_t *lb, uint32_t *le);
/* The run of wire segments that group g needs for heads [hb, he). */
void kvs__decoder_group_segs(const kvs__decoder *d, uint32_t g, uint32_t hb, uint32_t he,
                             uint32_t *seg_first, uint32_t *seg_count);
/* Scratch bytes one concurrent decode needs. */
size_t kvs__decoder_ws_bytes(const kvs__decoder *d);
/* 1 when d decodes straight into paged blocks (every codec profile; the
 * raw profile decodes to a contiguous buffer, which the caller scatters). */
int kvs__decoder_paged_ok(const kvs__decoder *d);
/* Decodes group g from the bytes of its segment run into out: canonical
 * layout with kv_heads = he - hb, element type dtype (the stored dtype, or
 * F32); or, with paged (then out is ignored; kvs__decoder_paged_ok), into
 * the caller's blocks. ws: kvs__decoder_ws_bytes() bytes. */
kvs_err kvs__decoder_decode(const kvs__decoder *d, uint32_t g, const uint8_t *bytes, size_t len,
                            void *out, uint64_t out_bytes, const kvs_paged_kv *paged,
                            uint32_t dtype, uint32_t hb, uint32_t he, void *ws, size_t ws_len);

/* ---- device decode (KVS_GET_DEVICE with a lossy codec profile) */
/* 1 when group segments of d can be decoded by the GPU codec kernels
 * (codec and CUDA built in, a device present, a profile they cover). */
int kvs__decoder_gpu_ok(const kvs__decoder *d);
/* Device buffers of one concurrent decode: segment bytes, workspace, stream. */
typedef struct kvs__devslot {
  void *d_seg;
  size_t seg_cap;
  void *h_stage; /* pinned staging of seg_cap bytes (staged copies) */
  void *d_ws;
  size_t ws_len;
  void *stream;
} kvs__devslot;
/* How a device decode moves a segment's bytes, the client's choice
 * (KVS_CLIENT_DMA_STAGED): staged (1) = the host copies them, checksumming
 * as it goes, into a pinned buffer in pieces, each piece DMA'd as soon as it
 * is there; direct (0, the default: faster on the H100 host,
 * bench/RESULTS.md, client) = one DMA from where they lie (a registered
 * shared-memory segment, or pageable memory through the driver),
 * checksummed beside it. */
kvs_err kvs__devslot_init(kvs__devslot *s, const kvs__decoder *d, size_t max_seg_bytes, int staged);
void kvs__devslot_free(kvs__devslot *s);
/* 1 when s (made by kvs__devslot_init for another entry) is large enough to
 * decode d's segments of up to max_seg_bytes: device buffers are reused
 * across gets, since cudaFree synchronizes the whole device. */
int kvs__devslot_fits(const kvs__devslot *s, const kvs__decoder *d, size_t max_seg_bytes,
                      int staged);
/* Checks group g's segment header on the host, copies the segment to the
 * device and decodes it there into d_out (device memory, canonical layout
 * with heads [hb, he)) or, with paged, into its device blocks; the host
 * checks the checksum while the copy and the kernels run. Returns once the kernels are done:
 * KVS_ECHECKSUM (or KVS_ECORRUPT) means the group's output was written from bad bytes and must not
 * be used. */
kvs_err kvs__decoder_decode_device(const kvs__decoder *d, uint32_t g, const uint8_t *bytes,
                                   size_t len, void *d_out, uint64_t out_bytes,
                                   const kvs_paged_kv *paged, uint32_t dtype, uint32_t hb,
                                   uint32_t he, kvs__devslot *s);

/* Every group of a value at once, when its whole encoding lies in one place
 * (a value leased in shared memory): value = the encoding from byte 0 (wire
 * segment 0, the prefix, then the group segments), len = all of it. One DMA,
 * one decode of all segments, each segment's header and checksum checked on
 * the host meanwhile; same errors as kvs__decoder_decode_device. s must fit
 * len bytes (kvs__devslot_fits with max_seg_bytes = len). */
kvs_err kvs__decoder_decode_device_all(const kvs__decoder *d, const uint8_t *value, size_t len,
                                       void *d_out, uint64_t out_bytes, const kvs_paged_kv *paged,
                                       uint32_t dtype, uint32_t hb, uint32_t he, kvs__devslot *s);

#endif
