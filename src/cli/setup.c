/* `regproxy setup docker|containerd|podman [--dry-run] [--root DIR]` (contract
 * §1, §4): the files that point a container engine at regproxy.
 *
 *   docker      systemd drop-in with HTTP(S)_PROXY/NO_PROXY; the CA in the
 *               system trust store (dockerd never reads certs.d for Docker
 *               Hub) and in /etc/docker/certs.d/<registry>/regproxy.crt for
 *               the other registries in `mitm`
 *   containerd  systemd drop-in; the CA in the system trust store
 *   containerd --mirror
 *               no proxy and no CA: /etc/containerd/certs.d/<registry>/
 *               hosts.toml for each registry in `mitm`, pointing containerd
 *               at the mirror listener (it sends ?ns=<registry>), and a check
 *               that containerd's config_path is set
 *   podman      a containers.conf.d drop-in with the proxy environment; the
 *               CA in the system store and /etc/containers/certs.d/<registry>/
 *               regproxy.crt
 *
 * In certs.d the CA is regproxy.crt, never ca.crt: the engines load every
 * *.crt there, and ca.crt is usually the registry's own CA, which regproxy
 * now needs upstream (--upstream-certs-dir reads the same directory and
 * skips its own CA).
 * Files are written atomically and only when their content changes. A file
 * that exists and was not written by regproxy is left alone and the command
 * fails naming it (merge by hand). --root DIR writes under DIR as if it were
 * `/` and runs nothing; --dry-run prints what would be written. The engine is
 * not restarted: the command prints how. */
#include <arpa/inet.h>
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

#define SETUP_USAGE                                                                                \
  "usage: regproxy setup docker|containerd|podman [--dry-run] [--root DIR]\n"                      \
  "       regproxy setup gateway [--tproxy] [--interface IF] [--dry-run] [--root DIR]\n"           \
  "       regproxy setup containerd --mirror [--dry-run] [--root DIR]"
#define MARK "Written by `regproxy setup`"

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
  bool certs_d_written;
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

/* One regproxy.crt per registry in `mitm` under dir (certs.d), beside
 * whatever the registry's own ca.crt and client pair are. */
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
        snprintf(path, sizeof(path), "%s/%s/regproxy.crt", dir, h);
        if (put(s, path, pem, false))
          s->certs_d_written = true;
      }
    }
    p += n;
    if (*p == ',')
      p++;
  }
}

/* ---- containerd --mirror ---- */

#define CERTS_D "/etc/containerd/certs.d"

/* An IP literal (IPv4, [IPv6] or bare IPv6, with or without a port) or a
 * CIDR: such a mitm entry matches addresses, not a registry name. */
static bool ip_entry(const char *h) {
  unsigned char bin[16];
  char buf[256];
  size_t n;

  if (strchr(h, '/') != NULL || h[0] == '[' || inet_pton(AF_INET6, h, bin) == 1)
    return true;
  n = strcspn(h, ":");
  if (n >= sizeof(buf))
    return false;
  memcpy(buf, h, n);
  buf[n] = '\0';
  return inet_pton(AF_INET, buf, bin) == 1;
}

static bool docker_hub(const char *h) {
  return strcmp(h, "registry-1.docker.io") == 0 || strcmp(h, "index.docker.io") == 0 ||
         strcmp(h, "docker.io") == 0;
}

/* One hosts.toml per concrete registry host in `mitm`. The directory name is
 * what containerd looks up (the reference's registry, docker.io for Docker
 * Hub) and what it then sends as ?ns=. */
