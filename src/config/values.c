/* Value parsers: sizes, durations, booleans, numbers, listen addresses,
 * --connect-to rules and the parent proxy URL, with the small string helpers
 * they share. They know nothing of where a value came from. */

#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config/internal.h"
#include "regproxy/config.h"
#include "regproxy/error.h"
#include "regproxy/util.h"

/* Durations beyond ten years are surely typos, and keeping them small means
 * "now + timeout" can never overflow. */
#define MAX_DURATION_MS (10ull * 365 * 24 * 3600 * 1000)

/* ---- small helpers ---------------------------------------------------- */

char *rp__vaprintf(const char *fmt, va_list ap) {
  va_list ap2;
  char *s;
  int n;

  va_copy(ap2, ap);
  n = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (n < 0) {
    return NULL;
  }
  s = malloc((size_t)n + 1);
  if (s == NULL) {
    return NULL;
  }
  vsnprintf(s, (size_t)n + 1, fmt, ap);
  return s;
}

char *rp__aprintf(const char *fmt, ...) {
  va_list ap;
  char *s;

  va_start(ap, fmt);
  s = rp__vaprintf(fmt, ap);
  va_end(ap);
  return s;
}

int rp__strv_push(struct rp_strv *sv, const char *s) {
  char **v;
  char *copy = strdup(s);
  if (copy == NULL) {
    return RP_ENOMEM;
  }
  v = realloc(sv->v, (sv->n + 2) * sizeof *v);
  if (v == NULL) {
    free(copy);
    return RP_ENOMEM;
  }
  sv->v = v;
  sv->v[sv->n++] = copy;
  sv->v[sv->n] = NULL;
  return 0;
}

void rp__strv_clear(struct rp_strv *sv) {
  for (size_t i = 0; i < sv->n; i++) {
    free(sv->v[i]);
  }
  free(sv->v);
  sv->v = NULL;
  sv->n = 0;
}

void rp__lower(char *s) {
  for (; *s != '\0'; s++) {
    *s = (char)tolower((unsigned char)*s);
  }
}

static bool is_host_char(char c) {
  return isalnum((unsigned char)c) || c == '-' || c == '.' || c == '_';
}

bool rp__valid_hostname(const char *s, size_t n) {
  if (n == 0 || n > 253) {
    return false;
  }
  for (size_t i = 0; i < n; i++) {
    if (!is_host_char(s[i])) {
      return false;
    }
  }
  return true;
}

static bool valid_ipv6(const char *s, size_t n) {
  char buf[64];
  unsigned char addr[16];
  if (n == 0 || n >= sizeof buf) {
    return false;
  }
  memcpy(buf, s, n);
  buf[n] = '\0';
  return inet_pton(AF_INET6, buf, addr) == 1;
}

/* "1".."65535" (or "0".. when allow_zero); digits only. */
static bool parse_port(const char *s, size_t n, bool allow_zero, uint16_t *out) {
  unsigned v = 0;
  if (n == 0 || n > 5) {
    return false;
  }
  for (size_t i = 0; i < n; i++) {
    if (!isdigit((unsigned char)s[i])) {
      return false;
    }
    v = v * 10 + (unsigned)(s[i] - '0');
  }
  if (v > 65535 || (v == 0 && !allow_zero)) {
    return false;
  }
  *out = (uint16_t)v;
  return true;
}

/* Leading decimal digits of *s into *v; false on none or overflow. */
bool rp__take_u64(const char **s, uint64_t *v) {
  const char *p = *s;
  uint64_t x = 0;
  if (!isdigit((unsigned char)*p)) {
    return false;
  }
  for (; isdigit((unsigned char)*p); p++) {
    unsigned d = (unsigned)(*p - '0');
    if (x > (UINT64_MAX - d) / 10) {
      return false;
    }
    x = x * 10 + d;
  }
  *s = p;
  *v = x;
  return true;
}

bool rp__parse_bool(const char *s, bool *out) {
  static const char *const yes[] = {"on", "true", "yes"};
  static const char *const no[] = {"off", "false", "no"};
  for (size_t i = 0; i < 3; i++) {
    if (strcasecmp(s, yes[i]) == 0) {
      *out = true;
      return true;
    }
    if (strcasecmp(s, no[i]) == 0) {
      *out = false;
      return true;
    }
  }
  return false;
}

