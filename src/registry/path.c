/* Registry API paths (OCI distribution spec), registry identities and the
 * Accept key of the tag memory (contract §3). Everything here reads peer input:
 * every length is checked before a byte is read, and nothing that fails a
 * grammar is handed back as a name, so a name can never hold "..", "//" or
 * a NUL. */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "regproxy/error.h"
#include "regproxy/registry.h"

#define NAME_MAX_LEN     255 /* distribution v0.6: the repository path, registry excluded */
#define TAG_MAX_LEN      128
#define HOST_MAX_LEN     253
#define MEDIA_MAX_LEN    255
#define ACCEPT_MAX_ITEMS 128

static bool is_lower_alnum(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_alnum(unsigned char c) {
  return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

static bool is_lower_hex(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int hex_value(unsigned char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static unsigned char to_lower(unsigned char c) {
  return (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c;
}

static bool eq_nocase(const char *a, size_t alen, const char *b, size_t blen) {
  if (alen != blen)
    return false;
  for (size_t i = 0; i < alen; i++)
    if (to_lower((unsigned char)a[i]) != to_lower((unsigned char)b[i]))
      return false;
  return true;
}

static bool is_ows(unsigned char c) {
  return c == ' ' || c == '\t';
}

static void trim_ows(const char **s, size_t *n) {
  while (*n > 0 && is_ows((unsigned char)**s)) {
    (*s)++;
    (*n)--;
  }
  while (*n > 0 && is_ows((unsigned char)(*s)[*n - 1]))
    (*n)--;
}

/* The last '/' in s[0..n), or NULL. */
static const char *last_slash(const char *s, size_t n) {
  while (n > 0) {
    n--;
    if (s[n] == '/')
      return s + n;
  }
  return NULL;
}

/* ---- grammars --------------------------------------------------------------- */

/* [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)* */
static bool name_valid(const char *s, size_t n) {
  size_t i = 0;

  if (n == 0 || n > NAME_MAX_LEN)
    return false;
  for (;;) {
    /* A path component: alnum runs joined by single separators. */
    if (i >= n || !is_lower_alnum((unsigned char)s[i]))
      return false;
    while (i < n && is_lower_alnum((unsigned char)s[i]))
      i++;
    while (i < n && s[i] != '/') {
      if (s[i] == '.') {
        i++;
      } else if (s[i] == '_') {
        i++;
        if (i < n && s[i] == '_')
          i++;
      } else if (s[i] == '-') {
        while (i < n && s[i] == '-')
          i++;
      } else {
        return false;
      }
      if (i >= n || !is_lower_alnum((unsigned char)s[i]))
        return false;
      while (i < n && is_lower_alnum((unsigned char)s[i]))
        i++;
    }
    if (i == n)
      return true;
    i++; /* the '/' */
  }
}

/* [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127} */
static bool tag_valid(const char *s, size_t n) {
  if (n == 0 || n > TAG_MAX_LEN)
    return false;
  if (!is_alnum((unsigned char)s[0]) && s[0] != '_')
    return false;
  for (size_t i = 1; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!is_alnum(c) && c != '.' && c != '_' && c != '-')
      return false;
  }
  return true;
}

enum digest_class { DIGEST_INVALID, DIGEST_OTHER, DIGEST_CACHEABLE };

/* The image-spec digest grammar, algorithm [a-z0-9]+([+._-][a-z0-9]+)* ":"
 * encoded [a-zA-Z0-9=_-]+. The registered algorithms must also have their
 * exact encoding (sha256: 64, sha512: 128 lower-case hex); a sha256 digest
 * that does not is invalid, not merely uncacheable. */
static enum digest_class digest_classify(const char *s, size_t n) {
  const char *colon = memchr(s, ':', n);
  size_t alen, elen, want = 0;
  bool need_alnum = true;

  if (colon == NULL)
    return DIGEST_INVALID;
  alen = (size_t)(colon - s);
  elen = n - alen - 1;
  if (alen == 0 || elen == 0)
    return DIGEST_INVALID;
  for (size_t i = 0; i < alen; i++) {
    unsigned char c = (unsigned char)s[i];
    if (is_lower_alnum(c)) {
      need_alnum = false;
    } else if (c == '+' || c == '.' || c == '_' || c == '-') {
      if (need_alnum)
        return DIGEST_INVALID;
      need_alnum = true;
    } else {
      return DIGEST_INVALID;
    }
  }
  if (need_alnum)
    return DIGEST_INVALID;
  for (size_t i = alen + 1; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!is_alnum(c) && c != '=' && c != '_' && c != '-')
      return DIGEST_INVALID;
  }
  if (alen == 6 && memcmp(s, "sha256", 6) == 0)
    want = 64;
  else if (alen == 6 && memcmp(s, "sha512", 6) == 0)
    want = 128;
  if (want == 0)
    return DIGEST_OTHER;
  if (elen != want)
    return DIGEST_INVALID;
  for (size_t i = alen + 1; i < n; i++)
    if (!is_lower_hex((unsigned char)s[i]))
      return DIGEST_INVALID;
  return DIGEST_CACHEABLE;
}

/* ---- registry identities ------------------------------------------------------- */

struct hostport {
  const char *host; /* without brackets */
  size_t hlen;
  bool ip6;
  uint16_t port; /* 0: none given */
};

static bool parse_port(const char *s, size_t n, uint16_t *port) {
  unsigned v = 0;

  if (n == 0 || n > 5)
    return false;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return false;
    v = v * 10 + (unsigned)(s[i] - '0');
  }
  if (v == 0 || v > 65535)
    return false;
  *port = (uint16_t)v;
  return true;
}

/* Split host[:port], "[v6]" or "[v6]:port"; a bare IPv6 address (two or
 * more colons, as struct rp_target stores it) is taken whole. Only the shape
 * is checked here. */
static bool split_hostport(const char *s, size_t n, struct hostport *hp) {
  size_t close, colon, colons = 0;

  memset(hp, 0, sizeof *hp);
  if (n == 0)
    return false;
  if (s[0] == '[') {
    for (close = 1; close < n && s[close] != ']'; close++)
      ;
    if (close == n)
      return false;
    hp->host = s + 1;
    hp->hlen = close - 1;
    hp->ip6 = true;
    if (close + 1 == n)
      return true;
    return s[close + 1] == ':' && parse_port(s + close + 2, n - close - 2, &hp->port);
  }
  colon = n;
  for (size_t i = 0; i < n; i++)
    if (s[i] == ':') {
      if (colons++ == 0)
        colon = i;
    }
  hp->host = s;
  if (colons > 1) {
    hp->hlen = n;
    hp->ip6 = true;
    return true;
  }
  hp->hlen = colon;
  return colons == 0 || parse_port(s + colon + 1, n - colon - 1, &hp->port);
}

/* A registry host as an image reference names it: DNS labels of letters,
 * digits and inner hyphens (IPv4 addresses fit), one trailing dot allowed,
 * or an IPv6 address. Not strict (hosts we connected to, a Host header):
 * any label of letters, digits, '-' and '_' — still never "." or "..". */
static bool host_valid(const struct hostport *hp, bool strict) {
  const char *s = hp->host;
  size_t n = hp->hlen;

  if (hp->ip6) {
    char tmp[INET6_ADDRSTRLEN + 1];
    unsigned char addr[16];
    if (n == 0 || n >= sizeof tmp)
      return false;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    return inet_pton(AF_INET6, tmp, addr) == 1;
  }
  if (n > 0 && s[n - 1] == '.')
    n--;
  if (n == 0 || n > HOST_MAX_LEN)
    return false;
  for (size_t i = 0; i <= n; i++) {
    size_t start = i;
    while (i < n && s[i] != '.') {
      unsigned char c = (unsigned char)s[i];
      if (!is_alnum(c) && c != '-' && (strict || c != '_'))
        return false;
      i++;
    }
    if (i == start)
      return false; /* an empty label */
    if (strict && (i - start > 63 || s[start] == '-' || s[i - 1] == '-'))
      return false;
  }
  return true;
}

static bool is_docker_hub(const char *s, size_t n) {
  return eq_nocase(s, n, "docker.io", 9) || eq_nocase(s, n, "index.docker.io", 15) ||
         eq_nocase(s, n, "registry-1.docker.io", 20);
}

/* Write the canonical identity of hp (port overrides hp->port when set);
 * false, with buf "", when it does not fit. */
static bool write_canonical(const struct hostport *hp, uint16_t port, char *buf, size_t bufsz) {
  const char *h = hp->host;
  size_t hn = hp->hlen, need, o = 0;
  char portbuf[8] = "";
  size_t plen = 0;

  if (bufsz == 0)
    return false;
  buf[0] = '\0';
  if (port == 0)
    port = hp->port;
  if (!hp->ip6 && hn > 0 && h[hn - 1] == '.')
    hn--;
  if (port == 443)
    port = 0;
  if (!hp->ip6 && port == 0 && is_docker_hub(h, hn)) {
    h = "docker.io";
    hn = 9;
  }
  if (port != 0) {
    /* At most ":65535", built by hand to keep -Wformat-truncation quiet. */
    char digits[6];
    size_t nd = 0;
    unsigned v = port;
    while (v > 0) {
      digits[nd++] = (char)('0' + v % 10);
      v /= 10;
    }
    portbuf[plen++] = ':';
    while (nd > 0)
      portbuf[plen++] = digits[--nd];
  }
  need = hn + (hp->ip6 ? 2 : 0) + plen + 1;
  if (hn == 0 || need > bufsz)
    return false;
  if (hp->ip6)
    buf[o++] = '[';
  for (size_t i = 0; i < hn; i++)
    buf[o++] = (char)to_lower((unsigned char)h[i]);
  if (hp->ip6)
    buf[o++] = ']';
  memcpy(buf + o, portbuf, plen);
  o += plen;
  buf[o] = '\0';
  return true;
}

const char *rp_reg_canonical(const char *host, uint16_t port, char *buf, size_t bufsz) {
  struct hostport hp;

  if (bufsz == 0)
    return buf;
  buf[0] = '\0';
  if (host == NULL || !split_hostport(host, strlen(host), &hp) || !host_valid(&hp, false))
    return buf;
  write_canonical(&hp, port, buf, bufsz);
  return buf;
}

const char *rp_reg_upstream_host(const char *canonical) {
  if (canonical != NULL && strcmp(canonical, "docker.io") == 0)
    return "registry-1.docker.io";
  return canonical;
}

/* ---- paths ------------------------------------------------------------------- */

/* RFC 3986 query characters: pchar / "/" / "?", with "%" HEX HEX. */
static bool query_char(unsigned char c) {
  return is_alnum(c) || (c != '\0' && strchr("-._~!$&'()*+,;=:@/?", c) != NULL);
}

/* Percent-decode an ns= value into a canonical registry identity. */
static bool parse_ns(const char *v, size_t n, char *ns, size_t nssz) {
  char dec[HOST_MAX_LEN + 16];
  size_t dn = 0;
  struct hostport hp;

  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)v[i];
    if (dn == sizeof dec)
      return false;
    if (c == '%') {
      /* The caller checked that two hex digits follow. */
      c = (unsigned char)(hex_value((unsigned char)v[i + 1]) * 16 +
                          hex_value((unsigned char)v[i + 2]));
      i += 2;
    }
    dec[dn++] = (char)c;
  }
  /* An IPv6 registry is named in brackets, as in an image reference. */
  if (!split_hostport(dec, dn, &hp) || (hp.ip6 && dec[0] != '[') || !host_valid(&hp, true))
    return false;
  return write_canonical(&hp, 0, ns, nssz);
}

