/* The server: listeners, accept with --max-connections, routing policy
 * shared by every connection, signals (graceful stop, reload). */
#include <arpa/inet.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>

#include "internal.h"
#include "regproxy/error.h"
#include "regproxy/htpasswd.h"
#include "regproxy/log.h"
#include "regproxy/proxy.h"
#include "regproxy/cache.h"
#include "regproxy/rules.h"
#include "regproxy/tls.h"
#include "regproxy/upstream.h"

/* "<what>: <why>" into a malloc'd *err. */
static void set_err(char **err, const char *what, const char *why) {
  size_t n = strlen(what) + strlen(why) + 3;
  *err = malloc(n);
  if (*err != NULL)
    snprintf(*err, n, "%s: %s", what, why);
}

/* ---- parent proxy ---- */

/* Turn the parsed parent_proxy into srv->parent. The config module already
 * refused an explicit parent pointing at our own listener and dropped (with
 * a warning) one taken from the environment. */
static int apply_parent(struct rp_parent *out, const struct rp_config *cfg, char **err) {
  memset(out, 0, sizeof(*out));
  if (cfg->parent_proxy_host == NULL || cfg->parent_proxy_host[0] == '\0')
    return 0;
  if (cfg->parent_proxy_tls) {
    set_err(err, "--parent-proxy", "https:// parent proxies are not supported; use http://");
    return RP_ECONFIG;
  }
  snprintf(out->host, sizeof(out->host), "%s", cfg->parent_proxy_host);
  out->port = cfg->parent_proxy_port;
  if (strchr(out->host, ':') != NULL)
    snprintf(out->url, sizeof(out->url), "http://[%s]:%u", out->host, out->port);
  else
    snprintf(out->url, sizeof(out->url), "http://%s:%u", out->host, out->port);
  if (cfg->parent_proxy_userinfo != NULL && cfg->parent_proxy_userinfo[0] != '\0') {
    char *b64 = rp_base64_encode(cfg->parent_proxy_userinfo, strlen(cfg->parent_proxy_userinfo));
    if (b64 == NULL)
      return RP_ENOMEM;
    out->auth = malloc(strlen(b64) + 7);
    if (out->auth != NULL)
      sprintf(out->auth, "Basic %s", b64);
    free(b64);
    if (out->auth == NULL)
      return RP_ENOMEM;
  }
  return 0;
}

/* ---- routing policy ---- */

void rp__server_route_cfg(const struct rp_server *srv, struct rp_route_cfg *out) {
  const struct rp_config *cfg = srv->cfg;
  memset(out, 0, sizeof(*out));
  out->acl = cfg->acl;
  out->connect_ports = cfg->connect_portset;
  out->no_proxy = cfg->no_proxy_list;
  out->mitm = cfg->mitm_list;
  out->connect_to = cfg->connect_to;
  out->n_connect_to = cfg->n_connect_to;
  out->parent = srv->parent.host[0] != '\0';
}

/* ---- accepting ---- */

static void on_connection(uv_stream_t *server, int status) {
  struct rp_listener *l = server->data;
  struct rp_server *srv = l->srv;

  if (status != 0) {
    rp_log_warn("accept on %s: %s", l->addr, uv_strerror(status));
    return;
  }
  if (srv->draining)
    return;
  if (srv->nconns >= srv->cfg->max_connections) {
    /* Leave it in the backlog: libuv stops polling this listener until we
     * call uv_accept (rp__server_conn_gone). */
    l->accept_held = 1;
    return;
  }
  rp__conn_accept(l);
}

static void finish_shutdown(struct rp_server *srv);

/* The last busy connection went: give the memory a load left free back to
 * the system (glibc keeps freed heap pages otherwise; RSS stayed at its peak
 * after every load). At most once a second. true: trimmed. */
static bool trim_when_quiet(struct rp_server *srv) {
  uint64_t now = uv_now(srv->loop);
  if (srv->nconns > 1 || now - srv->last_trim_ms < 1000)
    return false;
  srv->last_trim_ms = now;
  malloc_trim(0);
  return true;
}

