/* Host lists (no_proxy, mitm) with the semantics of Go's
 * golang.org/x/net/http/httpproxy, the client ACL and CONNECT port sets.
 *
 * Host lists follow httpproxy's config.init() and useProxy() step by step
 * (x/net v0.36+, i.e. with the CVE-2025-22870 fix), so that one NO_PROXY
 * string means the same to regproxy as to dockerd, containerd and podman:
 * net.ParseCIDR, net.SplitHostPort, net.ParseIP/netip.ParseAddr, the
 * domain suffix rule and IPNet.Contains/IP.Equal are reproduced with their
 * corner cases. Where regproxy deliberately differs, the comment says so.
 *
 * Nothing here resolves names; everything is string and address logic. */

#include "regproxy/rules.h"

#include <arpa/inet.h>
#include <idn2.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "regproxy/error.h"

/* A domain entry without a port matches any port; a port Go would compare
 * as a string that no port number ever prints as ("080", "http", "99999")
 * matches none. */
#define PORT_ANY   (-1)
#define PORT_NEVER (-2)

/* How much of a bad entry an error message quotes. */
#define ERR_ENTRY_MAX 128

struct span {
  const char *p;
  size_t n;
};

/* An address or a prefix, both kept in 16-byte form (IPv4 as ::ffff:a.b.c.d)
 * the way Go's net.IP does. When is4 is set only bytes 12..15 take part in a
 * comparison: that is Go's To4() path, under which an IPv4 address and its
 * IPv4-mapped IPv6 form are the same address. */
struct ipnet {
  uint8_t addr[16]; /* already masked */
  uint8_t mask[16];
  bool is4;
};

enum rule_kind {
  RULE_NET, /* an IP entry (full mask, optional port) or a CIDR entry */
  RULE_DOMAIN,
};

struct rule {
  enum rule_kind kind;
  int32_t port; /* PORT_ANY, PORT_NEVER or 0..65535 */
  char *text;   /* the entry as written (trimmed, lower-case), for messages */
  union {
    struct ipnet net;
    struct {
      char *suffix;    /* ".example.com": lower-case, punycode for IDNs */
      size_t len;      /* strlen(suffix), at least 2 */
      bool match_host; /* also the name itself, not only subdomains */
    } dom;
  } u;
};

struct rp_hostlist {
  unsigned flags;
  bool match_all; /* a "*" entry */
  struct rule *rules;
  size_t n;
  size_t cap;
};

struct rp_acl {
  struct ipnet *nets;
  size_t n;
  size_t cap;
};

struct rp_portset {
  uint8_t bits[65536 / 8];
};

static const uint8_t v4_in_v6_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* ---- strings ------------------------------------------------------------ */

static char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* a[0..n) equals the lower-case b[0..n), ignoring ASCII case in a. */
static bool eq_lower(const char *a, const char *b, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (ascii_lower(a[i]) != b[i])
      return false;
  }
  return true;
}

static bool is_ascii(struct span s) {
  for (size_t i = 0; i < s.n; i++) {
    if ((unsigned char)s.p[i] >= 0x80)
      return false;
  }
  return true;
}

/* Length of the white-space character (unicode.IsSpace) that starts s, or 0.
 * Besides ASCII that is U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028,
 * U+2029, U+202F, U+205F and U+3000. */
static size_t space_at(const unsigned char *s, size_t n) {
  if (n >= 1 && (s[0] == ' ' || (s[0] >= '\t' && s[0] <= '\r')))
    return 1;
  if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0))
    return 2;
  if (n < 3)
    return 0;
  if (s[0] == 0xe1 && s[1] == 0x9a && s[2] == 0x80)
    return 3;
  if (s[0] == 0xe2 && s[1] == 0x80 &&
      ((s[2] >= 0x80 && s[2] <= 0x8a) || s[2] == 0xa8 || s[2] == 0xa9 || s[2] == 0xaf))
    return 3;
  if (s[0] == 0xe2 && s[1] == 0x81 && s[2] == 0x9f)
    return 3;
  if (s[0] == 0xe3 && s[1] == 0x80 && s[2] == 0x80)
    return 3;
  return 0;
}

/* Go's strings.TrimSpace: Unicode white space at both ends. */
static struct span trim(struct span s) {
  const unsigned char *p = (const unsigned char *)s.p;
  size_t k;

