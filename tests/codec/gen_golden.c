/* Writes the codec's golden vectors and fuzz seed corpus (run by hand when
 * the format changes; the outputs are committed):
 *   kvs-codec-gengolden <tests/codec dir>
 * golden/<profile>.kvc    encoding of a fixed synthetic chunk (2 layers, 2
 *                         heads, head_dim 32, 24 tokens, fp16, 1 layer/segment)
 * golden/bad_*.kvc        encodings that must fail, with the error they give
 * golden/MANIFEST         "file expected_error xxh3_of_f16_output" lines
 * corpus/seed_*.kvc       the same encodings, seeds for the fuzzer
 * golden/raw.kvr          the raw profile (KVS_CODEC_RAW) of the same chunk, 1
 *                         layer/group: descriptor + segments (not in MANIFEST)
 * golden/raw_v0.kvr       the same with the pre-session-6 magic "KVSR"
 * corpus_raw/seed_*.kvr   raw seeds for fuzz_codec_raw */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_codec.h"
#include "kvs_synth.h"

static void put(const char *dir, const char *name, const uint8_t *b, size_t n) {
  char p[1024];
  if (snprintf(p, sizeof p, "%s/%s", dir, name) >= (int)sizeof p) {
    fprintf(stderr, "gen_golden: path too long: %s/%s\n", dir, name);
    exit(1);
  }
  FILE *f = fopen(p, "wb");
  if (!f || fwrite(b, 1, n, f) != n) {
    perror(p);
    exit(1);
  }
  fclose(f);
}

static void rehash(uint8_t *b) {
  uint32_t nseg = kvs__rd32(b + KVS_CH_N_SEGMENTS);
  uint8_t tmp[KVS_CODEC_HEADER_BYTES + 8 * KVS_CODEC_MAX_SEGMENTS];
  memcpy(tmp, b, KVS_CH_CHECKSUM);
  memcpy(tmp + KVS_CH_CHECKSUM, b + KVS_CODEC_HEADER_BYTES, 8u * nseg);
  kvs__wr64(b + KVS_CH_CHECKSUM, kvs_checksum64(tmp, KVS_CH_CHECKSUM + 8u * nseg));
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s tests/codec\n", argv[0]);
    return 2;
  }
  char gdir[900], cdir[900], mpath[1000];
  snprintf(gdir, sizeof gdir, "%s/golden", argv[1]);
  snprintf(cdir, sizeof cdir, "%s/corpus", argv[1]);
  snprintf(mpath, sizeof mpath, "%s/MANIFEST", gdir);
  FILE *man = fopen(mpath, "w");
  if (!man) {
    perror(mpath);
    return 1;
  }
  fprintf(man, "# file expected_error xxh3_64_of_decoded_f16 (see gen_golden.c)\n");
  kvs_layout l = {2, 2, 32, KVS_DTYPE_F16, KVS_ROPE_NORM, 32, 10000.0f, 1.0f, 0, 0, 0, 0};
  uint32_t T = 24;
  size_t ne = 2ull * 2 * T * 2 * 32;
  uint16_t *kv = malloc(ne * 2), *out = malloc(ne * 2);
  kvs_synth_kv(&l, T, 2024, kv);
  for (int prof = 1; prof <= KVS_CODEC_PROFILE_MAX; prof++) {
    kvs_codec_params p;
    kvs_codec_params_default(prof, l.n_layers, &p);
    size_t cap = kvs_codec_encode_bound(&p, &l, T), n;
    uint8_t *b = malloc(cap);
    if (kvs_codec_encode(&p, &l, T, kv, b, cap, &n) != KVS_OK) return 1;
    kvs_codec_out o = kvs_codec_out_contiguous(out, ne * 2, KVS_DTYPE_F16);
    if (kvs_codec_decode(b, n, &o, NULL, 0) != KVS_OK) return 1;
    char name[128];
    snprintf(name, sizeof name, "%s.kvc", kvs_codec_profile_name(prof));
    put(gdir, name, b, n);
    fprintf(man, "%s KVS_OK %016llx\n", name, (unsigned long long)kvs_checksum64(out, ne * 2));
    snprintf(name, sizeof name, "seed_%s.kvc", kvs_codec_profile_name(prof));
    put(cdir, name, b, n);
    /* must-fail vectors, from the int8 and dense encodings */
    if (prof == KVS_CODEC_INT8 || prof == KVS_CODEC_DENSE) {
      const char *pn = kvs_codec_profile_name(prof);
      uint8_t *c = malloc(n);
      struct {
        const char *what;
        const char *err;
      } bad[] = {{"truncated", "KVS_ETRUNC"}, {"checksum", "KVS_ECHECKSUM"},
                 {"version", "KVS_EVERSION"}, {"magic", "KVS_EMAGIC"},
                 {"layout", "KVS_ELAYOUT"},   {"profile", "KVS_ENOTSUP"},
                 {"segsize", "KVS_ECORRUPT"}, {"payload", "KVS_ECHECKSUM"}};
      for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        size_t cn = n;
        memcpy(c, b, n);
        switch (k) {
        case 0: cn = n - 9; break;
        case 1: c[KVS_CH_N_TOKENS] ^= 1; break;
        case 2: kvs__wr16(c + KVS_CH_VERSION, 99); break;
        case 3: c[0] = 'X'; break;
        case 4: kvs__wr32(c + KVS_CH_HEAD_DIM, 0), rehash(c); break;
        case 5: c[KVS_CH_PROFILE] = 200, rehash(c); break;
        case 6: kvs__wr64(c + KVS_CODEC_HEADER_BYTES, 12), rehash(c); break;
        case 7: c[n - 20] ^= 0x40; break;
        }
        snprintf(name, sizeof name, "bad_%s_%s.kvc", pn, bad[k].what);
        put(gdir, name, c, cn);
        fprintf(man, "%s %s -\n", name, bad[k].err);
        snprintf(name, sizeof name, "seed_bad_%s_%s.kvc", pn, bad[k].what);
        put(cdir, name, c, cn);
      }
      free(c);
    }
    free(b);
  }
  fclose(man);
  /* the raw profile */
  {
    size_t rn = kvs_codec_raw_bytes(&l, T);
    uint8_t *r = malloc(rn);
    uint64_t seg_end[8];
    uint32_t nseg;
    char rdir[1000];
    snprintf(rdir, sizeof rdir, "%s/corpus_raw", argv[1]);
    if (kvs_codec_raw_encode(&l, T, 1, kv, r, rn, seg_end, 8, &nseg) != KVS_OK) return 1;
    put(gdir, "raw.kvr", r, rn);
    put(rdir, "seed_raw_lpg1.kvr", r, rn);
    kvs__wr32(r + KVS_RD_MAGIC, KVS_RAW_MAGIC_V0);
    put(gdir, "raw_v0.kvr", r, rn);
    put(rdir, "seed_raw_v0.kvr", r, rn);
    if (kvs_codec_raw_encode(&l, T, 2, kv, r, rn, seg_end, 8, &nseg) != KVS_OK) return 1;
    put(rdir, "seed_raw_lpg2.kvr", r, rn);
    put(rdir, "seed_raw_short.kvr", r, KVS_RAW_DESC_BYTES + 100);
    free(r);
  }
  free(kv), free(out);
  return 0;
}
