/* The registry auth client, part three: token requests (the URL a
 * challenge asks for), the realm rule (who may receive them), and the
 * client: bearer tokens fetched through the upstream engine, cached by
 * (registry, scope, anonymous) with one fetch per key in flight. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <jansson.h>

#include "internal.h"
#include "regproxy/auth.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/upstream.h"
#include "regproxy/util.h"

#define TOKEN_BODY_MAX      (256 * 1024)
#define TOKEN_DEFAULT_TTL_S 60
#define TOKEN_MAX_TTL_S     (24 * 3600)
#define BASIC_TTL_MS        (3600 * 1000)
#define MAX_ENTRIES         1024
#define KEY_MAX             RP__AUTH_KEY_MAX

/* ---- token requests ------------------------------------------------------- */

static int url_append_escaped(char **buf, size_t *len, size_t *cap, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  for (; *s != '\0'; s++) {
    unsigned char c = (unsigned char)*s;
    if (*len + 4 > *cap) {
      size_t ncap = *cap * 2 + 64;
      char *nb = realloc(*buf, ncap);
      if (nb == NULL)
        return RP_ENOMEM;
      *buf = nb;
      *cap = ncap;
    }
    if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      (*buf)[(*len)++] = (char)c;
    } else {
      (*buf)[(*len)++] = '%';
      (*buf)[(*len)++] = hex[c >> 4];
      (*buf)[(*len)++] = hex[c & 15];
    }
  }
  (*buf)[*len] = '\0';
  return 0;
}

static int url_append_raw(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
  if (*len + n + 1 > *cap) {
    size_t ncap = *cap * 2 + n + 64;
    char *nb = realloc(*buf, ncap);
    if (nb == NULL)
      return RP_ENOMEM;
    *buf = nb;
    *cap = ncap;
  }
  memcpy(*buf + *len, s, n);
  *len += n;
  (*buf)[*len] = '\0';
  return 0;
}

/* A growing query string: "sep name=escaped(value)". */
struct urlbuf {
  char *p;
  size_t len, cap;
  char sep; /* '?', '&', or 0 when none is needed before the next parameter */
};

static int url_param(struct urlbuf *u, const char *name, const char *value, size_t vlen) {
  int rc = 0;
  char *v = strndup(value, vlen);
  if (v == NULL)
    return RP_ENOMEM;
  if (u->sep != 0)
    rc = url_append_raw(&u->p, &u->len, &u->cap, &u->sep, 1);
  u->sep = '&';
  if (rc == 0)
    rc = url_append_raw(&u->p, &u->len, &u->cap, name, strlen(name));
  if (rc == 0)
    rc = url_append_raw(&u->p, &u->len, &u->cap, "=", 1);
  if (rc == 0)
    rc = url_append_escaped(&u->p, &u->len, &u->cap, v);
  free(v);
  return rc;
}

int rp_auth_token_url(const char *realm, const char *service, const char *scope,
                      const char *account, char **out) {
  int rc = 0;
  struct urlbuf u = {0};
  size_t rlen;
  if (realm == NULL ||
      (strncasecmp(realm, "https://", 8) != 0 && strncasecmp(realm, "http://", 7) != 0))
    return RP_EPARSE;
  for (const char *p = realm; *p != '\0'; p++)
    if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || *p == '#')
      return RP_EPARSE;
  rlen = strlen(realm);
  rc = url_append_raw(&u.p, &u.len, &u.cap, realm, rlen);
  if (rc != 0)
    goto out;
  u.sep = strchr(realm, '?') == NULL                           ? '?'
          : (realm[rlen - 1] == '?' || realm[rlen - 1] == '&') ? 0
                                                               : '&';
  if (service != NULL && service[0] != '\0') {
    rc = url_param(&u, "service", service, strlen(service));
    if (rc != 0)
      goto out;
  }
  /* Several space-separated scopes become several scope parameters. */
  for (const char *p = scope != NULL ? scope : ""; *p != '\0';) {
    size_t n = strcspn(p, " ");
    if (n > 0) {
      rc = url_param(&u, "scope", p, n);
      if (rc != 0)
        goto out;
    }
    p += n;
    p += strspn(p, " ");
  }
  if (account != NULL && account[0] != '\0') {
    rc = url_param(&u, "account", account, strlen(account));
    if (rc != 0)
      goto out;
  }
  *out = u.p;
  u.p = NULL;
