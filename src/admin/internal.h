#ifndef RP_ADMIN_INTERNAL_H
#define RP_ADMIN_INTERNAL_H

#include <jansson.h>

#include "regproxy/admin.h"
#include "regproxy/exchange.h"

/* Answers go out through the exchange; a HEAD request gets the head only
 * (the exchange drops the body). */
/** body (taken) as one line of compact JSON, never cached. */
void rp__admin_reply_json(struct rp_exchange *x, int status, json_t *body);
/** {"error": msg}, also the log line's reason; allow: an Allow value, or NULL. */
void rp__admin_reply_error(struct rp_exchange *x, int status, const char *allow, const char *msg);
/** A request whose path (without the query) starts with "/cache/"; cache
 * NULL when caching is off. */
void rp__admin_cache(struct rp_exchange *x, struct rp_cache *cache, const char *path, size_t plen,
                     const char *query, size_t qlen);

#endif
