/* Request targets and Host values: CONNECT authorities, absolute-form URLs
 * and uri-host[:port], parsed strictly (contract §2: port required for CONNECT,
 * no userinfo, no zone ids). Every length is checked before a byte is read:
 * these values come from clients. */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "regproxy/error.h"
#include "regproxy/http.h"

static int is_regname_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_';
}

static int parse_port(const char *s, size_t n, uint16_t *port) {
  unsigned v = 0;
  if (n == 0 || n > 5)
    return RP_EPARSE;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return RP_EPARSE;
    v = v * 10 + (unsigned)(s[i] - '0');
  }
  if (v == 0 || v > 65535)
    return RP_EPARSE;
  *port = (uint16_t)v;
  return 0;
}

/* host[:port] with an optional port; default_port 0 means required. */
static int parse_hostport(const char *s, size_t n, uint16_t default_port, struct rp_target *t,
                          const char **why) {
  const char *host;
  size_t hlen;
  const char *rest;
  size_t rlen;

  t->host_is_ip6 = false;
  if (memchr(s, '@', n) != NULL) {
    *why = "userinfo is not allowed";
    return RP_EPARSE;
  }
  if (n > 0 && s[0] == '[') {
    const char *close = memchr(s, ']', n);
    char tmp[INET6_ADDRSTRLEN + 1];
    unsigned char bin[16];
    if (close == NULL) {
      *why = "unterminated IPv6 literal";
      return RP_EPARSE;
    }
    host = s + 1;
    hlen = (size_t)(close - host);
    if (hlen == 0 || hlen >= sizeof(tmp) || memchr(host, '%', hlen) != NULL ||
        memchr(host, '\0', hlen) != NULL) {
      *why = "bad IPv6 literal";
      return RP_EPARSE;
    }
    memcpy(tmp, host, hlen);
    tmp[hlen] = '\0';
    if (inet_pton(AF_INET6, tmp, bin) != 1) {
      *why = "bad IPv6 literal";
      return RP_EPARSE;
    }
    t->host_is_ip6 = true;
    rest = close + 1;
    rlen = n - (size_t)(rest - s);
  } else {
    const char *colon = memchr(s, ':', n);
    host = s;
    hlen = colon != NULL ? (size_t)(colon - s) : n;
    rest = s + hlen;
    rlen = n - hlen;
    for (size_t i = 0; i < hlen; i++) {
      if (!is_regname_char((unsigned char)host[i])) {
        *why = "bad character in host";
        return RP_EPARSE;
      }
    }
    if (hlen > 0 && host[hlen - 1] == '.')
      hlen--; /* one trailing dot names the same host */
    if (hlen == 0 || hlen > 253 || host[0] == '.' || memmem(host, hlen, "..", 2) != NULL) {
      *why = "bad host";
      return RP_EPARSE;
    }
  }
  if (rlen == 0) {
    if (default_port == 0) {
      *why = "port required";
      return RP_EPARSE;
    }
    t->port = default_port;
  } else if (rest[0] != ':' || parse_port(rest + 1, rlen - 1, &t->port) != 0) {
    *why = "bad port";
    return RP_EPARSE;
  }
  for (size_t i = 0; i < hlen; i++) {
    char c = host[i];
    t->host[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
  }
  t->host[hlen] = '\0';
  return 0;
}

int rp_target_parse_authority(const char *s, size_t n, struct rp_target *t, const char **why) {
  memset(t, 0, sizeof(*t));
  t->form = RP_TARGET_AUTHORITY;
  return parse_hostport(s, n, 0, t, why);
}

int rp_http_host_parse(const char *v, size_t n, uint16_t default_port, struct rp_target *t,
                       const char **why) {
  memset(t, 0, sizeof(*t));
  t->form = RP_TARGET_AUTHORITY;
  if (v == NULL || n == 0) {
    *why = "empty";
    return RP_EPARSE;
  }
  return parse_hostport(v, n, default_port, t, why);
}

int rp_http_request_host(const struct rp_http_head *h, uint16_t default_port, struct rp_target *t,
                         const char **why) {
  const struct rp_http_header *found = NULL;

  for (size_t i = 0; i < h->nheaders; i++) {
    const struct rp_http_header *hd = &h->headers[i];
    if (!rp_http_token_eq(hd->name, hd->name_len, "host"))
      continue;
    if (found != NULL) {
      memset(t, 0, sizeof(*t));
      *why = "more than one Host header";
      return RP_EPARSE;
    }
    found = hd;
  }
  if (found == NULL) {
    memset(t, 0, sizeof(*t));
    *why = "no Host header";
    return RP_EPARSE;
  }
  return rp_http_host_parse(found->value, found->value_len, default_port, t, why);
}

int rp_target_parse(const char *s, size_t n, bool is_connect, struct rp_target *t,
                    const char **why) {
  size_t skip;
  const char *auth;
  size_t alen;

  if (is_connect)
    return rp_target_parse_authority(s, n, t, why);
  memset(t, 0, sizeof(*t));
  *why = "bad request target";
  if (n > 0 && s[0] == '/') {
    t->form = RP_TARGET_ORIGIN;
    t->path = s;
    t->path_len = n;
    return 0;
  }
  if (n == 1 && s[0] == '*') {
    t->form = RP_TARGET_ASTERISK;
    return 0;
  }
  if (n > 7 && strncasecmp(s, "http://", 7) == 0) {
    skip = 7;
  } else if (n > 8 && strncasecmp(s, "https://", 8) == 0) {
    skip = 8;
    t->https = true;
  } else {
    *why = "unsupported scheme or target form";
    return RP_EPARSE;
  }
  t->form = RP_TARGET_ABSOLUTE;
  auth = s + skip;
  alen = 0;
  while (alen < n - skip && auth[alen] != '/' && auth[alen] != '?' && auth[alen] != '#')
    alen++;
  if (parse_hostport(auth, alen, t->https ? 443 : 80, t, why) != 0)
    return RP_EPARSE;
  t->path = auth + alen;
  t->path_len = n - skip - alen;
  if (t->path_len > 0 && t->path[0] == '#')
    t->path_len = 0; /* a fragment is never sent */
  if (t->path_len == 0) {
    t->path = "/";
    t->path_len = 1;
  } else if (t->path[0] == '?') {
    t->path_needs_slash = true;
  }
  return 0;
}

void rp_target_hostport(const struct rp_target *t, bool with_port, char *buf, size_t bufsz) {
  const char *open = t->host_is_ip6 ? "[" : "";
  const char *close = t->host_is_ip6 ? "]" : "";
  if (with_port)
    snprintf(buf, bufsz, "%s%s%s:%u", open, t->host, close, t->port);
  else
    snprintf(buf, bufsz, "%s%s%s", open, t->host, close);
}
