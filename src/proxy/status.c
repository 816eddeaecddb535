/* The numbers of the status page (SPEC §5 `GET /status.json`, `GET /`): cache
 * totals, bytes served from the cache and from upstream (the hit ratio and
 * the bytes saved), fills in flight, the recent pulls (manifest GETs by tag)
 * and the repositories served most. Fed from the request log line of every
 * registry request (rp__status_note), bounded: a ring of recent pulls and a
 * fixed table of repositories where the least served one makes room.
 * Also kept here: bytes per minute over the last hour (a ring of 60 minutes,
 * for the page's chart), and per registry and credential kind the last
 * ratelimit-limit / ratelimit-remaining an upstream manifest answer carried
 * (Docker Hub's pull limit) with the manifest GETs the cache answered without
 * an upstream GET (pulls saved); a small fixed table, new keys ignored once
 * it is full, so the metric labels stay few. */
#include <arpa/inet.h>
#include <jansson.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "internal.h"
#include "regproxy/util.h"
#include "regcache.h"
#include "regproxy/cache.h"
#include "regproxy/metrics.h"

#define RECENT_MAX 32
#define REPOS_MAX  256
#define TOP_REPOS  10
#define MINUTES    60
#define LIMITS_MAX 16 /* a few registries × anonymous / authenticated */

struct recent {
  int64_t when; /* unix seconds */
  char client[80];
  char image[800];
  char cache[16];
  int status;
  double ms;
};

struct repo_stat {
  char name[560]; /* "registry/repository" */
  uint64_t from_cache, from_upstream, requests;
};

struct minute {
  int64_t minute; /* unix seconds / 60; 0: unused */
  uint64_t from_cache, from_upstream, hits, requests;
};

struct limit {
  char registry[300];
  bool authenticated;
  bool have_limit; /* ratelimit headers seen at least once */
  int64_t limit, remaining, window, updated;
  uint64_t pulls_saved;
};

struct rp__status {
  struct minute minutes[MINUTES]; /* slot = minute % MINUTES */
  struct limit limits[LIMITS_MAX];
  size_t nlimits;
  struct recent recent[RECENT_MAX];
  size_t nrecent, next;
  struct repo_stat repo[REPOS_MAX];
  size_t nrepo;
  uint64_t registry_cache_bytes, registry_upstream_bytes;
};

static bool from_cache(const char *label) {
  return strcmp(label, "hit") == 0 || strcmp(label, "revalidated") == 0 ||
         strcmp(label, "coalesced") == 0 || strcmp(label, "stale") == 0;
}

static struct repo_stat *repo_slot(struct rp__status *st, const char *name) {
  struct repo_stat *least = NULL;

  for (size_t i = 0; i < st->nrepo; i++) {
    if (strcmp(st->repo[i].name, name) == 0)
      return &st->repo[i];
    if (least == NULL || st->repo[i].from_cache + st->repo[i].from_upstream <
                             least->from_cache + least->from_upstream)
      least = &st->repo[i];
  }
  if (st->nrepo < REPOS_MAX)
    least = &st->repo[st->nrepo++];
  memset(least, 0, sizeof(*least));
  snprintf(least->name, sizeof(least->name), "%s", name);
  return least;
}

static struct rp__status *status_get(struct rp_server *srv) {
  if (srv->status == NULL)
    srv->status = calloc(1, sizeof(*srv->status));
  return srv->status;
}

static struct limit *limit_slot(struct rp__status *st, const char *registry, bool authenticated) {
  struct limit *l;

  for (size_t i = 0; i < st->nlimits; i++)
    if (st->limits[i].authenticated == authenticated &&
        strcmp(st->limits[i].registry, registry) == 0)
      return &st->limits[i];
  if (st->nlimits == LIMITS_MAX)
    return NULL;
  l = &st->limits[st->nlimits++];
  memset(l, 0, sizeof(*l));
  snprintf(l->registry, sizeof(l->registry), "%s", registry);
  l->authenticated = authenticated;
  return l;
}

