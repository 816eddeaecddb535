/* The option table and everything it drives: defaults, the YAML keys, the
 * REGPROXY_* environment, the command-line flags, validation and --help.
 *
 * Layers are applied from the lowest precedence to the highest (defaults,
 * config file, REGPROXY_*, flags), each value parsed and checked as it is
 * applied so an error names the exact flag, variable or file:line it came
 * from; HTTPS_PROXY/HTTP_PROXY/NO_PROXY are consulted last and only for keys
 * nothing else set, which gives them their place just above the defaults
 * without refusing a bad variable that would not be used anyway. */

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "config/internal.h"
#include "regproxy/config.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/rules.h"

#define DEFAULT_MITM                                                                               \
  "registry-1.docker.io,index.docker.io,ghcr.io,quay.io,registry.k8s.io,gcr.io,.pkg.dev,"          \
  "mcr.microsoft.com,public.ecr.aws,nvcr.io,registry.gitlab.com"

/* Durations beyond ten years are surely typos, and keeping them small means
 * "now + timeout" can never overflow. */
#define MAX_DURATION_MS (10ull * 365 * 24 * 3600 * 1000)

enum opt_type {
  OT_STRING,     /* mirror_default: a registry name */
  OT_PATH,       /* "~/" expanded; "" = none */
  OT_SIZE,       /* uint64_t bytes */
  OT_DURATION,   /* uint64_t milliseconds */
  OT_BOOL,       /* bool */
  OT_UINT,       /* unsigned, within [min, max] */
  OT_MARK,       /* uint32_t at off, bool "is set" at off2 */
  OT_HOSTLIST,   /* char * text at off, struct rp_hostlist * at off2 */
  OT_ACL,        /* char * text at off, struct rp_acl * at off2 */
  OT_PORTSET,    /* char * text at off, struct rp_portset * at off2; "" = default */
  OT_LOGLEVEL,   /* int */
  OT_LOGFORMAT,  /* int */
  OT_URL,        /* parent_proxy and its parsed parts */
  OT_LISTEN,     /* list: struct rp_listen_addr * at off, size_t count at off2 */
  OT_CONNECT_TO, /* list: struct rp_connect_to * at off, size_t count at off2 */
  OT_NAMES,      /* list: struct rp_strv at off */
};

enum opt_flags {
  OF_NO_KEY = 1u << 0,          /* not a config-file key */
  OF_NO_ENV = 1u << 1,          /* no REGPROXY_* variable */
  OF_NONZERO = 1u << 2,         /* 0 is refused */
  OF_NONEMPTY = 1u << 3,        /* a path that must be given */
  OF_MUST_EXIST = 1u << 4,      /* a file that must be readable when given */
  OF_LOOPBACK_DIRECT = 1u << 5, /* host list with no_proxy semantics */
  OF_CONFIG = 1u << 6,          /* --config: consumed before the layers are applied */
};

enum opt_group { G_GENERAL, G_LISTEN, G_ROUTING, G_CACHE, G_TIMEOUTS, G_CA, G_SETUP, G_LAST };

static const char *const group_titles[G_LAST] = {
    "General",  "Listeners and clients", "Routing",        "Cache and registries",
    "Timeouts", "The local CA",          "regproxy setup",
};

struct opt {
  const char *key; /* config key; --flag and REGPROXY_ENV are derived from it */
  enum opt_type type;
  unsigned flags;
  size_t off;
  size_t off2;
  const char *def;   /* default text, parsed like any value; NULL = computed or none */
  const char *shown; /* default as --help shows it; NULL = def */
  const char *metavar;
  const char *help;
  enum opt_group group;
  uint64_t min, max; /* OT_UINT */
};

#define F(field) offsetof(struct rp_config, field)

static const struct opt opts[] = {
    {"config", OT_PATH, OF_NO_KEY | OF_CONFIG, F(config_file), 0, NULL,
     RP_CONFIG_DEFAULT_PATH " if present", "FILE", "YAML config file (\"\" = none)", G_GENERAL, 0,
     0},
    {"log_level", OT_LOGLEVEL, 0, F(log_level), 0, "info", NULL, "LEVEL",
     "debug, info, warn or error", G_GENERAL, 0, 0},
    {"log_format", OT_LOGFORMAT, 0, F(log_format), 0, "logfmt", NULL, "FORMAT", "logfmt or json",
     G_GENERAL, 0, 0},

    {"listen", OT_LISTEN, 0, F(listen), F(n_listen), "127.0.0.1:2080", NULL, "ADDR:PORT",
     "proxy + mirror + admin listener (repeatable)", G_LISTEN, 0, 0},
    {"transparent", OT_LISTEN, 0, F(transparent), F(n_transparent), NULL, "off", "ADDR:PORT",
     "listener for REDIRECT'ed traffic (repeatable)", G_LISTEN, 0, 0},
    {"tproxy", OT_BOOL, 0, F(tproxy), 0, "off", NULL, "on|off",
     "transparent listeners use TPROXY (IP_TRANSPARENT)", G_LISTEN, 0, 0},
    {"mark", OT_MARK, 0, F(mark), F(mark_set), "off", NULL, "N",
     "SO_MARK on outgoing sockets (off or 0 = none)", G_LISTEN, 0, 0},
    {"allow", OT_ACL, 0, F(allow), F(acl), "127.0.0.0/8,::1", "loopback (127.0.0.0/8,::1)", "LIST",
     "client ACL: IPs and CIDRs", G_LISTEN, 0, 0},
    {"admin_allow", OT_ACL, 0, F(admin_allow), F(admin_acl), "127.0.0.0/8,::1",
     "loopback (127.0.0.0/8,::1)", "LIST",
     "clients that may read /, /status.json, /metrics, /cache/*: IPs, CIDRs", G_LISTEN, 0, 0},
    {"proxy_auth_file", OT_PATH, OF_MUST_EXIST, F(proxy_auth_file), 0, NULL, "off", "FILE",
     "htpasswd file; clients must send Proxy-Authorization: Basic", G_LISTEN, 0, 0},
    {"max_connections", OT_UINT, 0, F(max_connections), 0, "10000", NULL, "N",
     "client connections served at once", G_LISTEN, 1, 1000000},
    {"server_names", OT_NAMES, 0, F(server_names), 0, NULL, "none", "LIST",
     "extra Host names the admin endpoints answer to", G_LISTEN, 0, 0},

    {"mitm", OT_HOSTLIST, 0, F(mitm), F(mitm_list), DEFAULT_MITM, NULL, "LIST",
     "hosts to intercept (TLS terminated, registry cache); a new CA may sign only for these",
     G_ROUTING, 0, 0},
    {"no_proxy", OT_HOSTLIST, OF_LOOPBACK_DIRECT, F(no_proxy), F(no_proxy_list), "", "$NO_PROXY",
     "LIST", "destinations reached directly, never intercepted", G_ROUTING, 0, 0},
    {"parent_proxy", OT_URL, 0, F(parent_proxy), 0, NULL, "$HTTPS_PROXY, else $HTTP_PROXY", "URL",
     "upstream proxy, http://[user:pass@]host[:port] (\"\" = none)", G_ROUTING, 0, 0},
    {"connect_ports", OT_PORTSET, 0, F(connect_ports), F(connect_portset), NULL,
     "any while only loopback is allowed, else 443 + mitm/connect_to ports", "LIST",
     "ports CONNECT may reach, e.g. 443,8443,5000-5010", G_ROUTING, 0, 0},
    {"connect_to", OT_CONNECT_TO, 0, F(connect_to), F(n_connect_to), NULL, "none",
     "HOST:PORT:ADDR:PORT", "connection override like curl --connect-to (repeatable)", G_ROUTING, 0,
     0},
    {"upstream_ca", OT_PATH, OF_MUST_EXIST, F(upstream_ca), 0, NULL, "system bundle", "FILE",
     "extra CA bundle trusted for upstream TLS", G_ROUTING, 0, 0},

    {"cache_dir", OT_PATH, OF_NONEMPTY, F(cache_dir), 0, NULL,
     "$XDG_CACHE_HOME/regproxy, root: /var/cache/regproxy", "DIR", "cache root", G_CACHE, 0, 0},
    {"cache_max_size", OT_SIZE, OF_NONZERO, F(cache_max_size), 0, "20G", NULL, "SIZE",
     "eviction bound", G_CACHE, 0, 0},
    {"orphan_fill_max", OT_SIZE, 0, F(orphan_fill_max), 0, "2G", NULL, "SIZE",
     "largest fill completed after its last client left", G_CACHE, 0, 0},
    {"ca_dir", OT_PATH, OF_NONEMPTY, F(ca_dir), 0, NULL,
     "$XDG_DATA_HOME/regproxy/ca, root: /var/lib/regproxy/ca", "DIR", "CA certificate and key",
     G_CACHE, 0, 0},
    {"registry_auth", OT_PATH, OF_MUST_EXIST, F(registry_auth), 0, NULL,
     "~/.docker/config.json if present", "FILE",
     "upstream credentials (docker config format) for mirror mode and prefetch", G_CACHE, 0, 0},
    {"mirror_default", OT_STRING, 0, F(mirror_default), 0, "docker.io", NULL, "REGISTRY",
     "registry for origin-form /v2/ requests without ?ns=", G_CACHE, 0, 0},
    {"tag_ttl", OT_DURATION, 0, F(tag_ttl_ms), 0, "0", NULL, "DURATION",
     "answer tags from memory this long without asking upstream", G_CACHE, 0, 0},
    {"access_ttl", OT_DURATION, 0, F(access_ttl_ms), 0, "10m", NULL, "DURATION",
     "how long a confirmed credential may read a private repository", G_CACHE, 0, 0},
    {"access_check", OT_BOOL, 0, F(access_check), 0, "on", NULL, "on|off",
     "off serves every cached object to every allowed client", G_CACHE, 0, 0},

    {"header_timeout", OT_DURATION, OF_NONZERO, F(header_timeout_ms), 0, "30s", NULL, "DURATION",
     "whole request head must arrive within this (then 408)", G_TIMEOUTS, 0, 0},
    {"idle_timeout", OT_DURATION, OF_NONZERO, F(idle_timeout_ms), 0, "120s", NULL, "DURATION",
     "idle keep-alive client connections close after this", G_TIMEOUTS, 0, 0},
    {"tunnel_idle_timeout", OT_DURATION, OF_NONZERO, F(tunnel_idle_timeout_ms), 0, "1h", NULL,
     "DURATION", "tunnels with no bytes either way close after this", G_TIMEOUTS, 0, 0},
    {"connect_timeout", OT_DURATION, OF_NONZERO, F(connect_timeout_ms), 0, "15s", NULL, "DURATION",
     "upstream connects time out after this", G_TIMEOUTS, 0, 0},
    {"shutdown_grace", OT_DURATION, 0, F(shutdown_grace_ms), 0, "30s", NULL, "DURATION",
     "how long SIGTERM lets transfers finish", G_TIMEOUTS, 0, 0},

    {"force", OT_BOOL, OF_NO_KEY | OF_NO_ENV, F(ca_force), 0, "off", NULL, NULL,
     "ca init: replace the CA with a new one (clients must trust it again)", G_CA, 0, 0},
    {"unconstrained", OT_BOOL, OF_NO_KEY | OF_NO_ENV, F(ca_unconstrained), 0, "off", NULL, NULL,
     "a CA created now may sign for any host (no name constraints)", G_CA, 0, 0},

    {"dry_run", OT_BOOL, OF_NO_KEY | OF_NO_ENV, F(dry_run), 0, "off", NULL, NULL,
     "print what setup would change, change nothing", G_SETUP, 0, 0},
    {"root", OT_PATH, OF_NO_KEY | OF_NO_ENV, F(root), 0, NULL, "/", "DIR",
     "write into DIR as if it were /", G_SETUP, 0, 0},
};

