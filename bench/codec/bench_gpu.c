/* GPU decode timing for kvs-bench-codec --gpu: per lossy profile, fp16
 * output GB/s of kvs_gpu_codec_decode (one call = one chunk, host-side
 * set-up included), beside the raw fp16 host->device copy from pinned
 * memory (the PCIe baseline) and the copy of the encoded bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_codec.h"
#include "kvs_codec.h"
#include "kvs_gpu_codec.h"

#ifndef KVS_HAVE_CUDA
void bench_codec_gpu(const kvs_layout *l, uint32_t T, const uint16_t *kv, const char *shape,
                     cJSON *rows) {
  (void)l, (void)T, (void)kv, (void)shape, (void)rows;
  printf("--gpu: built without CUDA\n");
}
#else
#include <cuda_runtime.h>

static double time_ms(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  return ms;
}

void bench_codec_gpu(const kvs_layout *l, uint32_t T, const uint16_t *kv, const char *shape,
                     cJSON *rows) {
  if (kvs_gpu_device_count() == 0) {
    printf("--gpu: no GPU device\n");
    return;
  }
  char name[128] = "?";
  kvs_gpu_device_info(0, name, sizeof name, NULL, NULL);
  uint64_t ne = 2ull * l->n_layers * T * l->n_kv_heads * l->head_dim, ob = ne * 2;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  void *h_pinned = NULL, *d_raw = NULL, *d_out = NULL;
  if (cudaMallocHost(&h_pinned, ob) != cudaSuccess || cudaMalloc(&d_raw, ob) != cudaSuccess ||
      cudaMalloc(&d_out, ob) != cudaSuccess) {
    printf("--gpu: out of memory\n");
    return;
  }
  memcpy(h_pinned, kv, ob);
  int reps = 20;
  cudaMemcpy(d_raw, h_pinned, ob, cudaMemcpyHostToDevice);
  cudaEventRecord(e0, 0);
  for (int i = 0; i < reps; i++)
    cudaMemcpyAsync(d_raw, h_pinned, ob, cudaMemcpyHostToDevice, 0);
  cudaEventRecord(e1, 0);
  cudaEventSynchronize(e1);
  double pcie = ob * reps / (time_ms(e0, e1) * 1e-3) / 1e9;
  printf("GPU %s: raw fp16 host->device (pinned) %.1f GB/s\n", name, pcie);
  printf("%-14s %10s %12s %14s %s\n", "profile", "bits/el", "decode GB/s", "copy+dec GB/s",
         "status");
  static const int profiles[] = {KVS_PROFILE_INT8, KVS_PROFILE_KIVI4,    KVS_PROFILE_KIVI2,
                                 KVS_PROFILE_FP4,  KVS_PROFILE_CACHEGEN, KVS_PROFILE_DENSE};
  /* $KVS_BENCH_GPU_PROFILES=a,b: only those profiles (their CPU encodes are
   * the slow part of a run); $KVS_BENCH_GPU_NO_ENC=1: no encode comparison */
  const char *only = getenv("KVS_BENCH_GPU_PROFILES");
  for (size_t pi = 0; pi < sizeof profiles / sizeof profiles[0]; pi++) {
    if (only && !strstr(only, kvs_codec_profile_name(profiles[pi]))) continue;
    kvs_codec_params p;
    kvs_codec_params_default(profiles[pi], l->n_layers, &p);
    size_t bcap = kvs_codec_encode_bound(&p, l, T), len = 0;
    void *hb = NULL, *db = NULL, *ws = NULL;
    kvs_codec_info info;
    if (cudaMallocHost(&hb, bcap) != cudaSuccess ||
        kvs_codec_encode(&p, l, T, kv, hb, bcap, &len) != KVS_OK ||
        kvs_codec_verify(hb, len, &info) != KVS_OK || cudaMalloc(&db, len) != cudaSuccess) {
      printf("%-14s setup failed\n", kvs_codec_profile_name(profiles[pi]));
      continue;
    }
    size_t wsn = kvs_gpu_codec_workspace_bound(&info);
    cudaMalloc(&ws, wsn);
    kvs_gpu_codec_workspace_init(ws, NULL);
    cudaMemcpy(db, hb, len, cudaMemcpyHostToDevice);
    kvs_codec_out o = kvs_codec_out_contiguous(d_out, ob, KVS_DTYPE_F16);
    kvs_err rc = kvs_gpu_codec_decode(&info, db, &o, ws, wsn, NULL); /* warm-up */
    if (rc == KVS_OK) rc = kvs_gpu_codec_status(ws, NULL);
    double dec = 0, both = 0;
    if (rc == KVS_OK) {
      cudaEventRecord(e0, 0);
      for (int i = 0; i < reps; i++)
        kvs_gpu_codec_decode(&info, db, &o, ws, wsn, NULL);
      cudaEventRecord(e1, 0);
      cudaEventSynchronize(e1);
      dec = ob * reps / (time_ms(e0, e1) * 1e-3) / 1e9;
      cudaEventRecord(e0, 0);
      for (int i = 0; i < reps; i++) {
        cudaMemcpyAsync(db, hb, len, cudaMemcpyHostToDevice, 0);
        kvs_gpu_codec_decode(&info, db, &o, ws, wsn, NULL);
      }
      cudaEventRecord(e1, 0);
      cudaEventSynchronize(e1);
      both = ob * reps / (time_ms(e0, e1) * 1e-3) / 1e9;
      rc = kvs_gpu_codec_status(ws, NULL);
    }
    printf("%-14s %10.3f %12.1f %14.1f %s\n", kvs_codec_profile_name(profiles[pi]),
           kvs_codec_bits_per_elem(&info), dec, both, kvs_errname(rc));
    cJSON *row = cJSON_CreateObject();
    cJSON_AddStringToObject(row, "shape", shape);
    cJSON_AddNumberToObject(row, "tokens", T);
    cJSON_AddStringToObject(row, "gpu", name);
    cJSON_AddStringToObject(row, "profile", kvs_codec_profile_name(profiles[pi]));
    bench_json_num(row, "gpu_decode_gbs", "%.1f", dec);
    bench_json_num(row, "gpu_copy_decode_gbs", "%.1f", both);
    bench_json_num(row, "pcie_raw_gbs", "%.1f", pcie);
    cJSON_AddStringToObject(row, "status", kvs_errname(rc));
    cJSON_AddItemToArray(rows, row);
    cudaFree(db), cudaFree(ws), cudaFreeHost(hb);
  }
  if (!getenv("KVS_BENCH_GPU_NO_ENC")) { /* dense encode: GPU (kvs_gpu_codec_encode, from device KV
                                            to host bytes) vs CPU, same run */
    kvs_codec_params p;
    kvs_codec_params_default(KVS_PROFILE_DENSE, l->n_layers, &p);
    size_t bcap = kvs_codec_encode_bound(&p, l, T), len = 0, glen = 0;
    size_t wsn = kvs_gpu_codec_encode_workspace_bound(&p, l, T);
    uint8_t *ref = malloc(bcap), *got = malloc(bcap);
    void *ws = NULL;
    kvs_err rc = KVS_ENOMEM;
    double cpu_s = 0, gpu_s = 1e30;
    if (ref && got && cudaMalloc(&ws, wsn) == cudaSuccess) {
      uint64_t t0 = kvs_now_ns();
      rc = kvs_codec_encode(&p, l, T, kv, ref, bcap, &len);
      cpu_s = (double)(kvs_now_ns() - t0) * 1e-9;
      for (int i = 0; i < 3 && rc == KVS_OK; i++) { /* best of 3 (the first one warms up) */
        t0 = kvs_now_ns();
        rc = kvs_gpu_codec_encode(&p, l, T, d_raw, got, bcap, &glen, ws, wsn, NULL);
        double s = (double)(kvs_now_ns() - t0) * 1e-9;
        if (s < gpu_s) gpu_s = s;
      }
    }
    int same = rc == KVS_OK && glen == len && memcmp(ref, got, len) == 0;
    printf("dense encode: GPU %.2f GB/s (device KV -> host bytes, incl. copies), CPU %.3f GB/s, "
           "bytes %s, %s\n",
           rc == KVS_OK ? ob / gpu_s / 1e9 : 0.0, rc == KVS_OK ? ob / cpu_s / 1e9 : 0.0,
           same ? "identical" : "DIFFERENT", kvs_errname(rc));
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "shape", shape);
    cJSON_AddNumberToObject(o, "tokens", T);
    cJSON_AddStringToObject(o, "gpu", name);
    cJSON_AddStringToObject(o, "profile", "dense");
    bench_json_num(o, "gpu_encode_gbs", "%.2f", rc == KVS_OK ? ob / gpu_s / 1e9 : 0.0);
    bench_json_num(o, "cpu_encode_gbs", "%.3f", rc == KVS_OK ? ob / cpu_s / 1e9 : 0.0);
    cJSON_AddNumberToObject(o, "encode_identical", same);
    cJSON_AddStringToObject(o, "status", kvs_errname(rc));
    cJSON_AddItemToArray(rows, o);
    cudaFree(ws), free(ref), free(got);
  }
  cudaFreeHost(h_pinned), cudaFree(d_raw), cudaFree(d_out);
  cudaEventDestroy(e0), cudaEventDestroy(e1);
}
#endif