/* A large free block that stays in the middle of the heap keeps its touched
 * pages resident while connections around it live on: 2,000 CONNECTs at
 * once each freed a 64 KiB parser when their tunnel started, and the idle
 * tunnels then cost 12-30 KiB of RSS each instead of 4. A second after such
 * frees (not per free: malloc_trim walks the heap), the pages of free
 * chunks go back to the system when there are megabytes of them. */
#define TRIM_FREE_MIN (4u * 1024 * 1024)

static void on_trim(uv_timer_t *t) {
  struct rp_server *srv = t->data;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  struct mallinfo2 mi = mallinfo2();
  if (mi.fordblks < TRIM_FREE_MIN)
    return;
#endif
  srv->last_trim_ms = uv_now(srv->loop);
  malloc_trim(0);
}

void rp__server_heap_freed(struct rp_server *srv) {
  if (srv->draining || uv_is_active((uv_handle_t *)&srv->trim) ||
      uv_is_closing((uv_handle_t *)&srv->trim))
    return;
  uv_timer_start(&srv->trim, on_trim, 1000, 0);
}

void rp__server_conn_gone(struct rp_server *srv) {
  if (!trim_when_quiet(srv))
    rp__server_heap_freed(srv);
  if (srv->draining) {
    if (srv->nconns == 0)
      finish_shutdown(srv);
    return;
  }
  for (size_t i = 0; i < srv->nlisteners && srv->nconns < srv->cfg->max_connections; i++) {
    struct rp_listener *l = &srv->listeners[i];
    if (l->accept_held && !l->closed) {
      l->accept_held = 0;
      rp__conn_accept(l);
    }
  }
}

/* ---- signals ---- */

static void on_grace(uv_timer_t *t) {
  struct rp_server *srv = t->data;
  rp_log_warn("shutdown grace period over: closing %u connection(s)", srv->nconns);
  for (struct rp_conn *c = srv->conns, *next; c != NULL; c = next) {
    next = c->next;
    rp__conn_close(c);
  }
}

static void on_listener_close(uv_handle_t *h) {
  (void)h;
}

/* Everything that holds upstream transfers or the cache, in the order they
 * depend on each other: the engine's timer and sockets would keep the loop
 * running; the cache finishes its queued index writes while it winds down. */
static void stop_modules(struct rp_server *srv) {
  rp_registry_destroy(srv->registry);
  srv->registry = NULL;
  rp__proxyauth_shutdown(srv);
  rp_upstream_destroy(srv->up);
  srv->up = NULL;
  rp_cache_close(srv->cache);
  srv->cache = NULL;
}

static void finish_shutdown(struct rp_server *srv) {
  stop_modules(srv);
  for (int i = 0; i < 3; i++)
    if (!uv_is_closing((uv_handle_t *)&srv->sig[i]))
      uv_close((uv_handle_t *)&srv->sig[i], NULL);
  if (!uv_is_closing((uv_handle_t *)&srv->grace))
    uv_close((uv_handle_t *)&srv->grace, NULL);
  if (!uv_is_closing((uv_handle_t *)&srv->trim))
    uv_close((uv_handle_t *)&srv->trim, NULL);
}