#define N_OPTS (sizeof opts / sizeof opts[0])

/* Where one value came from, for error messages. */
struct origin {
  enum rp_config_source src;
  char name[64];    /* the environment variable for RP_SRC_ENV / RP_SRC_PROXY_ENV */
  const char *file; /* RP_SRC_FILE */
  unsigned line;
};

struct flagval {
  const struct opt *o;
  const char *value;
};

struct load {
  struct rp_config *cfg;
  char **envp;
  const struct rp__config_opts *opts;
  char *home; /* NULL when unknown */
  char **err;
  enum rp_config_source src[N_OPTS];
  struct origin where[N_OPTS]; /* who set the current value */
  unsigned file_line[N_OPTS];  /* line of the key in the file, for duplicates */
  struct flagval *flags;
  size_t n_flags;
};

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

static size_t opt_index(const struct opt *o) {
  return (size_t)(o - opts);
}

static void *field(struct rp_config *cfg, size_t off) {
  return (char *)cfg + off;
}

static bool is_list(const struct opt *o) {
  return o->type == OT_LISTEN || o->type == OT_CONNECT_TO || o->type == OT_NAMES;
}

static void flag_name(const struct opt *o, char *buf, size_t size) {
  size_t i = 0;
  buf[i++] = '-';
  buf[i++] = '-';
  for (const char *k = o->key; *k != '\0' && i + 1 < size; k++) {
    buf[i++] = *k == '_' ? '-' : *k;
  }
  buf[i] = '\0';
}

static void env_name(const struct opt *o, char *buf, size_t size) {
  snprintf(buf, size, "REGPROXY_");
  for (size_t i = strlen(buf), k = 0; o->key[k] != '\0' && i + 1 < size; i++, k++) {
    buf[i] = (char)toupper((unsigned char)o->key[k]);
    buf[i + 1] = '\0';
  }
}

/* Does name[0..len) spell key with sep in place of '_'? */
static bool key_matches(const char *key, const char *name, size_t len, char sep, bool upper) {
  size_t i = 0;
  for (; i < len && key[i] != '\0'; i++) {
    char want = key[i] == '_' ? sep : key[i];
    if (upper) {
      want = (char)toupper((unsigned char)want);
    }
    if (name[i] != want) {
      return false;
    }
  }
  return i == len && key[i] == '\0';
}

static const struct opt *find_flag(const char *name, size_t len) {
  for (size_t i = 0; i < N_OPTS; i++) {
    if (key_matches(opts[i].key, name, len, '-', false)) {
      return &opts[i];
    }
  }
  return NULL;
}

static const struct opt *find_key(const char *name) {
  for (size_t i = 0; i < N_OPTS; i++) {
    if (key_matches(opts[i].key, name, strlen(name), '_', false)) {
      return &opts[i];
    }
  }
  return NULL;
}

static const struct opt *find_env(const char *name, size_t len) {
  for (size_t i = 0; i < N_OPTS; i++) {
    if (!(opts[i].flags & OF_NO_ENV) && key_matches(opts[i].key, name, len, '_', true)) {
      return &opts[i];
    }
  }
  return NULL;
}

static const char *env_get(char **envp, const char *name) {
  size_t n = strlen(name);
  for (char **e = envp; e != NULL && *e != NULL; e++) {
    if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') {
      return *e + n + 1;
    }
  }
  return NULL;
}