static void hosts_toml(struct setup *s, const char *url) {
  const char *p = s->cfg->mitm != NULL ? s->cfg->mitm : "";
  bool hub_done = false;

  while (*p != '\0') {
    const char *ent = p;
    size_t n = strcspn(p, ",");
    char h[256], path[600], *text;
    struct rp_sbuf b = {0};
    size_t a = 0, e = n, len;

    while (a < e && (ent[a] == ' ' || ent[a] == '\t'))
      a++;
    while (e > a && (ent[e - 1] == ' ' || ent[e - 1] == '\t'))
      e--;
    p += n;
    if (*p == ',')
      p++;
    if (e == a || e - a >= sizeof(h))
      continue;
    memcpy(h, ent + a, e - a);
    h[e - a] = '\0';
    for (char *q = h; *q; q++)
      if (*q >= 'A' && *q <= 'Z')
        *q = (char)(*q - 'A' + 'a');
    if (ip_entry(h)) {
      printf("skipped mitm entry %s: an IP or CIDR entry matches addresses, not a registry "
             "name; write a hosts.toml by hand for a registry pulled by address\n",
             h);
      continue;
    }
    if (!plain_host(h)) {
      printf("skipped mitm entry %s: %s names no registry host; write a hosts.toml by hand "
             "for each registry under it\n",
             h, strcmp(h, "*") == 0 ? "a wildcard" : "a subdomain pattern");
      continue;
    }
    if (docker_hub(h)) {
      if (hub_done)
        continue;
      hub_done = true;
    }
    rp_sbuf_addf(&b,
                 "# " MARK " containerd --mirror; regproxy owns this file.\n"
                 "server = \"https://%s\"\n\n[host.\"%s\"]\n  capabilities = [\"pull\", "
                 "\"resolve\"]\n",
                 docker_hub(h) ? "registry-1.docker.io" : h, url);
    text = rp_sbuf_take(&b, &len);
    if (text == NULL) {
      s->failed = 1;
      return;
    }
    snprintf(path, sizeof(path), CERTS_D "/%s/hosts.toml", docker_hub(h) ? "docker.io" : h);
    put(s, path, text, true);
    free(text);
  }
}

/* containerd reads certs.d only when its config names it in config_path. A
 * textual check: a config_path line (not a comment) with a non-empty value
 * that names CERTS_D. Returns the value found in *val ("" for none). */
static void config_path_value(const char *conf, char *val, size_t valsz) {
  val[0] = '\0';
  for (const char *l = conf; l != NULL && *l != '\0';) {
    const char *nl = strchr(l, '\n'), *q = l;
    size_t ll = nl != NULL ? (size_t)(nl - l) : strlen(l);

    while (q < l + ll && (*q == ' ' || *q == '\t'))
      q++;
    if ((size_t)(l + ll - q) > 11 && memcmp(q, "config_path", 11) == 0) {
      q += 11;
      while (q < l + ll && (*q == ' ' || *q == '\t'))
        q++;
      if (q < l + ll && *q == '=') {
        const char *v = q + 1, *end;
        while (v < l + ll && (*v == ' ' || *v == '\t'))
          v++;
        if (v < l + ll && (*v == '"' || *v == '\'')) {
          end = memchr(v + 1, *v, (size_t)(l + ll - v - 1));
          if (end != NULL && (size_t)(end - v - 1) < valsz) {
            memcpy(val, v + 1, (size_t)(end - v - 1));
            val[end - v - 1] = '\0';
            if (val[0] != '\0')
              return;
          }
        }
      }
    }
    l = nl != NULL ? nl + 1 : NULL;
  }
}

/* The config version (1 when the file names none), read textually. */
static int config_version(const char *conf) {
  for (const char *l = conf; l != NULL && *l != '\0';) {
    const char *nl = strchr(l, '\n');
    int v;
    if (sscanf(l, " version = %d", &v) == 1 && (nl == NULL || strstr(l, "version") < nl))
      return v;
    if (l[strspn(l, " \t")] == '[')
      break; /* version is a top-level key: before the first table */
    l = nl != NULL ? nl + 1 : NULL;
  }
  return 1;
}

static void check_config_path(struct setup *s) {
  char full[4096], val[1024];
  size_t len = 0;
  char *conf;
  const char *table;
  int version;

  snprintf(full, sizeof(full), "%s/etc/containerd/config.toml", s->root);
  conf = read_all(full, &len);
  if (conf != NULL) {
    config_path_value(conf, val, sizeof(val));
    if (val[0] != '\0' && strstr(val, CERTS_D) != NULL) {
      printf("containerd: %s sets config_path = \"%s\"\n", full, val);
      free(conf);
      return;
    }
  }
  version = conf != NULL ? config_version(conf) : 2;
  table = version >= 3   ? "plugins.\"io.containerd.cri.v1.images\".registry"
          : version == 2 ? "plugins.\"io.containerd.grpc.v1.cri\".registry"
                         : "plugins.cri.registry";
  if (conf == NULL)
    printf("containerd: %s does not exist; containerd 1.x reads these hosts.toml files only "
           "with a config.toml containing:\nversion = 2\n\n[%s]\n  config_path = \"" CERTS_D "\"\n",
           full, table);
  else if (val[0] != '\0')
    printf("containerd: %s sets config_path = \"%s\", which does not name " CERTS_D
           "; change that line in [%s] to:\n  config_path = \"" CERTS_D "\"\n",
           full, val, table);
  else
    printf("containerd: %s sets no config_path, so containerd does not read these hosts.toml "
           "files; add (merging with an existing [%s] table):\n[%s]\n  config_path = \"" CERTS_D
           "\"\n",
           full, table, table);
  printf("ctr reads them with: ctr images pull --hosts-dir " CERTS_D " …\n");
  free(conf);
}

