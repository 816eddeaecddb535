/* Admin endpoints on the proxy listener (contract §5): origin-form requests from
 * allowed clients whose Host is an IP literal, localhost or a configured
 * server name (so a DNS-rebinding page cannot read them). Only /healthz and
 * /ca.crt answer every allowed client; the rest list digests, repositories
 * and client addresses and answer only admin_allow. The cache endpoints are
 * in cache.c. Every answer goes out through the request's exchange; what the
 * proxy shows of itself (/metrics, /status.json) comes from its renderers in
 * struct rp_admin. */
#include <arpa/inet.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "page.h"
#include "regproxy/rules.h"
#include "regproxy/util.h"

/* A header field of a literal name. */
#define FIELD(n, v)                                                                                \
  { n, sizeof(n) - 1, v, strlen(v) }

bool rp_admin_host_allowed(const struct rp_http_head *h, char *const *names, size_t n) {
  struct rp_target t;
  unsigned char bin[4];
  const char *why;

  if (rp_http_request_host(h, 80, &t, &why) != 0)
    return false;
  /* t.host is lower-case, without brackets or one trailing dot. */
  if (t.host_is_ip6 || inet_pton(AF_INET, t.host, bin) == 1 || strcmp(t.host, "localhost") == 0)
    return true;
  for (size_t i = 0; i < n; i++)
    if (strcasecmp(t.host, names[i]) == 0)
      return true;
  return false;
}

/* body (taken) as Content-Type ctype, never cached; extra: n more fields. */
static void reply(struct rp_exchange *x, int status, const char *ctype,
                  const struct rp_http_header *extra, size_t n, char *body, size_t len) {
  struct rp_http_header hd[4] = {FIELD("Content-Type", ctype), FIELD("Cache-Control", "no-store")};
  size_t k = 2;

  for (size_t i = 0; i < n && k < sizeof(hd) / sizeof(hd[0]); i++)
    hd[k++] = extra[i];
  rp_exchange_answer(x, status, hd, k, body, len);
}

/* o (taken) as one line of compact JSON, malloc'd; NULL when out of memory. */
static char *json_line(json_t *o, size_t *len) {
  char *text = json_dumps(o, JSON_COMPACT);
  char *t;
  size_t n;

  json_decref(o);
  if (text == NULL)
    return NULL;
  n = strlen(text);
  /* One line, like every other admin answer ends with a newline. */
  t = realloc(text, n + 2);
  if (t == NULL) {
    free(text);
    return NULL;
  }
  t[n++] = '\n';
  t[n] = '\0';
  *len = n;
  return t;
}

/* body (taken) as JSON, with one more header field when allow is set. */
static void reply_json(struct rp_exchange *x, int status, const char *allow, json_t *body) {
  struct rp_http_header hd[1];
  size_t n;
  char *text = json_line(body, &n);

  if (text == NULL) {
    rp_exchange_error(x, 500, "out of memory", true);
    return;
  }
  if (allow != NULL)
    hd[0] = (struct rp_http_header)FIELD("Allow", allow);
  reply(x, status, "application/json", hd, allow != NULL ? 1 : 0, text, n);
}

void rp__admin_reply_json(struct rp_exchange *x, int status, json_t *body) {
  reply_json(x, status, NULL, body);
}

void rp__admin_reply_error(struct rp_exchange *x, int status, const char *allow, const char *msg) {
  json_t *o = json_pack("{s:s}", "error", msg);

  rp_exchange_note(x, NULL, msg, NULL);
  if (o == NULL) {
    rp_exchange_error(x, status, msg, false);
    return;
  }
  reply_json(x, status, allow, o);
}

/* A copy of text (the whole body). */
static void reply_copy(struct rp_exchange *x, const char *ctype, const struct rp_http_header *extra,
                       size_t n, const char *text, size_t len) {
  char *p = malloc(len);

  if (p == NULL) {
    rp_exchange_error(x, 500, "out of memory", true);
    return;
  }
  memcpy(p, text, len);
  reply(x, 200, ctype, extra, n, p, len);
}

