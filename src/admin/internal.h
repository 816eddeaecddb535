#ifndef RP_ADMIN_INTERNAL_H
#define RP_ADMIN_INTERNAL_H

#include <jansson.h>

#include "../proxy/internal.h"

/* Answer an admin request. extra: more header lines, each ending in CRLF
 * ("" for none); body is taken (freed here). */
void rp__admin_reply(struct rp_conn *c, int status, const char *ctype, const char *extra,
                     char *body, size_t len, bool head_only);
/** body (taken) as one line of compact JSON. */
void rp__admin_reply_json(struct rp_conn *c, int status, const char *extra, json_t *body,
                          bool head_only);
/** {"error": msg}, also the log line's reason. */
void rp__admin_reply_error(struct rp_conn *c, int status, const char *extra, const char *msg);
/** A request whose path (without the query) starts with "/cache/". */
void rp__admin_cache(struct rp_conn *c, const struct rp_http_head *h, const char *path, size_t plen,
                     const char *query, size_t qlen);

#endif
