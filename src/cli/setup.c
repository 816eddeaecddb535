/* `regproxy setup docker|containerd|podman [--dry-run] [--root DIR]` (SPEC
 * §1, §4): the files that point a container engine at regproxy.
 *
 *   docker      systemd drop-in with HTTP(S)_PROXY/NO_PROXY; the CA in the
 *               system trust store (dockerd never reads certs.d for Docker
 *               Hub) and in /etc/docker/certs.d/<registry>/ca.crt for the
 *               other registries in `mitm`
 *   containerd  systemd drop-in; the CA in the system trust store
 *   podman      a containers.conf.d drop-in with the proxy environment; the
 *               CA in the system store and /etc/containers/certs.d/<registry>/
 *
 * Files are written atomically and only when their content changes. A file
 * that exists and was not written by regproxy is left alone and the command
 * fails naming it (merge by hand). --root DIR writes under DIR as if it were
 * `/` and runs nothing; --dry-run prints what would be written. The engine is
 * not restarted: the command prints how. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "regproxy/cli.h"
#include "regproxy/config.h"
#include "regproxy/error.h"
#include "regproxy/tls.h"
#include "regproxy/util.h"

#define SETUP_USAGE "usage: regproxy setup docker|containerd|podman [--dry-run] [--root DIR]"
#define MARK        "Written by `regproxy setup`"

/* Registries every engine reaches through regproxy by default and that have a
 * certs.d directory of their own (suffix entries such as .pkg.dev have none). */
static bool plain_host(const char *h) {
  return h[0] != '\0' && h[0] != '.' && h[0] != '*' && strchr(h, '/') == NULL;
}

struct setup {
  const struct rp_config *cfg;
  const char *root; /* "" for / */
  bool dry_run;
  unsigned written, unchanged;
  int failed;
};

static int mkdirs(const char *path) {
  char tmp[4096];
  size_t n = strlen(path);

  if (n >= sizeof(tmp))
    return -ENAMETOOLONG;
  memcpy(tmp, path, n + 1);
  for (char *p = tmp + 1; *p != '\0'; p++) {
    if (*p != '/')
      continue;
    *p = '\0';
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
      return -errno;
    *p = '/';
  }
  if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
    return -errno;
  return 0;
}

static char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "re");
  char *buf = NULL;
  size_t cap = 0, n = 0;

  if (f == NULL)
    return NULL;
  for (;;) {
    if (n + 4096 > cap) {
      char *b = realloc(buf, cap + 65536);
      if (b == NULL)
        break;
      buf = b;
      cap += 65536;
    }
    size_t k = fread(buf + n, 1, cap - n - 1, f);
    n += k;
    if (k == 0)
      break;
  }
  fclose(f);
  if (buf != NULL)
    buf[n] = '\0';
  *len = n;
  return buf;
}

/* Write content to root+path (mode 0644) unless it is there already. ours:
 * a file regproxy owns carries MARK (certificates are compared whole). */
static bool put(struct setup *s, const char *path, const char *content, bool marked) {
  char full[4096], tmp[4200], dir[4096];
  size_t have_len = 0, len = strlen(content);
  char *have;
  int fd;

  snprintf(full, sizeof(full), "%s%s", s->root, path);
  have = read_all(full, &have_len);
  if (have != NULL && have_len == len && memcmp(have, content, len) == 0) {
    printf("unchanged %s\n", full);
    s->unchanged++;
    free(have);
    return false;
  }
  if (have != NULL && marked && strstr(have, MARK) == NULL) {
    fprintf(stderr,
            "regproxy: setup: %s exists and was not written by regproxy; merge these lines "
            "into it by hand, or move it away and run again:\n%s",
            full, content);
    s->failed = 1;
    free(have);
    return false;
  }
  free(have);
  if (s->dry_run) {
    printf("would write %s:\n%s", full, content);
    return true;
  }
  snprintf(dir, sizeof(dir), "%s", full);
  *strrchr(dir, '/') = '\0';
  snprintf(tmp, sizeof(tmp), "%s.regproxy-tmp", full);
  if (mkdirs(dir) != 0 ||
      (fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644)) < 0) {
    fprintf(stderr, "regproxy: setup: cannot write %s: %s\n", full, strerror(errno));
    s->failed = 1;
    return false;
  }
  if (write(fd, content, len) != (ssize_t)len || fsync(fd) != 0 || close(fd) != 0 ||
      rename(tmp, full) != 0) {
    fprintf(stderr, "regproxy: setup: cannot write %s: %s\n", full, strerror(errno));
    unlink(tmp);
    s->failed = 1;
    return false;
  }
  printf("wrote %s\n", full);
  s->written++;
  return true;
}

