/* kvs_export.h - what libkvstash exports. The shared library is built with
 * -fvisibility=hidden (and the static archives it takes in are not
 * re-exported), so only declarations between KVS_API_BEGIN and KVS_API_END
 * are visible to its users: the public headers (kvstash.h, kvstash_cluster.h,
 * kvs_core.h, kvs_err.h) wrap theirs. tests/client/test_exports.sh checks that
 * the library's dynamic symbols are exactly those headers' functions.
 * Internal headers (kvs__*, kvs_wire.h, the codec, ...) never use them. */
#ifndef KVS_EXPORT_H
#define KVS_EXPORT_H

#if (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define KVS_API_BEGIN _Pragma("GCC visibility push(default)")
#define KVS_API_END   _Pragma("GCC visibility pop")
#define KVS_API       __attribute__((visibility("default")))
#else
#define KVS_API_BEGIN
#define KVS_API_END
#define KVS_API
#endif

#endif