static void begin_shutdown(struct rp_server *srv, const char *why) {
  if (srv->draining) {
    rp_log_warn("%s again: closing now", why);
    on_grace(&srv->grace);
    return;
  }
  srv->draining = 1;
  if (srv->notify)
    rp_notify("STOPPING=1");
  rp_log_info("%s: stopping; %u connection(s) may finish within %llu ms", why, srv->nconns,
              (unsigned long long)srv->cfg->shutdown_grace_ms);
  for (size_t i = 0; i < srv->nlisteners; i++) {
    if (!srv->listeners[i].closed) {
      srv->listeners[i].closed = 1;
      uv_close((uv_handle_t *)&srv->listeners[i].tcp, on_listener_close);
    }
  }
  /* Connections between requests have nothing more to do than deliver
   * what is queued (a response may have been read from upstream in full and
   * still be on its way to a slow client): close each after a flush. */
  for (struct rp_conn *c = srv->conns, *next; c != NULL; c = next) {
    next = c->next;
    if (c->state == RP_CONN_HEAD && !c->req_active && c->in == NULL &&
        (c->parser == NULL || !rp_http_parser_in_head(c->parser)))
      rp__conn_close_after_flush(c);
  }
  uv_timer_start(&srv->grace, on_grace, srv->cfg->shutdown_grace_ms, 0);
  if (srv->nconns == 0)
    finish_shutdown(srv);
}

/* --proxy-auth-file: "" or unset is off. */
static int load_htpasswd(const struct rp_config *cfg, struct rp_htpasswd **out, char **err) {
  char *why = NULL;
  int rc;

  *out = NULL;
  if (cfg->proxy_auth_file == NULL || cfg->proxy_auth_file[0] == '\0')
    return 0;
  rc = rp_htpasswd_load(cfg->proxy_auth_file, out, &why);
  if (rc != 0) {
    set_err(err, "--proxy-auth-file", why != NULL ? why : rp_strerror(rc));
    free(why);
    return RP_ECONFIG;
  }
  return 0;
}

/* The upstream trust of cfg: --upstream-ca and the certs.d directories
 * (regproxy's own CA skipped wherever it is found). */
static int load_trust(struct rp_server *srv, const struct rp_config *cfg,
                      struct rp_upstream_trust **out, char **err) {
  struct rp_upstream_trust_opts to;
  char *why = NULL;
  int rc;

  memset(&to, 0, sizeof(to));
  to.ca_file = cfg->upstream_ca;
  to.certs_dirs = cfg->upstream_certs_dir.v;
  to.n_certs_dirs = cfg->upstream_certs_dir.n;
  to.certs_dirs_default = cfg->upstream_certs_dir_default;
  to.own_ca_pem = rp_ca_cert_pem(srv->ca, &to.own_ca_pem_len);
  rc = rp_upstream_trust_load(&to, out, &why);
  if (rc != 0) {
    *err = why != NULL ? why : strdup(rp_strerror(rc));
    return rc == RP_ENOMEM ? rc : RP_ECONFIG;
  }
  return 0;
}

static void registry_opts(const struct rp_server *srv, const struct rp_config *cfg,
                          const struct rp_parent *parent, struct rp_registry_opts *o);

static void reload(struct rp_server *srv) {
  struct rp_config *ncfg = NULL;
  struct rp_parent parent;
  char *err = NULL;

  if (rp_config_load(&ncfg, srv->argc, srv->argv, srv->envp, &err) != 0) {
    rp_log_error("reload failed, keeping the running configuration: %s", err ? err : "?");
    free(err);
    return;
  }
  /* The CA stays; a new mitm entry must lie inside its name constraints. */
  if (rp_ca_check_names(srv->ca, ncfg->mitm_list, &err) != 0 ||
      apply_parent(&parent, ncfg, &err) != 0) {
    rp_log_error("reload failed, keeping the running configuration: %s", err ? err : "?");
    free(err);
    rp_config_destroy(ncfg);
    return;
  }
  {
    struct rp_htpasswd *hp = NULL;
    struct rp_upstream_trust *trust = NULL;
    if (load_htpasswd(ncfg, &hp, &err) != 0 || load_trust(srv, ncfg, &trust, &err) != 0) {
      rp_log_error("reload failed, keeping the running configuration: %s", err ? err : "?");
      free(err);
      free(parent.auth);
      rp_htpasswd_destroy(hp);
      rp_config_destroy(ncfg);
      return;
    }
    /* certs.d is read again on every reload: new fetches use it, running
     * ones finish with what they started with. */
    rp_upstream_set_trust(srv->up, trust);
    rp_upstream_trust_release(trust);
    rp_htpasswd_destroy(srv->htpasswd);
    srv->htpasswd = hp;
    rp__proxyauth_shutdown(srv); /* other users, other answers */
  }
  if (ncfg->n_listen != srv->cfg->n_listen)
    rp_log_warn("reload: listener changes need a restart");
  /* Listening sockets stay as they are. */
  ncfg->max_connections = ncfg->max_connections ? ncfg->max_connections : 1;
  free(srv->parent.auth);
  srv->parent = parent;
  {
    /* The registry service holds ncfg's mitm list from here. */
    struct rp_registry_opts ro;
    registry_opts(srv, ncfg, &srv->parent, &ro);
    if (srv->registry != NULL && rp_registry_configure(srv->registry, &ro) != 0)
      rp_log_error("reload: out of memory; the registry service keeps its parent proxy, "
                   "credentials and mirror_default");
  }
  rp_config_destroy(srv->cfg);
  srv->cfg = ncfg;
  rp_log_setup(ncfg->log_level, ncfg->log_format);
  for (size_t i = 0; i < ncfg->warnings.n; i++)
    rp_log_warn("%s", ncfg->warnings.v[i]);
  rp_log_info("configuration reloaded");
}