  for (;;) {
    k = space_at(p, s.n);
    if (k == 0)
      break;
    p += k;
    s.n -= k;
  }
  for (;;) {
    /* The last character is one, two or three bytes long. */
    if (s.n >= 1 && space_at(p + s.n - 1, 1) == 1)
      k = 1;
    else if (s.n >= 2 && space_at(p + s.n - 2, 2) == 2)
      k = 2;
    else if (s.n >= 3 && space_at(p + s.n - 3, 3) == 3)
      k = 3;
    else
      break;
    s.n -= k;
  }
  s.p = (const char *)p;
  return s;
}

/* Calls fn on every comma-separated, trimmed, non-empty entry of spec. */
typedef int (*entry_fn)(void *ctx, struct span entry, char **err);

static int for_each_entry(const char *spec, entry_fn fn, void *ctx, char **err) {
  const char *p = spec;
  int rc = 0;

  for (;;) {
    const char *comma = strchr(p, ',');
    struct span e = {p, comma ? (size_t)(comma - p) : strlen(p)};

    e = trim(e);
    if (e.n > 0) {
      rc = fn(ctx, e, err);
      if (rc < 0)
        goto out;
    }
    if (!comma)
      break;
    p = comma + 1;
  }
out:
  return rc;
}

/* Sets *err to `<what> "<entry>": <why>`, the entry escaped and shortened
 * so that a message never carries control bytes into a log line. */
static int fail(char **err, const char *what, struct span entry, const char *why) {
  static const char hex[] = "0123456789abcdef";
  size_t shown = entry.n < ERR_ENTRY_MAX ? entry.n : ERR_ENTRY_MAX;
  char *quoted = NULL;
  char *msg = NULL;
  size_t q = 0;
  int len;
  int rc = RP_EPARSE;

  if (!err)
    goto out;
  quoted = malloc(shown * 4 + sizeof("..."));
  if (!quoted) {
    rc = RP_ENOMEM;
    goto out;
  }
  for (size_t i = 0; i < shown; i++) {
    unsigned char c = (unsigned char)entry.p[i];

    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
      quoted[q++] = '\\';
      quoted[q++] = 'x';
      quoted[q++] = hex[c >> 4];
      quoted[q++] = hex[c & 0xf];
    } else {
      quoted[q++] = (char)c;
    }
  }
  if (shown < entry.n) {
    memcpy(quoted + q, "...", 3);
    q += 3;
  }
  quoted[q] = '\0';
  len = snprintf(NULL, 0, "%s \"%s\": %s", what, quoted, why);
  if (len < 0) {
    rc = RP_ENOMEM;
    goto out;
  }
  msg = malloc((size_t)len + 1);
  if (!msg) {
    rc = RP_ENOMEM;
    goto out;
  }
  snprintf(msg, (size_t)len + 1, "%s \"%s\": %s", what, quoted, why);
  *err = msg;
  msg = NULL;
out:
  free(quoted);
  free(msg);
  return rc;
}

/* ---- addresses ---------------------------------------------------------- */

static bool ip_is4(const uint8_t ip[16]) {
  return memcmp(ip, v4_in_v6_prefix, sizeof(v4_in_v6_prefix)) == 0;
}

/* net.IP.IsLoopback: 127.0.0.0/8 (also IPv4-mapped) and ::1. */
static bool ip_is_loopback(const uint8_t ip[16]) {
  static const uint8_t v6_loopback[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};

  if (ip_is4(ip))
    return ip[12] == 127;
  return memcmp(ip, v6_loopback, 16) == 0;
}

/* netip.ParseAddr: the first '.', ':' or '%' decides between a strict
 * dotted quad (no leading zeros) and IPv6 with an optional zone after the
 * first '%'; a zone must not be empty. glibc's inet_pton accepts exactly
 * the same texts once the zone is split off. The zone is dropped, as
 * net.IP(nip.AsSlice()) does. *text_is4 tells a dotted quad (32-bit prefix
 * lengths) from IPv6 text (128-bit, even for ::ffff:a.b.c.d). */
