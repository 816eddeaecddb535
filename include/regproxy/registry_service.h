#ifndef RP_REGISTRY_SERVICE_H
#define RP_REGISTRY_SERVICE_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "regproxy/cache.h"
#include "regproxy/exchange.h"
#include "regproxy/rules.h"
#include "regproxy/upstream.h"
#include "regproxy/util.h"

/* The registry service (src/registry/, docs/architecture.md): every registry
 * decision — who may receive what, hits, fills, tag checks, answers from
 * memory, the pass-through relay, the mirror's own credential — behind one
 * call, rp_registry_serve, whatever way the request came in. A front (MITM,
 * plain HTTP, mirror, the transparent listener) makes an exchange of its
 * request and says how it reached the registry; it adds no registry logic. */

struct rp_registry;
struct json_t;

/* What the service works with: data, not the proxy's configuration. Strings
 * are copied. */
struct rp_registry_opts {
  uv_loop_t *loop;
  struct rp_upstream *up; /* NULL: stopping; nothing is fetched */
  struct rp_cache *cache; /* NULL: caching off, everything is relayed */
  const char *parent_url; /* "http://host:port" of a parent proxy, or NULL */
  const char *parent_userinfo;
  bool access_check;         /* contract §3; off: any allowed client reads what is cached */
  uint64_t access_ttl_ms;    /* how long an upstream 2xx confirms a credential */
  uint64_t tag_ttl_ms;       /* a tag this fresh is answered from memory; 0: always asked */
  const char *registry_auth; /* docker config.json: the mirror's credentials, or NULL */
  /* The registries the mirror serves: HTTPS ones named in mitm, and mirror_default. */
  const struct rp_hostlist *mitm;
  const char *mirror_default;
  /* Upstream mirrors (a site tier), "registry=URL[,URL…]" each, as the
   * configuration checked them: blobs and manifests by digest are fetched
   * from them first. */
  char *const *upstream_mirrors;
  size_t n_upstream_mirrors;
};

int rp_registry_create(const struct rp_registry_opts *o, struct rp_registry **out);
/** New options (SIGHUP): what is running keeps going. */
int rp_registry_configure(struct rp_registry *reg, const struct rp_registry_opts *o);
/** Cancel every upstream transfer and probe; requests still open are ended
 * by their fronts first. NULL is a no-op. */
void rp_registry_destroy(struct rp_registry *reg);

/** How the request reached the registry. */
enum rp_registry_way {
  RP_REGISTRY_TLS,    /* intercepted over TLS with regproxy's leaf for host */
  RP_REGISTRY_PLAIN,  /* plain HTTP to a registry whose mitm entry names the port */
  RP_REGISTRY_MIRROR, /* origin-form /v2/… on a listener: ?ns= or mirror_default */
};

struct rp_registry_target {
  enum rp_registry_way way;
  const char *host; /* the origin (TLS, PLAIN); unused for MIRROR */
  uint16_t port;
  /* Transparent mode: the address the client was going to, where upstream
   * requests for host go (TLS still verified for host); NULL otherwise. */
  const char *connect_ip;
  uint16_t connect_port;
};

/** Take one request. false: not a request the service takes (plain HTTP that
 * is not a registry read): the front handles it; nothing was done. Otherwise
 * the exchange is answered, through its ops, now or later. */
bool rp_registry_serve(struct rp_registry *reg, const struct rp_registry_target *t,
                       struct rp_exchange *x);

/** Does the mirror serve this registry (canonical identity)? */
bool rp_registry_mirror_serves(const struct rp_hostlist *mitm, const char *mirror_default,
                               const char *registry);

/* ---- the service's own numbers (pulled by /metrics and /status.json) ---- */

struct rp_registry_counters {
  uint64_t bytes_from_cache;    /* answer bytes that came from the cache */
  uint64_t bytes_from_upstream; /* answer bytes that came from the registry */
  uint64_t upstream_bytes;      /* bytes received into fills */
  uint64_t upstream_errors;     /* relayed transfers that failed */
};

void rp_registry_counters(const struct rp_registry *reg, struct rp_registry_counters *out);
/** Docker Hub's pull limit and the pulls saved, as Prometheus series. */
void rp_registry_metrics(const struct rp_registry *reg, struct rp_sbuf *b);
/** The status page's registry numbers, set into the object j: bytes,
 * hit_ratio, minutes, last_hour, ratelimits, pulls_saved, fills, recent_pulls,
 * top_repositories. */
void rp_registry_status_json(const struct rp_registry *reg, struct json_t *j);

#endif