/* A reload is RELOADING=1 … READY=1 for systemd whether or not the new
 * configuration was taken: the old one keeps serving when it was not. */
static void on_reload(struct rp_server *srv) {
  char state[64];

  if (srv->notify) {
    snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)(uv_hrtime() / 1000));
    rp_notify(state);
  }
  reload(srv);
  if (srv->notify)
    rp_notify("READY=1");
}

static void on_signal(uv_signal_t *h, int signum) {
  struct rp_server *srv = h->data;
  if (signum == SIGHUP)
    on_reload(srv);
  else
    begin_shutdown(srv, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---- set-up ---- */

int rp_server_create(struct rp_server **out, uv_loop_t *loop, struct rp_config *cfg, int argc,
                     char **argv, char **envp, char **err) {
  struct rp_server *srv;
  int rc;

  *out = NULL;
  rc = rp_config_check_listeners(cfg, err);
  if (rc != 0) {
    rp_config_destroy(cfg);
    return rc;
  }
  srv = calloc(1, sizeof(*srv));
  if (srv == NULL) {
    rp_config_destroy(cfg);
    return RP_ENOMEM;
  }
  srv->loop = loop;
  srv->cfg = cfg;
  srv->argc = argc;
  srv->argv = argv;
  srv->envp = envp;
  rc = apply_parent(&srv->parent, cfg, err);
  if (rc == 0)
    rc = load_htpasswd(cfg, &srv->htpasswd, err);
  if (rc != 0) {
    rp_server_destroy(srv);
    return rc;
  }
  *out = srv;
  return 0;
}

static void raise_nofile(unsigned max_connections) {
  struct rlimit rl;
  rlim_t want = (rlim_t)max_connections * 2 + 64;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
    return;
  rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want)
    rp_log_info("open-file limit %llu is below what --max-connections %u needs (%llu)",
                (unsigned long long)rl.rlim_cur, max_connections, (unsigned long long)want);
}

static int bind_listener(struct rp_server *srv, struct rp_listener *l,
                         const struct rp_listen_addr *a, int transparent, char **err) {
  struct sockaddr_storage ss;
  const char *host = a->host[0] ? a->host : "0.0.0.0";
  int rc;

  memset(&ss, 0, sizeof(ss));
  if (uv_ip4_addr(host, a->port, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(host, a->port, (struct sockaddr_in6 *)&ss) != 0) {
    set_err(err, "--listen", "not an IP address");
    return RP_ECONFIG;
  }
  l->srv = srv;
  l->transparent = transparent;
  snprintf(l->addr, sizeof(l->addr), "%s", a->text);
  /* TPROXY: IP_TRANSPARENT is set on the socket before bind. */
  rc = uv_tcp_init_ex(srv->loop, &l->tcp, transparent ? ss.ss_family : AF_UNSPEC);
  if (rc != 0) {
    set_err(err, a->text, uv_strerror(rc));
    return rc;
  }
  l->tcp.data = l;
  if (transparent) {
    rc = rp__transparent_listener_prepare(&l->tcp, ss.ss_family, srv->cfg->tproxy, err);
    if (rc != 0) {
      l->closed = 1;
      uv_close((uv_handle_t *)&l->tcp, NULL);
      return rc;
    }
  }
  rc = uv_tcp_bind(&l->tcp, (struct sockaddr *)&ss, ss.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&l->tcp, 1024, on_connection);
  if (rc != 0) {
    set_err(err, a->text, uv_strerror(rc));
    l->closed = 1;
    uv_close((uv_handle_t *)&l->tcp, NULL);
    return rc;
  }
  return 0;
}

static void startup_lines(struct rp_server *srv) {
  const struct rp_config *cfg = srv->cfg;
  struct rp_logline l;
  char url[128];
  const char *h = cfg->listen[0].host;

  for (size_t i = 0; i < srv->nlisteners; i++) {
    rp_logline_begin(&l, RP_LOG_INFO, "listening");
    rp_logline_str(&l, "addr", srv->listeners[i].addr);
    rp_logline_str(&l, "via", srv->listeners[i].transparent ? "transparent" : "proxy");
    if (srv->listeners[i].transparent)
      rp_logline_str(&l, "mode", cfg->tproxy ? "tproxy" : "redirect");
    rp_logline_end(&l);
  }
  rp_logline_begin(&l, RP_LOG_INFO, "paths");
  rp_logline_str(&l, "cache_dir", cfg->cache_dir);
  rp_logline_str(&l, "ca", rp_ca_cert_path(srv->ca));
  rp_logline_end(&l);
  if (!rp_ca_constrained(srv->ca)) {
    rp_logline_begin(&l, RP_LOG_INFO, "the CA has no name constraints: it can sign for any host");
    rp_logline_str(&l, "limit_it",
                   "regproxy ca init --force (a new CA for the mitm registries only; clients "
                   "must trust it again)");
    rp_logline_end(&l);
  }
  rp_logline_begin(&l, RP_LOG_INFO, "trust the CA");
  rp_logline_str(&l, "debian",
                 "cp CA /usr/local/share/ca-certificates/regproxy.crt && update-ca-certificates");
  rp_logline_str(&l, "other_registries", "/etc/docker/certs.d/<registry>/regproxy.crt");
  rp_logline_end(&l);
  if (srv->parent.host[0] != '\0') {
    rp_logline_begin(&l, RP_LOG_INFO, "parent proxy");
    rp_logline_str(&l, "host", srv->parent.host);
    rp_logline_u64(&l, "port", srv->parent.port);
    rp_logline_end(&l);
  }
  if (h[0] == '\0' || strcmp(h, "0.0.0.0") == 0 || strcmp(h, "::") == 0)
    h = "127.0.0.1";
  if (strchr(h, ':') != NULL)
    snprintf(url, sizeof(url), "http://[%s]:%u", h, cfg->listen[0].port);
  else
    snprintf(url, sizeof(url), "http://%s:%u", h, cfg->listen[0].port);
  rp_logline_begin(&l, RP_LOG_INFO, "dockerd set-up");
  rp_logline_str(&l, "file", "/etc/systemd/system/docker.service.d/http-proxy.conf");
  {
    char content[512];
    snprintf(content, sizeof(content),
             "[Service]\nEnvironment=\"HTTP_PROXY=%s\" \"HTTPS_PROXY=%s\" "
             "\"NO_PROXY=localhost,127.0.0.0/8,::1\"",
             url, url);
    rp_logline_str(&l, "content", content);
  }
  rp_logline_str(&l, "then", "systemctl daemon-reload && systemctl restart docker");
  rp_logline_str(&l, "or", "sudo regproxy setup docker (also containerd, podman)");
  rp_logline_end(&l);
}

/* Tell `regproxy cache …` where to reach us (contract §3 "One owner per cache
 * directory"): the first --listen address as bound, a wildcard one as the
 * loopback address of its family. */
int rp_server_url(const struct rp_server *srv, char *url, size_t n) {
  struct sockaddr_storage ss;
  char ip[INET6_ADDRSTRLEN] = "";
  int len = sizeof(ss);

  if (srv->cfg->n_listen == 0 || srv->nlisteners == 0 || srv->listeners[0].transparent)
    return UV_ENOENT;
  memset(&ss, 0, sizeof(ss));
  if (uv_tcp_getsockname(&srv->listeners[0].tcp, (struct sockaddr *)&ss, &len) != 0)
    return UV_ENOENT;
  if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr))
      a->sin6_addr = in6addr_loopback;
    uv_ip6_name(a, ip, sizeof(ip));
    snprintf(url, n, "http://[%s]:%u", ip, ntohs(a->sin6_port));
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    if (a->sin_addr.s_addr == htonl(INADDR_ANY))
      a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    uv_ip4_name(a, ip, sizeof(ip));
    snprintf(url, n, "http://%s:%u", ip, ntohs(a->sin_port));
  }
  return 0;
}

