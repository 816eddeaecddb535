/* The proxy layer's counters, and the Prometheus text exposition of them and
 * of the numbers other modules keep themselves (asked for at render time). */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "regproxy/cache.h"
#include "regproxy/metrics.h"
#include "regproxy/registry_service.h"

struct rp_metrics rp_metrics;

#define MAX_REQ_SERIES 256
#define MAX_ERR_KINDS  16

struct req_series {
  const char *via, *route, *cache;
  int code;
  uint64_t n;
};

static struct req_series req_series[MAX_REQ_SERIES];
static size_t n_req_series;

struct err_series {
  const char *kind;
  uint64_t n;
};

static struct err_series err_series[MAX_ERR_KINDS];
static size_t n_err_series;

void rp_metrics_request(const char *via, const char *route, const char *cache, int code) {
  size_t i;
  for (i = 0; i < n_req_series; i++) {
    struct req_series *s = &req_series[i];
    if (s->code == code && strcmp(s->via, via) == 0 && strcmp(s->route, route) == 0 &&
        strcmp(s->cache, cache) == 0) {
      s->n++;
      return;
    }
  }
  if (n_req_series == MAX_REQ_SERIES)
    return; /* label sets are few; a full table means a bug, not traffic */
  req_series[n_req_series++] = (struct req_series){via, route, cache, code, 1};
}

void rp_metrics_upstream_error(const char *kind) {
  for (size_t i = 0; i < n_err_series; i++) {
    if (strcmp(err_series[i].kind, kind) == 0) {
      err_series[i].n++;
      return;
    }
  }
  if (n_err_series < MAX_ERR_KINDS)
    err_series[n_err_series++] = (struct err_series){kind, 1};
}

static bool has_kind(const char *kind) {
  for (size_t i = 0; i < n_err_series; i++)
    if (strcmp(err_series[i].kind, kind) == 0)
      return true;
  return false;
}

static void gauge(struct rp_sbuf *b, const char *name, const char *help, long long v) {
  rp_sbuf_addf(b, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", name, help, name, name, v);
}

static void counter(struct rp_sbuf *b, const char *name, const char *help, unsigned long long v) {
  rp_sbuf_addf(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name, v);
}

void rp_metrics_render(struct rp_sbuf *b, const struct rp_cache *cache,
                       const struct rp_registry_counters *reg) {
  static const char *const sources[RP_SRC_BYTES_LAST] = {"cache", "upstream", "tunnel"};
  static const char *const dirs[2] = {"in", "out"};
  uint64_t bytes[2][RP_SRC_BYTES_LAST];
  struct rp_cache_stats cs;

  rp_cache_stats(cache, &cs);
  memcpy(bytes, rp_metrics.bytes, sizeof(bytes));
  bytes[1][RP_SRC_BYTES_CACHE] += reg->bytes_from_cache;
  bytes[1][RP_SRC_BYTES_UPSTREAM] += reg->bytes_from_upstream;

  gauge(b, "regproxy_connections_active", "Client connections open.",
        (long long)rp_metrics.connections_active);
  counter(b, "regproxy_connections_total", "Client connections accepted.",
          (unsigned long long)rp_metrics.connections_total);
  gauge(b, "regproxy_tunnels_active", "CONNECT tunnels relaying bytes.",
        (long long)rp_metrics.tunnels_active);
  rp_sbuf_adds(b, "# HELP regproxy_requests_total Finished requests and tunnels.\n"
                  "# TYPE regproxy_requests_total counter\n");
  for (size_t i = 0; i < n_req_series; i++) {
    const struct req_series *s = &req_series[i];
    rp_sbuf_addf(b,
                 "regproxy_requests_total{via=\"%s\",route=\"%s\",cache=\"%s\",code=\"%d\"} %llu\n",
                 s->via, s->route, s->cache, s->code, (unsigned long long)s->n);
  }
  rp_sbuf_adds(b, "# HELP regproxy_bytes_total Body and tunnel bytes by direction and source.\n"
                  "# TYPE regproxy_bytes_total counter\n");
  for (int d = 0; d < 2; d++)
    for (int s = 0; s < RP_SRC_BYTES_LAST; s++)
      rp_sbuf_addf(b, "regproxy_bytes_total{direction=\"%s\",source=\"%s\"} %llu\n", dirs[d],
                   sources[s], (unsigned long long)bytes[d][s]);
  counter(b, "regproxy_upstream_bytes_total", "Bytes received from upstream servers.",
          (unsigned long long)(rp_metrics.upstream_bytes + reg->upstream_bytes));
  rp_sbuf_adds(b, "# HELP regproxy_upstream_errors_total Upstream failures by kind.\n"
                  "# TYPE regproxy_upstream_errors_total counter\n");
  for (size_t i = 0; i < n_err_series; i++)
    rp_sbuf_addf(b, "regproxy_upstream_errors_total{kind=\"%s\"} %llu\n", err_series[i].kind,
                 (unsigned long long)err_series[i].n +
                     (strcmp(err_series[i].kind, "upstream") == 0 ? reg->upstream_errors : 0));
  if (reg->upstream_errors > 0 && !has_kind("upstream"))
    rp_sbuf_addf(b, "regproxy_upstream_errors_total{kind=\"upstream\"} %llu\n",
                 (unsigned long long)reg->upstream_errors);
  gauge(b, "regproxy_cache_size_bytes", "Bytes stored in the cache.", (long long)cs.size_bytes);
  gauge(b, "regproxy_cache_objects", "Objects stored in the cache.", (long long)cs.objects);
  gauge(b, "regproxy_fills_in_flight", "Cache fills running.", (long long)cs.fills_in_flight);
  counter(b, "regproxy_evictions_total", "Objects evicted from the cache.",
          (unsigned long long)cs.evictions);
  counter(b, "regproxy_digest_mismatch_total", "Upstream bodies that failed digest verification.",
          (unsigned long long)cs.digest_mismatches);
}