static bool parse_ip(struct span s, bool allow_zone, uint8_t ip[16], bool *text_is4) {
  /* The longest address text is 45 bytes; anything longer is no address. */
  char buf[64];
  char kind = 0;
  size_t n = s.n;

  for (size_t i = 0; i < s.n; i++) {
    if (s.p[i] == '.' || s.p[i] == ':' || s.p[i] == '%') {
      kind = s.p[i];
      break;
    }
  }
  if (kind == ':') {
    const char *pct = memchr(s.p, '%', s.n);

    if (pct) {
      if (!allow_zone || pct == s.p + s.n - 1)
        return false;
      n = (size_t)(pct - s.p);
    }
  } else if (kind != '.') {
    return false;
  }
  if (n >= sizeof(buf))
    return false;
  memcpy(buf, s.p, n);
  buf[n] = '\0';
  if (kind == '.') {
    struct in_addr a4;

    if (inet_pton(AF_INET, buf, &a4) != 1)
      return false;
    memcpy(ip, v4_in_v6_prefix, 12);
    memcpy(ip + 12, &a4, 4);
    *text_is4 = true;
  } else {
    struct in6_addr a6;

    if (inet_pton(AF_INET6, buf, &a6) != 1)
      return false;
    memcpy(ip, &a6, 16);
    *text_is4 = false;
  }
  return true;
}

/* The network of ip/bits, bits counted in the family of the text (net.CIDRMask
 * with ipAddr.BitLen()). A v6 prefix whose network lies in ::ffff:0:0/96
 * compares IPv4 hosts by its last 32 mask bits, as IPNet.Contains does. */
static void ipnet_init(struct ipnet *net, const uint8_t ip[16], bool text_is4, unsigned bits) {
  unsigned ones = text_is4 ? 96 + bits : bits;

  for (unsigned i = 0; i < 16; i++) {
    unsigned have = ones > i * 8 ? ones - i * 8 : 0;

    net->mask[i] = have >= 8 ? 0xff : (uint8_t)(0xff00u >> have);
    net->addr[i] = ip[i] & net->mask[i];
  }
  net->is4 = ip_is4(net->addr);
}

/* IPNet.Contains and, with a full mask, IP.Equal. */
static bool ipnet_contains(const struct ipnet *net, const uint8_t ip[16]) {
  if (ip_is4(ip) != net->is4)
    return false;
  for (size_t i = net->is4 ? 12 : 0; i < 16; i++) {
    if ((ip[i] ^ net->addr[i]) & net->mask[i])
      return false;
  }
  return true;
}

/* net.ParseCIDR: an address without zone, '/', and decimal digits (dtoi:
 * leading zeros fine) no larger than the address family's bit length. */
static bool parse_cidr(struct span s, struct ipnet *net) {
  const char *slash = memchr(s.p, '/', s.n);
  struct span addr;
  uint8_t ip[16];
  bool text_is4;
  unsigned long bits = 0;
  size_t ndigits;

  if (!slash)
    return false;
  addr.p = s.p;
  addr.n = (size_t)(slash - s.p);
  if (!parse_ip(addr, false, ip, &text_is4))
    return false;
  ndigits = s.n - addr.n - 1;
  if (ndigits == 0)
    return false;
  for (size_t i = 0; i < ndigits; i++) {
    char c = slash[1 + i];

    if (c < '0' || c > '9')
      return false;
    bits = bits * 10 + (unsigned long)(c - '0');
    if (bits > 128)
      return false;
  }
  if (bits > (text_is4 ? 32u : 128u))
    return false;
  ipnet_init(net, ip, text_is4, (unsigned)bits);
  return true;
}

static bool sockaddr_ip(const struct sockaddr *sa, uint8_t ip[16]) {
  if (!sa)
    return false;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)sa;

    memcpy(ip, v4_in_v6_prefix, 12);
    memcpy(ip + 12, &sin->sin_addr, 4);
    return true;
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)(const void *)sa;

    memcpy(ip, &sin6->sin6_addr, 16);
    return true;
  }
  return false;
}

/* ---- host lists --------------------------------------------------------- */

/* net.SplitHostPort, including its acceptance of an empty port ("a:") and
 * its refusal of "[v6]" without a port. The host comes without brackets. */