static int run_cmd(const char *const argv[]) {
  pid_t pid = fork();
  int status = 0;

  if (pid < 0)
    return -1;
  if (pid == 0) {
    execvp(argv[0], (char *const *)argv);
    _exit(127);
  }
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
    ;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The proxy URL clients use: the first listener, a wildcard as loopback. */
static void proxy_url(const struct rp_config *cfg, char *buf, size_t n) {
  const struct rp_listen_addr *l = cfg->n_listen > 0 ? &cfg->listen[0] : NULL;
  const char *host = l != NULL && l->host[0] ? l->host : "127.0.0.1";
  bool v6 = strchr(host, ':') != NULL;

  if (strcmp(host, "0.0.0.0") == 0)
    host = "127.0.0.1";
  else if (strcmp(host, "::") == 0)
    host = "::1";
  snprintf(buf, n, "http://%s%s%s:%u", v6 ? "[" : "", host, v6 ? "]" : "",
           l != NULL ? l->port : 2080);
}

static void system_ca(struct setup *s, const char *pem) {
  if (!put(s, "/usr/local/share/ca-certificates/regproxy.crt", pem, false) || s->root[0] != '\0')
    return; /* unchanged, or not the real system: nothing to run */
  if (s->dry_run) {
    printf("would run update-ca-certificates\n");
  } else {
    static const char *const cmd[] = {"update-ca-certificates", NULL};
    if (run_cmd(cmd) != 0) {
      fprintf(stderr, "regproxy: setup: update-ca-certificates failed; run it yourself\n");
      s->failed = 1;
    }
  }
}

/* One ca.crt per registry in `mitm` under dir (certs.d). */
static void certs_d(struct setup *s, const char *dir, const char *pem, bool with_hub) {
  const char *p = s->cfg->mitm != NULL ? s->cfg->mitm : "";

  while (*p != '\0') {
    size_t n = strcspn(p, ",");
    char h[256], path[600];
    size_t a = 0, b = n;

    while (a < b && (p[a] == ' ' || p[a] == '\t'))
      a++;
    while (b > a && (p[b - 1] == ' ' || p[b - 1] == '\t'))
      b--;
    if (b - a > 0 && b - a < sizeof(h)) {
      memcpy(h, p + a, b - a);
      h[b - a] = '\0';
      for (char *q = h; *q; q++)
        if (*q >= 'A' && *q <= 'Z')
          *q = (char)(*q - 'A' + 'a');
      /* dockerd ignores certs.d for Docker Hub: the system store covers it. */
      if (plain_host(h) &&
          (with_hub || (strcmp(h, "registry-1.docker.io") != 0 &&
                        strcmp(h, "index.docker.io") != 0 && strcmp(h, "docker.io") != 0))) {
        snprintf(path, sizeof(path), "%s/%s/ca.crt", dir, h);
        put(s, path, pem, false);
      }
    }
    p += n;
    if (*p == ',')
      p++;
  }
}

int rp_cli_setup(struct rp_config *cfg) {
  const char *engine = cfg->args.n >= 2 ? cfg->args.v[1] : NULL;
  struct setup s;
  struct rp_ca *ca = NULL;
  struct rp_ca_opts ca_opts = {.create = false};
  char *err = NULL, url[300], *no_proxy, *text = NULL;
  struct rp_sbuf np = {0}, body = {0};
  size_t n;
  const char *pem;
  size_t pemlen;
  int rc;

  if (engine == NULL || cfg->args.n > 2 ||
      (strcmp(engine, "docker") != 0 && strcmp(engine, "containerd") != 0 &&
       strcmp(engine, "podman") != 0)) {
    fprintf(stderr, "regproxy: setup: %s\n" SETUP_USAGE "\n",
            engine == NULL ? "which engine?" : "unknown engine or extra argument");
    return 2;
  }
  memset(&s, 0, sizeof(s));
  s.cfg = cfg;
  s.root = cfg->root != NULL && strcmp(cfg->root, "/") != 0 ? cfg->root : "";
  s.dry_run = cfg->dry_run;
  /* The CA the engine must trust (created now if this is the first use),
   * and one `regproxy run` will accept for this mitm list. */
  ca_opts.create = !cfg->dry_run;
  ca_opts.names = cfg->ca_unconstrained ? NULL : cfg->ca_names;
  rc = rp_ca_open(cfg->ca_dir, &ca_opts, &ca, &err);
  if (rc != 0) {
    fprintf(stderr, "regproxy: %s%s\n", err != NULL ? err : rp_strerror(rc),
            cfg->dry_run ? " (run `regproxy ca init` first, or without --dry-run)" : "");
    free(err);
    return rc == RP_ECONFIG ? 2 : 1;
  }
  rc = rp_ca_check_names(ca, cfg->mitm_list, &err);
  if (rc != 0) {
    fprintf(stderr, "regproxy: %s\n", err != NULL ? err : rp_strerror(rc));
    free(err);
    rp_ca_destroy(ca);
    return rc == RP_ECONFIG ? 2 : 1;
  }
  pem = rp_ca_cert_pem(ca, &pemlen);
  proxy_url(cfg, url, sizeof(url));
  rp_sbuf_addf(&np, "localhost,127.0.0.0/8,::1%s%s",
               cfg->no_proxy != NULL && cfg->no_proxy[0] ? "," : "",
               cfg->no_proxy != NULL ? cfg->no_proxy : "");
  no_proxy = rp_sbuf_take(&np, &n);
  if (no_proxy == NULL) {
    rp_ca_destroy(ca);
    return 1;
  }
  if (strcmp(engine, "podman") == 0) {
    rp_sbuf_addf(&body,
                 "# " MARK " podman; regproxy owns this file.\n[engine]\n"
                 "env = [\"HTTP_PROXY=%s\", \"HTTPS_PROXY=%s\", \"NO_PROXY=%s\"]\n",
                 url, url, no_proxy);
    text = rp_sbuf_take(&body, &n);
    if (text != NULL)
      put(&s, "/etc/containers/containers.conf.d/regproxy.conf", text, true);
    system_ca(&s, pem);
    certs_d(&s, "/etc/containers/certs.d", pem, true);
  } else {
    char path[200];
    rp_sbuf_addf(&body,
                 "# " MARK " %s; regproxy owns this file.\n[Service]\n"
                 "Environment=\"HTTP_PROXY=%s\" \"HTTPS_PROXY=%s\" \"NO_PROXY=%s\"\n",
                 engine, url, url, no_proxy);
    text = rp_sbuf_take(&body, &n);
    snprintf(path, sizeof(path), "/etc/systemd/system/%s.service.d/http-proxy.conf", engine);
    if (text != NULL)
      put(&s, path, text, true);
    system_ca(&s, pem);
    if (strcmp(engine, "docker") == 0)
      certs_d(&s, "/etc/docker/certs.d", pem, false);
  }
  if (text == NULL)
    s.failed = 1;
  free(text);
  free(no_proxy);
  rp_ca_destroy(ca);
  if (s.failed)
    return 1;
  if (!s.dry_run && s.written > 0) {
    if (strcmp(engine, "podman") == 0)
      printf("podman reads these at its next start (no daemon to restart)\n");
    else
      printf("then: systemctl daemon-reload && systemctl restart %s\n", engine);
  }
  return 0;
}
