#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvs_core.h"

static atomic_int g_level = -1; /* -1: not read from the environment yet */

int kvs_log_parse_level(const char *s) {
  static const char *names[] = {"error", "warn", "info", "debug", "trace"};
  if (!s || !*s) return -1;
  if (s[0] >= '0' && s[0] <= '4' && s[1] == 0) return s[0] - '0';
  for (int i = 0; i < 5; i++)
    if (strcmp(s, names[i]) == 0) return i;
  return -1;
}

int kvs_log_get_level(void) {
  int l = atomic_load_explicit(&g_level, memory_order_relaxed);
  if (l >= 0) return l;
  l = kvs_log_parse_level(getenv("KVS_LOG"));
  if (l < 0) l = KVS_LOG_WARN;
  atomic_store(&g_level, l);
  return l;
}

void kvs_log_set_level(int level) {
  if (level < KVS_LOG_ERROR) level = KVS_LOG_ERROR;
  if (level > KVS_LOG_TRACE) level = KVS_LOG_TRACE;
  atomic_store(&g_level, level);
}

void kvs_logv(int level, const char *comp, const char *msg, const char *fmt, va_list ap) {
  static const char *names[] = {"error", "warn", "info", "debug", "trace"};
  if (level > kvs_log_get_level()) return;
  if (level < 0) level = 0;
  if (level > 4) level = 4;
  char line[2048];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof line,
                   "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s comp=%s msg=\"%s\"",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   ts.tv_nsec / 1000000, names[level], comp ? comp : "-", msg ? msg : "");
  if (n < 0) return;
  if ((size_t)n < sizeof line - 2 && fmt && *fmt) {
    line[n++] = ' ';
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    if (m > 0) n += m;
  }
  if ((size_t)n > sizeof line - 2) n = (int)sizeof line - 2;
  line[n++] = '\n';
  /* one write so concurrent lines never interleave */
  ssize_t w = write(2, line, (size_t)n);
  (void)w;
}

void kvs_log(int level, const char *comp, const char *msg, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  kvs_logv(level, comp, msg, fmt, ap);
  va_end(ap);
}