static bool split_host_port(struct span s, struct span *host, struct span *port) {
  size_t colon = s.n;
  size_t j = 0;
  size_t k = 0;

  for (size_t i = s.n; i > 0; i--) {
    if (s.p[i - 1] == ':') {
      colon = i - 1;
      break;
    }
  }
  if (colon == s.n)
    return false;
  if (s.p[0] == '[') {
    const char *close = memchr(s.p, ']', s.n);
    size_t end;

    if (!close)
      return false;
    end = (size_t)(close - s.p);
    if (end + 1 != colon)
      return false;
    host->p = s.p + 1;
    host->n = end - 1;
    j = 1;
    k = end + 1;
  } else {
    host->p = s.p;
    host->n = colon;
    if (memchr(host->p, ':', host->n))
      return false;
  }
  if (memchr(s.p + j, '[', s.n - j) || memchr(s.p + k, ']', s.n - k))
    return false;
  port->p = s.p + colon + 1;
  port->n = s.n - colon - 1;
  return true;
}

/* Go compares ports as strings and the destination's port is printed in
 * decimal, so only the canonical decimal form of a number can ever match. */
static int32_t entry_port(struct span p) {
  int32_t v = 0;

  if (p.n == 0)
    return PORT_ANY;
  if (p.n > 5 || (p.n > 1 && p.p[0] == '0'))
    return PORT_NEVER;
  for (size_t i = 0; i < p.n; i++) {
    if (p.p[i] < '0' || p.p[i] > '9')
      return PORT_NEVER;
    v = v * 10 + (p.p[i] - '0');
  }
  return v <= 65535 ? v : PORT_NEVER;
}

static bool port_ok(int32_t want, uint16_t port) {
  return want == PORT_ANY || want == (int32_t)port;
}

/* What idna.Lookup.ToASCII yields for a name that is not pure ASCII: the
 * UTS #46 non-transitional mapping and punycode (libidn2), lower-case. Go's
 * Lookup profile applies the STD3 rules, so a result holding anything but
 * letters, digits, '-' and '.' counts as a failure, after which Go keeps the
 * name as it was. Returns 0 with *out set (NULL on such a failure) or
 * RP_ENOMEM. */
static int idna_ascii(struct span name, char **out) {
  char *in = NULL;
  char *res = NULL;
  int idn_rc;
  int rc = 0;

  *out = NULL;
  in = malloc(name.n + 1);
  if (!in) {
    rc = RP_ENOMEM;
    goto out;
  }
  memcpy(in, name.p, name.n);
  in[name.n] = '\0';
  idn_rc = idn2_to_ascii_8z(in, &res, IDN2_NONTRANSITIONAL);
  if (idn_rc == IDN2_MALLOC) {
    rc = RP_ENOMEM;
    goto out;
  }
  if (idn_rc != IDN2_OK || !res)
    goto out;
  for (char *c = res; *c; c++) {
    *c = ascii_lower(*c);
    if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-' || *c == '.'))
      goto out;
  }
  *out = res;
  res = NULL;
out:
  free(in);
  idn2_free(res);
  return rc;
}

/* Append r, with a copy of its entry's text. */
static int push_rule(struct rp_hostlist *l, const struct rule *r, struct span entry) {
  char *text = strndup(entry.p, entry.n);

  if (!text)
    return RP_ENOMEM;
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 8;
    struct rule *rules;

    if (cap > SIZE_MAX / sizeof(*rules))
      rules = NULL;
    else
      rules = realloc(l->rules, cap * sizeof(*rules));
    if (!rules) {
      free(text);
      return RP_ENOMEM;
    }
    l->rules = rules;
    l->cap = cap;
  }
  l->rules[l->n] = *r;
  l->rules[l->n++].text = text;
  return 0;
}

/* A domain entry: "foo.com" (the name and its subdomains), ".foo.com" and
 * "*.foo.com" (subdomains only). Unlike Go, a trailing dot is insignificant
 * here, on entries as on hosts (contract §2 strips it from CONNECT targets), so
 * "foo.com." and "foo.com" are the same entry. */
