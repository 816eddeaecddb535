#ifndef RP_PROXY_H
#define RP_PROXY_H

#include <stdbool.h>
#include <uv.h>

#include "regproxy/config.h"

/* The proxy server: listeners, connections, signals. */
struct rp_server;

/** Create a server on loop with cfg (the server owns cfg from then on).
 * argc/argv/envp are kept to reload the configuration on SIGHUP. Returns
 * 0, RP_ECONFIG (message in *err, exit 2) or a runtime error (exit 1). */
int rp_server_create(struct rp_server **out, uv_loop_t *loop, struct rp_config *cfg, int argc,
                     char **argv, char **envp, char **err);
/** Make this server the service's main process: rp_server_start sends
 * READY=1 once the listeners are bound, SIGHUP is wrapped in RELOADING=1 …
 * READY=1 and a shutdown sends STOPPING=1 (sd_notify; call before start). */
void rp_server_notify_service(struct rp_server *srv);
/** Bind the listeners, install signal handlers, print the start-up lines. */
int rp_server_start(struct rp_server *srv, char **err);
/** The first listener's URL as bound ("http://127.0.0.1:2080"; a wildcard
 * address becomes loopback). 0 or UV_ENOENT. */
int rp_server_url(const struct rp_server *srv, char *url, size_t n);
/** Stop as SIGTERM does: listeners closed, transfers finish within the grace
 * time, then the loop runs out. */
void rp_server_stop(struct rp_server *srv);
/** Free everything; call after uv_run returned. */
void rp_server_destroy(struct rp_server *srv);

#endif