/* A JWT's payload names its subject; Docker Hub's anonymous tokens have an
 * empty one. Anything that does not decode counts as a credential. */
static bool bearer_has_subject(const char *tok, size_t len) {
  const char *dot1 = memchr(tok, '.', len), *dot2;
  char *b64 = NULL, *raw = NULL;
  size_t n, rawlen;
  json_t *j = NULL;
  const char *sub;
  bool rc = true;

  if (dot1 == NULL)
    return true;
  dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - tok));
  if (dot2 == NULL)
    return true;
  n = (size_t)(dot2 - dot1 - 1);
  b64 = malloc(n + 1);
  if (b64 == NULL)
    return true;
  for (size_t i = 0; i < n; i++) {
    char ch = dot1[1 + i];
    b64[i] = ch == '-' ? '+' : ch == '_' ? '/' : ch;
  }
  if (rp_base64_decode(b64, n, &raw, &rawlen) != 0)
    goto out;
  j = json_loadb(raw, rawlen, 0, NULL);
  if (j == NULL)
    goto out;
  sub = json_string_value(json_object_get(j, "sub"));
  rc = sub != NULL && sub[0] != '\0';
out:
  json_decref(j);
  free(raw);
  free(b64);
  return rc;
}

bool rp__status_authenticated(const struct rp_conn *c) {
  const char *v = NULL;
  size_t len = 0;

  if (c->mirror) {
    v = c->mirror_authz;
    len = v != NULL ? strlen(v) : 0;
  } else if (c->head != NULL) {
    const struct rp_http_header *h = rp_http_header_find(c->head, "authorization");
    if (h != NULL) {
      v = h->value;
      len = h->value_len;
    }
  }
  if (v == NULL || len == 0)
    return false;
  if (len > 7 && strncasecmp(v, "Bearer ", 7) == 0)
    return bearer_has_subject(v + 7, len - 7);
  return true;
}

/* "100;w=21600": the count, and the window in seconds when it is named. */
static bool parse_limit(const char *v, int64_t *count, int64_t *window) {
  char *end;
  long long n;

  if (v[0] < '0' || v[0] > '9')
    return false;
  n = strtoll(v, &end, 10);
  if (n < 0)
    return false;
  *count = n;
  while (*end == ' ')
    end++;
  if (*end == ';') {
    const char *w = strstr(end, "w=");
    if (w != NULL && w[2] >= '0' && w[2] <= '9')
      *window = strtoll(w + 2, NULL, 10);
  }
  return true;
}

void rp__status_ratelimit(struct rp_server *srv, const char *registry, bool authenticated,
                          const struct rp_http_header *h, size_t n) {
  struct rp__status *st;
  struct limit *l;
  char lim[64] = "", rem[64] = "";
  int64_t limit = -1, remaining = -1, window = 0;

  for (size_t i = 0; i < n; i++) {
    char *dst = rp_http_token_eq(h[i].name, h[i].name_len, "ratelimit-limit")       ? lim
                : rp_http_token_eq(h[i].name, h[i].name_len, "ratelimit-remaining") ? rem
                                                                                    : NULL;
    if (dst != NULL)
      snprintf(dst, 64, "%.*s", (int)h[i].value_len, h[i].value);
  }
  if (!parse_limit(rem, &remaining, &window))
    return;
  if (lim[0] != '\0' && !parse_limit(lim, &limit, &window))
    limit = -1;
  st = status_get(srv);
  if (st == NULL || (l = limit_slot(st, registry, authenticated)) == NULL)
    return;
  l->have_limit = true;
  l->limit = limit;
  l->remaining = remaining;
  l->window = window;
  l->updated = (int64_t)time(NULL);
}

static struct minute *minute_slot(struct rp__status *st, int64_t now) {
  int64_t m = now / 60;
  struct minute *s = &st->minutes[m % MINUTES];
  if (s->minute != m) {
    memset(s, 0, sizeof(*s));
    s->minute = m;
  }
  return s;
}