out:
  free(u.p);
  return rc;
}

/* ---- the realm rule (contract §3: who may receive token requests) -------------- */

/* Length of the host part of "host[:port]" / "[v6][:port]". */
static size_t host_len(const char *hostport) {
  const char *colon;
  if (hostport[0] == '[') {
    const char *end = strchr(hostport, ']');
    return end != NULL ? (size_t)(end - hostport + 1) : strlen(hostport);
  }
  colon = strchr(hostport, ':');
  return colon != NULL && strchr(colon + 1, ':') == NULL ? (size_t)(colon - hostport)
                                                         : strlen(hostport);
}

/* A realm is a URL the registry chose, so a registry (or whoever answers in
 * its name over plain http) could point regproxy anywhere: at a cloud
 * metadata service, at an admin port on loopback. The host is taken apart
 * by libcurl's own URL parser, so it is the host libcurl will connect to. */
int rp_auth_realm_check(const struct rp_auth_challenge *ch, const char *registry,
                        unsigned *internal_ok, char *why, size_t whysz) {
  int rc = 0, c;
  CURLU *u = NULL;
  char *scheme = NULL, *host = NULL;
  char reg[KEY_MAX], realm_key[KEY_MAX];
  unsigned ok = 0;

  *internal_ok = 0;
  snprintf(why, whysz, "%s", "");
  if (ch == NULL || ch->realm == NULL || ch->realm[0] == '\0') {
    rc = RP_EPARSE;
    snprintf(why, whysz, "Bearer challenge without a realm");
    goto out;
  }
  u = curl_url();
  if (u == NULL) {
    rc = RP_ENOMEM;
    snprintf(why, whysz, "out of memory");
    goto out;
  }
  if (curl_url_set(u, CURLUPART_URL, ch->realm, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
      (strcmp(scheme, "https") != 0 && strcmp(scheme, "http") != 0)) {
    rc = RP_EPARSE;
    snprintf(why, whysz, "Bearer realm is not an http(s) URL");
    goto out;
  }
  rp_auth_registry_key(registry, reg, sizeof(reg));
  reg[host_len(reg)] = '\0';
  rp_auth_registry_key(host, realm_key, sizeof(realm_key));
  /* In clear only to the registry's own host (an insecure registry serving
   * its own tokens, on any port): the one host the user chose. */
  if (strcmp(scheme, "http") == 0 && strcmp(realm_key, reg) != 0) {
    rc = RP_EDENIED;
    snprintf(why, whysz, "plain-http realm on %s, not on the registry's own host %s", host, reg);
    goto out;
  }
  /* Internal classes are fine where the registry itself is. */
  c = rp_upstream_host_class(reg);
  if (c > 0)
    ok |= 1u << c;
  c = ch->registry_ip != NULL ? rp_upstream_host_class(ch->registry_ip) : -1;
  if (c > 0)
    ok |= 1u << c;
  c = rp_upstream_host_class(host);
  if (c > 0 && !(ok & (1u << c))) {
    rc = RP_EDENIED;
    snprintf(why, whysz, "realm host %s is a %s address and the registry %s is not (%s%s)", host,
             rp_upstream_addr_class_name((enum rp_addr_class)c), reg,
             ch->registry_ip != NULL ? "it answered from " : "its address is unknown",
             ch->registry_ip != NULL ? ch->registry_ip : "");
    goto out;
  }
  *internal_ok = ok;
out:
  curl_free(scheme);
  curl_free(host);
  curl_url_cleanup(u);
  return rc;
}

int rp_auth_parse_token_response(const char *body, size_t len, char **token,
                                 uint64_t *expires_in_s) {
  int rc = RP_EPARSE;
  json_t *root = json_loadb(body, len, 0, NULL), *t, *e;
  const char *s;
  *token = NULL;
  *expires_in_s = TOKEN_DEFAULT_TTL_S;
  if (root == NULL || !json_is_object(root))
    goto out;
  t = json_object_get(root, "token");
  if (!json_is_string(t) || json_string_length(t) == 0)
    t = json_object_get(root, "access_token");
  if (!json_is_string(t) || json_string_length(t) == 0)
    goto out;
  s = json_string_value(t);
  /* It goes into a header: visible ASCII only. */
  for (size_t i = 0; i < json_string_length(t); i++)
    if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
      goto out;
  e = json_object_get(root, "expires_in");
  if (json_is_integer(e) && json_integer_value(e) > 0)
    *expires_in_s = (uint64_t)json_integer_value(e);
  else if (json_is_real(e) && json_real_value(e) >= 1)
    *expires_in_s = (uint64_t)json_real_value(e);
  if (*expires_in_s > TOKEN_MAX_TTL_S)
    *expires_in_s = TOKEN_MAX_TTL_S;
  *token = strdup(s);
  rc = *token == NULL ? RP_ENOMEM : 0;
out:
  json_decref(root);
  return rc;
}

/* ---- the client ------------------------------------------------------------- */

enum entry_state { ENTRY_PENDING, ENTRY_READY, ENTRY_STATE_LAST };

struct token_entry;

struct rp_auth_req {
  struct rp_auth *a;
  struct token_entry *entry; /* waiting on this entry's fetch, or NULL */
  struct rp_auth_req *prev, *next;
  rp_auth_cb cb;
  void *data;
  int status;
  char *value;
  char reason[600];
};

struct token_entry {
  struct rp_auth *a;
  struct token_entry *prev, *next;
  char registry[KEY_MAX];
  char *scope;
  unsigned anon;
  enum entry_state state;
  char *value;         /* "Bearer …" / "Basic …" */
  uint64_t expires_ms; /* uv_now() time */
  struct rp_auth_req *waiters;
  /* The token fetch. */
  struct rp_fetch *fetch;
  char *url;
  char *realm;         /* the challenge's, for messages */
  char *authorization; /* Basic credentials for the token server */
  char host[KEY_MAX];  /* the realm's host, for messages */
  int http_status;
  char *body;
  size_t body_len, body_cap;
};

struct rp_auth {
  struct rp_upstream *up;
  uv_loop_t *loop;
  struct rp_auth_creds *creds;
  const char *(*proxy_for)(void *data, const char *url, const char **userinfo);
  void *proxy_data;
  struct token_entry *entries;
  size_t nentries;
  struct rp_auth_req *ready_head, *ready_tail; /* answers due on the loop */
  struct rp_auth_req *delivering;
  uv_timer_t timer;
  struct rp_auth_stats stats;
};

static void entry_free(struct token_entry *e) {
  struct rp_auth *a = e->a;
  if (e->prev != NULL)
    e->prev->next = e->next;
  else
    a->entries = e->next;
  if (e->next != NULL)
    e->next->prev = e->prev;
  a->nentries--;
  if (e->fetch != NULL)
    rp_fetch_cancel(e->fetch);
  while (e->waiters != NULL) {
    struct rp_auth_req *r = e->waiters;
    e->waiters = r->next;
    free(r->value);
    free(r);
  }
  free(e->scope);
  free(e->value);
  free(e->url);
  free(e->realm);
  if (e->authorization != NULL) {
    explicit_bzero(e->authorization, strlen(e->authorization));
    free(e->authorization);
  }
  free(e->body);
  free(e);
}

static void on_ready_timer(uv_timer_t *t);

static void ready_push(struct rp_auth_req *r) {
  struct rp_auth *a = r->a;
  r->entry = NULL;
  r->next = NULL;
  r->prev = a->ready_tail;
  if (a->ready_tail != NULL)
    a->ready_tail->next = r;
  else
    a->ready_head = r;
  a->ready_tail = r;
  uv_timer_start(&a->timer, on_ready_timer, 0, 0);
}

/* Answer r later, on the loop. value may be NULL (error). */
static void answer(struct rp_auth_req *r, int status, const char *value, const char *reason) {
  r->status = status;
  r->value = NULL;
  if (status == 0) {
    r->value = strdup(value);
    if (r->value == NULL) {
      r->status = RP_ENOMEM;
      reason = "out of memory";
    }
  }
  snprintf(r->reason, sizeof(r->reason), "%s", status == 0 ? "" : reason);
  ready_push(r);
}

static void on_ready_timer(uv_timer_t *t) {
  struct rp_auth *a = t->data;
  struct rp_auth_req *r;
  for (r = a->ready_head; r != NULL; r = a->ready_head) {
    a->ready_head = r->next;
    if (a->ready_head != NULL)
      a->ready_head->prev = NULL;
    else
      a->ready_tail = NULL;
    a->delivering = r;
    r->cb(r->data, r->status, r->status == 0 ? r->value : NULL, r->reason);
    a->delivering = NULL;
    if (r->value != NULL) {
      explicit_bzero(r->value, strlen(r->value));
      free(r->value);
    }
    free(r);
  }
}

static void entry_answer_all(struct token_entry *e, int status, const char *reason) {
  while (e->waiters != NULL) {
    struct rp_auth_req *r = e->waiters;
    e->waiters = r->next;
    answer(r, status, e->value, reason);
  }
}

static struct token_entry *entry_find(struct rp_auth *a, const char *registry, const char *scope,
                                      unsigned anon) {
  uint64_t now = uv_now(a->loop);
  struct token_entry *e, *next;
  for (e = a->entries; e != NULL; e = next) {
    next = e->next;
    if (e->state == ENTRY_READY && e->expires_ms <= now) {
      entry_free(e); /* expired: drop it on the way */
      continue;
    }
    if (e->anon == anon && strcmp(e->registry, registry) == 0 && strcmp(e->scope, scope) == 0)
      return e;
  }
  return NULL;
}

static struct token_entry *entry_new(struct rp_auth *a, const char *registry, const char *scope,
                                     unsigned anon) {
  struct token_entry *e = calloc(1, sizeof(*e));
  if (e == NULL)
    return NULL;
  e->scope = strdup(scope);
  if (e->scope == NULL) {
    free(e);
    return NULL;
  }
  e->a = a;
  e->anon = anon;
  snprintf(e->registry, sizeof(e->registry), "%s", registry);
  /* Bound the table: drop the oldest finished entries (at the tail). */
  if (a->nentries >= MAX_ENTRIES) {
    struct token_entry *t = a->entries;
    while (t != NULL && t->next != NULL)
      t = t->next;
    while (t != NULL && a->nentries >= MAX_ENTRIES) {
      struct token_entry *prev = t->prev;
      if (t->state == ENTRY_READY)
        entry_free(t);
      t = prev;
    }
  }
  e->next = a->entries;
  if (a->entries != NULL)
    a->entries->prev = e;
  a->entries = e;
  a->nentries++;
  return e;
}

/* One warn line per refused realm: the reason an operator needs when a pull
 * goes without a token. */
static void log_realm_refused(const char *registry, const char *realm, const char *why) {
  struct rp_logline l;
  if (!rp_log_enabled(RP_LOG_WARN))
    return;
  rp_logline_begin(&l, RP_LOG_WARN, "token realm refused");
  rp_logline_str(&l, "registry", registry);
  rp_logline_str(&l, "realm", realm != NULL ? realm : "");
  rp_logline_str(&l, "reason", why);
  rp_logline_end(&l);
}

static int token_on_head(struct rp_fetch *f, void *data, int status, const char *reason,
                         const struct rp_http_header *headers, size_t nheaders) {
  struct token_entry *e = data;
  e->http_status = status;
  return 0;
}

static int token_on_body(struct rp_fetch *f, void *data, const char *p, size_t n) {
  struct token_entry *e = data;
  if (e->body_len + n > TOKEN_BODY_MAX)
    return -1;
  if (e->body_len + n + 1 > e->body_cap) {
    size_t cap = e->body_cap ? e->body_cap : 4096;
    while (cap < e->body_len + n + 1)
      cap *= 2;
    char *nb = realloc(e->body, cap);
    if (nb == NULL)
      return -1;
    e->body = nb;
    e->body_cap = cap;
  }
  memcpy(e->body + e->body_len, p, n);
  e->body_len += n;
  return 0;
}

static void token_on_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct token_entry *e = data;
  struct rp_auth *a = e->a;
  char msg[400];
  char *token = NULL;
  uint64_t ttl_s = 0;
  e->fetch = NULL;
  if (status != 0) {
    snprintf(msg, sizeof(msg), "token request to %s: %s", e->host,
             reason[0] != '\0' ? reason : rp_strerror(status));
  } else if (e->http_status != 200) {
    status = RP_EAUTH;
    snprintf(msg, sizeof(msg), "token server %s answered %d%s", e->host, e->http_status,
             e->http_status == 401 || e->http_status == 403 ? " (credentials refused)" : "");
  } else {
    status =
        rp_auth_parse_token_response(e->body != NULL ? e->body : "", e->body_len, &token, &ttl_s);
    if (status != 0) {
      if (status != RP_ENOMEM)
        status = RP_EAUTH;
      snprintf(msg, sizeof(msg), "token server %s: no usable token in its answer", e->host);
    } else {
      e->value = rp_asprintf("Bearer %s", token);
      explicit_bzero(token, strlen(token));
      free(token);
      if (e->value == NULL) {
        status = RP_ENOMEM;
        snprintf(msg, sizeof(msg), "out of memory");
      }
    }
  }
  free(e->body);
  e->body = NULL;
  e->body_len = e->body_cap = 0;
  if (status == RP_EDENIED)
    log_realm_refused(e->registry, e->realm, reason);
  if (status != 0) {
    rp_log_debug("auth: %s scope=%s: %s", e->registry, e->scope, msg);
    entry_answer_all(e, status, msg);
    entry_free(e);
    return;
  }
  /* Keep it until a few seconds before it expires. */
  uint64_t margin_s = ttl_s >= 30 ? 10 : ttl_s / 3;
  e->expires_ms = uv_now(a->loop) + (ttl_s - margin_s) * 1000;
  e->state = ENTRY_READY;
  rp_log_debug("auth: token for %s scope=%s, %llu s", e->registry, e->scope,
               (unsigned long long)ttl_s);
  entry_answer_all(e, 0, "");
}

