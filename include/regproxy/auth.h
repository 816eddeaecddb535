#ifndef RP_AUTH_H
#define RP_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "regproxy/http.h"

/* The registry auth client (contract §3 "Who may receive what", mirror mode,
 * prefetch): WWW-Authenticate challenges (RFC 9110 §11), credentials from a
 * docker config.json, and Docker-style bearer tokens fetched through the
 * upstream engine and cached by (registry, scope) until shortly before they
 * expire. Typical use by the registry cache:
 *
 *   value = rp_auth_cached(a, reg, scope, 0);      // send it on the first try
 *   ... upstream answers 401 ...
 *   rp_auth_challenge_from_headers(hdrs, n, &ch);  // parse WWW-Authenticate
 *   rp_auth_get(a, reg, scope, &ch, 0, on_auth, ctx);  // retry with the value
 */

struct rp_upstream;
struct rp_fetch;

/* ---- challenges -------------------------------------------------------- */

enum rp_auth_scheme { RP_AUTH_OTHER, RP_AUTH_BASIC, RP_AUTH_BEARER, RP_AUTH_SCHEME_LAST };

/* One challenge; the strings are malloc'd and NULL when the parameter is
 * absent. Parameter names compare case-insensitively, values are unquoted. */
struct rp_auth_challenge {
  enum rp_auth_scheme scheme;
  char *realm;
  char *service;
  char *scope; /* space-separated scopes as the registry sent them */
  char *error; /* Bearer error="insufficient_scope" and the like */
  /* Not a parameter: the address the registry sent this challenge from
   * (rp_auth_challenge_from_response), NULL when unknown. It decides which
   * internal addresses the realm may have (rp_auth_realm_check). */
  char *registry_ip;
};

/** Parse one WWW-Authenticate field value (one or several challenges) and
 * append its challenges to *list (realloc'd; *n counts them). 0, or
 * RP_EPARSE / RP_ENOMEM with *list and *n unchanged. */
int rp_auth_challenges_parse(const char *value, size_t len, struct rp_auth_challenge **list,
                             size_t *n);
/** Free a list from rp_auth_challenges_parse. */
void rp_auth_challenges_free(struct rp_auth_challenge *list, size_t n);
/** The challenge to answer: the first Bearer with a realm, else the first
 * Basic; NULL when there is none. */
const struct rp_auth_challenge *rp_auth_challenge_pick(const struct rp_auth_challenge *list,
                                                       size_t n);
/** Parse every WWW-Authenticate header of a response and copy the one to
 * answer into *out (the caller clears it with rp_auth_challenge_clear).
 * UV_ENOENT when there is none, RP_EPARSE when all were malformed. */
int rp_auth_challenge_from_headers(const struct rp_http_header *headers, size_t n,
                                   struct rp_auth_challenge *out);
/** rp_auth_challenge_from_headers for the response head of fetch f (call it
 * from on_head), also noting the address the registry answered from. */
int rp_auth_challenge_from_response(struct rp_fetch *f, const struct rp_http_header *headers,
                                    size_t n, struct rp_auth_challenge *out);
/** Deep copy (0 or RP_ENOMEM). */
int rp_auth_challenge_copy(struct rp_auth_challenge *dst, const struct rp_auth_challenge *src);
/** Free the strings of one challenge and zero it. */
void rp_auth_challenge_clear(struct rp_auth_challenge *c);

/* ---- credentials (docker config.json) ---------------------------------- */

struct rp_auth_creds;

/** Read a docker config.json: "auths" → host → "auth" (base64 "user:pass")
 * or "username"/"password"; entries without credentials (credential-store
 * placeholders) are skipped. On error returns RP_ECONFIG / UV_E* and sets
 * *err (malloc'd) to "file[:line]: reason". */
int rp_auth_creds_load(const char *path, struct rp_auth_creds **out, char **err);
/** The same from memory; name is used in error messages. */
int rp_auth_creds_parse(const char *json, size_t len, const char *name, struct rp_auth_creds **out,
                        char **err);
/** Free the credentials (their passwords are wiped); NULL is a no-op. */
void rp_auth_creds_destroy(struct rp_auth_creds *c);
/** Credentials for a registry (any spelling rp_auth_registry_key accepts).
 * 0 with *user / *pass pointing into c, or UV_ENOENT. */
int rp_auth_creds_lookup(const struct rp_auth_creds *c, const char *registry, const char **user,
                         const char **pass);
/** How many registries have credentials. */
size_t rp_auth_creds_count(const struct rp_auth_creds *c);

/** The key a registry's credentials and tokens are filed under: scheme and
 * path dropped, lower-case host[:port], and every Docker Hub alias
 * ("https://index.docker.io/v1/", "registry-1.docker.io", ...) as
 * "docker.io". */
void rp_auth_registry_key(const char *registry, char *out, size_t outsz);