void rp__status_note(struct rp_conn *c) {
  struct rp_server *srv = c->srv;
  const struct rp_reqlog *r = &c->log;
  struct rp__status *st;
  struct repo_stat *rs;
  struct minute *mn;
  char registry[300], name[560];
  const char *label = r->cache != NULL ? r->cache : "-";

  if (!(c->mitm || c->up_plain || c->mirror) || c->head == NULL ||
      (c->reg.kind != RP_REG_MANIFEST && c->reg.kind != RP_REG_BLOB))
    return;
  st = status_get(srv);
  if (st == NULL)
    return;
  rp__mitm_registry(c, registry, sizeof(registry));
  snprintf(name, sizeof(name), "%s/%s", registry, c->reg.name);
  rs = repo_slot(st, name);
  rs->requests++;
  mn = minute_slot(st, (int64_t)time(NULL));
  mn->requests++;
  if (from_cache(label)) {
    rs->from_cache += r->bytes_out;
    st->registry_cache_bytes += r->bytes_out;
    mn->from_cache += r->bytes_out;
    mn->hits++;
  } else {
    rs->from_upstream += r->bytes_out;
    st->registry_upstream_bytes += r->bytes_out;
    mn->from_upstream += r->bytes_out;
  }
  /* A pull saved: a manifest GET that caused no upstream manifest GET (an
   * upstream HEAD is free against Docker Hub's limit). */
  if (c->reg.kind == RP_REG_MANIFEST && c->head->method_id == HTTP_GET && from_cache(label) &&
      r->status >= 200 && r->status <= 299) {
    struct limit *l = limit_slot(st, registry, rp__status_authenticated(c));
    if (l != NULL)
      l->pulls_saved++;
  }
  if (c->reg.kind == RP_REG_MANIFEST && !c->reg.ref_is_digest && c->head->method_id == HTTP_GET) {
    struct recent *p = &st->recent[st->next];
    st->next = (st->next + 1) % RECENT_MAX;
    if (st->nrecent < RECENT_MAX)
      st->nrecent++;
    p->when = (int64_t)time(NULL);
    snprintf(p->client, sizeof(p->client), "%s", c->client_addr);
    snprintf(p->image, sizeof(p->image), "%s:%s", name, c->reg.ref);
    snprintf(p->cache, sizeof(p->cache), "%s", label);
    p->status = r->status;
    p->ms = (double)(uv_hrtime() - r->start_ns) / 1e6;
  }
}

static int by_total(const void *a, const void *b) {
  const struct repo_stat *x = a, *y = b;
  uint64_t tx = x->from_cache + x->from_upstream, ty = y->from_cache + y->from_upstream;
  return tx > ty ? -1 : tx < ty ? 1 : strcmp(x->name, y->name);
}

/* The first proxy listener as bound ("0.0.0.0:2080" stays a wildcard: the
 * page then uses the address the browser reached). "" when there is none. */
static void listen_addr(const struct rp_server *srv, char *out, size_t n) {
  struct sockaddr_storage ss;
  char ip[INET6_ADDRSTRLEN] = "";
  int len = sizeof(ss);

  out[0] = '\0';
  for (size_t i = 0; i < srv->nlisteners; i++) {
    if (srv->listeners[i].transparent || srv->listeners[i].closed)
      continue;
    memset(&ss, 0, sizeof(ss));
    if (uv_tcp_getsockname(&srv->listeners[i].tcp, (struct sockaddr *)&ss, &len) != 0)
      return;
    if (ss.ss_family == AF_INET6) {
      const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
      uv_ip6_name(a, ip, sizeof(ip));
      snprintf(out, n, "[%s]:%u", ip, ntohs(a->sin6_port));
    } else {
      const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
      uv_ip4_name(a, ip, sizeof(ip));
      snprintf(out, n, "%s:%u", ip, ntohs(a->sin_port));
    }
    return;
  }
}