static void record_owner(struct rp_server *srv) {
  char url[128];
  int rc;

  if (srv->cache == NULL || rp_server_url(srv, url, sizeof(url)) != 0)
    return;
  rc = rp_cache_set_owner(srv->cache, url);
  if (rc != 0)
    rp_log_warn("cache: cannot record the admin URL %s in the lock file: %s", url, rp_strerror(rc));
}

void rp_server_notify_service(struct rp_server *srv) {
  srv->notify = 1;
}

/* READY=1 only now: the listeners accept, the lock names our admin URL and
 * the signal handlers (SIGHUP = ExecReload) are in place. */
static void notify_ready(struct rp_server *srv) {
  char state[192], url[128];

  if (!srv->notify)
    return;
  if (rp_server_url(srv, url, sizeof(url)) != 0)
    snprintf(url, sizeof(url), "%s", srv->nlisteners ? srv->listeners[0].addr : "-");
  snprintf(state, sizeof(state), "READY=1\nSTATUS=serving on %s, cache %s", url,
           srv->cfg->cache_dir);
  rp_notify(state);
}

void rp_server_stop(struct rp_server *srv) {
  begin_shutdown(srv, "stop requested");
}

/* What the registry service works with, from the configuration. */
static void registry_opts(const struct rp_server *srv, const struct rp_config *cfg,
                          const struct rp_parent *parent, struct rp_registry_opts *o) {
  memset(o, 0, sizeof(*o));
  o->loop = srv->loop;
  o->up = srv->up;
  o->cache = srv->cache;
  if (parent->host[0] != '\0') {
    o->parent_url = parent->url;
    o->parent_userinfo = cfg->parent_proxy_userinfo;
  }
  o->access_check = cfg->access_check;
  o->access_ttl_ms = cfg->access_ttl_ms;
  o->tag_ttl_ms = cfg->tag_ttl_ms;
  o->registry_auth = cfg->registry_auth;
  o->mitm = cfg->mitm_list;
  o->mirror_default = cfg->mirror_default;
  o->upstream_mirrors = cfg->upstream_mirrors.v;
  o->n_upstream_mirrors = cfg->upstream_mirrors.n;
}

