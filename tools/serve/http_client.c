/* http_client.c - srv_http: the blocking HTTP/1.0 client of the serve test
 * and kvs-bench-trace (every wait bounded). */
#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "serve_int.h"

static int64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int dial(const char *host, int port) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  if (getaddrinfo(host, ps, &hints, &res) != 0) return -1;
  int s = -1;
  for (struct addrinfo *a = res; a && s < 0; a = a->ai_next) {
    s = socket(a->ai_family, a->ai_socktype, 0);
    if (s >= 0 && connect(s, a->ai_addr, a->ai_addrlen) != 0) close(s), s = -1;
  }
  freeaddrinfo(res);
  return s;
}

static int write_all(int s, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(s, p, n);
    if (w <= 0) return -1;
    p += w, n -= (size_t)w;
  }
  return 0;
}

int srv_http(const char *host, int port, const char *method, const char *path, const char *json,
             int timeout_ms, srv_http_data_fn on_data, void *ctx, char **body) {
  if (body) *body = NULL;
  int s = dial(host, port);
  if (s < 0) return 0;
  char head[1024];
  size_t jl = json ? strlen(json) : 0;
  int hn = snprintf(head, sizeof head,
                    "%s %s HTTP/1.0\r\nHost: %s\r\nContent-Type: application/json\r\n"
                    "Content-Length: %zu\r\n\r\n",
                    method, path, host, jl);
  if (hn < 0 || (size_t)hn >= sizeof head || write_all(s, head, (size_t)hn) ||
      (jl && write_all(s, json, jl))) {
    close(s);
    return 0;
  }
  size_t cap = 1 << 14, n = 0, hdr = 0;
  char *buf = malloc(cap);
  int64_t deadline = now_ms() + timeout_ms;
  int ok = 0;
  while (buf) {
    int64_t left = deadline - now_ms();
    if (left <= 0) break;
    struct pollfd p = {.fd = s, .events = POLLIN};
    if (poll(&p, 1, (int)(left > 1000 ? 1000 : left)) <= 0) continue;
    if (n + 4096 + 1 > cap) {
      char *nb = realloc(buf, cap *= 2);
      if (!nb) break;
      buf = nb;
    }
    ssize_t r = read(s, buf + n, cap - n - 1);
    if (r < 0) break;
    if (r == 0) {
      ok = 1;
      break;
    }
    size_t old = n;
    n += (size_t)r;
    buf[n] = 0;
    if (!hdr) {
      char *e = strstr(buf, "\r\n\r\n");
      if (e) hdr = (size_t)(e - buf) + 4, old = hdr;
    }
    if (hdr && on_data && n > old) on_data(ctx, buf + old, n - old);
  }
  close(s);
  int code = 0;
  if (ok && buf && hdr) sscanf(buf, "HTTP/1.%*d %d", &code);
  if (code && body) *body = strdup(buf + hdr);
  free(buf);
  return code;
}