static json_t *minutes_json(const struct rp__status *st, int64_t now, json_t *hour) {
  json_t *arr = json_array();
  uint64_t fc = 0, fu = 0, hits = 0, reqs = 0;

  /* Oldest first, the current minute last; minutes without traffic as 0. */
  for (int64_t m = now / 60 - (MINUTES - 1); m <= now / 60; m++) {
    const struct minute *s = st != NULL ? &st->minutes[m % MINUTES] : NULL;
    bool live = s != NULL && s->minute == m;
    json_array_append_new(arr, json_pack("{s:I, s:I, s:I, s:I, s:I}", "time", (json_int_t)(m * 60),
                                         "from_cache", (json_int_t)(live ? s->from_cache : 0),
                                         "from_upstream", (json_int_t)(live ? s->from_upstream : 0),
                                         "hits", (json_int_t)(live ? s->hits : 0), "requests",
                                         (json_int_t)(live ? s->requests : 0)));
    if (live) {
      fc += s->from_cache;
      fu += s->from_upstream;
      hits += s->hits;
      reqs += s->requests;
    }
  }
  json_object_set_new(hour, "from_cache", json_integer((json_int_t)fc));
  json_object_set_new(hour, "from_upstream", json_integer((json_int_t)fu));
  json_object_set_new(hour, "hits", json_integer((json_int_t)hits));
  json_object_set_new(hour, "requests", json_integer((json_int_t)reqs));
  json_object_set_new(hour, "hit_ratio",
                      json_real(fc + fu > 0 ? (double)fc / (double)(fc + fu) : 0.0));
  return arr;
}

static json_t *limits_json(const struct rp__status *st, uint64_t *saved) {
  json_t *arr = json_array();

  *saved = 0;
  for (size_t i = 0; st != NULL && i < st->nlimits; i++) {
    const struct limit *l = &st->limits[i];
    json_t *o = json_pack("{s:s, s:s, s:I}", "registry", l->registry, "auth",
                          l->authenticated ? "authenticated" : "anonymous", "pulls_saved",
                          (json_int_t)l->pulls_saved);
    *saved += l->pulls_saved;
    if (o == NULL)
      continue;
    if (l->have_limit) {
      if (l->limit >= 0)
        json_object_set_new(o, "limit", json_integer(l->limit));
      json_object_set_new(o, "remaining", json_integer(l->remaining));
      if (l->window > 0)
        json_object_set_new(o, "window_seconds", json_integer(l->window));
      json_object_set_new(o, "updated", json_integer(l->updated));
    }
    json_array_append_new(arr, o);
  }
  return arr;
}

void rp__status_metrics(struct rp_server *srv, struct rp_sbuf *b) {
  const struct rp__status *st = srv->status;

  rp_sbuf_adds(b, "# HELP regproxy_registry_ratelimit_remaining Pulls left in the registry's "
                  "window (its last ratelimit-remaining header).\n"
                  "# TYPE regproxy_registry_ratelimit_remaining gauge\n");
  for (size_t i = 0; st != NULL && i < st->nlimits; i++)
    if (st->limits[i].have_limit)
      rp_sbuf_addf(b, "regproxy_registry_ratelimit_remaining{registry=\"%s\",auth=\"%s\"} %lld\n",
                   st->limits[i].registry,
                   st->limits[i].authenticated ? "authenticated" : "anonymous",
                   (long long)st->limits[i].remaining);
  rp_sbuf_adds(b, "# HELP regproxy_registry_ratelimit_limit Pulls allowed per window (the "
                  "registry's last ratelimit-limit header).\n"
                  "# TYPE regproxy_registry_ratelimit_limit gauge\n");
  for (size_t i = 0; st != NULL && i < st->nlimits; i++)
    if (st->limits[i].have_limit && st->limits[i].limit >= 0)
      rp_sbuf_addf(b, "regproxy_registry_ratelimit_limit{registry=\"%s\",auth=\"%s\"} %lld\n",
                   st->limits[i].registry,
                   st->limits[i].authenticated ? "authenticated" : "anonymous",
                   (long long)st->limits[i].limit);
  rp_sbuf_adds(b, "# HELP regproxy_pulls_saved_total Manifest GETs answered without an upstream "
                  "manifest GET.\n# TYPE regproxy_pulls_saved_total counter\n");
  for (size_t i = 0; st != NULL && i < st->nlimits; i++)
    rp_sbuf_addf(b, "regproxy_pulls_saved_total{registry=\"%s\",auth=\"%s\"} %llu\n",
                 st->limits[i].registry,
                 st->limits[i].authenticated ? "authenticated" : "anonymous",
                 (unsigned long long)st->limits[i].pulls_saved);
}