/* The CA (created on first start, limited to the mitm registries unless
 * --unconstrained), its leaf cache and the upstream engine. A CA whose name
 * constraints leave out a mitm entry would have every client refuse that
 * host's leaves: refused here instead (exit 2), with the way out. */
static int start_mitm(struct rp_server *srv, char **err) {
  const struct rp_config *cfg = srv->cfg;
  struct rp_ca_opts ca_opts = {.create = true};
  struct rp_upstream_opts o;
  int rc;

  ca_opts.names = cfg->ca_unconstrained ? NULL : cfg->ca_names;
  rc = rp_ca_open(cfg->ca_dir, &ca_opts, &srv->ca, err);
  if (rc != 0)
    return rc;
  rc = rp_ca_check_names(srv->ca, cfg->mitm_list, err);
  if (rc != 0)
    return rc;
  rc = rp_leafcache_create(srv->ca, 1024, &srv->leaves);
  if (rc != 0)
    return rc;
  {
    struct rp_cache_opts co;
    memset(&co, 0, sizeof(co));
    co.dir = cfg->cache_dir;
    co.max_size = cfg->cache_max_size;
    co.orphan_fill_max = cfg->orphan_fill_max;
    co.defer_file_check = true;
    rc = rp_cache_open(srv->loop, &co, &srv->cache, err);
    if (rc != 0)
      return rc;
  }
  memset(&o, 0, sizeof(o));
  rc = load_trust(srv, cfg, &o.trust, err);
  if (rc != 0)
    return rc;
  o.connect_to = cfg->connect_to;
  o.n_connect_to = cfg->n_connect_to;
  o.connect_timeout_ms = cfg->connect_timeout_ms;
  o.stall_timeout_ms = cfg->idle_timeout_ms;
  o.mark = cfg->mark_set ? cfg->mark : 0;
  rc = rp_upstream_create(srv->loop, &o, &srv->up);
  rp_upstream_trust_release(o.trust);
  if (rc != 0)
    return rc;
  {
    struct rp_registry_opts ro;
    registry_opts(srv, cfg, &srv->parent, &ro);
    rc = rp_registry_create(&ro, &srv->registry);
  }
  return rc;
}