static int setup_containerd_mirror(struct setup *s) {
  char url[300];

  proxy_url(s->cfg, url, sizeof(url));
  hosts_toml(s, url);
  check_config_path(s);
  if (s->failed)
    return 1;
  if (!s->dry_run && s->written > 0)
    printf("containerd reads hosts.toml at each pull (restart it only after changing "
           "config_path)\n");
  return 0;
}

/* ---- gateway: nft rulesets for the transparent listener (issue 9) ---- */

/* The three places traffic can be taken from (docs/gateway.md). */
enum gw_case { GW_LAN, GW_CONTAINERS, GW_HOST, GW_CASE_LAST };

struct gw {
  uint16_t port;  /* the --transparent port */
  uint32_t mark;  /* --mark: regproxy's own sockets, exempt */
  uint32_t tmark; /* TPROXY: packets to deliver locally (policy routing) */
  bool tproxy;
  const char *ifname; /* --interface, or NULL */
};

/* "iifname "X" " for the rules of one interface pattern ("" for all). */
static void gw_iif(struct rp_sbuf *b, const char *ifname) {
  if (ifname != NULL)
    rp_sbuf_addf(b, "iifname \"%s\" ", ifname);
}

/* PREROUTING rules for traffic arriving on ifname (LAN or container bridges). */
static void gw_prerouting(struct rp_sbuf *b, const struct gw *g, const char *ifname) {
  if (!g->tproxy) {
    rp_sbuf_adds(b, "    ");
    gw_iif(b, ifname);
    rp_sbuf_adds(b, "fib daddr type local return\n    ");
    gw_iif(b, ifname);
    rp_sbuf_addf(b, "tcp dport { 80, 443 } redirect to :%u\n", g->port);
    return;
  }
  rp_sbuf_adds(b, "    ");
  gw_iif(b, ifname);
  rp_sbuf_addf(b, "meta l4proto tcp socket transparent 1 meta mark set 0x%x accept\n    ",
               g->tmark);
  gw_iif(b, ifname);
  rp_sbuf_adds(b, "fib daddr type local return\n    ");
  gw_iif(b, ifname);
  rp_sbuf_addf(
      b, "meta nfproto ipv4 tcp dport { 80, 443 } tproxy ip to :%u meta mark set 0x%x accept\n    ",
      g->port, g->tmark);
  gw_iif(b, ifname);
  rp_sbuf_addf(
      b, "meta nfproto ipv6 tcp dport { 80, 443 } tproxy ip6 to :%u meta mark set 0x%x accept\n",
      g->port, g->tmark);
}

