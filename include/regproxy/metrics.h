#ifndef RP_METRICS_H
#define RP_METRICS_H

#include <stdint.h>

#include "regproxy/util.h"

struct rp_cache;
struct rp_registry_counters;

/* The proxy layer's own counters and the Prometheus text exposition (contract §5).
 * Metrics are pulled: the cache keeps its numbers in struct rp_cache and the
 * registry service in struct rp_registry; rp_metrics_render is handed them
 * at render time. */
enum rp_bytes_source {
  RP_SRC_BYTES_CACHE,
  RP_SRC_BYTES_UPSTREAM,
  RP_SRC_BYTES_TUNNEL,
  RP_SRC_BYTES_LAST
};

struct rp_metrics {
  int64_t connections_active;
  int64_t tunnels_active;
  uint64_t connections_total;
  uint64_t bytes[2][RP_SRC_BYTES_LAST]; /* [0] in (from clients), [1] out (to clients) */
  uint64_t upstream_bytes;
};

extern struct rp_metrics rp_metrics;

/** Count one finished request or tunnel. Labels must be static strings. */
void rp_metrics_request(const char *via, const char *route, const char *cache, int code);
/** Count an upstream failure of a kind ("dns", "connect", "timeout", "proxy", "protocol"). */
void rp_metrics_upstream_error(const char *kind);
/** Append the Prometheus exposition to b: the proxy's counters, the cache's
 * numbers (NULL: no cache, rendered as 0) and the registry service's. */
void rp_metrics_render(struct rp_sbuf *b, const struct rp_cache *cache,
                       const struct rp_registry_counters *reg);

#endif
