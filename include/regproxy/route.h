#ifndef RP_ROUTE_H
#define RP_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The route decision of contract §2 as one pure function: no sockets, no loop,
 * no globals. The fronts (tunnel.c, mitm.c, forward.c, mirror.c, admin) act
 * on its answer; a future transparent listener feeds it the SNI or Host. */

struct rp_acl;
struct rp_hostlist;
struct rp_portset;
struct rp_connect_to;

/* How the request names its destination on a --listen port. */
enum rp_route_way {
  RP_ROUTE_CONNECT,  /* CONNECT host:port */
  RP_ROUTE_ABSOLUTE, /* http://… or https://… */
  RP_ROUTE_ORIGIN,   /* /path: the proxy itself (mirror or admin) */
  RP_ROUTE_ASTERISK, /* "*" */
  RP_ROUTE_WAY_LAST
};

struct rp_route_in {
  enum rp_route_way way;
  bool client_allowed; /* the client ACL's answer for this connection */
  const char *host;    /* CONNECT, absolute: lower-case, IPv6 without brackets */
  uint16_t port;
  bool https;       /* absolute form: the https:// scheme */
  const char *path; /* origin form: path and query */
  size_t path_len;
};

/* The parts of rp_config (and of the running server) that routing reads. */
struct rp_route_cfg {
  const struct rp_acl *acl;               /* loopback-only widens the CONNECT ports */
  const struct rp_portset *connect_ports; /* NULL: the contract §2 default policy */
  const struct rp_hostlist *no_proxy;
  const struct rp_hostlist *mitm;
  const struct rp_connect_to *connect_to; /* their ports are CONNECT ports */
  size_t n_connect_to;
  bool parent; /* a parent proxy is configured */
};

enum rp_route {
  RP_ROUTE_DENY_ACL,       /* 403: the client address is not allowed */
  RP_ROUTE_DENY_PORT,      /* 403: CONNECT to a port outside connect_ports */
  RP_ROUTE_BAD_REQUEST,    /* 400: https:// absolute form, asterisk form */
  RP_ROUTE_TUNNEL,         /* blind relay, direct (bypass) or via the parent */
  RP_ROUTE_MITM,           /* CONNECT answered at once, TLS terminated */
  RP_ROUTE_FORWARD,        /* plain-HTTP forward, direct (bypass) or via the parent */
  RP_ROUTE_PLAIN_REGISTRY, /* plain HTTP to a mitm entry naming this port: cache */
  RP_ROUTE_MIRROR,         /* origin-form /v2… */
  RP_ROUTE_ADMIN,          /* any other origin-form */
  RP_ROUTE_LAST
};

struct rp_route_out {
  enum rp_route route;
  bool via_parent;  /* outgoing connections go through the parent proxy */
  const char *name; /* `route` in the log ("bypass", "tunnel", "mitm", "http",
                       "mirror", "admin"), NULL for none */
  int status;       /* DENY_*, BAD_REQUEST: the answer, */
  char reason[64];  /* and its one-line reason */
};

/** Decide the route of one request (contract §2, in its order). Pure; name is
 * static, the caller owns the answer. PLAIN_REGISTRY is the host's decision: a
 * path the cache does not take is forwarded with the same answer. */
struct rp_route_out rp_route_decide(const struct rp_route_in *in, const struct rp_route_cfg *cfg);

#endif