static char *gw_ruleset(const struct gw *g, enum gw_case which) {
  static const char *const names[GW_CASE_LAST] = {"regproxy_lan", "regproxy_containers",
                                                  "regproxy_host"};
  static const char *const what[GW_CASE_LAST] = {
      "a LAN gateway: TCP 80/443 forwarded from the LAN",
      "containers on this host: TCP 80/443 from docker0 and br-* bridges",
      "engines on this host (dockerd, containerd, podman): TCP 80/443 they open"};
  const char *bridges[2] = {"docker0", "br-*"};
  const char *t = names[which];
  struct rp_sbuf b = {0};
  size_t n;

  rp_sbuf_addf(&b,
               "#!/usr/sbin/nft -f\n# " MARK " gateway (%s).\n# %s, to regproxy's "
               "transparent listener :%u (%s); regproxy's own connections carry --mark 0x%x "
               "and are never taken.\n# Load: nft -f THIS-FILE (again to replace it); remove: "
               "nft delete table inet %s\n",
               g->tproxy ? "TPROXY" : "REDIRECT", what[which], g->port,
               g->tproxy ? "--tproxy" : "REDIRECT", g->mark, t);
  rp_sbuf_addf(&b, "table inet %s\ndelete table inet %s\ntable inet %s {\n", t, t, t);
  if (which == GW_HOST) {
    if (!g->tproxy) {
      rp_sbuf_addf(&b,
                   "  chain output {\n    type nat hook output priority -100; policy accept;\n"
                   "    meta mark 0x%x return\n    fib daddr type local return\n"
                   "    tcp dport { 80, 443 } redirect to :%u\n  }\n",
                   g->mark, g->port);
    } else {
      /* TPROXY works in PREROUTING only: local packets are marked in OUTPUT,
       * re-routed through lo by the policy rule, and taken there. */
      rp_sbuf_addf(&b,
                   "  chain output {\n    type route hook output priority mangle; policy accept;\n"
                   "    meta mark 0x%x return\n    fib daddr type local return\n"
                   "    tcp dport { 80, 443 } meta mark set 0x%x\n  }\n"
                   "  chain prerouting {\n    type filter hook prerouting priority mangle; "
                   "policy accept;\n",
                   g->mark, g->tmark);
      rp_sbuf_addf(&b,
                   "    iifname \"lo\" meta mark 0x%x meta nfproto ipv4 tcp dport { 80, 443 } "
                   "tproxy ip to :%u accept\n"
                   "    iifname \"lo\" meta mark 0x%x meta nfproto ipv6 tcp dport { 80, 443 } "
                   "tproxy ip6 to :%u accept\n",
                   g->tmark, g->port, g->tmark, g->port);
      rp_sbuf_adds(&b, "  }\n");
    }
  } else {
    if (!g->tproxy)
      rp_sbuf_adds(&b, "  chain prerouting {\n    type nat hook prerouting priority dstnat; "
                       "policy accept;\n");
    else
      rp_sbuf_adds(&b, "  chain prerouting {\n    type filter hook prerouting priority mangle; "
                       "policy accept;\n");
    if (which == GW_LAN) {
      gw_prerouting(&b, g, g->ifname);
    } else {
      for (int i = 0; i < 2; i++)
        gw_prerouting(&b, g, bridges[i]);
    }
    rp_sbuf_adds(&b, "  }\n");
    /* HTTP/3 would pass beside regproxy: browsers fall back to TCP when
     * UDP/443 is refused. */
    rp_sbuf_adds(&b, "  chain forward {\n    type filter hook forward priority filter; "
                     "policy accept;\n");
    if (which == GW_LAN) {
      rp_sbuf_adds(&b, "    ");
      gw_iif(&b, g->ifname);
      rp_sbuf_adds(&b, "udp dport 443 reject\n");
    } else {
      for (int i = 0; i < 2; i++)
        rp_sbuf_addf(&b, "    iifname \"%s\" udp dport 443 reject\n", bridges[i]);
    }
    rp_sbuf_adds(&b, "  }\n");
  }
  rp_sbuf_adds(&b, "}\n");
  return rp_sbuf_take(&b, &n);
}

