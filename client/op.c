/* op.c - what gets and puts in flight share: their handle's life (kvs_op_wait,
 * kvs_op_done, kvs_op_free) and bookkeeping. Below get.c and put.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_gpu.h"
#include "op_int.h"

kvs_op *kvs__op_new(kvs_client *c, int kind) {
  kvs_op *op = calloc(1, sizeof *op);
  if (!op) return NULL;
  op->kind = kind;
  op->c = c;
  pthread_mutex_init(&op->mu, NULL);
  pthread_cond_init(&op->cv, NULL);
  return op;
}

/* Under op->mu: the op is finished when no call is outstanding and it either
 * failed or has every group. */
void kvs__op_update_locked(kvs_op *op) {
  if (op->pending == 0 &&
      (op->failed || op->kind == KVS__OP_PUT || (op->dec && op->n_ready == op->G))) {
    if (!op->finished) op->t_done_ns = kvs_now_ns();
    op->finished = 1;
  }
  pthread_cond_broadcast(&op->cv);
}

void kvs__op_fail_locked(kvs_op *op, int rv, const char *msg) {
  if (!op->failed) {
    op->failed = 1;
    op->rv = rv;
    snprintf(op->errmsg, sizeof op->errmsg, "%s", msg);
  }
}

kvs_err kvs_op_wait(kvs_op *op) {
  if (!op) return KVS_EINVAL;
  pthread_mutex_lock(&op->mu);
  while (!op->finished)
    pthread_cond_wait(&op->cv, &op->mu);
  int rv = op->rv;
  pthread_mutex_unlock(&op->mu);
  if (rv) kvs__seterr(op->c, rv, "%s", op->errmsg);
  return rv;
}

int kvs_op_done(kvs_op *op) {
  if (!op) return 1;
  pthread_mutex_lock(&op->mu);
  int f = op->finished;
  pthread_mutex_unlock(&op->mu);
  return f;
}

uint64_t kvs_op_finished_ns(kvs_op *op) {
  if (!op) return 0;
  pthread_mutex_lock(&op->mu);
  uint64_t t = op->finished ? op->t_done_ns : 0;
  pthread_mutex_unlock(&op->mu);
  return t;
}

void kvs_op_free(kvs_op *op) {
  if (!op) return;
  pthread_mutex_lock(&op->mu);
  while (!op->finished)
    pthread_cond_wait(&op->cv, &op->mu);
  pthread_mutex_unlock(&op->mu);
  if (op->copy_stream) kvs_gpu_stream_free(op->copy_stream);
  kvs__decoder_free(op->dec);
  if (op->own_out) free(op->out);
  free(op->bt_host);
  free(op->tokens);
  free(op->ready);
  free(op->ws);
  free(op->ws_busy);
  free(op->seg_end);
  pthread_mutex_destroy(&op->mu);
  pthread_cond_destroy(&op->cv);
  free(op);
}