static int token_fetch_start(struct rp_auth *a, struct token_entry *e,
                             const struct rp_auth_challenge *ch, const char *user, const char *pass,
                             char *why, size_t whysz) {
  int rc;
  unsigned internal_ok = 0;
  struct rp_http_header hdrs[3];
  size_t nh = 0;
  const char *proxy = NULL, *proxy_userinfo = NULL;
  static const char ua[] = "regproxy/" RP_VERSION;
  rc = rp_auth_realm_check(ch, e->registry, &internal_ok, why, whysz);
  if (rc != 0)
    return rc;
  e->realm = strdup(ch->realm);
  if (e->realm == NULL) {
    snprintf(why, whysz, "out of memory");
    return RP_ENOMEM;
  }
  rc = rp_auth_token_url(ch->realm, ch->service, e->scope[0] != '\0' ? e->scope : NULL, user,
                         &e->url);
  if (rc != 0) {
    snprintf(why, whysz, "Bearer realm is not an http(s) URL");
    return rc;
  }
  {
    const char *h = strstr(e->url, "://") + 3;
    size_t hl = strcspn(h, "/?");
    snprintf(e->host, sizeof(e->host), "%.*s", (int)hl, h);
  }
  if (user != NULL) {
    e->authorization = rp_auth_basic_value(user, pass);
    if (e->authorization == NULL) {
      snprintf(why, whysz, "out of memory");
      return RP_ENOMEM;
    }
    hdrs[nh++] =
        (struct rp_http_header){"Authorization", 13, e->authorization, strlen(e->authorization)};
  }
  hdrs[nh++] = (struct rp_http_header){"Accept", 6, "application/json", 16};
  hdrs[nh++] = (struct rp_http_header){"User-Agent", 10, ua, sizeof(ua) - 1};
  if (a->proxy_for != NULL)
    proxy = a->proxy_for(a->proxy_data, e->url, &proxy_userinfo);
  struct rp_fetch_req req = {
      .method = "GET",
      .url = e->url,
      .headers = hdrs,
      .nheaders = nh,
      .body_len = 0,
      .proxy = proxy,
      .proxy_userinfo = proxy != NULL ? proxy_userinfo : NULL,
      .follow_redirects = true,
      .forbid_internal = true,
      .internal_ok = internal_ok,
  };
  static const struct rp_fetch_callbacks cbs = {
      .on_head = token_on_head, .on_body = token_on_body, .on_done = token_on_done};
  e->fetch = rp_fetch_start(a->up, &req, &cbs, e);
  if (e->fetch == NULL) {
    snprintf(why, whysz, "cannot start the token request");
    return RP_ENOMEM;
  }
  a->stats.token_fetches++;
  return 0;
}

