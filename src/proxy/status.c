/* The numbers of the status page (SPEC §5 `GET /status.json`, `GET /`): cache
 * totals, bytes served from the cache and from upstream (the hit ratio and
 * the bytes saved), fills in flight, the recent pulls (manifest GETs by tag)
 * and the repositories served most. Fed from the request log line of every
 * registry request (rp__status_note), bounded: a ring of recent pulls and a
 * fixed table of repositories where the least served one makes room. */
#include <jansson.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "regcache.h"
#include "regproxy/cache.h"
#include "regproxy/metrics.h"

#define RECENT_MAX 32
#define REPOS_MAX  256
#define TOP_REPOS  10

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

struct rp__status {
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

void rp__status_note(struct rp_conn *c) {
  struct rp_server *srv = c->srv;
  const struct rp_reqlog *r = &c->log;
  struct rp__status *st;
  struct repo_stat *rs;
  char registry[300], name[560];
  const char *label = r->cache != NULL ? r->cache : "-";

  if (!(c->mitm || c->up_plain || c->mirror) || c->head == NULL ||
      (c->reg.kind != RP_REG_MANIFEST && c->reg.kind != RP_REG_BLOB))
    return;
  if (srv->status == NULL && (srv->status = calloc(1, sizeof(*srv->status))) == NULL)
    return;
  st = srv->status;
  rp__mitm_registry(c, registry, sizeof(registry));
  snprintf(name, sizeof(name), "%s/%s", registry, c->reg.name);
  rs = repo_slot(st, name);
  rs->requests++;
  if (from_cache(label)) {
    rs->from_cache += r->bytes_out;
    st->registry_cache_bytes += r->bytes_out;
  } else {
    rs->from_upstream += r->bytes_out;
    st->registry_upstream_bytes += r->bytes_out;
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

char *rp__status_json(struct rp_server *srv, size_t *len) {
  struct rp__status *st = srv->status;
  struct rp_cache_stats cs;
  json_t *j, *arr;
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
