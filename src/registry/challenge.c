/* The registry auth client, part one: WWW-Authenticate challenges (RFC 9110
 * §11.2) taken apart and copied, and Basic credentials. The credentials of
 * a docker config.json are in credentials.c, the tokens and the client that
 * fetches and caches them in token.c. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "regproxy/auth.h"
#include "regproxy/error.h"
#include "regproxy/upstream.h"
#include "regproxy/util.h"

/* ---- challenges (RFC 9110 §11.2: auth-scheme [ 1*SP ( token68 / #auth-param ) ]) -- */

static int is_tchar(unsigned char c) {
  return isalnum(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int is_t68char(unsigned char c) {
  return isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/';
}

static int is_ws(char c) {
  return c == ' ' || c == '\t';
}

static const char *skip_ws(const char *p, const char *end) {
  while (p < end && is_ws(*p))
    p++;
  return p;
}

static const char *skip_token(const char *p, const char *end) {
  while (p < end && is_tchar((unsigned char)*p))
    p++;
  return p;
}

/* A parameter value: token or quoted-string (quoted-pair unescaped). */
static int parse_param_value(const char **pp, const char *end, char **out) {
  const char *p = *pp;
  if (p < end && *p == '"') {
    char *buf = malloc((size_t)(end - p));
    size_t j = 0;
    if (buf == NULL)
      return RP_ENOMEM;
    p++;
    for (;;) {
      if (p == end) {
        free(buf);
        return RP_EPARSE; /* unterminated */
      }
      unsigned char c = (unsigned char)*p;
      if (c == '"') {
        p++;
        break;
      }
      if (c == '\\') {
        p++;
        if (p == end) {
          free(buf);
          return RP_EPARSE;
        }
        c = (unsigned char)*p;
      }
      if (!(c == '\t' || (c >= 0x20 && c != 0x7f))) {
        free(buf);
        return RP_EPARSE; /* control characters never appear, escaped or not */
      }
      buf[j++] = (char)c;
      p++;
    }
    buf[j] = '\0';
    *out = buf;
    *pp = p;
    return 0;
  }
  const char *s = p;
  p = skip_token(p, end);
  if (p == s)
    return RP_EPARSE;
  *out = strndup(s, (size_t)(p - s));
  if (*out == NULL)
    return RP_ENOMEM;
  *pp = p;
  return 0;
}

static int set_param(struct rp_auth_challenge *c, const char *name, size_t nlen, char *value) {
  char **slot = NULL;
  if (nlen == 5 && strncasecmp(name, "realm", 5) == 0)
    slot = &c->realm;
  else if (nlen == 7 && strncasecmp(name, "service", 7) == 0)
    slot = &c->service;
  else if (nlen == 5 && strncasecmp(name, "scope", 5) == 0)
    slot = &c->scope;
  else if (nlen == 5 && strncasecmp(name, "error", 5) == 0)
    slot = &c->error;
  if (slot == NULL) {
    free(value);
    return 0;
  }
  if (*slot != NULL) {
    free(value);
    return RP_EPARSE; /* a parameter name occurs once per challenge */
  }
  *slot = value;
  return 0;
}

void rp_auth_challenge_clear(struct rp_auth_challenge *c) {
  if (c == NULL)
    return;
  free(c->realm);
  free(c->service);
  free(c->scope);
  free(c->error);
  free(c->registry_ip);
  memset(c, 0, sizeof(*c));
}

void rp_auth_challenges_free(struct rp_auth_challenge *list, size_t n) {
  for (size_t i = 0; i < n; i++)
    rp_auth_challenge_clear(&list[i]);
  free(list);
}

static int push_challenge(struct rp_auth_challenge **arr, size_t *n, size_t *cap,
                          struct rp_auth_challenge *c) {
  if (*n == *cap) {
    size_t ncap = *cap ? *cap * 2 : 4;
    struct rp_auth_challenge *na = realloc(*arr, ncap * sizeof(*na));
    if (na == NULL)
      return RP_ENOMEM;
    *arr = na;
    *cap = ncap;
  }
  (*arr)[(*n)++] = *c;
  memset(c, 0, sizeof(*c));
  return 0;
}

int rp_auth_challenges_parse(const char *value, size_t len, struct rp_auth_challenge **list,
                             size_t *n) {
  int rc = 0;
  const char *p = value, *end = value + len;
  struct rp_auth_challenge *arr = NULL, cur;
  size_t narr = 0, cap = 0;
  memset(&cur, 0, sizeof(cur));
  if (value == NULL && len > 0)
    return RP_EINVAL;
  for (;;) {
    while (p < end && (is_ws(*p) || *p == ','))
      p++; /* empty list elements are allowed */
    if (p == end)
      break;
    const char *s = p;
    p = skip_token(p, end);
    if (p == s || (p < end && !is_ws(*p) && *p != ',')) {
      rc = RP_EPARSE;
      goto out;
    }
    size_t slen = (size_t)(p - s);
    cur.scheme = slen == 5 && strncasecmp(s, "basic", 5) == 0    ? RP_AUTH_BASIC
                 : slen == 6 && strncasecmp(s, "bearer", 6) == 0 ? RP_AUTH_BEARER
                                                                 : RP_AUTH_OTHER;
    p = skip_ws(p, end);
    if (p < end && *p != ',') {
      /* token68 ("Negotiate YWJj==") or a list of auth-params. */
      const char *t = p, *eq;
      while (t < end && is_t68char((unsigned char)*t))
        t++;
      eq = t;
      while (eq < end && *eq == '=')
        eq++;
      const char *after = skip_ws(eq, end);
      if (t > p && (after == end || *after == ',')) {
        p = after;
      } else {
        for (;;) {
          const char *name = p;
          p = skip_token(p, end);
          size_t nlen = (size_t)(p - name);
          char *v = NULL;
          if (nlen == 0) {
            rc = RP_EPARSE;
            goto out;
          }
          p = skip_ws(p, end);
          if (p == end || *p != '=') {
            rc = RP_EPARSE;
            goto out;
          }
          p = skip_ws(p + 1, end);
          rc = parse_param_value(&p, end, &v);
          if (rc == 0)
            rc = set_param(&cur, name, nlen, v);
          if (rc != 0)
            goto out;
          p = skip_ws(p, end);
          if (p == end)
            break;
          if (*p != ',') {
            rc = RP_EPARSE; /* e.g. a missing comma between parameters */
            goto out;
          }
          /* After the comma: "name =" continues this challenge, anything
           * else starts the next one. */
          const char *r = p;
          while (r < end && (is_ws(*r) || *r == ','))
            r++;
          const char *rn = skip_token(r, end);
          const char *re = skip_ws(rn, end);
          if (rn > r && re < end && *re == '=') {
            p = r;
            continue;
          }
          p = r;
          break;
        }
      }
    }
    rc = push_challenge(&arr, &narr, &cap, &cur);
    if (rc != 0)
      goto out;
  }
  if (narr > 0) {
    struct rp_auth_challenge *na = realloc(*list, (*n + narr) * sizeof(*na));
    if (na == NULL) {
      rc = RP_ENOMEM;
      goto out;
    }
    memcpy(na + *n, arr, narr * sizeof(*arr));
    *list = na;
    *n += narr;
    free(arr);
    arr = NULL;
    narr = 0;
  }
out:
  rp_auth_challenge_clear(&cur);
  rp_auth_challenges_free(arr, narr);
  return rc;
}

const struct rp_auth_challenge *rp_auth_challenge_pick(const struct rp_auth_challenge *list,
                                                       size_t n) {
  for (size_t i = 0; i < n; i++)
    if (list[i].scheme == RP_AUTH_BEARER && list[i].realm != NULL && list[i].realm[0] != '\0')
      return &list[i];
  for (size_t i = 0; i < n; i++)
    if (list[i].scheme == RP_AUTH_BASIC)
      return &list[i];
  return NULL;
}

static int dup_opt(char **dst, const char *src) {
  *dst = NULL;
  if (src == NULL)
    return 0;
  *dst = strdup(src);
  return *dst == NULL ? RP_ENOMEM : 0;
}

int rp_auth_challenge_copy(struct rp_auth_challenge *dst, const struct rp_auth_challenge *src) {
  memset(dst, 0, sizeof(*dst));
  dst->scheme = src->scheme;
  if (dup_opt(&dst->realm, src->realm) != 0 || dup_opt(&dst->service, src->service) != 0 ||
      dup_opt(&dst->scope, src->scope) != 0 || dup_opt(&dst->error, src->error) != 0 ||
      dup_opt(&dst->registry_ip, src->registry_ip) != 0) {
    rp_auth_challenge_clear(dst);
    return RP_ENOMEM;
  }
  return 0;
}

int rp_auth_challenge_from_headers(const struct rp_http_header *headers, size_t n,
                                   struct rp_auth_challenge *out) {
  struct rp_auth_challenge *list = NULL;
  size_t nlist = 0;
  int bad = 0, rc;
  memset(out, 0, sizeof(*out));
  for (size_t i = 0; i < n; i++) {
    if (!rp_http_token_eq(headers[i].name, headers[i].name_len, "www-authenticate"))
      continue;
    rc = rp_auth_challenges_parse(headers[i].value, headers[i].value_len, &list, &nlist);
    if (rc == RP_ENOMEM) {
      rp_auth_challenges_free(list, nlist);
      return rc;
    }
    if (rc != 0)
      bad = 1;
  }
  const struct rp_auth_challenge *pick = rp_auth_challenge_pick(list, nlist);
  if (pick != NULL)
    rc = rp_auth_challenge_copy(out, pick);
  else
    rc = bad ? RP_EPARSE : UV_ENOENT;
  rp_auth_challenges_free(list, nlist);
  return rc;
}

int rp_auth_challenge_from_response(struct rp_fetch *f, const struct rp_http_header *headers,
                                    size_t n, struct rp_auth_challenge *out) {
  char ip[64];
  int rc = rp_auth_challenge_from_headers(headers, n, out);
  if (rc != 0 || rp_fetch_peer_ip(f, ip, sizeof(ip)) != 0)
    return rc;
  out->registry_ip = strdup(ip);
  if (out->registry_ip == NULL) {
    rp_auth_challenge_clear(out);
    return RP_ENOMEM;
  }
  return 0;
}

/* ---- Basic ---------------------------------------------------------------- */

char *rp_auth_basic_value(const char *user, const char *pass) {
  char *plain = rp_asprintf("%s:%s", user, pass), *b64 = NULL, *out = NULL;
  if (plain == NULL)
    return NULL;
  b64 = rp_base64_encode(plain, strlen(plain));
  if (b64 != NULL)
    out = rp_asprintf("Basic %s", b64);
  explicit_bzero(plain, strlen(plain));
  free(plain);
  free(b64);
  return out;
}
