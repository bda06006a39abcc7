/* version.c - the version string, from the CMake project version. */
#include "kvs_core.h"
#include "kvs_version.h"

const char *kvs_version(void) { return KVS_VERSION_STRING; }