/* ---- public value parsers --------------------------------------------- */

int rp_config_parse_size(const char *s, uint64_t *out) {
  uint64_t v;
  unsigned shift = 0;
  const char *p = s;

  if (s == NULL || !rp__take_u64(&p, &v)) {
    return RP_EPARSE;
  }
  switch (tolower((unsigned char)*p)) {
  case 'k': shift = 10; break;
  case 'm': shift = 20; break;
  case 'g': shift = 30; break;
  case 't': shift = 40; break;
  case 'p': shift = 50; break;
  default: break;
  }
  if (shift != 0) {
    p++;
    if (tolower((unsigned char)p[0]) == 'i' && tolower((unsigned char)p[1]) == 'b') {
      p += 2;
    } else if (tolower((unsigned char)p[0]) == 'b') {
      p++;
    }
  } else if (tolower((unsigned char)p[0]) == 'b') {
    p++;
  }
  if (*p != '\0') {
    return RP_EPARSE;
  }
  if (shift != 0 && v > (UINT64_MAX >> shift)) {
    return RP_EPARSE;
  }
  *out = v << shift;
  return 0;
}

int rp_config_parse_duration(const char *s, uint64_t *out_ms) {
  uint64_t total = 0;
  const char *p = s;

  if (s == NULL || *s == '\0') {
    return RP_EPARSE;
  }
  if (strcmp(s, "0") == 0) {
    *out_ms = 0;
    return 0;
  }
  /* One or more NUMBER UNIT parts, as in "1h30m". */
  while (*p != '\0') {
    uint64_t v, mult;
    if (!rp__take_u64(&p, &v)) {
      return RP_EPARSE;
    }
    if (p[0] == 'm' && p[1] == 's') {
      mult = 1;
      p += 2;
    } else if (*p == 's') {
      mult = 1000;
      p++;
    } else if (*p == 'm') {
      mult = 60 * 1000;
      p++;
    } else if (*p == 'h') {
      mult = 3600 * 1000;
      p++;
    } else if (*p == 'd') {
      mult = 24 * 3600 * 1000;
      p++;
    } else {
      return RP_EPARSE;
    }
    if (v > MAX_DURATION_MS / mult || total + v * mult > MAX_DURATION_MS) {
      return RP_EPARSE;
    }
    total += v * mult;
  }
  *out_ms = total;
  return 0;
}

int rp__listen_parse(const char *s, struct rp_listen_addr *out, char *why, size_t whylen) {
  const char *host;
  const char *port;
  size_t hlen;
  bool v6 = false;
  unsigned char addr[16];

  memset(out, 0, sizeof *out);
  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (close == NULL) {
      snprintf(why, whylen, "missing ']'");
      return RP_EPARSE;
    }
    if (close[1] != ':') {
      snprintf(why, whylen, "expected [IPV6]:PORT");
      return RP_EPARSE;
    }
    host = s + 1;
    hlen = (size_t)(close - host);
    port = close + 2;
    v6 = true;
  } else {
    const char *colon = strrchr(s, ':');
    if (colon == NULL) {
      snprintf(why, whylen, "expected ADDR:PORT");
      return RP_EPARSE;
    }
    host = s;
    hlen = (size_t)(colon - s);
    port = colon + 1;
    if (memchr(host, ':', hlen) != NULL) {
      snprintf(why, whylen, "IPv6 addresses need brackets: [ADDR]:PORT");
      return RP_EPARSE;
    }
  }
  if (hlen >= sizeof out->host) {
    snprintf(why, whylen, "address too long");
    return RP_EPARSE;
  }
  memcpy(out->host, host, hlen);
  out->host[hlen] = '\0';
  if (hlen == 0 && !v6) {
    strcpy(out->host, "0.0.0.0");
  }
  if (inet_pton(v6 ? AF_INET6 : AF_INET, out->host, addr) != 1) {
    snprintf(why, whylen, "not an IP%s address", v6 ? "v6" : "v4");
    out->host[0] = '\0';
    return RP_EPARSE;
  }
  if (!parse_port(port, strlen(port), true, &out->port)) {
    snprintf(why, whylen, "bad port");
    out->host[0] = '\0';
    return RP_EPARSE;
  }
  out->text = strdup(s);
  return out->text != NULL ? 0 : RP_ENOMEM;
}