struct rp_auth_req *rp_auth_get(struct rp_auth *a, const char *registry, const char *scope,
                                const struct rp_auth_challenge *ch, unsigned flags, rp_auth_cb cb,
                                void *data) {
  char key[KEY_MAX];
  const char *user = NULL, *pass = NULL, *eff_scope;
  unsigned anon;
  struct token_entry *e;
  struct rp_auth_req *r;
  char msg[600];
  if (a == NULL || ch == NULL || cb == NULL)
    return NULL;
  r = calloc(1, sizeof(*r));
  if (r == NULL)
    return NULL;
  r->a = a;
  r->cb = cb;
  r->data = data;
  rp_auth_registry_key(registry, key, sizeof(key));
  eff_scope = scope != NULL && scope[0] != '\0' ? scope : ch->scope != NULL ? ch->scope : "";
  if (!(flags & RP_AUTH_ANONYMOUS))
    rp_auth_creds_lookup(a->creds, key, &user, &pass);
  anon = user == NULL;

  if (ch->scheme == RP_AUTH_BASIC) {
    char *v;
    if (user == NULL) {
      snprintf(msg, sizeof(msg), "%s asks for Basic credentials and none are %s", key,
               (flags & RP_AUTH_ANONYMOUS) ? "to be used (anonymous)" : "configured for it");
      answer(r, RP_EDENIED, NULL, msg);
      return r;
    }
    v = rp_auth_basic_value(user, pass);
    if (v == NULL) {
      answer(r, RP_ENOMEM, NULL, "out of memory");
      return r;
    }
    /* Remembered too, so rp_auth_cached answers for Basic registries. */
    e = entry_find(a, key, eff_scope, anon);
    if (e == NULL)
      e = entry_new(a, key, eff_scope, anon);
    if (e != NULL && e->fetch == NULL && e->waiters == NULL) {
      free(e->value);
      e->value = strdup(v);
      e->state = ENTRY_READY;
      e->expires_ms = uv_now(a->loop) + BASIC_TTL_MS;
      if (e->value == NULL)
        entry_free(e);
    }
    answer(r, 0, v, "");
    explicit_bzero(v, strlen(v));
    free(v);
    return r;
  }
  if (ch->scheme != RP_AUTH_BEARER) {
    answer(r, RP_EINVAL, NULL, "unsupported authentication scheme");
    return r;
  }
  if (ch->realm == NULL || ch->realm[0] == '\0') {
    answer(r, RP_EPARSE, NULL, "Bearer challenge without a realm");
    return r;
  }
  e = entry_find(a, key, eff_scope, anon);
  if (e != NULL && e->state == ENTRY_READY) {
    a->stats.cache_hits++;
    answer(r, 0, e->value, "");
    return r;
  }
  if (e != NULL) {
    a->stats.coalesced++;
  } else {
    int rc;
    e = entry_new(a, key, eff_scope, anon);
    if (e == NULL) {
      answer(r, RP_ENOMEM, NULL, "out of memory");
      return r;
    }
    rc = token_fetch_start(a, e, ch, user, pass, msg, sizeof(msg));
    if (rc != 0) {
      if (rc == RP_EDENIED || rc == RP_EPARSE)
        log_realm_refused(key, ch->realm, msg);
      entry_free(e);
      answer(r, rc, NULL, msg);
      return r;
    }
  }
  r->entry = e;
  r->next = e->waiters;
  if (e->waiters != NULL)
    e->waiters->prev = r;
  e->waiters = r;
  return r;
}

