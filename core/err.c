#include <errno.h>
#include <stdio.h>

#include "kvs_core.h"

const char *kvs_strerror(int err) {
  switch (err) {
#define KVS__ERR_STR(name, val, msg)                                                               \
  case val: return msg;
    KVS_ERR_MAP(KVS__ERR_STR)
#undef KVS__ERR_STR
  default: return "unknown error";
  }
}

const char *kvs_errname(int err) {
  switch (err) {
#define KVS__ERR_NAME(name, val, msg)                                                              \
  case val: return "KVS_" #name;
    KVS_ERR_MAP(KVS__ERR_NAME)
#undef KVS__ERR_NAME
  default: return "KVS_EUNKNOWN";
  }
}

kvs_err kvs_err_from_errno(int e) {
  switch (e) {
  case 0: return KVS_OK;
  case EINVAL: return KVS_EINVAL;
  case ENOMEM: return KVS_ENOMEM;
  case ENOENT: return KVS_ENOENT;
  case EEXIST: return KVS_EEXIST;
  case ERANGE: return KVS_ERANGE;
  case ENOSPC:
  case EDQUOT: return KVS_ENOSPC;
  case ETIMEDOUT: return KVS_ETIMEDOUT;
  case ECONNREFUSED:
  case ECONNRESET:
  case ENOTCONN:
  case EPIPE: return KVS_ECONN;
  case EBUSY: return KVS_EBUSY;
  case ENOTSUP: return KVS_ENOTSUP;
  case EACCES:
  case EPERM: return KVS_EPERM;
  case EAGAIN: return KVS_EAGAIN;
  case ECANCELED: return KVS_ECANCELED;
  case EFBIG:
  case E2BIG:
  case EOVERFLOW: return KVS_ETOOBIG;
  default: return KVS_EIO;
  }
}

void kvs__err_where(int err, const char *file, int line, const char *what) {
  if (KVS_LOG_ON(KVS_LOG_DEBUG))
    kvs_log(KVS_LOG_DEBUG, "err", "error raised", "err=%s where=%s:%d what=\"%s\"",
            kvs_errname(err), file, line, what ? what : "");
}