char *rp__status_json(struct rp_server *srv, size_t *len) {
  struct rp__status *st = srv->status;
  struct rp_cache_stats cs;
  json_t *j, *arr, *hour;
  char listen[INET6_ADDRSTRLEN + 16];
  uint64_t saved;
  int64_t now = (int64_t)time(NULL);
  uint64_t hit = st != NULL ? st->registry_cache_bytes : 0,
           up = st != NULL ? st->registry_upstream_bytes : 0;
  char *text;

  memset(&cs, 0, sizeof(cs));
  if (srv->cache != NULL)
    rp_cache_stats(srv->cache, &cs);
  j = json_pack("{s:I, s:{s:I, s:I, s:I, s:I, s:I, s:I}, s:{s:I, s:I, s:I}, s:f}", "time",
                (json_int_t)time(NULL), "cache", "size_bytes", (json_int_t)cs.size_bytes, "objects",
                (json_int_t)cs.objects, "max_size", (json_int_t)cs.max_size, "evictions",
                (json_int_t)cs.evictions, "digest_mismatches", (json_int_t)cs.digest_mismatches,
                "fills_in_flight", (json_int_t)cs.fills_in_flight, "bytes", "from_cache",
                (json_int_t)hit, "from_upstream", (json_int_t)up, "tunnelled",
                (json_int_t)rp_metrics.bytes[1][RP_SRC_BYTES_TUNNEL], "hit_ratio",
                hit + up > 0 ? (double)hit / (double)(hit + up) : 0.0);
  if (j == NULL)
    return NULL;
  listen_addr(srv, listen, sizeof(listen));
  json_object_set_new(j, "listen", json_string(listen));
  hour = json_object();
  json_object_set_new(j, "minutes", minutes_json(st, now, hour));
  json_object_set_new(j, "last_hour", hour);
  json_object_set_new(j, "ratelimits", limits_json(st, &saved));
  json_object_set_new(j, "pulls_saved", json_integer((json_int_t)saved));
  arr = json_array();
  rp__regcache_fills_json(srv, arr);
  json_object_set_new(j, "fills", arr);
  arr = json_array();
  for (size_t i = 0; st != NULL && i < st->nrecent; i++) {
    const struct recent *p = &st->recent[(st->next + RECENT_MAX - 1 - i) % RECENT_MAX];
    json_array_append_new(arr,
                          json_pack("{s:I, s:s, s:s, s:s, s:i, s:f}", "time", (json_int_t)p->when,
                                    "client", p->client, "image", p->image, "cache", p->cache,
                                    "status", p->status, "ms", p->ms));
  }
  json_object_set_new(j, "recent_pulls", arr);
  arr = json_array();
  if (st != NULL && st->nrepo > 0) {
    struct repo_stat *sorted = malloc(st->nrepo * sizeof(*sorted));
    if (sorted != NULL) {
      memcpy(sorted, st->repo, st->nrepo * sizeof(*sorted));
      qsort(sorted, st->nrepo, sizeof(*sorted), by_total);
      for (size_t i = 0; i < st->nrepo && i < TOP_REPOS; i++)
        json_array_append_new(arr, json_pack("{s:s, s:I, s:I, s:I}", "repository", sorted[i].name,
                                             "from_cache", (json_int_t)sorted[i].from_cache,
                                             "from_upstream", (json_int_t)sorted[i].from_upstream,
                                             "requests", (json_int_t)sorted[i].requests));
      free(sorted);
    }
  }
  json_object_set_new(j, "top_repositories", arr);
  text = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  if (text != NULL)
    *len = strlen(text);
  return text;
}

void rp__status_shutdown(struct rp_server *srv) {
  free(srv->status);
  srv->status = NULL;
}