/* Check the whole query and pick out ns= (at most once). False when the
 * query is malformed: a byte outside the RFC 3986 query set, a broken
 * percent-escape, ns without a valid registry, or ns given twice. */
static bool parse_query(const char *q, size_t n, char *ns, size_t nssz) {
  bool seen = false;
  size_t start = 0;

  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)q[i];
    if (c == '%') {
      if (i + 2 >= n || hex_value((unsigned char)q[i + 1]) < 0 ||
          hex_value((unsigned char)q[i + 2]) < 0)
        return false;
      i += 2;
    } else if (!query_char(c)) {
      return false;
    }
  }
  for (size_t i = 0; i <= n; i++) {
    const char *p = q + start;
    size_t plen;
    if (i < n && q[i] != '&')
      continue;
    plen = i - start;
    start = i + 1;
    if (plen >= 2 && p[0] == 'n' && p[1] == 's' && (plen == 2 || p[2] == '=')) {
      if (seen || plen == 2 || !parse_ns(p + 3, plen - 3, ns, nssz))
        return false;
      seen = true;
    }
  }
  return true;
}

void rp_reg_path_parse(const char *path, size_t len, struct rp_reg_path *out) {
  const char *query, *rest, *s1, *s2, *seg, *ref;
  size_t plen, rlen, seglen, namelen, reflen;
  enum digest_class dc;

  memset(out, 0, sizeof *out);
  out->kind = RP_REG_NOT_V2;
  if (path == NULL)
    return;
  query = memchr(path, '?', len);
  plen = query != NULL ? (size_t)(query - path) : len;
  if (plen < 3 || memcmp(path, "/v2", 3) != 0 || (plen > 3 && path[3] != '/'))
    return;

  out->kind = RP_REG_OTHER;
  if (query != NULL && !parse_query(query + 1, len - plen - 1, out->ns, sizeof out->ns)) {
    out->ns[0] = '\0';
    return;
  }
  if (plen <= 4) {
    out->kind = RP_REG_BASE;
    return;
  }

  /* The name may hold slashes (and even a "manifests" component), so the
   * reference and its kind are taken from the end. */
  rest = path + 4;
  rlen = plen - 4;
  s2 = last_slash(rest, rlen);
  if (s2 == NULL)
    return;
  s1 = last_slash(rest, (size_t)(s2 - rest));
  if (s1 == NULL)
    return;
  seg = s1 + 1;
  seglen = (size_t)(s2 - seg);
  ref = s2 + 1;
  reflen = rlen - (size_t)(ref - rest);
  namelen = (size_t)(s1 - rest);
  if (!name_valid(rest, namelen) || reflen == 0 || reflen >= sizeof out->ref)
    return;

  dc = digest_classify(ref, reflen);
  if (seglen == 9 && memcmp(seg, "manifests", 9) == 0) {
    if (dc == DIGEST_INVALID && !tag_valid(ref, reflen))
      return;
    out->kind = RP_REG_MANIFEST;
  } else if (seglen == 5 && memcmp(seg, "blobs", 5) == 0) {
    /* Only sha256/sha512 blobs are cached; any other digest passes. */
    if (dc != DIGEST_CACHEABLE)
      return;
    out->kind = RP_REG_BLOB;
  } else {
    return;
  }
  memcpy(out->name, rest, namelen);
  out->name[namelen] = '\0';
  memcpy(out->ref, ref, reflen);
  out->ref[reflen] = '\0';
  out->ref_is_digest = dc == DIGEST_CACHEABLE;
}