/* Like the exchange's own short answers (text/plain, the reason as its one
 * line), with an Allow field. */
static void refuse_method(struct rp_exchange *x, const char *reason, const char *allow) {
  struct rp_http_header hd[2] = {FIELD("Content-Type", "text/plain; charset=utf-8"),
                                 FIELD("Allow", allow)};
  size_t n = strlen(reason);
  char *p = malloc(n + 1);

  rp_exchange_note(x, NULL, reason, NULL);
  if (p == NULL) {
    rp_exchange_error(x, 500, "out of memory", true);
    return;
  }
  memcpy(p, reason, n);
  p[n] = '\n';
  rp_exchange_answer(x, 405, hd, 2, p, n + 1);
}

static bool is(const char *path, size_t plen, const char *lit) {
  return plen == strlen(lit) && memcmp(path, lit, plen) == 0;
}

void rp_admin_serve(const struct rp_admin *a, struct rp_exchange *x,
                    const struct sockaddr *client) {
  const struct rp_http_head *h = x->head;
  const char *path = x->path;
  size_t plen = x->path_len;
  bool head_only = h->method_id == HTTP_HEAD;
  struct rp_sbuf body = {0};
  char *p;
  size_t n;

  if (!rp_admin_host_allowed(h, a->server_names, a->n_server_names)) {
    rp_exchange_error(x, 421,
                      "admin requests need Host: localhost, an IP address or a server_names entry",
                      false);
    return;
  }
  for (size_t i = 0; i < x->path_len; i++) {
    if (path[i] == '?') {
      plen = i;
      break;
    }
  }
  /* Anything but the two public endpoints needs admin_allow, so an
   * endpoint added later is not public by accident. rp_acl_match compares
   * IPv4-mapped IPv6 peers as IPv4, like allow. */
  if (!is(path, plen, "/healthz") && !is(path, plen, "/ca.crt") &&
      !rp_acl_match(a->allow, client)) {
    rp_exchange_error(x, 403, "client address not in admin_allow", false);
    return;
  }
  if (plen > 7 && memcmp(path, "/cache/", 7) == 0) {
    rp__admin_cache(x, a->cache, path, plen, plen < x->path_len ? path + plen + 1 : "",
                    plen < x->path_len ? x->path_len - plen - 1 : 0);
    return;
  }
  if (h->method_id != HTTP_GET && !head_only) {
    refuse_method(x, "admin endpoints answer GET and HEAD", "GET, HEAD");
    return;
  }
  if (is(path, plen, "/healthz")) {
    reply_copy(x, "text/plain; charset=utf-8", NULL, 0, "ok\n", 3);
    return;
  }
  if (is(path, plen, "/status.json")) {
    p = a->status_json(a->data, &n);
    if (p == NULL) {
      rp_exchange_error(x, 500, "out of memory", true);
      return;
    }
    reply(x, 200, "application/json", NULL, 0, p, n);
    return;
  }
  if (is(path, plen, "/")) {
    /* The page runs no script it did not bring, loads nothing but
     * /status.json, and is never taken for another type. */
    struct rp_http_header hd[2] = {
        FIELD("Content-Security-Policy", "default-src 'none'; connect-src 'self'; "
                                         "style-src 'unsafe-inline'; script-src 'unsafe-inline'"),
        FIELD("X-Content-Type-Options", "nosniff"),
    };
    reply_copy(x, "text/html; charset=utf-8", hd, 2, rp__status_page, sizeof(rp__status_page) - 1);
    return;
  }
  if (is(path, plen, "/metrics")) {
    a->metrics(a->data, &body);
    p = rp_sbuf_take(&body, &n);
    if (p == NULL) {
      rp_exchange_error(x, 500, "out of memory", true);
      return;
    }
    reply(x, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, 0, p, n);
    return;
  }
  if (is(path, plen, "/ca.crt") && a->ca_pem != NULL) {
    reply_copy(x, "application/x-pem-file", NULL, 0, a->ca_pem, a->ca_pem_len);
    return;
  }
  rp_exchange_error(x, 404, "no such admin endpoint", false);
}