static int add_domain(struct rp_hostlist *l, struct span entry, struct span name, int32_t port,
                      char **err) {
  struct rule r = {.kind = RULE_DOMAIN, .port = port};
  char *idn = NULL;
  char *suffix = NULL;
  int rc;

  r.u.dom.match_host = true;
  if (name.n >= 2 && name.p[0] == '*' && name.p[1] == '.') {
    name.p++;
    name.n--;
  }
  if (name.p[0] == '.') {
    r.u.dom.match_host = false;
    name.p++;
    name.n--;
  }
  if (!is_ascii(name)) {
    rc = idna_ascii(name, &idn);
    if (rc < 0)
      goto out;
    if (idn) {
      name.p = idn;
      name.n = strlen(idn);
    }
  }
  if (name.n > 0 && name.p[name.n - 1] == '.')
    name.n--;
  if (name.n == 0) {
    rc = fail(err, "host list entry", entry, "no name");
    goto out;
  }
  suffix = malloc(name.n + 2);
  if (!suffix) {
    rc = RP_ENOMEM;
    goto out;
  }
  suffix[0] = '.';
  memcpy(suffix + 1, name.p, name.n);
  suffix[name.n + 1] = '\0';
  r.u.dom.suffix = suffix;
  r.u.dom.len = name.n + 1;
  rc = push_rule(l, &r, entry);
  if (rc < 0)
    goto out;
  suffix = NULL;
out:
  idn2_free(idn);
  free(suffix);
  return rc;
}

/* One entry of config.init(), already trimmed and lower-cased. Go skips
 * entries without a host part (":80", "[]:80") as malformed; they are
 * errors here. Everything Go accepts is accepted, even entries that can
 * never match ("[::1]" without a port, "foo.com:http"), so that a NO_PROXY
 * Docker takes is never refused. */
static int add_hostlist_entry(void *ctx, struct span e, char **err) {
  struct rp_hostlist *l = ctx;
  struct rule r = {.kind = RULE_NET, .port = PORT_ANY};
  struct span host = e;
  struct span port = {NULL, 0};
  struct span h;
  struct span p;
  uint8_t ip[16];
  bool text_is4;

  if (e.n == 1 && e.p[0] == '*') {
    l->match_all = true;
    return 0;
  }
  if (parse_cidr(e, &r.u.net))
    return push_rule(l, &r, e);
  if (split_host_port(e, &h, &p)) {
    if (h.n == 0)
      return fail(err, "host list entry", e, "no host before the port");
    host = h;
    port = p;
  }
  if (parse_ip(host, false, ip, &text_is4)) {
    ipnet_init(&r.u.net, ip, text_is4, text_is4 ? 32 : 128);
    r.port = entry_port(port);
    return push_rule(l, &r, e);
  }
  return add_domain(l, e, host, entry_port(port), err);
}

static void hostlist_free(struct rp_hostlist *l) {
  for (size_t i = 0; i < l->n; i++) {
    if (l->rules[i].kind == RULE_DOMAIN)
      free(l->rules[i].u.dom.suffix);
    free(l->rules[i].text);
  }
  free(l->rules);
  free(l);
}

int rp_hostlist_parse(const char *spec, unsigned flags, struct rp_hostlist **out, char **err) {
  struct rp_hostlist *l = NULL;
  char *lower = NULL;
  size_t n;
  int rc;

  if (err)
    *err = NULL;
  if (out)
    *out = NULL;
  if (!out || !spec || (flags & ~(unsigned)RP_HOSTLIST_LOOPBACK_DIRECT)) {
    rc = RP_EINVAL;
    goto out;
  }
  l = calloc(1, sizeof(*l));
  n = strlen(spec);
  lower = malloc(n + 1);
  if (!l || !lower) {
    rc = RP_ENOMEM;
    goto out;
  }
  /* Go lower-cases every entry before looking at it. Non-ASCII letters are
   * left to the IDN mapping, which folds case itself. */
  for (size_t i = 0; i <= n; i++)
    lower[i] = ascii_lower(spec[i]);
  l->flags = flags;
  rc = for_each_entry(lower, add_hostlist_entry, l, err);
  if (rc < 0)
    goto out;
  *out = l;
  l = NULL;
out:
  if (l)
    hostlist_free(l);
  free(lower);
  return rc;
}

static bool domain_match(const struct rule *r, struct span h) {
  const char *suffix = r->u.dom.suffix;
  size_t len = r->u.dom.len;

  if (h.n >= len && eq_lower(h.p + h.n - len, suffix, len))
    return true;
  return r->u.dom.match_host && h.n == len - 1 && eq_lower(h.p, suffix + 1, h.n);
}