void rp_auth_cancel(struct rp_auth_req *r) {
  struct rp_auth *a;
  if (r == NULL)
    return;
  a = r->a;
  if (a->delivering == r)
    return;
  if (r->entry != NULL) {
    if (r->prev != NULL)
      r->prev->next = r->next;
    else
      r->entry->waiters = r->next;
    if (r->next != NULL)
      r->next->prev = r->prev;
    /* The fetch goes on: its token is cached for the next asker. */
  } else {
    if (r->prev != NULL)
      r->prev->next = r->next;
    else
      a->ready_head = r->next;
    if (r->next != NULL)
      r->next->prev = r->prev;
    else
      a->ready_tail = r->prev;
  }
  if (r->value != NULL) {
    explicit_bzero(r->value, strlen(r->value));
    free(r->value);
  }
  free(r);
}

static unsigned key_anon(struct rp_auth *a, const char *key, unsigned flags) {
  const char *u, *p;
  if (flags & RP_AUTH_ANONYMOUS)
    return 1;
  return rp_auth_creds_lookup(a->creds, key, &u, &p) == 0 ? 0 : 1;
}

char *rp_auth_cached(struct rp_auth *a, const char *registry, const char *scope, unsigned flags) {
  char key[KEY_MAX];
  struct token_entry *e;
  if (a == NULL)
    return NULL;
  rp_auth_registry_key(registry, key, sizeof(key));
  e = entry_find(a, key, scope != NULL ? scope : "", key_anon(a, key, flags));
  if (e == NULL || e->state != ENTRY_READY)
    return NULL;
  return strdup(e->value);
}