int rp_config_parse_listen(const char *s, struct rp_listen_addr *out) {
  char why[128];
  if (s == NULL || out == NULL) {
    return RP_EINVAL;
  }
  return rp__listen_parse(s, out, why, sizeof why);
}

/* One host part of a connect_to string: "[v6]" or a name up to the next
 * ':' (or the end when may_end). Returns the end, or NULL. */
static const char *ct_host(const char *p, bool may_end, const char **host, size_t *hlen) {
  if (*p == '[') {
    const char *close = strchr(p, ']');
    if (close == NULL || !valid_ipv6(p + 1, (size_t)(close - p - 1))) {
      return NULL;
    }
    *host = p + 1;
    *hlen = (size_t)(close - p - 1);
    p = close + 1;
  } else {
    const char *colon = strchr(p, ':');
    if (colon == NULL && !may_end) {
      return NULL;
    }
    *host = p;
    *hlen = colon != NULL ? (size_t)(colon - p) : strlen(p);
    if (*hlen != 0 && !rp__valid_hostname(p, *hlen)) {
      return NULL;
    }
    p += *hlen;
  }
  return p;
}

int rp__connect_to_parse(const char *s, struct rp_connect_to *out, char *why, size_t whylen) {
  const char *p = s;
  const char *h1, *h2, *colon;
  size_t l1, l2;
  uint16_t port1 = 0, port2 = 0;

  memset(out, 0, sizeof *out);
  p = ct_host(p, false, &h1, &l1);
  if (p == NULL || *p != ':') {
    snprintf(why, whylen, "bad host part, expected HOST:PORT:ADDR:PORT");
    return RP_EPARSE;
  }
  p++;
  colon = strchr(p, ':');
  if (colon == NULL) {
    snprintf(why, whylen, "expected HOST:PORT:ADDR:PORT");
    return RP_EPARSE;
  }
  if (colon != p && !parse_port(p, (size_t)(colon - p), false, &port1)) {
    snprintf(why, whylen, "bad port (1-65535)");
    return RP_EPARSE;
  }
  p = ct_host(colon + 1, true, &h2, &l2);
  if (p == NULL || (*p != ':' && *p != '\0')) {
    snprintf(why, whylen, "bad address part, expected HOST:PORT:ADDR:PORT");
    return RP_EPARSE;
  }
  if (*p == ':' && p[1] != '\0' && !parse_port(p + 1, strlen(p + 1), false, &port2)) {
    snprintf(why, whylen, "bad port (1-65535)");
    return RP_EPARSE;
  }
  out->host = strndup(h1, l1);
  out->to_addr = strndup(h2, l2);
  if (out->host == NULL || out->to_addr == NULL) {
    free(out->host);
    free(out->to_addr);
    memset(out, 0, sizeof *out);
    return RP_ENOMEM;
  }
  rp__lower(out->host);
  out->port = port1;
  out->to_port = port2;
  return 0;
}

int rp_config_parse_connect_to(const char *s, struct rp_connect_to *out) {
  char why[128];
  if (s == NULL || out == NULL) {
    return RP_EINVAL;
  }
  return rp__connect_to_parse(s, out, why, sizeof why);
}

static void proxy_url_clear(struct rp__proxy_url *u) {
  free(u->url);
  free(u->host);
  free(u->userinfo);
  memset(u, 0, sizeof *u);
}

int rp__hexval(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  c = (char)tolower((unsigned char)c);
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  return -1;
}

/* Decode %XX escapes of s[0..n) into *out; RP_EPARSE on a bad or NUL escape. */
static int percent_decode(const char *s, size_t n, char **out) {
  char *d = malloc(n + 1);
  size_t j = 0;

  *out = NULL;
  if (d == NULL) {
    return RP_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '%') {
      if (i + 2 >= n || rp__hexval(s[i + 1]) < 0 || rp__hexval(s[i + 2]) < 0 ||
          (s[i + 1] == '0' && s[i + 2] == '0')) {
        free(d);
        return RP_EPARSE;
      }
      d[j++] = (char)(rp__hexval(s[i + 1]) * 16 + rp__hexval(s[i + 2]));
      i += 2;
    } else {
      d[j++] = s[i];
    }
  }
  d[j] = '\0';
  *out = d;
  return 0;
}