static bool hostlist_match(const struct rp_hostlist *list, const char *host, uint16_t port,
                           bool port_named) {
  struct span h;
  char *idn = NULL;
  uint8_t ip[16];
  bool is_ip;
  bool text_is4;
  bool hit = false;

  if (!list || !host)
    goto out;
  h.p = host;
  h.n = strlen(host);
  h = trim(h);
  /* canonicalAddr() converts an IDN before useProxy() looks at the host, so
   * full-width digits may well turn out to be an IP address. Should the
   * conversion run out of memory the host is compared as given. */
  if (!is_ascii(h) && idna_ascii(h, &idn) == 0 && idn) {
    h.p = idn;
    h.n = strlen(idn);
  }
  if (h.n > 0 && h.p[h.n - 1] == '.')
    h.n--;
  is_ip = parse_ip(h, true, ip, &text_is4);

  /* useProxy() sends "localhost" and loopback literals direct. Go compares
   * the name case-sensitively and with no trailing dot; here the name is
   * normalised first, as everywhere else. */
  if (list->flags & RP_HOSTLIST_LOOPBACK_DIRECT) {
    if (is_ip ? ip_is_loopback(ip) : (h.n == 9 && eq_lower(h.p, "localhost", 9))) {
      hit = true;
      goto out;
    }
  }
  if (list->match_all && !port_named) {
    hit = true;
    goto out;
  }
  /* IP and CIDR entries match only IP literals; domain entries only names
   * (an IPv6 zone is never read as part of a name: CVE-2025-22870). */
  for (size_t i = 0; i < list->n && !hit; i++) {
    const struct rule *r = &list->rules[i];

    if (!port_ok(r->port, port) || (port_named && r->port != (int32_t)port))
      continue;
    if (r->kind == RULE_NET)
      hit = is_ip && ipnet_contains(&r->u.net, ip);
    else
      hit = !is_ip && domain_match(r, h);
  }
out:
  idn2_free(idn);
  return hit;
}

bool rp_hostlist_match(const struct rp_hostlist *list, const char *host, uint16_t port) {
  return hostlist_match(list, host, port, false);
}

bool rp_hostlist_match_port_named(const struct rp_hostlist *list, const char *host, uint16_t port) {
  return hostlist_match(list, host, port, true);
}

bool rp_hostlist_names_port(const struct rp_hostlist *list, uint16_t port) {
  if (list == NULL)
    return false;
  for (size_t i = 0; i < list->n; i++)
    if (list->rules[i].port == (int32_t)port)
      return true;
  return false;
}

bool rp_hostlist_has_star(const struct rp_hostlist *list) {
  return list != NULL && list->match_all;
}

size_t rp_hostlist_count(const struct rp_hostlist *list) {
  return list != NULL ? list->n : 0;
}

void rp_hostlist_entry(const struct rp_hostlist *list, size_t i, struct rp_hostlist_entry *out) {
  const struct rule *r = &list->rules[i];

  memset(out, 0, sizeof(*out));
  out->text = r->text;
  if (r->kind == RULE_DOMAIN) {
    out->domain = r->u.dom.match_host ? r->u.dom.suffix + 1 : r->u.dom.suffix;
    return;
  }
  out->is_net = true;
  memcpy(out->addr, r->u.net.addr, sizeof(out->addr));
  memcpy(out->mask, r->u.net.mask, sizeof(out->mask));
  out->is4 = r->u.net.is4;
}

void rp_hostlist_destroy(struct rp_hostlist *list) {
  if (list)
    hostlist_free(list);
}

/* ---- client ACL --------------------------------------------------------- */

static int add_acl_entry(void *ctx, struct span e, char **err) {
  struct rp_acl *acl = ctx;
  struct ipnet net;
  uint8_t ip[16];
  bool text_is4;

  if (!parse_cidr(e, &net)) {
    if (!parse_ip(e, false, ip, &text_is4))
      return fail(err, "ACL entry", e, "not an IP address or CIDR");
    ipnet_init(&net, ip, text_is4, text_is4 ? 32 : 128);
  }
  if (acl->n == acl->cap) {
    size_t cap = acl->cap ? acl->cap * 2 : 8;
    struct ipnet *nets;

    if (cap > SIZE_MAX / sizeof(*nets))
      return RP_ENOMEM;
    nets = realloc(acl->nets, cap * sizeof(*nets));
    if (!nets)
      return RP_ENOMEM;
    acl->nets = nets;
    acl->cap = cap;
  }
  acl->nets[acl->n++] = net;
  return 0;
}