int rp_server_start(struct rp_server *srv, char **err) {
  const struct rp_config *cfg = srv->cfg;
  size_t n = cfg->n_listen + cfg->n_transparent, k = 0;
  int rc = 0;

  rc = start_mitm(srv, err);
  if (rc != 0)
    return rc;
  raise_nofile(cfg->max_connections);
  srv->listeners = calloc(n ? n : 1, sizeof(*srv->listeners));
  if (srv->listeners == NULL)
    return RP_ENOMEM;
  for (size_t i = 0; i < cfg->n_listen && rc == 0; i++, k++)
    rc = bind_listener(srv, &srv->listeners[k], &cfg->listen[i], 0, err);
  for (size_t i = 0; i < cfg->n_transparent && rc == 0; i++, k++)
    rc = bind_listener(srv, &srv->listeners[k], &cfg->transparent[i], 1, err);
  srv->nlisteners = k;
  if (rc != 0)
    return rc;
  if (cfg->n_transparent > 0)
    rp__transparent_start_checks(srv);
  record_owner(srv);
  uv_timer_init(srv->loop, &srv->grace);
  srv->grace.data = srv;
  uv_timer_init(srv->loop, &srv->trim);
  srv->trim.data = srv;
  uv_unref((uv_handle_t *)&srv->trim); /* never what keeps the loop running */
  {
    static const int signums[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
      uv_signal_init(srv->loop, &srv->sig[i]);
      srv->sig[i].data = srv;
      uv_signal_start(&srv->sig[i], on_signal, signums[i]);
    }
  }
  startup_lines(srv);
  notify_ready(srv);
  return 0;
}

void rp_server_destroy(struct rp_server *srv) {
  if (srv == NULL)
    return;
  stop_modules(srv);
  rp_leafcache_destroy(srv->leaves);
  rp_ca_destroy(srv->ca);
  free(srv->listeners);
  free(srv->parent.auth);
  rp_htpasswd_destroy(srv->htpasswd);
  rp_config_destroy(srv->cfg);
  free(srv);
}