static int strv_push(struct rp_strv *sv, const char *s) {
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

static void strv_clear(struct rp_strv *sv) {
  for (size_t i = 0; i < sv->n; i++) {
    free(sv->v[i]);
  }
  free(sv->v);
  sv->v = NULL;
  sv->n = 0;
}

static void lower(char *s) {
  for (; *s != '\0'; s++) {
    *s = (char)tolower((unsigned char)*s);
  }
}

static bool is_host_char(char c) {
  return isalnum((unsigned char)c) || c == '-' || c == '.' || c == '_';
}

static bool valid_hostname(const char *s, size_t n) {
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
static bool take_u64(const char **s, uint64_t *v) {
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

static bool parse_bool(const char *s, bool *out) {
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

  if (s == NULL || !take_u64(&p, &v)) {
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
    if (!take_u64(&p, &v)) {
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

static int listen_parse(const char *s, struct rp_listen_addr *out, char *why, size_t whylen) {
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
  return listen_parse(s, out, why, sizeof why);
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
    if (*hlen != 0 && !valid_hostname(p, *hlen)) {
      return NULL;
    }
    p += *hlen;
  }
  return p;
}

static int connect_to_parse(const char *s, struct rp_connect_to *out, char *why, size_t whylen) {
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
  lower(out->host);
  out->port = port1;
  out->to_port = port2;
  return 0;
}

int rp_config_parse_connect_to(const char *s, struct rp_connect_to *out) {
  char why[128];
  if (s == NULL || out == NULL) {
    return RP_EINVAL;
  }
  return connect_to_parse(s, out, why, sizeof why);
}

struct proxy_url {
  char *url;
  char *host;
  uint16_t port;
  bool tls;
  char *userinfo;
};

static void proxy_url_clear(struct proxy_url *u) {
  free(u->url);
  free(u->host);
  free(u->userinfo);
  memset(u, 0, sizeof *u);
}

static int hexval(char c) {
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
      if (i + 2 >= n || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0 ||
          (s[i + 1] == '0' && s[i + 2] == '0')) {
        free(d);
        return RP_EPARSE;
      }
      d[j++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
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
static int proxy_url_parse(const char *s, struct proxy_url *u, char *why, size_t whylen) {
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
    if (!valid_hostname(host, hlen)) {
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
  lower(u->host);
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

/* ---- applying values ---------------------------------------------------- */

static int fail(struct load *ld, const struct opt *o, const struct origin *org, const char *fmt,
                ...) __attribute__((format(printf, 4, 5)));

static int fail(struct load *ld, const struct opt *o, const struct origin *org, const char *fmt,
                ...) {
  char name[64];
  char *msg;
  va_list ap;

  va_start(ap, fmt);
  msg = rp__vaprintf(fmt, ap);
  va_end(ap);
  if (msg == NULL) {
    return RP_ENOMEM;
  }
  switch (org->src) {
  case RP_SRC_FLAG:
    flag_name(o, name, sizeof name);
    *ld->err = rp__aprintf("%s: %s", name, msg);
    break;
  case RP_SRC_ENV:
  case RP_SRC_PROXY_ENV: *ld->err = rp__aprintf("%s: %s", org->name, msg); break;
  case RP_SRC_FILE:
    *ld->err = rp__aprintf("%s:%u: key %s: %s", org->file, org->line, o->key, msg);
    break;
  default: *ld->err = rp__aprintf("%s: %s", o->key, msg); break;
  }
  free(msg);
  return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
}

static int replace_str(struct load *ld, const struct opt *o, char *value) {
  char **slot = field(ld->cfg, o->off);
  free(*slot);
  *slot = value;
  return 0;
}

/* "~" and "~/x" use $HOME; "" stays "" (none). */
static int expand_path(struct load *ld, const struct opt *o, const struct origin *org,
                       const char *v, char **out) {
  char shown[80];
  *out = NULL;
  if (v[0] == '~' && (v[1] == '/' || v[1] == '\0')) {
    if (ld->home == NULL) {
      rp__show(v, shown, sizeof shown);
      return fail(ld, o, org, "cannot expand '%s': HOME is not set", shown);
    }
    *out = rp__aprintf("%s%s", ld->home, v + 1);
  } else if (v[0] == '~') {
    rp__show(v, shown, sizeof shown);
    return fail(ld, o, org, "'~user' paths are not supported: '%s'", shown);
  } else if (v[0] != '/' && org->src == RP_SRC_FILE && strrchr(org->file, '/') != NULL) {
    /* A relative path in a config file means next to that file, so
     * "proxy_auth_file: htpasswd" in /etc/regproxy/regproxy.yml works
     * whatever the working directory. */
    const char *slash = strrchr(org->file, '/');
    *out = rp__aprintf("%.*s/%s", (int)(slash - org->file), org->file, v);
  } else {
    *out = strdup(v);
  }
  return *out != NULL ? 0 : RP_ENOMEM;
}

static int set_path(struct load *ld, const struct opt *o, const struct origin *org, const char *v) {
  char shown[80];
  char *path = NULL;
  int rc;

  if (v[0] == '\0') {
    if (o->flags & OF_NONEMPTY) {
      return fail(ld, o, org, "empty path");
    }
    return replace_str(ld, o, NULL);
  }
  rc = expand_path(ld, o, org, v, &path);
  if (rc != 0) {
    return rc;
  }
  if ((o->flags & OF_MUST_EXIST) && access(path, R_OK) != 0) {
    int e = errno;
    rp__show(path, shown, sizeof shown);
    free(path);
    return fail(ld, o, org, "cannot read '%s': %s", shown, strerror(e));
  }
  return replace_str(ld, o, path);
}

static int set_url(struct load *ld, const struct opt *o, const struct origin *org, const char *v) {
  struct rp_config *cfg = ld->cfg;
  struct proxy_url u;
  char why[160];
  char shown[80];
  int rc;

  memset(&u, 0, sizeof u);
  if (v[0] != '\0') {
    rc = proxy_url_parse(v, &u, why, sizeof why);
    if (rc == RP_EPARSE) {
      rp__show(v, shown, sizeof shown);
      return fail(ld, o, org, "bad proxy URL '%s': %s", shown, why);
    }
    if (rc != 0) {
      return rc;
    }
  }
  free(cfg->parent_proxy);
  free(cfg->parent_proxy_host);
  free(cfg->parent_proxy_userinfo);
  cfg->parent_proxy = u.url;
  cfg->parent_proxy_host = u.host;
  cfg->parent_proxy_port = u.port;
  cfg->parent_proxy_tls = u.tls;
  cfg->parent_proxy_userinfo = u.userinfo;
  return 0;
}

static int rules_error(struct load *ld, const struct opt *o, const struct origin *org,
                       const char *v, int rc, char *perr) {
  char shown[80];
  if (rc != RP_ENOMEM) {
    rp__show(v, shown, sizeof shown);
    rc = perr != NULL ? fail(ld, o, org, "%s", perr) : fail(ld, o, org, "bad list '%s'", shown);
  }
  free(perr);
  return rc;
}

/* Host lists, the ACL and port sets are validated by parsing them with the
 * rules module; the parsed form replaces the previous one with the text. */
static int set_rules(struct load *ld, const struct opt *o, const struct origin *org,
                     const char *v) {
  struct rp_config *cfg = ld->cfg;
  char *perr = NULL;
  char *text = NULL;
  int rc;

  if (o->type == OT_PORTSET && (v[0] == '\0' || strcasecmp(v, "default") == 0)) {
    struct rp_portset **slot = field(cfg, o->off2);
    rp_portset_destroy(*slot);
    *slot = NULL;
    return replace_str(ld, o, NULL);
  }
  text = strdup(v);
  if (text == NULL) {
    return RP_ENOMEM;
  }
  if (o->type == OT_HOSTLIST) {
    struct rp_hostlist **slot = field(cfg, o->off2);
    struct rp_hostlist *list = NULL;
    unsigned flags = (o->flags & OF_LOOPBACK_DIRECT) ? RP_HOSTLIST_LOOPBACK_DIRECT : 0;
    rc = rp_hostlist_parse(v, flags, &list, &perr);
    if (rc == 0) {
      rp_hostlist_destroy(*slot);
      *slot = list;
    }
  } else if (o->type == OT_ACL) {
    struct rp_acl **slot = field(cfg, o->off2);
    struct rp_acl *acl = NULL;
    rc = rp_acl_parse(v, &acl, &perr);
    if (rc == 0) {
      rp_acl_destroy(*slot);
      *slot = acl;
    }
  } else {
    struct rp_portset **slot = field(cfg, o->off2);
    struct rp_portset *set = NULL;
    rc = rp_portset_parse(v, &set, &perr);
    if (rc == 0) {
      rp_portset_destroy(*slot);
      *slot = set;
    }
  }
  if (rc != 0) {
    free(text);
    return rules_error(ld, o, org, v, rc, perr);
  }
  free(perr);
  return replace_str(ld, o, text);
}

/* Parse v into a scalar option. */
static int set_scalar(struct load *ld, const struct opt *o, const struct origin *org,
                      const char *v) {
  struct rp_config *cfg = ld->cfg;
  char shown[80];
  uint64_t u = 0;
  bool b;
  int n;

  rp__show(v, shown, sizeof shown);
  switch (o->type) {
  case OT_STRING: {
    /* mirror_default: a registry name, optionally with a port. */
    char *copy;
    if (v[0] == '\0' || strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "0123456789.-_:") != strlen(v)) {
      return fail(ld, o, org, "bad registry name '%s'", shown);
    }
    copy = strdup(v);
    if (copy == NULL) {
      return RP_ENOMEM;
    }
    lower(copy);
    return replace_str(ld, o, copy);
  }
  case OT_PATH: return set_path(ld, o, org, v);
  case OT_SIZE:
    if (rp_config_parse_size(v, &u) != 0) {
      return fail(ld, o, org, "bad size '%s' (e.g. 1024, 512M, 20G)", shown);
    }
    if (u == 0 && (o->flags & OF_NONZERO)) {
      return fail(ld, o, org, "must be greater than 0");
    }
    *(uint64_t *)field(cfg, o->off) = u;
    return 0;
  case OT_DURATION:
    if (rp_config_parse_duration(v, &u) != 0) {
      return fail(ld, o, org, "bad duration '%s' (e.g. 250ms, 30s, 10m, 1h, 1d)", shown);
    }
    if (u == 0 && (o->flags & OF_NONZERO)) {
      return fail(ld, o, org, "must be greater than 0");
    }
    *(uint64_t *)field(cfg, o->off) = u;
    return 0;
  case OT_BOOL:
    if (!parse_bool(v, &b)) {
      return fail(ld, o, org, "bad boolean '%s' (on|off|true|false|yes|no)", shown);
    }
    *(bool *)field(cfg, o->off) = b;
    return 0;
  case OT_UINT: {
    const char *p = v;
    if (!take_u64(&p, &u) || *p != '\0') {
      return fail(ld, o, org, "bad number '%s'", shown);
    }
    if (u < o->min || u > o->max) {
      return fail(ld, o, org, "%s out of range %llu-%llu", shown, (unsigned long long)o->min,
                  (unsigned long long)o->max);
    }
    *(unsigned *)field(cfg, o->off) = (unsigned)u;
    return 0;
  }
  case OT_MARK: {
    const char *p = v;
    if (v[0] == '\0' || strcasecmp(v, "off") == 0) {
      u = 0;
    } else if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X') && p[2] != '\0') {
      u = 0;
      for (p += 2; *p != '\0' && hexval(*p) >= 0 && u <= UINT32_MAX; p++) {
        u = u * 16 + (uint64_t)hexval(*p);
      }
      if (*p != '\0' || u > UINT32_MAX) {
        return fail(ld, o, org, "bad mark '%s' (a 32-bit number or off)", shown);
      }
    } else if (!take_u64(&p, &u) || *p != '\0' || u > UINT32_MAX) {
      return fail(ld, o, org, "bad mark '%s' (a 32-bit number or off)", shown);
    }
    *(uint32_t *)field(cfg, o->off) = (uint32_t)u;
    *(bool *)field(cfg, o->off2) = u != 0;
    return 0;
  }
  case OT_HOSTLIST:
  case OT_ACL:
  case OT_PORTSET: return set_rules(ld, o, org, v);
  case OT_LOGLEVEL:
  case OT_LOGFORMAT: {
    char word[16];
    size_t len = strlen(v);
    if (len >= sizeof word) {
      len = sizeof word - 1;
    }
    memcpy(word, v, len);
    word[len] = '\0';
    lower(word);
    n = len == strlen(v)
            ? (o->type == OT_LOGLEVEL ? rp_log_level_parse(word) : rp_log_format_parse(word))
            : -1;
    if (n < 0) {
      return fail(ld, o, org,
                  o->type == OT_LOGLEVEL ? "bad log level '%s' (debug, info, warn, error)"
                                         : "bad log format '%s' (logfmt, json)",
                  shown);
    }
    *(int *)field(cfg, o->off) = n;
    return 0;
  }
  case OT_URL: return set_url(ld, o, org, v);
  default: return RP_EINVAL;
  }
}

static void listen_free(struct rp_listen_addr *a, size_t n) {
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
  listen_free(cfg->listen, cfg->n_listen);
  listen_free(cfg->transparent, cfg->n_transparent);
  cfg->listen = l;
  cfg->n_listen = 1;
  cfg->transparent = NULL;
  cfg->n_transparent = 0;
  return 0;
}

static void connect_to_free(struct rp_connect_to *c, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(c[i].host);
    free(c[i].to_addr);
  }
  free(c);
}

static void list_reset(struct load *ld, const struct opt *o) {
  struct rp_config *cfg = ld->cfg;
  switch (o->type) {
  case OT_LISTEN: {
    struct rp_listen_addr **a = field(cfg, o->off);
    size_t *n = field(cfg, o->off2);
    listen_free(*a, *n);
    *a = NULL;
    *n = 0;
    break;
  }
  case OT_CONNECT_TO: {
    struct rp_connect_to **c = field(cfg, o->off);
    size_t *n = field(cfg, o->off2);
    connect_to_free(*c, *n);
    *c = NULL;
    *n = 0;
    break;
  }
  default: strv_clear(field(cfg, o->off)); break;
  }
}

/* Append one item to a list option. server_names items are themselves
 * comma-separated. */
static int list_add(struct load *ld, const struct opt *o, const struct origin *org, const char *v) {
  struct rp_config *cfg = ld->cfg;
  char why[128];
  char shown[80];
  int rc;

  /* An empty item (a YAML null, "--transparent ''") adds nothing, so a list
   * can be emptied; "off" reads naturally for the transparent listeners. */
  if (v[0] == '\0' || (o->type == OT_LISTEN && strcasecmp(v, "off") == 0)) {
    return 0;
  }
  rp__show(v, shown, sizeof shown);
  if (o->type == OT_LISTEN) {
    struct rp_listen_addr **a = field(cfg, o->off);
    size_t *n = field(cfg, o->off2);
    struct rp_listen_addr item;
    struct rp_listen_addr *grown;
    rc = listen_parse(v, &item, why, sizeof why);
    if (rc == RP_EPARSE) {
      return fail(ld, o, org, "bad address '%s': %s", shown, why);
    }
    if (rc != 0) {
      return rc;
    }
    grown = realloc(*a, (*n + 1) * sizeof **a);
    if (grown == NULL) {
      free(item.text);
      return RP_ENOMEM;
    }
    *a = grown;
    (*a)[(*n)++] = item;
    return 0;
  }
  if (o->type == OT_CONNECT_TO) {
    struct rp_connect_to **c = field(cfg, o->off);
    size_t *n = field(cfg, o->off2);
    struct rp_connect_to item;
    struct rp_connect_to *grown;
    rc = connect_to_parse(v, &item, why, sizeof why);
    if (rc == RP_EPARSE) {
      return fail(ld, o, org, "bad connect_to '%s': %s", shown, why);
    }
    if (rc != 0) {
      return rc;
    }
    grown = realloc(*c, (*n + 1) * sizeof **c);
    if (grown == NULL) {
      free(item.host);
      free(item.to_addr);
      return RP_ENOMEM;
    }
    *c = grown;
    (*c)[(*n)++] = item;
    return 0;
  }
  /* OT_NAMES */
  for (const char *p = v;;) {
    size_t len = strcspn(p, ",");
    const char *s = p;
    size_t slen = len;
    while (slen > 0 && isspace((unsigned char)*s)) {
      s++;
      slen--;
    }
    while (slen > 0 && isspace((unsigned char)s[slen - 1])) {
      slen--;
    }
    if (slen > 0) {
      char *name;
      if (!valid_hostname(s, slen)) {
        return fail(ld, o, org, "bad host name in '%s'", shown);
      }
      name = strndup(s, slen);
      if (name == NULL) {
        return RP_ENOMEM;
      }
      lower(name);
      rc = strv_push(field(cfg, o->off), name);
      free(name);
      if (rc != 0) {
        return rc;
      }
    }
    if (p[len] == '\0') {
      break;
    }
    p += len + 1;
  }
  return 0;
}

/* Start a new value for list option o from org: every layer replaces the
 * lower layers' list, and only a flag repeated on the command line adds. */
static void list_begin(struct load *ld, const struct opt *o, const struct origin *org) {
  size_t i = opt_index(o);
  if (!(org->src == RP_SRC_FLAG && ld->src[i] == RP_SRC_FLAG)) {
    list_reset(ld, o);
  }
}

static void record(struct load *ld, const struct opt *o, const struct origin *org) {
  size_t i = opt_index(o);
  ld->src[i] = org->src;
  ld->where[i] = *org;
}

/* Apply one text value (flag, environment variable or default). split: an
 * environment list is comma-separated. */
static int apply_text(struct load *ld, const struct opt *o, const struct origin *org, const char *v,
                      bool split) {
  int rc = 0;

  if (!is_list(o)) {
    rc = set_scalar(ld, o, org, v);
  } else {
    list_begin(ld, o, org);
    if (!split || o->type == OT_NAMES) {
      rc = list_add(ld, o, org, v);
    } else {
      for (const char *p = v; rc == 0;) {
        size_t len = strcspn(p, ",");
        const char *s = p;
        size_t slen = len;
        while (slen > 0 && isspace((unsigned char)*s)) {
          s++;
          slen--;
        }
        while (slen > 0 && isspace((unsigned char)s[slen - 1])) {
          slen--;
        }
        if (slen > 0) {
          char *item = strndup(s, slen);
          if (item == NULL) {
            return RP_ENOMEM;
          }
          rc = list_add(ld, o, org, item);
          free(item);
        }
        if (p[len] == '\0') {
          break;
        }
        p += len + 1;
      }
    }
  }
  if (rc == 0) {
    record(ld, o, org);
  }
  return rc;
}

/* A list written as a YAML sequence failed to parse as a whole: if one item
 * fails on its own, report that item's line instead of the key's. The
 * load is failing anyway, so parsing items into cfg does no harm. */
static int blame_item(struct load *ld, const struct opt *o, const struct rp__yaml_entry *e,
                      int rc) {
  struct origin org;

  memset(&org, 0, sizeof org);
  org.src = RP_SRC_FILE;
  org.file = ld->cfg->config_file;
  for (size_t i = 0; i < e->n_values; i++) {
    char *whole = *ld->err;
    int item_rc;
    *ld->err = NULL;
    org.line = e->values[i].line;
    item_rc = set_scalar(ld, o, &org, e->values[i].text);
    if (item_rc != 0) {
      free(whole);
      return item_rc;
    }
    *ld->err = whole;
  }
  return rc;
}

static int apply_yaml_entry(struct load *ld, const struct rp__yaml_entry *e) {
  struct origin org;
  const struct opt *o;
  char shown[80];
  int rc = 0;

  memset(&org, 0, sizeof org);
  org.src = RP_SRC_FILE;
  org.file = ld->cfg->config_file;
  org.line = e->line;
  rp__show(e->key, shown, sizeof shown);
  o = find_key(e->key);
  if (o == NULL) {
    char alt[64];
    size_t n = strlen(e->key);
    if (n < sizeof alt) {
      for (size_t i = 0; i <= n; i++) {
        alt[i] = e->key[i] == '-' ? '_' : e->key[i];
      }
      if (strchr(e->key, '-') != NULL && find_key(alt) != NULL) {
        *ld->err = rp__aprintf("%s:%u: key %s: unknown key (did you mean %s?)", org.file, org.line,
                               shown, alt);
        return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
      }
    }
    *ld->err = rp__aprintf("%s:%u: key %s: unknown key", org.file, org.line, shown);
    return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
  }
  if (o->flags & OF_NO_KEY) {
    return fail(ld, o, &org, "only valid on the command line%s",
                (o->flags & OF_NO_ENV) ? "" : " or in the environment");
  }
  if (ld->file_line[opt_index(o)] != 0) {
    return fail(ld, o, &org, "duplicate key (first at line %u)", ld->file_line[opt_index(o)]);
  }
  ld->file_line[opt_index(o)] = e->line;

  if (is_list(o)) {
    list_begin(ld, o, &org);
    for (size_t i = 0; i < e->n_values && rc == 0; i++) {
      org.line = e->values[i].line;
      rc = list_add(ld, o, &org, e->values[i].text);
    }
    org.line = e->line;
  } else if (e->is_seq) {
    if (o->type != OT_HOSTLIST && o->type != OT_ACL && o->type != OT_PORTSET) {
      return fail(ld, o, &org, "wrong node type: expected a scalar, got a sequence");
    }
    /* A list key written as a YAML sequence: join it with commas. */
    size_t len = 1;
    char *joined;
    for (size_t i = 0; i < e->n_values; i++) {
      len += strlen(e->values[i].text) + 1;
    }
    joined = malloc(len);
    if (joined == NULL) {
      return RP_ENOMEM;
    }
    joined[0] = '\0';
    for (size_t i = 0; i < e->n_values; i++) {
      if (i > 0) {
        strcat(joined, ",");
      }
      strcat(joined, e->values[i].text);
    }
    rc = set_scalar(ld, o, &org, joined);
    free(joined);
    if (rc == RP_ECONFIG) {
      rc = blame_item(ld, o, e, rc);
    }
  } else {
    rc = set_scalar(ld, o, &org, e->values[0].text);
  }
  if (rc == 0) {
    record(ld, o, &org);
  }
  return rc;
}

/* ---- the layers ----------------------------------------------------------- */

/* $HOME, else the password database; *out stays NULL when neither knows. */
static int home_dir(char **envp, char **out) {
  const char *h = env_get(envp, "HOME");
  struct passwd pw, *res = NULL;
  char buf[4096];

  *out = NULL;
  if (h == NULL || h[0] == '\0') {
    if (getpwuid_r(geteuid(), &pw, buf, sizeof buf, &res) != 0 || res == NULL ||
        res->pw_dir == NULL || res->pw_dir[0] == '\0') {
      return 0;
    }
    h = res->pw_dir;
  }
  *out = strdup(h);
  return *out != NULL ? 0 : RP_ENOMEM;
}

/* $XDG_x_HOME/rel_xdg, else ~/rel_home; root gets root_path. *out stays
 * NULL when there is no home directory. */
static int xdg_default(struct load *ld, const char *xdg, const char *rel_xdg, const char *rel_home,
                       const char *root_path, char **out) {
  const char *x = env_get(ld->envp, xdg);
  int euid = ld->opts->euid >= 0 ? ld->opts->euid : (int)geteuid();

  if (euid == 0) {
    *out = strdup(root_path);
  } else if (x != NULL && x[0] == '/') {
    /* The XDG spec says relative values are to be ignored. */
    *out = rp__aprintf("%s/%s", x, rel_xdg);
  } else if (ld->home != NULL) {
    *out = rp__aprintf("%s/%s", ld->home, rel_home);
  } else {
    *out = NULL;
    return 0;
  }
  return *out != NULL ? 0 : RP_ENOMEM;
}

static int apply_defaults(struct load *ld) {
  struct rp_config *cfg = ld->cfg;
  struct origin org;
  const char *dc;
  char *path;
  int rc;

  memset(&org, 0, sizeof org);
  org.src = RP_SRC_DEFAULT;
  for (size_t i = 0; i < N_OPTS; i++) {
    if (opts[i].def != NULL) {
      rc = apply_text(ld, &opts[i], &org, opts[i].def, false);
      if (rc != 0) {
        return rc;
      }
    }
  }
  /* Missing HOME leaves these NULL; finish() then asks for the flag. */
  rc = xdg_default(ld, "XDG_CACHE_HOME", "regproxy", ".cache/regproxy", "/var/cache/regproxy",
                   &cfg->cache_dir);
  if (rc != 0) {
    return rc;
  }
  rc = xdg_default(ld, "XDG_DATA_HOME", "regproxy/ca", ".local/share/regproxy/ca",
                   "/var/lib/regproxy/ca", &cfg->ca_dir);
  if (rc != 0) {
    return rc;
  }
  dc = env_get(ld->envp, "DOCKER_CONFIG");
  if (dc != NULL && dc[0] != '\0') {
    path = rp__aprintf("%s/config.json", dc);
  } else if (ld->home != NULL) {
    path = rp__aprintf("%s/.docker/config.json", ld->home);
  } else {
    return 0;
  }
  if (path == NULL) {
    return RP_ENOMEM;
  }
  if (access(path, R_OK) == 0) {
    cfg->registry_auth = path;
  } else {
    free(path);
  }
  return 0;
}

static int scan_argv(struct load *ld, int argc, char **argv) {
  struct rp_config *cfg = ld->cfg;
  bool ended = false;
  int rc;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *name, *eq, *value;
    const struct opt *o;
    size_t nlen;
    char shown[80];

    if (a == NULL) {
      break;
    }
    if (!ended && strcmp(a, "--") == 0) {
      ended = true;
      continue;
    }
    if (ended || a[0] != '-' || a[1] == '\0') {
      rc = strv_push(&cfg->args, a);
      if (rc != 0) {
        return rc;
      }
      continue;
    }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      cfg->want_help = true;
      continue;
    }
    if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
      cfg->want_version = true;
      continue;
    }
    rp__show(a, shown, sizeof shown);
    if (a[1] != '-') {
      *ld->err = rp__aprintf("unknown option '%s' (see --help)", shown);
      return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
    }
    name = a + 2;
    eq = strchr(name, '=');
    nlen = eq != NULL ? (size_t)(eq - name) : strlen(name);
    o = find_flag(name, nlen);
    if (o == NULL) {
      char alt[64];
      const struct opt *hint = NULL;
      if (nlen < sizeof alt) {
        for (size_t k = 0; k < nlen; k++) {
          alt[k] = name[k] == '_' ? '-' : name[k];
        }
        hint = memchr(name, '_', nlen) != NULL ? find_flag(alt, nlen) : NULL;
      }
      if (eq != NULL) {
        char n2[80];
        snprintf(n2, sizeof n2, "--%.*s", (int)(nlen > 60 ? 60 : nlen), name);
        rp__show(n2, shown, sizeof shown);
      }
      if (hint != NULL) {
        char fl[64];
        flag_name(hint, fl, sizeof fl);
        *ld->err = rp__aprintf("unknown option '%s' (did you mean %s?)", shown, fl);
      } else {
        *ld->err = rp__aprintf("unknown option '%s' (see --help)", shown);
      }
      return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
    }
    if (eq != NULL) {
      value = eq + 1;
    } else if (o->type == OT_BOOL) {
      /* "--tproxy" alone means on; "--access-check off" takes the word. */
      bool b;
      value = "on";
      if (i + 1 < argc && argv[i + 1] != NULL && parse_bool(argv[i + 1], &b)) {
        value = argv[++i];
      }
    } else if (i + 1 < argc && argv[i + 1] != NULL) {
      value = argv[++i];
    } else {
      char fl[64];
      flag_name(o, fl, sizeof fl);
      *ld->err = rp__aprintf("%s: missing value", fl);
      return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
    }
    {
      struct flagval *grown = realloc(ld->flags, (ld->n_flags + 1) * sizeof *grown);
      if (grown == NULL) {
        return RP_ENOMEM;
      }
      ld->flags = grown;
      ld->flags[ld->n_flags].o = o;
      ld->flags[ld->n_flags].value = value;
      ld->n_flags++;
    }
  }
  return 0;
}

static int read_config_file(struct load *ld) {
  struct rp_config *cfg = ld->cfg;
  const struct rp__config_opts *ko = ld->opts;
  struct rp__yaml_doc doc;
  struct origin org;
  const struct opt *copt = NULL;
  const char *path = NULL;
  int rc;

  memset(&doc, 0, sizeof doc);
  memset(&org, 0, sizeof org);
  for (size_t i = 0; i < N_OPTS; i++) {
    if (opts[i].flags & OF_CONFIG) {
      copt = &opts[i];
    }
  }
  if (ko->yaml_buf != NULL) {
    cfg->config_file = strdup(ko->yaml_name != NULL ? ko->yaml_name : "<config>");
    if (cfg->config_file == NULL) {
      return RP_ENOMEM;
    }
    rc = rp__yaml_read_buffer(cfg->config_file, ko->yaml_buf, ko->yaml_len, &doc, ld->err);
    goto apply;
  }
  for (size_t i = 0; i < ld->n_flags; i++) {
    if (ld->flags[i].o == copt) {
      path = ld->flags[i].value;
      org.src = RP_SRC_FLAG;
    }
  }
  if (path == NULL) {
    path = env_get(ld->envp, "REGPROXY_CONFIG");
    org.src = RP_SRC_ENV;
    snprintf(org.name, sizeof org.name, "REGPROXY_CONFIG");
  }
  if (path != NULL) {
    if (path[0] == '\0') {
      return 0; /* explicitly none */
    }
    rc = expand_path(ld, copt, &org, path, &cfg->config_file);
    if (rc != 0) {
      return rc;
    }
  } else {
    path = ko->default_config != NULL ? ko->default_config : RP_CONFIG_DEFAULT_PATH;
    if (access(path, F_OK) != 0) {
      return 0;
    }
    cfg->config_file = strdup(path);
    if (cfg->config_file == NULL) {
      return RP_ENOMEM;
    }
  }
  rc = rp__yaml_read_file(cfg->config_file, &doc, ld->err);
apply:
  for (size_t i = 0; rc == 0 && i < doc.n; i++) {
    rc = apply_yaml_entry(ld, &doc.entries[i]);
  }
  rp__yaml_doc_clear(&doc);
  return rc;
}

static int apply_env(struct load *ld) {
  char name[64];
  int rc;

  /* Unknown REGPROXY_* variables are typos that would silently do nothing. */
  for (char **e = ld->envp; e != NULL && *e != NULL; e++) {
    const char *eq;
    size_t n;
    if (strncmp(*e, "REGPROXY_", 9) != 0) {
      continue;
    }
    eq = strchr(*e, '=');
    n = eq != NULL ? (size_t)(eq - *e) : strlen(*e);
    if ((n == 12 && strncmp(*e, "REGPROXY_BIN", 12) == 0) ||
        strncmp(*e, "REGPROXY_TEST", 13) == 0) {
      continue;
    }
    if (find_env(*e + 9, n - 9) == NULL) {
      char shown[80];
      char raw[72];
      snprintf(raw, sizeof raw, "%.*s", (int)(n > 64 ? 64 : n), *e);
      rp__show(raw, shown, sizeof shown);
      *ld->err = rp__aprintf("%s: unknown variable (no such regproxy option)", shown);
      return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
    }
  }
  for (size_t i = 0; i < N_OPTS; i++) {
    const struct opt *o = &opts[i];
    const char *v;
    struct origin org;
    if (o->flags & (OF_NO_ENV | OF_CONFIG)) {
      continue;
    }
    env_name(o, name, sizeof name);
    v = env_get(ld->envp, name);
    if (v == NULL) {
      continue;
    }
    memset(&org, 0, sizeof org);
    org.src = RP_SRC_ENV;
    snprintf(org.name, sizeof org.name, "%s", name);
    rc = apply_text(ld, o, &org, v, true);
    if (rc != 0) {
      return rc;
    }
  }
  return 0;
}

static int apply_flags(struct load *ld) {
  struct origin org;
  int rc;

  memset(&org, 0, sizeof org);
  org.src = RP_SRC_FLAG;
  for (size_t i = 0; i < ld->n_flags; i++) {
    if (ld->flags[i].o->flags & OF_CONFIG) {
      continue;
    }
    rc = apply_text(ld, ld->flags[i].o, &org, ld->flags[i].value, false);
    if (rc != 0) {
      return rc;
    }
  }
  return 0;
}

/* The first non-empty variable of names[], as Go's httpproxy getEnvAny. */
static const char *env_any(char **envp, const char *const *names, size_t n, const char **which) {
  for (size_t i = 0; i < n; i++) {
    const char *v = env_get(envp, names[i]);
    if (v != NULL && v[0] != '\0') {
      *which = names[i];
      return v;
    }
  }
  return NULL;
}

static int apply_proxy_env(struct load *ld) {
  static const char *const https_names[] = {"HTTPS_PROXY", "https_proxy"};
  static const char *const http_names[] = {"HTTP_PROXY", "http_proxy"};
  static const char *const no_names[] = {"NO_PROXY", "no_proxy"};
  const struct opt *pp = find_key("parent_proxy");
  const struct opt *np = find_key("no_proxy");
  const char *which = NULL;
  const char *v;
  const char *cgi;
  struct origin org;
  int rc;

  memset(&org, 0, sizeof org);
  org.src = RP_SRC_PROXY_ENV;
  if (ld->src[opt_index(pp)] == RP_SRC_DEFAULT) {
    v = env_any(ld->envp, https_names, 2, &which);
    /* Like Go, HTTP_PROXY is not trusted when running as a CGI program
     * (httpoxy: a request header can set it). */
    cgi = env_get(ld->envp, "REQUEST_METHOD");
    if (v == NULL && (cgi == NULL || cgi[0] == '\0')) {
      v = env_any(ld->envp, http_names, 2, &which);
    }
    if (v != NULL) {
      snprintf(org.name, sizeof org.name, "%s", which);
      rc = apply_text(ld, pp, &org, v, false);
      if (rc != 0) {
        return rc;
      }
    }
  }
  if (ld->src[opt_index(np)] == RP_SRC_DEFAULT) {
    v = env_any(ld->envp, no_names, 2, &which);
    if (v != NULL) {
      snprintf(org.name, sizeof org.name, "%s", which);
      rc = apply_text(ld, np, &org, v, false);
      if (rc != 0) {
        return rc;
      }
    }
  }
  return 0;
}

/* ---- final checks ----------------------------------------------------------- */

static bool ip_equal(const char *a, const char *b) {
  unsigned char x[16], y[16];
  if (inet_pton(AF_INET, a, x) == 1 && inet_pton(AF_INET, b, y) == 1) {
    return memcmp(x, y, 4) == 0;
  }
  if (inet_pton(AF_INET6, a, x) == 1 && inet_pton(AF_INET6, b, y) == 1) {
    return memcmp(x, y, 16) == 0;
  }
  return false;
}

static bool is_wildcard(const char *h) {
  return ip_equal(h, "0.0.0.0") || ip_equal(h, "::");
}

static bool is_loopback_host(const char *h) {
  unsigned char a[16];
  static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (inet_pton(AF_INET, h, a) == 1) {
    return a[0] == 127;
  }
  if (inet_pton(AF_INET6, h, a) == 1) {
    return ip_equal(h, "::1") || (memcmp(a, v4mapped, 12) == 0 && a[12] == 127);
  }
  return false;
}

static bool is_localhost_name(const char *h) {
  return strcasecmp(h, "localhost") == 0 || strcasecmp(h, "localhost.") == 0;
}

/* Does a parent proxy at phost:pport reach our listener l? */
static bool points_at(const char *phost, uint16_t pport, const struct rp_listen_addr *l) {
  char hostname[256];
  if (pport != l->port) {
    return false;
  }
  if (strcasecmp(phost, l->host) == 0 || ip_equal(phost, l->host)) {
    return true;
  }
  if (is_localhost_name(phost)) {
    return is_loopback_host(l->host) || is_wildcard(l->host);
  }
  if (is_wildcard(l->host)) {
    if (is_loopback_host(phost) || is_wildcard(phost)) {
      return true;
    }
    if (gethostname(hostname, sizeof hostname) == 0) {
      hostname[sizeof hostname - 1] = '\0';
      return strcasecmp(hostname, phost) == 0;
    }
  }
  return false;
}

static int check_parent(struct load *ld) {
  struct rp_config *cfg = ld->cfg;
  const struct opt *pp = find_key("parent_proxy");
  size_t pi = opt_index(pp);
  const struct rp_listen_addr *hit = NULL;

  if (cfg->parent_proxy_host == NULL) {
    return 0;
  }
  for (size_t i = 0; i < cfg->n_listen && hit == NULL; i++) {
    if (points_at(cfg->parent_proxy_host, cfg->parent_proxy_port, &cfg->listen[i])) {
      hit = &cfg->listen[i];
    }
  }
  for (size_t i = 0; i < cfg->n_transparent && hit == NULL; i++) {
    if (points_at(cfg->parent_proxy_host, cfg->parent_proxy_port, &cfg->transparent[i])) {
      hit = &cfg->transparent[i];
    }
  }
  if (hit == NULL) {
    return 0;
  }
  if (ld->src[pi] == RP_SRC_PROXY_ENV) {
    /* A shell that exports HTTPS_PROXY for its tools exports it for us too. */
    char *msg = rp__aprintf("%s=%s points at regproxy's own listener %s; ignored",
                            ld->where[pi].name, cfg->parent_proxy, hit->text);
    int rc;
    if (msg == NULL) {
      return RP_ENOMEM;
    }
    rc = strv_push(&cfg->warnings, msg);
    free(msg);
    if (rc != 0) {
      return rc;
    }
    free(cfg->parent_proxy);
    free(cfg->parent_proxy_host);
    free(cfg->parent_proxy_userinfo);
    cfg->parent_proxy = NULL;
    cfg->parent_proxy_host = NULL;
    cfg->parent_proxy_userinfo = NULL;
    cfg->parent_proxy_port = 0;
    cfg->parent_proxy_tls = false;
    return 0;
  }
  return fail(ld, pp, &ld->where[pi], "%s points at regproxy's own listener %s", cfg->parent_proxy,
              hit->text);
}

static int finish(struct load *ld) {
  struct rp_config *cfg = ld->cfg;
  const struct opt *lo = find_key("listen");
  const char *ca_names;
  int rc;

  if (cfg->n_listen == 0 && cfg->n_transparent == 0) {
    return fail(ld, lo, &ld->where[opt_index(lo)],
                "no listener (listen and transparent are both empty)");
  }
  if (cfg->cache_dir == NULL) {
    *ld->err = rp__aprintf("cache_dir: no default (HOME is not set); use --cache-dir");
    return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
  }
  if (cfg->ca_dir == NULL) {
    *ld->err = rp__aprintf("ca_dir: no default (HOME is not set); use --ca-dir");
    return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
  }
  rc = check_parent(ld);
  if (rc != 0) {
    return rc;
  }
  /* A CA is made for the mitm list; with interception off, for the
   * default one, so that turning it on later needs no new CA. */
  ca_names = cfg->mitm;
  if (rp_hostlist_count(cfg->mitm_list) == 0 && !rp_hostlist_has_star(cfg->mitm_list)) {
    ca_names = DEFAULT_MITM;
  }
  rc = rp_hostlist_parse(ca_names, 0, &cfg->ca_names, NULL);
  if (rc != 0) {
    return rc;
  }
  cfg->parent_proxy_source = ld->src[opt_index(find_key("parent_proxy"))];
  cfg->allow_source = ld->src[opt_index(find_key("allow"))];
  cfg->cache_max_size_source = ld->src[opt_index(find_key("cache_max_size"))];
  return 0;
}

/* ---- entry points -------------------------------------------------------------- */

int rp__config_load_ex(struct rp_config **out, int argc, char **argv, char **envp,
                       const struct rp__config_opts *kopts, char **err) {
  struct load *ld = NULL;
  struct rp_config *cfg = NULL;
  char *dummy = NULL;
  int rc;

  if (err == NULL) {
    err = &dummy;
  }
  *err = NULL;
  if (out == NULL || kopts == NULL) {
    return RP_EINVAL;
  }
  *out = NULL;
  ld = calloc(1, sizeof *ld);
  cfg = calloc(1, sizeof *cfg);
  if (ld == NULL || cfg == NULL) {
    rc = RP_ENOMEM;
    goto out;
  }
  ld->cfg = cfg;
  ld->envp = envp;
  ld->opts = kopts;
  ld->err = err;
  rc = home_dir(envp, &ld->home);
  if (rc != 0) {
    goto out;
  }
  rc = apply_defaults(ld);
  if (rc != 0) {
    goto out;
  }
  rc = scan_argv(ld, argc, argv);
  if (rc != 0 || cfg->want_help || cfg->want_version) {
    goto out;
  }
  rc = read_config_file(ld);
  if (rc != 0) {
    goto out;
  }
  rc = apply_env(ld);
  if (rc != 0) {
    goto out;
  }
  rc = apply_flags(ld);
  if (rc != 0) {
    goto out;
  }
  rc = apply_proxy_env(ld);
  if (rc != 0) {
    goto out;
  }
  rc = finish(ld);
out:
  if (rc == 0) {
    *out = cfg;
    cfg = NULL;
  }
  rp_config_destroy(cfg);
  if (ld != NULL) {
    free(ld->flags);
    free(ld->home);
    free(ld);
  }
  free(dummy);
  return rc;
}

int rp_config_load(struct rp_config **out, int argc, char **argv, char **envp, char **err) {
  struct rp__config_opts kopts;
  memset(&kopts, 0, sizeof kopts);
  kopts.euid = -1;
  return rp__config_load_ex(out, argc, argv, envp, &kopts, err);
}

int rp__config_load_yaml_buffer(struct rp_config **out, const char *name, const void *buf,
                                size_t len, char **err) {
  static char prog[] = "regproxy";
  char *argv[] = {prog, NULL};
  char *envp[] = {NULL};
  struct rp__config_opts kopts;

  memset(&kopts, 0, sizeof kopts);
  kopts.euid = 0; /* fixed defaults, independent of the caller */
  kopts.yaml_name = name;
  kopts.yaml_buf = buf != NULL ? buf : "";
  kopts.yaml_len = buf != NULL ? len : 0;
  return rp__config_load_ex(out, 1, argv, envp, &kopts, err);
}

int rp_config_check_listeners(const struct rp_config *cfg, char **err) {
  const struct rp_listen_addr *lists[2] = {cfg->listen, cfg->transparent};
  const size_t counts[2] = {cfg->n_listen, cfg->n_transparent};
  static const char *const flags[2] = {"--listen", "--transparent"};

  if (cfg->allow_source != RP_SRC_DEFAULT) {
    return 0;
  }
  for (size_t k = 0; k < 2; k++) {
    for (size_t i = 0; i < counts[k]; i++) {
      if (!is_loopback_host(lists[k][i].host)) {
        *err = rp__aprintf("%s %s: a listener on a non-loopback address needs an explicit "
                           "allow (--allow, allow: in the config file, or REGPROXY_ALLOW)",
                           flags[k], lists[k][i].text);
        return *err != NULL ? RP_ECONFIG : RP_ENOMEM;
      }
    }
  }
  return 0;
}

void rp_config_destroy(struct rp_config *cfg) {
  if (cfg == NULL) {
    return;
  }
  for (size_t i = 0; i < N_OPTS; i++) {
    const struct opt *o = &opts[i];
    switch (o->type) {
    case OT_STRING:
    case OT_PATH:
    case OT_URL: free(*(char **)field(cfg, o->off)); break;
    case OT_HOSTLIST:
      free(*(char **)field(cfg, o->off));
      rp_hostlist_destroy(*(struct rp_hostlist **)field(cfg, o->off2));
      break;
    case OT_ACL:
      free(*(char **)field(cfg, o->off));
      rp_acl_destroy(*(struct rp_acl **)field(cfg, o->off2));
      break;
    case OT_PORTSET:
      free(*(char **)field(cfg, o->off));
      rp_portset_destroy(*(struct rp_portset **)field(cfg, o->off2));
      break;
    case OT_LISTEN:
      listen_free(*(struct rp_listen_addr **)field(cfg, o->off), *(size_t *)field(cfg, o->off2));
      break;
    case OT_CONNECT_TO:
      connect_to_free(*(struct rp_connect_to **)field(cfg, o->off), *(size_t *)field(cfg, o->off2));
      break;
    case OT_NAMES: strv_clear(field(cfg, o->off)); break;
    default: break;
    }
  }
  free(cfg->parent_proxy_host);
  free(cfg->parent_proxy_userinfo);
  rp_hostlist_destroy(cfg->ca_names);
  strv_clear(&cfg->args);
  strv_clear(&cfg->warnings);
  free(cfg);
}

/* ---- --help ---------------------------------------------------------------- */

void rp__config_usage_write(FILE *fp) {
  fputs("usage:\n"
        "  regproxy [run] [options]          run the proxy (default)\n"
        "  regproxy ca init|cert|path        create the CA if missing / print its PEM / print "
        "its path\n"
        "                                    (init --force: a new CA for the current mitm list;\n"
        "                                    --unconstrained: one that may sign for any host)\n"
        "  regproxy setup docker|containerd|podman [--dry-run] [--root DIR]\n"
        "  regproxy cache ls|du|verify|gc|rm <digest>\n"
        "                                    list / total / re-hash (removing bad objects) /\n"
        "                                    evict to --cache-max-size / remove one object; asks\n"
        "                                    the running regproxy when one holds --cache-dir\n"
        "  regproxy prefetch <image-ref>...  warm the cache (all platforms), with progress;\n"
        "                                    through the running regproxy when one holds\n"
        "                                    --cache-dir (credentials: --registry-auth)\n"
        "  regproxy --version | --help\n"
        "\n"
        "Every option is also a config-file key (--cache-max-size <-> cache_max_size) and an\n"
        "environment variable (REGPROXY_CACHE_MAX_SIZE); lists in the environment are\n"
        "comma-separated. Precedence: flag > REGPROXY_* environment > config file >\n"
        "HTTPS_PROXY/HTTP_PROXY/NO_PROXY environment > default. Sizes: 1024, 2k, 512M, 20G, 1T.\n"
        "Durations: 250ms, 30s, 10m, 1h, 1d, 0. Booleans: on|off|true|false|yes|no.\n",
        fp);
  for (int g = 0; g < G_LAST; g++) {
    fprintf(fp, "\n%s:\n", group_titles[g]);
    if (g == G_GENERAL) {
      fprintf(fp, "  %-36s %s\n", "-h, --help", "show this help");
      fprintf(fp, "  %-36s %s\n", "-V, --version", "show the version");
    }
    for (size_t i = 0; i < N_OPTS; i++) {
      const struct opt *o = &opts[i];
      char left[96];
      char fl[64];
      const char *shown = o->shown != NULL ? o->shown : o->def;
      if (o->group != (enum opt_group)g) {
        continue;
      }
      flag_name(o, fl, sizeof fl);
      if (o->metavar != NULL) {
        snprintf(left, sizeof left, "%s %s", fl, o->metavar);
      } else {
        snprintf(left, sizeof left, "%s", fl);
      }
      fprintf(fp, "  %-36s %s [default: %s]\n", left, o->help, shown != NULL ? shown : "none");
    }
  }
}

void rp_config_usage(void) {
  rp__config_usage_write(stdout);
}
