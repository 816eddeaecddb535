/* MITM (contract §2 route=mitm): CONNECT to a host in `mitm` is answered at once,
 * the client's TLS is terminated with a leaf for that host, and each request
 * inside, once its Host is checked against the CONNECT target, goes to the
 * registry service (src/registry) as an exchange. The plain-HTTP registry
 * route and mirror mode hand their requests over the same way. */
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "regproxy/admin.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/metrics.h"
#include "regproxy/tls.h"
#include "regproxy/registry.h"
#include "regproxy/rules.h"
#include "regproxy/upstream.h"

static const char established[] = "HTTP/1.1 200 Connection established\r\n\r\n";

/* ---- TLS set-up ---- */

/* The CONNECT target is the connection's identity: a ClientHello that names
 * another host fails the handshake. */
static SSL_CTX *select_ctx(void *arg, const char *host, const char *sni) {
  struct rp_conn *c = arg;
  if (sni != NULL && strcasecmp(sni, host) != 0) {
    int n = snprintf(c->log.reason, sizeof(c->log.reason), "SNI %.80s does not match CONNECT %.80s",
                     sni, host);
    (void)n;
    return NULL;
  }
  return rp_leafcache_ctx(c->srv->leaves, host);
}

static void on_handshake(struct rp_stream *s, int status, const char *reason) {
  struct rp_conn *c = s->data;
  struct rp_logline l;

  if (c->closing)
    return;
  if (status != 0) {
    rp_logline_begin(&l, RP_LOG_WARN, "tls_handshake_failed");
    rp_logline_u64(&l, "conn", c->id);
    rp_logline_str(&l, "client", c->client_addr);
    rp_logline_str(&l, "host", c->mitm_host);
    rp_logline_str(&l, "reason", c->log.reason[0] ? c->log.reason : reason);
    rp_logline_end(&l);
    rp__conn_close(c);
    return;
  }
  rp__conn_go_state(c, RP_CONN_HEAD);
  rp__conn_set_timer(c, RP_TM_IDLE, c->srv->cfg->idle_timeout_ms);
  rp__conn_resume_input(c);
}

void rp__mitm_connect(struct rp_conn *c) {
  struct rp_server *srv = c->srv;
  uv_buf_t buf = uv_buf_init((char *)established, sizeof(established) - 1);

  c->log.status = 200;
  if (srv->leaves == NULL) {
    rp__conn_respond(c, 502, "MITM is not available (no CA)", true);
    return;
  }
  if (c->in != NULL && c->in_off < c->in_len) {
    /* Clients wait for the 200 before their ClientHello. */
    rp__conn_respond(c, 400, "data sent before the tunnel was established", true);
    return;
  }
  if (rp__conn_write(c, c->client, &buf, 1, NULL, NULL) != 0) {
    rp__conn_close(c);
    return;
  }
  /* The CONNECT is one log line; every request inside gets its own. */
  rp__conn_log(c);
  c->req_active = 0;
  rp__bref_put(c->in);
  c->in = NULL;
  rp__mitm_start_tls(c, c->target.host, c->target.port, NULL, 0);
}

void rp__mitm_start_tls(struct rp_conn *c, const char *host, uint16_t port, char *preread,
                        size_t preread_len) {
  struct rp_server *srv = c->srv;
  struct rp_stream *tls;

  c->mitm = 1;
  rp_http_parser_reset(c->parser);
  snprintf(c->mitm_host, sizeof(c->mitm_host), "%s", host);
  c->mitm_port = port;
  rp__conn_go_state(c, RP_CONN_TLS);
  rp__conn_stop_client(c);
  tls = rp_tls_stream_server_preread(c->client, rp_leafcache_base_ctx(srv->leaves), c->mitm_host,
                                     select_ctx, c, on_handshake, preread, preread_len);
  if (tls == NULL) {
    rp_buf_free(preread);
    rp__conn_close(c);
    return;
  }
  rp__conn_set_client(c, tls);
  rp__conn_set_timer(c, RP_TM_HEADER, srv->cfg->header_timeout_ms);
}

/* ---- requests to the registry service ---- */

/* The request's origin-form path: the target's, "/" for an absolute-form
 * URL without one (its query, if any, is no registry path either). */
static void request_path(const struct rp_conn *c, const char **path, size_t *len) {
  if (c->target.path_len == 0 || c->target.path_needs_slash) {
    *path = "/";
    *len = 1;
  } else {
    *path = c->target.path;
    *len = c->target.path_len;
  }
}

static bool serve(struct rp_conn *c, enum rp_registry_way way, const char *host, uint16_t port) {
  struct rp_registry_target t = {.way = way, .host = host, .port = port};
  struct rp_exchange *x;
  const char *path;
  size_t len;

  if (c->dst_ip[0] != '\0' && way != RP_REGISTRY_MIRROR) {
    /* Transparent: the registry is reached at the original destination. */
    t.connect_ip = c->dst_ip;
    t.connect_port = c->dst_port;
  }
  request_path(c, &path, &len);
  x = rp__conn_exchange_begin(c, path, len);
  rp__conn_go_state(c, RP_CONN_PASS);
  if (rp_registry_serve(c->srv->registry, &t, x))
    return true;
  rp__conn_go_state(c, RP_CONN_HEAD);
  return false;
}

void rp__mitm_request(struct rp_conn *c, const struct rp_http_head *h) {
  struct rp_target host;

  c->log.route = "mitm";
  c->log.cache = "pass";
  snprintf(c->log.host, sizeof(c->log.host), "%s", c->mitm_host);
  c->log.port = c->mitm_port;
  /* contract §2: the CONNECT target is the connection's identity. A Host
   * without a port names https' 443. */
  if (!rp__conn_request_host(c, h, 443, &host))
    return;
  if (strcmp(host.host, c->mitm_host) != 0 || host.port != c->mitm_port) {
    rp__conn_respond(c, 421, "Host does not match the CONNECT target", false);
    return;
  }
  if (c->target.form != RP_TARGET_ORIGIN) {
    rp__conn_respond(c, 400, "requests inside a tunnel use origin-form targets", true);
    return;
  }
  serve(c, RP_REGISTRY_TLS, c->mitm_host, c->mitm_port);
}

bool rp__mitm_plain_request(struct rp_conn *c, const struct rp_http_head *h) {
  (void)h;
  /* route.c found a plain-HTTP registry (route=http): the registry service
   * takes its reads; the rest is forwarded like any other host. */
  c->x_via = 1;
  if (serve(c, RP_REGISTRY_PLAIN, c->target.host, c->target.port))
    return true;
  c->x_via = 0;
  return false;
}

void rp__mitm_mirror_request(struct rp_conn *c, const struct rp_http_head *h) {
  c->log.via = "mirror";
  c->log.route = "mirror";
  c->log.cache = "pass";
  if (!rp_admin_host_allowed(h, c->srv->cfg->server_names.v, c->srv->cfg->server_names.n)) {
    rp__conn_respond(c, 421,
                     "mirror requests need Host: localhost, an IP address or a "
                     "server_names entry",
                     false);
    return;
  }
  serve(c, RP_REGISTRY_MIRROR, NULL, 0);
}