/* ---- image references ---------------------------------------------------------- */

/* distribution/reference's splitDockerDomain: the first component of a name
 * is a registry when it could not be a repository component, that is when it
 * holds '.' or ':', is "localhost", or has an upper-case letter. */
static bool names_registry(const char *s, size_t n) {
  if (n == 9 && memcmp(s, "localhost", 9) == 0)
    return true;
  for (size_t i = 0; i < n; i++)
    if (s[i] == '.' || s[i] == ':' || (s[i] >= 'A' && s[i] <= 'Z'))
      return true;
  return false;
}

/* A registry as distribution's domain grammar has it: the strict host of
 * host_valid without a trailing dot, or an IPv6 address in brackets made of
 * hex digits and colons only (no zone, no IPv4 tail), then an optional port.
 * Written into buf as its canonical identity. */
static bool ref_registry(const char *s, size_t n, char *buf, size_t bufsz) {
  struct hostport hp;

  if (!split_hostport(s, n, &hp))
    return false;
  if (hp.ip6) {
    if (s[0] != '[')
      return false;
    for (size_t i = 0; i < hp.hlen; i++)
      if (hp.host[i] != ':' && hex_value((unsigned char)hp.host[i]) < 0)
        return false;
  } else if (hp.hlen > 0 && hp.host[hp.hlen - 1] == '.') {
    return false;
  }
  return host_valid(&hp, true) && write_canonical(&hp, 0, buf, bufsz);
}

