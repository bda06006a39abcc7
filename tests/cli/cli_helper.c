#include "cli_helper.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *cli_path(void) {
  static char p[1024];
  const char *b = getenv("KVS_BUILD_DIR");
  snprintf(p, sizeof p, "%s/tools/cli/kvstash", b ? b : ".");
  return p;
}

static void set_or_unset(const char *k, const char *v) {
  if (v)
    setenv(k, v, 1);
  else
    unsetenv(k);
}

static int run_impl(const cli_env *env, char **out, const char *errpath, const char *const *args) {
  if (out) *out = NULL;
  int fd[2];
  if (pipe(fd) != 0) return -1;
  const char *argv[64];
  int n = 0;
  argv[n++] = cli_path();
  for (int i = 0; args[i] && n < 63; i++)
    argv[n++] = args[i];
  argv[n] = NULL;
  fprintf(stderr, "  $ kvstash");
  for (int i = 1; i < n; i++)
    fprintf(stderr, " %s", argv[i]);
  fprintf(stderr, "\n");
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(fd[1], 1);
    close(fd[0]);
    close(fd[1]);
    int nul = open("/dev/null", O_RDONLY);
    if (nul >= 0) dup2(nul, 0);
    if (errpath) {
      int ef = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (ef >= 0) dup2(ef, 2);
    }
    set_or_unset("KVS_URL", env->url);
    set_or_unset("KVS_HTTP", env->http);
    set_or_unset("KVS_TENANT", env->tenant);
    set_or_unset("KVS_TOKEN", env->token);
    set_or_unset("KVS_ADMIN_TOKEN", env->admin_token);
    set_or_unset("KVS_MODEL_PATH", env->model_path);
    setenv("KVS_CONFIG", "/dev/null", 1);
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  close(fd[1]);
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  for (ssize_t r; buf && (r = read(fd[0], buf + len, cap - len - 1)) > 0;) {
    len += (size_t)r;
    if (cap - len < 1024) {
      char *nb = realloc(buf, cap * 2);
      if (!nb) free(buf);
      buf = nb, cap *= 2;
    }
  }
  close(fd[0]);
  if (buf) buf[len] = 0;
  int st = 0;
  waitpid(pid, &st, 0);
  if (out)
    *out = buf;
  else
    free(buf);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int cli_run(const cli_env *env, char **out, const char *const *args) {
  return run_impl(env, out, NULL, args);
}

int cli_run_err(const cli_env *env, char **out, char **err, const char *const *args) {
  char path[] = "/tmp/kvs-cli-stderr.XXXXXX";
  *err = NULL;
  int fd = mkstemp(path);
  if (fd < 0) return -1;
  close(fd);
  int rc = run_impl(env, out, path, args);
  FILE *f = fopen(path, "rb");
  if (f) {
    char *b = calloc(1, 1 << 20);
    size_t n = b ? fread(b, 1, (1 << 20) - 1, f) : 0;
    if (b) b[n] = 0;
    *err = b;
    fclose(f);
  }
  unlink(path);
  return rc;
}

int cli_run_json(const cli_env *env, cJSON **j, const char *const *args) {
  char *out = NULL;
  int rc = cli_run(env, &out, args);
  *j = out ? cJSON_Parse(out) : NULL;
  if (!*j && out) fprintf(stderr, "  (stdout is not JSON: %.300s)\n", out);
  free(out);
  return rc;
}