/* ---- helpers shared with tests ----------------------------------------- */

/** "Basic base64(user:pass)", malloc'd (NULL on OOM). */
char *rp_auth_basic_value(const char *user, const char *pass);
/** The token request URL: realm?service=…&scope=…[&scope=…][&account=…]
 * (several space-separated scopes become several scope parameters). Only
 * http(s) realms. 0 with *out malloc'd, or RP_EPARSE / RP_ENOMEM. */
int rp_auth_token_url(const char *realm, const char *service, const char *scope,
                      const char *account, char **out);
/** May regproxy fetch a token for registry (host[:port], any spelling
 * rp_auth_registry_key accepts) from ch->realm? (contract §3.) https, or http
 * on the registry's own host only; and a realm host that is an IP literal
 * or "localhost" in an internal class (rp_upstream_host_class) only when the
 * registry is in that class too: its address ch->registry_ip, or its own
 * IP-literal or "localhost" name. 0 with *internal_ok the internal classes
 * the token request may connect to (rp_fetch_req.internal_ok), or RP_EPARSE
 * (not an http(s) URL) / RP_EDENIED / RP_ENOMEM with a one-line reason in why. */
int rp_auth_realm_check(const struct rp_auth_challenge *ch, const char *registry,
                        unsigned *internal_ok, char *why, size_t whysz);
/** Parse a token server's JSON answer: "token" (else "access_token"),
 * "expires_in" (default 60). 0 with *token malloc'd, or RP_EPARSE. */
int rp_auth_parse_token_response(const char *body, size_t len, char **token,
                                 uint64_t *expires_in_s);

/* ---- the client ------------------------------------------------------- */

struct rp_auth;

struct rp_auth_opts {
  struct rp_upstream *up;    /* token requests go through this engine */
  const char *docker_config; /* config.json path, or NULL for anonymous only */
  /** Which parent proxy a token request to url uses (NULL: direct; *userinfo
   * "user:pass" or NULL). The callback itself may be NULL: always direct. */
  const char *(*proxy_for)(void *data, const char *url, const char **userinfo);
  void *proxy_data;
};

/** Create the client (reads docker_config now). On error returns non-zero
 * and sets *err (malloc'd). */
int rp_auth_create(const struct rp_auth_opts *opts, struct rp_auth **out, char **err);
/** Cancel every request (no callbacks) and token fetch; a timer closes
 * asynchronously, so run the loop afterwards. Destroy it before the engine. */
void rp_auth_destroy(struct rp_auth *a);

/* Flags of rp_auth_get / rp_auth_cached / rp_auth_invalidate. */
#define RP_AUTH_ANONYMOUS 1u /* never send configured credentials ("is it public?") */

/** status 0 with authorization ("Bearer …" / "Basic …", valid during the
 * call), or a negative error with a one-line reason (RP_EAUTH: the token
 * server refused; RP_EDENIED: Basic asked and no credentials, or the realm
 * refused by rp_auth_realm_check or at connect time; others from the
 * engine). */
typedef void (*rp_auth_cb)(void *data, int status, const char *authorization, const char *reason);

struct rp_auth_req;

/** An Authorization value for registry (its host[:port]) and scope (e.g.
 * "repository:library/alpine:pull"; NULL or "" = the challenge's scope)
 * answering challenge ch (read during this call only). A Bearer realm is
 * checked with rp_auth_realm_check, and the token request connects only to
 * public addresses and the internal classes that allows; a refused realm is
 * logged (warn, msg="token realm refused"). Tokens are cached by (registry, scope,
 * anonymous or not); concurrent requests for one key share one token fetch.
 * cb runs once, on the loop, never inside this call. NULL only on OOM. */
struct rp_auth_req *rp_auth_get(struct rp_auth *a, const char *registry, const char *scope,
                                const struct rp_auth_challenge *ch, unsigned flags, rp_auth_cb cb,
                                void *data);
/** Drop a request: its callback will not run (safe inside another callback;
 * a no-op inside its own). */
void rp_auth_cancel(struct rp_auth_req *r);
/** The cached, still fresh value for (registry, scope), malloc'd (caller
 * frees), or NULL: lets a caller send it on the first request. */
char *rp_auth_cached(struct rp_auth *a, const char *registry, const char *scope, unsigned flags);
/** Forget a cached value (the registry answered 401 to it). */
void rp_auth_invalidate(struct rp_auth *a, const char *registry, const char *scope, unsigned flags);

/* Counters for tests and /metrics. */
struct rp_auth_stats {
  uint64_t token_fetches; /* token requests sent */
  uint64_t cache_hits;    /* rp_auth_get answered from the cache */
  uint64_t coalesced;     /* rp_auth_get that joined a running fetch */
};
/** Copy the counters. */
void rp_auth_get_stats(const struct rp_auth *a, struct rp_auth_stats *out);

#endif