/* "http://[user:pass@]host[:port][/]"; a scheme-less "host:port" is http, as
 * in Go's httpproxy. */
int rp__proxy_url_parse(const char *s, struct rp__proxy_url *u, char *why, size_t whylen) {
  const char *scheme = "http";
  const char *rest = s;
  const char *sep = strstr(s, "://");
  const char *end, *at, *hp, *host, *colon = NULL;
  size_t hlen;
  bool v6 = false;
  int rc;

  memset(u, 0, sizeof *u);
  if (sep != NULL) {
    size_t n = (size_t)(sep - s);
    if (n == 4 && strncasecmp(s, "http", 4) == 0) {
      scheme = "http";
    } else if (n == 5 && strncasecmp(s, "https", 5) == 0) {
      scheme = "https";
      u->tls = true;
    } else {
      snprintf(why, whylen, "unsupported proxy scheme '%.*s' (use http://HOST:PORT)",
               (int)(n > 16 ? 16 : n), s);
      return RP_EPARSE;
    }
    rest = sep + 3;
  }
  end = rest + strcspn(rest, "/?#");
  if (*end != '\0' && strcmp(end, "/") != 0) {
    snprintf(why, whylen, "a proxy URL has no path, query or fragment");
    return RP_EPARSE;
  }
  at = NULL;
  for (const char *p = rest; p < end; p++) {
    if (*p == '@') {
      at = p;
    }
  }
  hp = at != NULL ? at + 1 : rest;
  if (*hp == '[') {
    const char *close = memchr(hp, ']', (size_t)(end - hp));
    if (close == NULL || !valid_ipv6(hp + 1, (size_t)(close - hp - 1))) {
      snprintf(why, whylen, "bad IPv6 address in proxy URL");
      return RP_EPARSE;
    }
    host = hp + 1;
    hlen = (size_t)(close - hp - 1);
    if (close + 1 != end && close[1] != ':') {
      snprintf(why, whylen, "bad proxy URL");
      return RP_EPARSE;
    }
    colon = close + 1 != end ? close + 1 : NULL;
    v6 = true;
  } else {
    colon = memchr(hp, ':', (size_t)(end - hp));
    host = hp;
    hlen = (size_t)((colon != NULL ? colon : end) - hp);
    if (!rp__valid_hostname(host, hlen)) {
      snprintf(why, whylen, hlen == 0 ? "proxy URL without a host" : "bad host in proxy URL");
      return RP_EPARSE;
    }
  }
  u->port = u->tls ? 443 : 80;
  if (colon != NULL && colon + 1 != end &&
      !parse_port(colon + 1, (size_t)(end - colon - 1), false, &u->port)) {
    snprintf(why, whylen, "bad port in proxy URL (1-65535)");
    return RP_EPARSE;
  }
  u->host = strndup(host, hlen);
  if (u->host == NULL) {
    rc = RP_ENOMEM;
    goto fail;
  }
  rp__lower(u->host);
  if (at != NULL) {
    rc = percent_decode(rest, (size_t)(at - rest), &u->userinfo);
    if (rc != 0) {
      snprintf(why, whylen, "bad percent-encoding in proxy credentials");
      goto fail;
    }
  }
  u->url =
      rp__aprintf("%s://%.*s%s%s%s%s:%u", scheme, at != NULL ? (int)(at - rest) : 0, rest,
                  at != NULL ? "@" : "", v6 ? "[" : "", u->host, v6 ? "]" : "", (unsigned)u->port);
  if (u->url == NULL) {
    rc = RP_ENOMEM;
    goto fail;
  }
  return 0;
fail:
  proxy_url_clear(u);
  return rc;
}

void rp__listen_free(struct rp_listen_addr *a, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(a[i].text);
  }
  free(a);
}

int rp_config_listen_only(struct rp_config *cfg, const char *addr) {
  struct rp_listen_addr *l = calloc(1, sizeof(*l));
  int rc;

  if (l == NULL)
    return RP_ENOMEM;
  rc = rp_config_parse_listen(addr, l);
  if (rc != 0) {
    free(l);
    return rc;
  }
  rp__listen_free(cfg->listen, cfg->n_listen);
  rp__listen_free(cfg->transparent, cfg->n_transparent);
  cfg->listen = l;
  cfg->n_listen = 1;
  cfg->transparent = NULL;
  cfg->n_transparent = 0;
  return 0;
}

