/* Admin endpoints on the proxy listener (SPEC §5): origin-form requests from
 * allowed clients whose Host is an IP literal, localhost or a configured
 * server name (so a DNS-rebinding page cannot read them). Only /healthz and
 * /ca.crt answer every allowed client; the rest list digests, repositories
 * and client addresses and answer only admin_allow. The cache endpoints are
 * in cache.c. */
#include <arpa/inet.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "page.h"
#include "regproxy/metrics.h"
#include "regproxy/rules.h"
#include "regproxy/tls.h"
#include "regproxy/util.h"

bool rp__admin_host_allowed(const struct rp_config *cfg, const struct rp_http_head *h) {
  struct rp_target t;
  unsigned char bin[4];
  const char *why;

  if (rp_http_request_host(h, 80, &t, &why) != 0)
    return false;
  /* t.host is lower-case, without brackets or one trailing dot. */
  if (t.host_is_ip6 || inet_pton(AF_INET, t.host, bin) == 1 || strcmp(t.host, "localhost") == 0)
    return true;
  for (size_t i = 0; i < cfg->server_names.n; i++)
    if (strcasecmp(t.host, cfg->server_names.v[i]) == 0)
      return true;
  return false;
}

void rp__admin_reply(struct rp_conn *c, int status, const char *ctype, const char *extra,
                     char *body, size_t len, bool head_only) {
  struct rp_sbuf b = {0};
  char *p;
  size_t n;
  uv_buf_t buf;

  c->log.status = status;
  rp_sbuf_addf(&b,
               "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
               "Cache-Control: no-store\r\n%s%s\r\n",
               status, rp_http_reason(status), ctype, len, extra,
               c->keep_alive ? "" : "Connection: close\r\n");
  if (!head_only)
    rp_sbuf_add(&b, body, len);
  free(body);
  p = rp_sbuf_take(&b, &n);
  if (p == NULL) {
    rp__conn_close(c);
    return;
  }
  buf = uv_buf_init(p, (unsigned)n);
  if (rp__conn_write(c, c->client, &buf, 1, NULL, p) != 0) {
    rp__conn_close(c);
    return;
  }
  rp__conn_go_state(c, RP_CONN_RESPOND);
  rp__conn_response_done(c);
}

void rp__admin_reply_json(struct rp_conn *c, int status, const char *extra, json_t *body,
                          bool head_only) {
  char *text = json_dumps(body, JSON_COMPACT);
  size_t n;

  json_decref(body);
  if (text == NULL) {
    rp__conn_respond(c, 500, "out of memory", true);
    return;
  }
  n = strlen(text);
  /* One line, like every other admin answer ends with a newline. */
  {
    char *t = realloc(text, n + 2);
    if (t == NULL) {
      free(text);
      rp__conn_respond(c, 500, "out of memory", true);
      return;
    }
    text = t;
    text[n++] = '\n';
    text[n] = '\0';
  }
  rp__admin_reply(c, status, "application/json", extra, text, n, head_only);
}

void rp__admin_reply_error(struct rp_conn *c, int status, const char *extra, const char *msg) {
  json_t *o = json_pack("{s:s}", "error", msg);

  if (c->log.reason[0] == '\0')
    snprintf(c->log.reason, sizeof(c->log.reason), "%s", msg);
  if (o == NULL) {
    rp__conn_respond(c, status, msg, false);
    return;
  }
  rp__admin_reply_json(c, status, extra, o, false);
}

void rp__admin_handle(struct rp_conn *c, const struct rp_http_head *h) {
  const struct rp_target *t = &c->target;
  size_t plen = t->path_len;
  bool head_only = h->method_id == HTTP_HEAD;
  struct rp_sbuf body = {0};
  char *p;
  size_t n;

  c->log.via = "admin";
  c->log.route = "admin";
  if (!rp__admin_host_allowed(c->srv->cfg, h)) {
    rp__conn_respond(c, 421,
                     "admin requests need Host: localhost, an IP address or a server_names entry",
                     false);
    return;
  }
  for (size_t i = 0; i < t->path_len; i++) {
    if (t->path[i] == '?') {
      plen = i;
      break;
    }
  }
  /* Anything but the two public endpoints needs admin_allow, so an
   * endpoint added later is not public by accident. rp_acl_match compares
   * IPv4-mapped IPv6 peers as IPv4, like allow. */
  if (!(plen == 8 && memcmp(t->path, "/healthz", 8) == 0) &&
      !(plen == 7 && memcmp(t->path, "/ca.crt", 7) == 0) &&
      !rp_acl_match(c->srv->cfg->admin_acl, (const struct sockaddr *)&c->peer)) {
    rp__conn_respond(c, 403, "client address not in admin_allow", false);
    return;
  }
  if (plen > 7 && memcmp(t->path, "/cache/", 7) == 0) {
    rp__admin_cache(c, h, t->path, plen, plen < t->path_len ? t->path + plen + 1 : "",
                    plen < t->path_len ? t->path_len - plen - 1 : 0);
    return;
  }
  if (h->method_id != HTTP_GET && !head_only) {
    rp__conn_respond_with(c, 405, "admin endpoints answer GET and HEAD", "Allow: GET, HEAD\r\n",
                          false);
    return;
  }
  if (plen == 8 && memcmp(t->path, "/healthz", 8) == 0) {
    rp_sbuf_adds(&body, "ok\n");
    p = rp_sbuf_take(&body, &n);
    rp__admin_reply(c, 200, "text/plain; charset=utf-8", "", p, n, head_only);
    return;
  }
  if (plen == 12 && memcmp(t->path, "/status.json", 12) == 0) {
    p = rp__status_json(c->srv, &n);
    if (p == NULL) {
      rp__conn_respond(c, 500, "out of memory", true);
      return;
    }
    rp__admin_reply(c, 200, "application/json", "", p, n, head_only);
    return;
  }
  if (plen == 1 && t->path[0] == '/') {
    n = sizeof(rp__status_page) - 1;
    p = malloc(n);
    if (p == NULL) {
      rp__conn_respond(c, 500, "out of memory", true);
      return;
    }
    memcpy(p, rp__status_page, n);
    rp__admin_reply(c, 200, "text/html; charset=utf-8",
                    "Content-Security-Policy: default-src 'none'; connect-src 'self'; "
                    "style-src 'unsafe-inline'; script-src 'unsafe-inline'\r\n"
                    "X-Content-Type-Options: nosniff\r\n",
                    p, n, head_only);
    return;
  }
  if (plen == 8 && memcmp(t->path, "/metrics", 8) == 0) {
    struct rp_registry_counters rc;
    rp_registry_counters(c->srv->registry, &rc);
    rp_metrics_render(&body, c->srv->cache, &rc);
    rp_registry_metrics(c->srv->registry, &body);
    p = rp_sbuf_take(&body, &n);
    rp__admin_reply(c, 200, "text/plain; version=0.0.4; charset=utf-8", "", p, n, head_only);
    return;
  }
  if (plen == 7 && memcmp(t->path, "/ca.crt", 7) == 0 && c->srv->ca != NULL) {
    size_t pem_len;
    const char *pem = rp_ca_cert_pem(c->srv->ca, &pem_len);
    rp_sbuf_add(&body, pem, pem_len);
    p = rp_sbuf_take(&body, &n);
    rp__admin_reply(c, 200, "application/x-pem-file", "", p, n, head_only);
    return;
  }
  rp__conn_respond(c, 404, "no such admin endpoint", false);
}
