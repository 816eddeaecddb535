/* The route decision (contract §2): which of deny, bypass, MITM, tunnel,
 * forward, mirror or admin one request gets, and whether the parent proxy
 * is used. Pure: the fronts in conn.c, tunnel.c, mitm.c and forward.c act
 * on the answer, tests/unit/test_route.c holds the table. */

#include <stdio.h>
#include <string.h>

#include "regproxy/config.h"
#include "regproxy/route.h"
#include "regproxy/rules.h"

static struct rp_route_out answer(enum rp_route route, const char *name, bool via_parent) {
  struct rp_route_out out;
  memset(&out, 0, sizeof(out));
  out.route = route;
  out.name = name;
  out.via_parent = via_parent;
  return out;
}

static struct rp_route_out refuse(enum rp_route route, const char *name, int status,
                                  const char *reason) {
  struct rp_route_out out = answer(route, name, false);
  out.status = status;
  snprintf(out.reason, sizeof(out.reason), "%s", reason);
  return out;
}

/* contract §2 step 2: connect_ports if set; else any port while only loopback
 * clients are allowed, otherwise 443 and the ports named in mitm and
 * connect_to. */
static bool connect_port_ok(const struct rp_route_cfg *cfg, uint16_t port) {
  if (cfg->connect_ports != NULL)
    return rp_portset_has(cfg->connect_ports, port);
  if (rp_acl_loopback_only(cfg->acl))
    return true;
  if (port == 443 || rp_hostlist_names_port(cfg->mitm, port))
    return true;
  for (size_t i = 0; i < cfg->n_connect_to; i++)
    if (cfg->connect_to[i].port == port)
      return true;
  return false;
}

static bool is_v2(const char *path, size_t len) {
  return path != NULL && len >= 3 && memcmp(path, "/v2", 3) == 0 &&
         (len == 3 || path[3] == '/' || path[3] == '?');
}

static struct rp_route_out decide_connect(const struct rp_route_in *in,
                                          const struct rp_route_cfg *cfg) {
  if (!connect_port_ok(cfg, in->port)) {
    struct rp_route_out out = refuse(RP_ROUTE_DENY_PORT, "tunnel", 403, "");
    snprintf(out.reason, sizeof(out.reason), "CONNECT to port %u is not allowed", in->port);
    return out;
  }
  /* no_proxy wins over mitm: a bypassed host is never intercepted. */
  if (rp_hostlist_match(cfg->no_proxy, in->host, in->port))
    return answer(RP_ROUTE_TUNNEL, "bypass", false);
  if (rp_hostlist_match(cfg->mitm, in->host, in->port))
    return answer(RP_ROUTE_MITM, "mitm", cfg->parent);
  return answer(RP_ROUTE_TUNNEL, "tunnel", cfg->parent);
}

static struct rp_route_out decide_absolute(const struct rp_route_in *in,
                                           const struct rp_route_cfg *cfg) {
  if (in->https)
    return refuse(RP_ROUTE_BAD_REQUEST, "http", 400, "https:// targets need CONNECT");
  if (rp_hostlist_match(cfg->no_proxy, in->host, in->port))
    return answer(RP_ROUTE_FORWARD, "bypass", false);
  /* contract §3: a plain-HTTP registry counts only when mitm names it with its
   * port; a port-less entry (the defaults) covers HTTPS, and an http://
   * request to such a host is plain-forwarded, never cached. */
  if (rp_hostlist_match_port_named(cfg->mitm, in->host, in->port))
    return answer(RP_ROUTE_PLAIN_REGISTRY, "http", cfg->parent);
  return answer(RP_ROUTE_FORWARD, "http", cfg->parent);
}

struct rp_route_out rp_route_decide(const struct rp_route_in *in, const struct rp_route_cfg *cfg) {
  if (!in->client_allowed)
    return refuse(RP_ROUTE_DENY_ACL, NULL, 403, "client address not allowed");
  switch (in->way) {
  case RP_ROUTE_CONNECT: return decide_connect(in, cfg);
  case RP_ROUTE_ABSOLUTE: return decide_absolute(in, cfg);
  case RP_ROUTE_ORIGIN:
    /* The mirror's registry is reached through the MITM relay, which uses
     * the parent whenever there is one. */
    if (is_v2(in->path, in->path_len))
      return answer(RP_ROUTE_MIRROR, "mirror", cfg->parent);
    return answer(RP_ROUTE_ADMIN, "admin", false);
  case RP_ROUTE_ASTERISK:
  case RP_ROUTE_WAY_LAST: break;
  }
  return refuse(RP_ROUTE_BAD_REQUEST, NULL, 400, "asterisk-form is not proxied");
}