void rp__connect_to_free(struct rp_connect_to *c, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(c[i].host);
    free(c[i].to_addr);
  }
  free(c);
}

/* One URL of an upstream mirror: http(s)://host[:port][/path], no userinfo,
 * query or fragment. Appended to *b without a trailing '/'. */
static bool mirror_url_ok(const char *u, size_t n, struct rp_sbuf *b, char *why, size_t whylen) {
  size_t scheme = n >= 7 && strncasecmp(u, "http://", 7) == 0    ? 7
                  : n >= 8 && strncasecmp(u, "https://", 8) == 0 ? 8
                                                                 : 0;
  const char *host = u + scheme, *end = u + n, *slash, *port = NULL;

  if (scheme == 0) {
    snprintf(why, whylen, "a mirror URL starts with http:// or https://");
    return false;
  }
  if (memchr(u, '?', n) != NULL || memchr(u, '#', n) != NULL || memchr(u, '@', n) != NULL) {
    snprintf(why, whylen, "a mirror URL has no user, query or fragment");
    return false;
  }
  slash = memchr(host, '/', (size_t)(end - host));
  if (slash == NULL)
    slash = end;
  if (host < slash && *host == '[') {
    const char *close = memchr(host, ']', (size_t)(slash - host));
    if (close == NULL) {
      snprintf(why, whylen, "unclosed '[' in the mirror's host");
      return false;
    }
    if (close + 1 < slash)
      port = close + 1;
  } else {
    port = memchr(host, ':', (size_t)(slash - host));
    if (host == slash || !rp__valid_hostname(host, (size_t)((port ? port : slash) - host))) {
      snprintf(why, whylen, "bad host in the mirror URL");
      return false;
    }
  }
  if (port != NULL) {
    unsigned long v = 0;
    if (*port != ':' || port + 1 == slash) {
      snprintf(why, whylen, "bad port in the mirror URL");
      return false;
    }
    for (const char *p = port + 1; p < slash; p++) {
      if (*p < '0' || *p > '9' || (v = v * 10 + (unsigned long)(*p - '0')) > 65535) {
        snprintf(why, whylen, "bad port in the mirror URL");
        return false;
      }
    }
    if (v == 0) {
      snprintf(why, whylen, "bad port in the mirror URL");
      return false;
    }
  }
  while (end > slash && end[-1] == '/')
    end--;
  rp_sbuf_add(b, u, (size_t)(end - u));
  return true;
}

int rp__mirrors_parse(const char *s, char **out, char *why, size_t whylen) {
  const char *eq = strchr(s, '=');
  struct rp_sbuf b = {0};
  size_t n;

  *out = NULL;
  if (eq == NULL || eq == s) {
    snprintf(why, whylen, "expected REGISTRY=URL[,URL...]");
    return RP_EPARSE;
  }
  for (const char *p = s; p < eq; p++) {
    if (*p == '/' || *p == ' ' || (unsigned char)*p < 0x21) {
      snprintf(why, whylen, "bad registry name");
      return RP_EPARSE;
    }
    rp_sbuf_addf(&b, "%c", tolower((unsigned char)*p));
  }
  rp_sbuf_adds(&b, "=");
  n = 0;
  for (const char *p = eq + 1;;) {
    size_t len = strcspn(p, ",");
    while (len > 0 && isspace((unsigned char)*p)) {
      p++;
      len--;
    }
    {
      size_t l = len;
      while (l > 0 && isspace((unsigned char)p[l - 1]))
        l--;
      if (l > 0) {
        if (n++ > 0)
          rp_sbuf_adds(&b, ",");
        if (!mirror_url_ok(p, l, &b, why, whylen)) {
          rp_sbuf_free(&b);
          return RP_EPARSE;
        }
      }
    }
    p += len;
    while (*p != '\0' && *p != ',')
      p++;
    if (*p == '\0')
      break;
    p++;
  }
  if (n == 0) {
    rp_sbuf_free(&b);
    snprintf(why, whylen, "no mirror URL");
    return RP_EPARSE;
  }
  *out = rp_sbuf_take(&b, &n);
  return *out != NULL ? 0 : RP_ENOMEM;
}