static int setup_gateway(struct setup *s) {
  const struct rp_config *cfg = s->cfg;
  struct gw g;
  struct rp_sbuf b = {0};
  static const char *const files[GW_CASE_LAST] = {"/etc/regproxy/gateway/lan.nft",
                                                  "/etc/regproxy/gateway/containers.nft",
                                                  "/etc/regproxy/gateway/host.nft"};
  char *text;
  size_t n;

  memset(&g, 0, sizeof(g));
  g.port = cfg->n_transparent > 0 ? cfg->transparent[0].port : 3129;
  g.mark = cfg->mark_set && cfg->mark != 0 ? cfg->mark : 0x2a;
  g.tmark = g.mark == 0x1 ? 0x2 : 0x1;
  g.tproxy = cfg->tproxy;
  g.ifname = cfg->setup_interface;
  for (int i = 0; i < GW_CASE_LAST; i++) {
    text = gw_ruleset(&g, (enum gw_case)i);
    if (text == NULL)
      return 1;
    put(s, files[i], text, true);
    free(text);
  }
  rp_sbuf_adds(&b, "# " MARK " gateway; regproxy owns this file.\n"
                   "# Forwarding for a LAN gateway; loose reverse-path filtering, since "
                   "redirected and TPROXY'd replies leave by another path than strict "
                   "rp_filter expects.\n"
                   "net.ipv4.ip_forward = 1\nnet.ipv6.conf.all.forwarding = 1\n"
                   "net.ipv4.conf.all.rp_filter = 2\nnet.ipv4.conf.default.rp_filter = 2\n"
                   "# Accepted sockets take the SYN's mark: regproxy recognises (and refuses) "
                   "its own marked connections sent back to it by a rule without the "
                   "exemption.\nnet.ipv4.tcp_fwmark_accept = 1\n");
  text = rp_sbuf_take(&b, &n);
  if (text == NULL)
    return 1;
  put(s, "/etc/sysctl.d/90-regproxy-gateway.conf", text, true);
  free(text);
  if (g.tproxy) {
    rp_sbuf_addf(&b,
                 "#!/bin/sh\n# " MARK " gateway; regproxy owns this file.\n"
                 "# TPROXY: packets marked 0x%x are delivered to the local socket. Run at boot "
                 "(e.g. from a systemd unit before regproxy).\n"
                 "ip rule add fwmark 0x%x lookup 100\nip route add local 0.0.0.0/0 dev lo table "
                 "100\nip -6 rule add fwmark 0x%x lookup 100\nip -6 route add local ::/0 dev lo "
                 "table 100\n",
                 g.tmark, g.tmark, g.tmark);
    text = rp_sbuf_take(&b, &n);
    if (text == NULL)
      return 1;
    put(s, "/etc/regproxy/gateway/policy-routing.sh", text, true);
    free(text);
  }
  if (s->failed)
    return 1;
  printf("regproxy must run with: --transparent 0.0.0.0:%u --transparent [::]:%u%s --mark "
         "0x%x --allow <the LAN or container subnets>%s\n",
         g.port, g.port, g.tproxy ? " --tproxy" : "", g.mark,
         cfg->n_transparent > 0 ? "" : " (no --transparent given: port 3129 assumed)");
  printf("then: sysctl --system; %snft -f one of the .nft files above (lan, containers or "
         "host; see docs/gateway.md)\n",
         g.tproxy ? "sh /etc/regproxy/gateway/policy-routing.sh; " : "");
  printf("LAN hosts trust the CA from http://<this host>:<--listen port>/ca.crt; hosts that "
         "do not trust it fail only for the mitm registries\n");
  return 0;
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
       strcmp(engine, "podman") != 0 && strcmp(engine, "gateway") != 0)) {
    fprintf(stderr, "regproxy: setup: %s\n" SETUP_USAGE "\n",
            engine == NULL ? "which engine?" : "unknown engine or extra argument");
    return 2;
  }
  if (cfg->setup_mirror && strcmp(engine, "containerd") != 0) {
    fprintf(stderr, "regproxy: setup: --mirror is for containerd (dockerd: \"registry-mirrors\" "
                    "in daemon.json)\n" SETUP_USAGE "\n");
    return 2;
  }
  memset(&s, 0, sizeof(s));
  s.cfg = cfg;
  s.root = cfg->root != NULL && strcmp(cfg->root, "/") != 0 ? cfg->root : "";
  s.dry_run = cfg->dry_run;
  if (cfg->setup_mirror)
    return setup_containerd_mirror(&s);
  if (strcmp(engine, "gateway") == 0)
    return setup_gateway(&s);
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
  if (s.certs_d_written)
    printf("certs.d: regproxy's CA is regproxy.crt, beside the registry's own ca.crt and "
           "client.cert/client.key (never over them); the engine trusts both, and regproxy "
           "reads that directory (--upstream-certs-dir) to trust the registry and present its "
           "client certificate upstream\n");
  if (!s.dry_run && s.written > 0) {
    if (strcmp(engine, "podman") == 0)
      printf("podman reads these at its next start (no daemon to restart)\n");
    else
      printf("then: systemctl daemon-reload && systemctl restart %s\n", engine);
  }
  return 0;
}
