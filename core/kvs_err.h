/* kvs_err.h - the one error table of kvstash.
 *
 * Every public function that can fail returns a kvs_err: 0 is success, every
 * error is negative. The table below is the only place codes are defined; it
 * generates the enum, kvs_strerror() and kvs_errname(). Codes are stable: new
 * ones are appended, none is renumbered (they travel in wire frames).
 *
 * This header is plain C and also compiles under nvcc. */
#ifndef KVS_ERR_H
#define KVS_ERR_H

#include "kvs_export.h"

#ifdef __cplusplus
extern "C" {
#endif
KVS_API_BEGIN

/* X(NAME, value, message) */
#define KVS_ERR_MAP(X)                                                                             \
  X(OK, 0, "success")                                                                              \
  X(EINVAL, -1, "invalid argument")                                                                \
  X(ENOMEM, -2, "out of memory")                                                                   \
  X(EIO, -3, "input/output error")                                                                 \
  X(ENOENT, -4, "not found")                                                                       \
  X(EEXIST, -5, "already exists")                                                                  \
  X(ERANGE, -6, "value out of range")                                                              \
  X(ETRUNC, -7, "input truncated")                                                                 \
  X(ECORRUPT, -8, "data corrupt")                                                                  \
  X(ECHECKSUM, -9, "checksum mismatch")                                                            \
  X(EVERSION, -10, "unsupported format version")                                                   \
  X(EMAGIC, -11, "bad magic number")                                                               \
  X(EMODEL, -12, "model id mismatch")                                                              \
  X(ELAYOUT, -13, "KV layout mismatch")                                                            \
  X(ETOOBIG, -14, "size over limit")                                                               \
  X(ENOSPC, -15, "no space left")                                                                  \
  X(EAUTH, -16, "authentication failed")                                                           \
  X(ETIMEDOUT, -17, "timed out")                                                                   \
  X(ECONN, -18, "connection failed")                                                               \
  X(EPROTO, -19, "protocol error")                                                                 \
  X(EBUSY, -20, "resource busy")                                                                   \
  X(ENOTSUP, -21, "operation not supported")                                                       \
  X(EQUARANTINE, -22, "entry quarantined")                                                         \
  X(ETOKENS, -23, "stored token ids differ from the request")                                      \
  X(ECUDA, -24, "CUDA error")                                                                      \
  X(ENODEV, -25, "no GPU device available")                                                        \
  X(ECLOSED, -26, "handle closed")                                                                 \
  X(EPERM, -27, "operation not permitted")                                                         \
  X(EAGAIN, -28, "resource temporarily unavailable")                                               \
  X(ECANCELED, -29, "operation canceled")                                                          \
  X(EINTERNAL, -30, "internal error")                                                              \
  X(EQUOTA, -31, "tenant quota exceeded")

typedef enum {
#define KVS__ERR_ENUM(name, val, msg) KVS_##name = (val),
  KVS_ERR_MAP(KVS__ERR_ENUM)
#undef KVS__ERR_ENUM
      KVS__ERR_MIN = -32
} kvs_err;

/* Static strings, never NULL; unknown codes get "unknown error". */
const char *kvs_strerror(int err);
/* "KVS_ECORRUPT" style name; unknown codes get "KVS_EUNKNOWN". */
const char *kvs_errname(int err);
/* Map a positive errno value to the closest kvs_err. */
kvs_err kvs_err_from_errno(int errnum);

/* Errors that say where. Decoders and parsers return through these so that a
 * debug build logs file:line of the first failing check. */
void kvs__err_where(int err, const char *file, int line, const char *what);
#ifndef NDEBUG
#define KVS_ERR_AT(err, what) (kvs__err_where((err), __FILE__, __LINE__, (what)), (err))
#else
#define KVS_ERR_AT(err, what) (err)
#endif
#define KVS_RETURN_ERROR_IF(cond, err, what)                                                       \
  do {                                                                                             \
    if (cond) return KVS_ERR_AT((err), (what));                                                    \
  } while (0)
#define KVS_TRY(expr)                                                                              \
  do {                                                                                             \
    int kvs__rc = (expr);                                                                          \
    if (kvs__rc < 0) return (kvs_err)kvs__rc;                                                      \
  } while (0)

KVS_API_END
#ifdef __cplusplus
}
#endif
#endif