/* Is s[0..n) an image ID, 64 lower-case hex digits? docker refuses one where
 * a name is expected, so that an ID is never pulled as "library/<id>". */
static bool is_image_id(const char *s, size_t n) {
  if (n != 64)
    return false;
  for (size_t i = 0; i < n; i++)
    if (!is_lower_hex((unsigned char)s[i]))
      return false;
  return true;
}

static bool has_upper(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] >= 'A' && s[i] <= 'Z')
      return true;
  return false;
}

int rp_reg_ref_parse(const char *s, size_t n, struct rp_reg_ref *out, const char **why) {
  const char *msg = NULL, *rest = s, *slash, *at, *colon, *prefix = "";
  size_t restn = n, namen, pathn, prefixn = 0, tagn = 0, dign = 0;
  enum digest_class dc;
  int rc = RP_EPARSE;

  memset(out, 0, sizeof *out);
  if (s == NULL || n == 0) {
    msg = "empty image reference";
    goto out;
  }
  if (is_image_id(s, n)) {
    msg = "an image ID (64 hex digits) is not a repository name";
    goto out;
  }

  slash = memchr(s, '/', n);
  if (slash != NULL && names_registry(s, (size_t)(slash - s))) {
    if (!ref_registry(s, (size_t)(slash - s), out->registry, sizeof out->registry)) {
      msg = "invalid registry host[:port]";
      goto out;
    }
    rest = slash + 1;
    restn = n - (size_t)(rest - s);
  } else {
    memcpy(out->registry, "docker.io", sizeof "docker.io");
  }

  /* name [":" tag] ["@" digest]: the name has neither ':' nor '@' and the
   * tag has no '@', so the first of each splits them. */
  at = memchr(rest, '@', restn);
  namen = at != NULL ? (size_t)(at - rest) : restn;
  colon = memchr(rest, ':', namen);
  pathn = colon != NULL ? (size_t)(colon - rest) : namen;
  if (colon != NULL)
    tagn = namen - pathn - 1;
  if (at != NULL)
    dign = restn - namen - 1;

  /* Every spelling of Docker Hub shares one namespace for official images. */
  if (strcmp(out->registry, "docker.io") == 0 && memchr(rest, '/', pathn) == NULL) {
    prefix = "library/";
    prefixn = 8;
  }
  /* distribution v0.6 bounds the repository path, not the registry. */
  if (prefixn + pathn > NAME_MAX_LEN) {
    msg = "repository name longer than 255 characters";
    goto out;
  }
  if (!name_valid(rest, pathn)) {
    msg = has_upper(rest, pathn) ? "repository name must be lower-case" : "invalid repository name";
    goto out;
  }
  if (colon != NULL && !tag_valid(colon + 1, tagn)) {
    msg = tagn > TAG_MAX_LEN ? "tag longer than 128 characters" : "invalid tag";
    goto out;
  }
  if (at != NULL) {
    dc = digest_classify(at + 1, dign);
    if (dc != DIGEST_CACHEABLE) {
      msg = dc == DIGEST_OTHER ? "unsupported digest algorithm (sha256 and sha512 only)"
                               : "invalid digest";
      goto out;
    }
  }

  memcpy(out->repo, prefix, prefixn);
  memcpy(out->repo + prefixn, rest, pathn);
  out->repo[prefixn + pathn] = '\0';
  if (colon != NULL) {
    memcpy(out->tag, colon + 1, tagn);
    out->tag[tagn] = '\0';
  } else if (at == NULL) {
    memcpy(out->tag, "latest", sizeof "latest");
  }
  if (at != NULL) {
    memcpy(out->digest, at + 1, dign);
    out->digest[dign] = '\0';
  }
  rc = 0;

out:
  if (rc != 0) {
    memset(out, 0, sizeof *out);
    if (why != NULL)
      *why = msg;
  }
  return rc;
}

