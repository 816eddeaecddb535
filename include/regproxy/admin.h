#ifndef RP_ADMIN_H
#define RP_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "regproxy/exchange.h"
#include "regproxy/http.h"
#include "regproxy/util.h"

/* The admin endpoints (src/admin/, docs/admin.md): /healthz, /ca.crt, the
 * status page and /status.json, /metrics, and the cache endpoints under
 * /cache/. They answer through an exchange (regproxy/exchange.h) and never
 * see the connection that carries it: what they show of the proxy itself
 * comes from the renderers the proxy puts in struct rp_admin. */

struct rp_acl;
struct rp_cache;

/* What one rp_admin_serve call works with. Everything is borrowed for the
 * call; a job that answers later (verify, gc, rm) keeps only the cache, which
 * outlives it (rp_cache_close completes or cancels the job's pending work). */
struct rp_admin {
  struct rp_cache *cache; /* NULL: caching off, /cache/… answers 503 */
  const char *ca_pem;     /* /ca.crt; NULL: 404 */
  size_t ca_pem_len;
  const struct rp_acl *allow; /* admin_allow: who may read all but /healthz and /ca.crt */
  char *const *server_names;  /* Host names answered besides IP literals and localhost */
  size_t n_server_names;
  /* The proxy's renderers, given data: the whole /metrics exposition appended
   * to b; /status.json as malloc'd text (NULL when out of memory). */
  void (*metrics)(void *data, struct rp_sbuf *b);
  char *(*status_json)(void *data, size_t *len);
  void *data;
};

/** Answer one origin-form request on the admin route: the Host check (421),
 * admin_allow for client (403), then the endpoint. The exchange is answered
 * now or, for the cache jobs, later; until then the front keeps the request
 * paused after its head. */
void rp_admin_serve(const struct rp_admin *a, struct rp_exchange *x, const struct sockaddr *client);

/** Host is one well-formed IP literal, localhost or one of names (no DNS
 * rebinding): the admin endpoints' rule, which mirror mode shares. */
bool rp_admin_host_allowed(const struct rp_http_head *h, char *const *names, size_t n);

#endif