int rp_acl_parse(const char *spec, struct rp_acl **out, char **err) {
  struct rp_acl *acl = NULL;
  int rc;

  if (err)
    *err = NULL;
  if (out)
    *out = NULL;
  if (!out || !spec) {
    rc = RP_EINVAL;
    goto out;
  }
  acl = calloc(1, sizeof(*acl));
  if (!acl) {
    rc = RP_ENOMEM;
    goto out;
  }
  rc = for_each_entry(spec, add_acl_entry, acl, err);
  if (rc < 0)
    goto out;
  *out = acl;
  acl = NULL;
out:
  rp_acl_destroy(acl);
  return rc;
}

/* The 16-byte form makes ::ffff:a.b.c.d and a.b.c.d one address, so an
 * IPv4-mapped client is unmapped by construction; a plain IPv6 prefix such
 * as ::/0 does not cover IPv4 clients. */
bool rp_acl_match(const struct rp_acl *acl, const struct sockaddr *sa) {
  uint8_t ip[16];

  if (!acl || !sockaddr_ip(sa, ip))
    return false;
  for (size_t i = 0; i < acl->n; i++) {
    if (ipnet_contains(&acl->nets[i], ip))
      return true;
  }
  return false;
}

void rp_acl_destroy(struct rp_acl *acl) {
  if (!acl)
    return;
  free(acl->nets);
  free(acl);
}

bool rp_sockaddr_is_loopback(const struct sockaddr *sa) {
  uint8_t ip[16];

  return sockaddr_ip(sa, ip) && ip_is_loopback(ip);
}

/* ---- port sets ---------------------------------------------------------- */

/* A decimal port 1-65535; leading zeros are harmless. */
static bool parse_port(struct span s, uint16_t *port) {
  uint32_t v = 0;

  s = trim(s);
  if (s.n == 0)
    return false;
  for (size_t i = 0; i < s.n; i++) {
    if (s.p[i] < '0' || s.p[i] > '9')
      return false;
    v = v * 10 + (uint32_t)(s.p[i] - '0');
    if (v > 65535)
      return false;
  }
  if (v == 0)
    return false;
  *port = (uint16_t)v;
  return true;
}

static int add_port_entry(void *ctx, struct span e, char **err) {
  struct rp_portset *set = ctx;
  const char *dash = memchr(e.p, '-', e.n);
  struct span lo = e;
  struct span hi = e;
  uint16_t first;
  uint16_t last;

  if (dash) {
    lo.n = (size_t)(dash - e.p);
    hi.p = dash + 1;
    hi.n = e.n - lo.n - 1;
  }
  if (!parse_port(lo, &first) || !parse_port(hi, &last))
    return fail(err, "port entry", e, "not a port (1-65535) or range of ports");
  if (last < first)
    return fail(err, "port entry", e, "range ends before it starts");
  for (uint32_t p = first; p <= last; p++)
    set->bits[p >> 3] |= (uint8_t)(1u << (p & 7));
  return 0;
}

int rp_portset_parse(const char *spec, struct rp_portset **out, char **err) {
  struct rp_portset *set = NULL;
  int rc;

  if (err)
    *err = NULL;
  if (out)
    *out = NULL;
  if (!out || !spec) {
    rc = RP_EINVAL;
    goto out;
  }
  set = calloc(1, sizeof(*set));
  if (!set) {
    rc = RP_ENOMEM;
    goto out;
  }
  rc = for_each_entry(spec, add_port_entry, set, err);
  if (rc < 0)
    goto out;
  *out = set;
  set = NULL;
out:
  rp_portset_destroy(set);
  return rc;
}

bool rp_portset_has(const struct rp_portset *set, uint16_t port) {
  return set && (set->bits[port >> 3] & (1u << (port & 7))) != 0;
}

void rp_portset_destroy(struct rp_portset *set) {
  free(set);
}

bool rp_acl_loopback_only(const struct rp_acl *acl) {
  if (!acl)
    return true;
  for (size_t i = 0; i < acl->n; i++) {
    const struct ipnet *n = &acl->nets[i];
    /* The whole network lies in loopback when its first address does and
     * its prefix is at least as long as loopback's (/8 for IPv4, /128 ::1). */
    if (!ip_is_loopback(n->addr))
      return false;
    if (n->is4 ? n->mask[12] != 0xff : n->mask[15] != 0xff)
      return false;
  }
  return true;
}
