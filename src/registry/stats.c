/* The registry service's numbers for the status page (contract §5 `GET
 * /status.json`, `GET /`) and /metrics: bytes served from the cache and from
 * upstream (the hit ratio and the bytes saved), fills in flight, the recent
 * pulls (manifest GETs by tag) and the repositories served most. Fed from
 * the end of every registry request (rp__stats_note, with what the front
 * saw of it), bounded: a ring of recent pulls and a
 * fixed table of repositories where the least served one makes room.
 * Also kept here: bytes per minute over the last hour (a ring of 60 minutes,
 * for the page's chart), and per registry and credential kind the last
 * ratelimit-limit / ratelimit-remaining an upstream manifest answer carried
 * (Docker Hub's pull limit) with the manifest GETs the cache answered without
 * an upstream GET (pulls saved); a small fixed table, new keys ignored once
 * it is full, so the metric labels stay few. */
#include <jansson.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "internal.h"
#include "regproxy/util.h"

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

struct rp__stats {
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

static struct repo_stat *repo_slot(struct rp__stats *st, const char *name) {
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

static struct rp__stats *status_get(struct rp_registry *reg) {
  if (reg->stats == NULL)
    reg->stats = calloc(1, sizeof(*reg->stats));
  return reg->stats;
}

static struct limit *limit_slot(struct rp__stats *st, const char *registry, bool authenticated) {
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

bool rp__stats_authenticated(const struct rp__rq *rq) {
  const char *v = NULL;
  size_t len = 0;

  if (rq->way == RP_REGISTRY_MIRROR) {
    v = rq->authz;
    len = v != NULL ? strlen(v) : 0;
  } else {
    const struct rp_http_header *h = rp_http_header_find(rq->head, "authorization");
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

void rp__stats_ratelimit(struct rp_registry *reg, const char *registry, bool authenticated,
                         const struct rp_http_header *h, size_t n) {
  struct rp__stats *st;
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
  st = status_get(reg);
  if (st == NULL || (l = limit_slot(st, registry, authenticated)) == NULL)
    return;
  l->have_limit = true;
  l->limit = limit;
  l->remaining = remaining;
  l->window = window;
  l->updated = (int64_t)time(NULL);
}

static struct minute *minute_slot(struct rp__stats *st, int64_t now) {
  int64_t m = now / 60;
  struct minute *s = &st->minutes[m % MINUTES];
  if (s->minute != m) {
    memset(s, 0, sizeof(*s));
    s->minute = m;
  }
  return s;
}

void rp__stats_note(struct rp__rq *rq, const struct rp_exchange_summary *sum) {
  const struct rp_reg_path *p = &rq->path;
  struct rp__stats *st;
  struct repo_stat *rs;
  struct minute *mn;
  char name[560];
  const char *label = rq->label != NULL ? rq->label : "-";

  if (rq->registry[0] == '\0' || (p->kind != RP_REG_MANIFEST && p->kind != RP_REG_BLOB))
    return;
  st = status_get(rq->reg);
  if (st == NULL)
    return;
  snprintf(name, sizeof(name), "%s/%s", rq->registry, p->name);
  rs = repo_slot(st, name);
  rs->requests++;
  mn = minute_slot(st, (int64_t)time(NULL));
  mn->requests++;
  if (from_cache(label)) {
    rs->from_cache += sum->bytes_out;
    st->registry_cache_bytes += sum->bytes_out;
    mn->from_cache += sum->bytes_out;
    mn->hits++;
  } else {
    rs->from_upstream += sum->bytes_out;
    st->registry_upstream_bytes += sum->bytes_out;
    mn->from_upstream += sum->bytes_out;
  }
  /* A pull saved: a manifest GET that caused no upstream manifest GET (an
   * upstream HEAD is free against Docker Hub's limit). */
  if (p->kind == RP_REG_MANIFEST && rq->head->method_id == HTTP_GET && from_cache(label) &&
      sum->status >= 200 && sum->status <= 299) {
    struct limit *l = limit_slot(st, rq->registry, rp__stats_authenticated(rq));
    if (l != NULL)
      l->pulls_saved++;
  }
  if (p->kind == RP_REG_MANIFEST && !p->ref_is_digest && rq->head->method_id == HTTP_GET) {
    struct recent *r = &st->recent[st->next];
    st->next = (st->next + 1) % RECENT_MAX;
    if (st->nrecent < RECENT_MAX)
      st->nrecent++;
    r->when = (int64_t)time(NULL);
    snprintf(r->client, sizeof(r->client), "%s", sum->client != NULL ? sum->client : "");
    snprintf(r->image, sizeof(r->image), "%s:%s", name, p->ref);
    snprintf(r->cache, sizeof(r->cache), "%s", label);
    r->status = sum->status;
    r->ms = sum->ms;
  }
}

static int by_total(const void *a, const void *b) {
  const struct repo_stat *x = a, *y = b;
  uint64_t tx = x->from_cache + x->from_upstream, ty = y->from_cache + y->from_upstream;
  return tx > ty ? -1 : tx < ty ? 1 : strcmp(x->name, y->name);
}

static json_t *minutes_json(const struct rp__stats *st, int64_t now, json_t *hour) {
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

static json_t *limits_json(const struct rp__stats *st, uint64_t *saved) {
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

void rp_registry_metrics(const struct rp_registry *reg, struct rp_sbuf *b) {
  const struct rp__stats *st = reg != NULL ? reg->stats : NULL;

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

void rp_registry_status_json(const struct rp_registry *reg, json_t *j) {
  const struct rp__stats *st = reg != NULL ? reg->stats : NULL;
  json_t *arr, *hour;
  uint64_t saved;
  int64_t now = (int64_t)time(NULL);
  uint64_t hit = st != NULL ? st->registry_cache_bytes : 0,
           up = st != NULL ? st->registry_upstream_bytes : 0;

  json_object_set_new(
      j, "bytes",
      json_pack("{s:I, s:I}", "from_cache", (json_int_t)hit, "from_upstream", (json_int_t)up));
  json_object_set_new(j, "hit_ratio",
                      json_real(hit + up > 0 ? (double)hit / (double)(hit + up) : 0.0));
  hour = json_object();
  json_object_set_new(j, "minutes", minutes_json(st, now, hour));
  json_object_set_new(j, "last_hour", hour);
  json_object_set_new(j, "ratelimits", limits_json(st, &saved));
  json_object_set_new(j, "pulls_saved", json_integer((json_int_t)saved));
  arr = json_array();
  if (reg != NULL)
    rp__jobs_json(reg, arr);
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
}

void rp__stats_free(struct rp_registry *reg) {
  free(reg->stats);
  reg->stats = NULL;
}