void rp_auth_invalidate(struct rp_auth *a, const char *registry, const char *scope,
                        unsigned flags) {
  char key[KEY_MAX];
  struct token_entry *e;
  if (a == NULL)
    return;
  rp_auth_registry_key(registry, key, sizeof(key));
  e = entry_find(a, key, scope != NULL ? scope : "", key_anon(a, key, flags));
  if (e != NULL && e->state == ENTRY_READY)
    entry_free(e);
}

void rp_auth_get_stats(const struct rp_auth *a, struct rp_auth_stats *out) {
  *out = a->stats;
}

int rp_auth_create(const struct rp_auth_opts *opts, struct rp_auth **out, char **err) {
  int rc;
  struct rp_auth *a;
  if (err != NULL)
    *err = NULL;
  if (opts == NULL || opts->up == NULL || out == NULL)
    return RP_EINVAL;
  a = calloc(1, sizeof(*a));
  if (a == NULL)
    return RP_ENOMEM;
  a->up = opts->up;
  a->loop = rp_upstream_loop(opts->up);
  a->proxy_for = opts->proxy_for;
  a->proxy_data = opts->proxy_data;
  if (opts->docker_config != NULL) {
    rc = rp_auth_creds_load(opts->docker_config, &a->creds, err);
    if (rc != 0) {
      free(a);
      return rc;
    }
  }
  rc = uv_timer_init(a->loop, &a->timer);
  if (rc != 0) {
    rp_auth_creds_destroy(a->creds);
    free(a);
    return rc;
  }
  a->timer.data = a;
  *out = a;
  return 0;
}

static void on_auth_close(uv_handle_t *h) {
  free(h->data);
}

void rp_auth_destroy(struct rp_auth *a) {
  if (a == NULL)
    return;
  while (a->entries != NULL)
    entry_free(a->entries);
  while (a->ready_head != NULL) {
    struct rp_auth_req *r = a->ready_head;
    a->ready_head = r->next;
    free(r->value);
    free(r);
  }
  a->ready_tail = NULL;
  rp_auth_creds_destroy(a->creds);
  a->creds = NULL;
  uv_close((uv_handle_t *)&a->timer, on_auth_close);
}