/* ---- Accept key -------------------------------------------------------------- */

struct span {
  const char *p;
  size_t n;
};

static bool is_tchar(unsigned char c) {
  return is_alnum(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* type "/" subtype, both tokens; a wildcard type needs a wildcard subtype. */
static bool media_range_valid(const char *s, size_t n) {
  const char *slash = memchr(s, '/', n);
  size_t tn;

  if (slash == NULL || n > MEDIA_MAX_LEN)
    return false;
  tn = (size_t)(slash - s);
  if (tn == 0 || tn == n - 1)
    return false;
  for (size_t i = 0; i < n; i++)
    if (i != tn && !is_tchar((unsigned char)s[i]))
      return false;
  if (tn == 1 && s[0] == '*')
    return n == 3 && s[2] == '*';
  return true;
}

/* Does a parameter list (after the first ';') hold q=0? Such a range is
 * refused outright (RFC 9110 §12.4.2), so it is no member of the key. */
static bool has_q_zero(const char *s, size_t n) {
  size_t start = 0;

  for (size_t i = 0; i <= n; i++) {
    const char *p = s + start, *eq;
    size_t pn;
    if (i < n && s[i] != ';')
      continue;
    pn = i - start;
    start = i + 1;
    trim_ows(&p, &pn);
    eq = memchr(p, '=', pn);
    if (eq == NULL)
      continue;
    {
      const char *k = p, *v = eq + 1;
      size_t kn = (size_t)(eq - p), vn = pn - kn - 1;
      trim_ows(&k, &kn);
      trim_ows(&v, &vn);
      if (!eq_nocase(k, kn, "q", 1) || vn == 0 || vn > 5 || v[0] != '0')
        continue;
      if (vn == 1)
        return true;
      if (v[1] != '.')
        continue;
      bool zero = true;
      for (size_t j = 2; j < vn; j++)
        if (v[j] != '0')
          zero = false;
      if (zero)
        return true;
    }
  }
  return false;
}

static int span_cmp(const void *a, const void *b) {
  const struct span *x = a, *y = b;
  size_t n = x->n < y->n ? x->n : y->n;

  for (size_t i = 0; i < n; i++) {
    int cx = to_lower((unsigned char)x->p[i]), cy = to_lower((unsigned char)y->p[i]);
    if (cx != cy)
      return cx - cy;
  }
  return (x->n > y->n) - (x->n < y->n);
}

static const char *const manifest_types[] = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
};

bool rp_reg_is_manifest_type(const char *type, size_t n) {
  size_t tn = 0;
  while (tn < n && type[tn] != ';' && type[tn] != ' ' && type[tn] != '\t')
    tn++;
  for (size_t i = 0; i < sizeof(manifest_types) / sizeof(manifest_types[0]); i++)
    if (strlen(manifest_types[i]) == tn && eq_nocase(manifest_types[i], tn, type, tn))
      return true;
  return false;
}

/* The ranges a key keeps: those that can select a manifest. Anything else a
 * client sends (text/html, made-up types) would only multiply the keys a tag
 * is remembered under (contract §3: bounded tables). */
static bool manifest_range(const char *p, size_t n) {
  static const char *const wild[] = {
      "*/*", "application/*",
      "application/json", /* dockerd sends it; old registries label schema 1 so */
  };
  for (size_t i = 0; i < sizeof(wild) / sizeof(wild[0]); i++)
    if (strlen(wild[i]) == n && eq_nocase(wild[i], n, p, n))
      return true;
  return rp_reg_is_manifest_type(p, n);
}

void rp_reg_accept_key(const struct rp_http_head *h, char *buf, size_t bufsz) {
  struct span items[ACCEPT_MAX_ITEMS];
  size_t nitems = 0, o = 0, written = 0;
  bool any_element = false;

  if (bufsz == 0)
    return;
  buf[0] = '\0';
  for (size_t i = 0; h != NULL && i < h->nheaders; i++) {
    const struct rp_http_header *hd = &h->headers[i];
    size_t start = 0;
    if (!rp_http_token_eq(hd->name, hd->name_len, "accept"))
      continue;
    for (size_t j = 0; j <= hd->value_len; j++) {
      const char *p = hd->value + start;
      size_t pn, tn;
      if (j < hd->value_len && hd->value[j] != ',')
        continue;
      pn = j - start;
      start = j + 1;
      trim_ows(&p, &pn);
      if (pn == 0)
        continue; /* empty list elements are allowed and mean nothing */
      any_element = true;
      tn = pn;
      for (size_t k = 0; k < pn; k++)
        if (p[k] == ';') {
          tn = k;
          break;
        }
      if (tn < pn && has_q_zero(p + tn + 1, pn - tn - 1))
        continue;
      trim_ows(&p, &tn);
      /* Past the bound extra ranges are dropped: that only narrows the key. */
      if (media_range_valid(p, tn) && manifest_range(p, tn) && nitems < ACCEPT_MAX_ITEMS) {
        items[nitems].p = p;
        items[nitems].n = tn;
        nitems++;
      }
    }
  }

  qsort(items, nitems, sizeof items[0], span_cmp);
  for (size_t i = 0; i < nitems; i++) {
    size_t need = items[i].n + (written > 0 ? 1 : 0);
    if (i > 0 && span_cmp(&items[i - 1], &items[i]) == 0)
      continue;
    /* A member that does not fit is dropped with all after it. */
    if (o + need + 1 > bufsz)
      break;
    if (written > 0)
      buf[o++] = ',';
    for (size_t k = 0; k < items[i].n; k++)
      buf[o++] = (char)to_lower((unsigned char)items[i].p[k]);
    written++;
  }
  buf[o] = '\0';
  /* Accept was sent but nothing in it is usable: a key that allows nothing,
   * never "" (which allows everything). */
  if (written == 0 && any_element && bufsz >= 2) {
    buf[0] = '?';
    buf[1] = '\0';
  }
}

bool rp_reg_accept_allows(const char *accept_key, const char *media_type) {
  const char *t = media_type != NULL ? media_type : "", *slash, *m;
  size_t tn, major;

  if (accept_key == NULL || accept_key[0] == '\0')
    return true;
  if (strcmp(accept_key, "?") == 0)
    return false; /* Accept was sent, nothing in it usable */
  tn = strcspn(t, ";");
  trim_ows(&t, &tn);
  slash = memchr(t, '/', tn);
  major = slash != NULL ? (size_t)(slash - t) : 0;

  m = accept_key;
  for (;;) {
    size_t mn = strcspn(m, ",");
    if (mn == 3 && memcmp(m, "*/*", 3) == 0)
      return true;
    if (slash != NULL && eq_nocase(m, mn, t, tn))
      return true;
    if (major > 0 && mn == major + 2 && m[major] == '/' && m[major + 1] == '*' &&
        eq_nocase(m, major, t, major))
      return true;
    if (m[mn] == '\0')
      return false;
    m += mn + 1;
  }
}
