/* Unit tests for src/proxy/route.c: the route decision of contract §2 as a
 * table, in the contract's order (ACL, CONNECT ports, bypass, MITM, tunnel),
 * then plain HTTP (forward or plain-HTTP registry) and the origin form. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "regproxy/config.h"
#include "regproxy/route.h"
#include "regproxy/rules.h"

#define LOOP "127.0.0.1,::1"
#define LAN  "10.0.0.0/8"
/* contract §2's default mitm list. */
#define MITM_DEFAULT                                                                               \
  "registry-1.docker.io,index.docker.io,ghcr.io,quay.io,registry.k8s.io,gcr.io,.pkg.dev,"          \
  "mcr.microsoft.com,public.ecr.aws,nvcr.io,registry.gitlab.com"

enum { DENY = 0, OK = 1 };
enum { DIRECT = 0, PARENT = 1 };

struct route_case {
  const char *what;
  /* configuration */
  const char *allow;         /* the ACL */
  const char *connect_ports; /* NULL: the default policy */
  const char *no_proxy;
  const char *mitm;
  uint16_t connect_to_port; /* 0: no connect_to entry */
  bool parent;
  /* request */
  enum rp_route_way way;
  bool client_allowed;
  const char *host;
  uint16_t port;
  bool https;
  const char *path;
  /* answer */
  enum rp_route want;
  bool want_parent;
  const char *want_name;
  int want_status;
  const char *want_reason; /* NULL: not checked */
};

#define CONNECT(h, p)  RP_ROUTE_CONNECT, OK, h, p, false, NULL
#define HTTP(h, p, pa) RP_ROUTE_ABSOLUTE, OK, h, p, false, pa
#define ORIGIN(pa)     RP_ROUTE_ORIGIN, OK, NULL, 0, false, pa

static const struct route_case cases[] = {
    /* 1. Client ACL: first, whatever the request. */
    {"acl: CONNECT from a refused client", LOOP, NULL, "", MITM_DEFAULT, 0, false, RP_ROUTE_CONNECT,
     DENY, "example.com", 443, false, NULL, RP_ROUTE_DENY_ACL, DIRECT, NULL, 403,
     "client address not allowed"},
    {"acl: before the port policy", LAN, NULL, "", MITM_DEFAULT, 0, false, RP_ROUTE_CONNECT, DENY,
     "example.com", 22, false, NULL, RP_ROUTE_DENY_ACL, DIRECT, NULL, 403, NULL},
    {"acl: before mirror", LOOP, NULL, "", MITM_DEFAULT, 0, true, RP_ROUTE_ORIGIN, DENY, NULL, 0,
     false, "/v2/", RP_ROUTE_DENY_ACL, DIRECT, NULL, 403, NULL},
    {"acl: before admin", LOOP, NULL, "", MITM_DEFAULT, 0, false, RP_ROUTE_ORIGIN, DENY, NULL, 0,
     false, "/metrics", RP_ROUTE_DENY_ACL, DIRECT, NULL, 403, NULL},
    {"acl: before the https:// 400", LOOP, NULL, "", MITM_DEFAULT, 0, false, RP_ROUTE_ABSOLUTE,
     DENY, "example.com", 443, true, "/", RP_ROUTE_DENY_ACL, DIRECT, NULL, 403, NULL},
    {"acl: before the asterisk 400", LOOP, NULL, "", MITM_DEFAULT, 0, false, RP_ROUTE_ASTERISK,
     DENY, NULL, 0, false, NULL, RP_ROUTE_DENY_ACL, DIRECT, NULL, 403, NULL},

    /* 2. CONNECT port policy. */
    {"ports: loopback-only clients reach any port", LOOP, NULL, "", MITM_DEFAULT, 0, false,
     CONNECT("example.com", 22), RP_ROUTE_TUNNEL, DIRECT, "tunnel", 0, NULL},
    {"ports: no ACL is loopback only", NULL, NULL, "", MITM_DEFAULT, 0, false,
     CONNECT("example.com", 25), RP_ROUTE_TUNNEL, DIRECT, "tunnel", 0, NULL},
    {"ports: LAN clients, port 22 refused", LAN, NULL, "", MITM_DEFAULT, 0, false,
     CONNECT("example.com", 22), RP_ROUTE_DENY_PORT, DIRECT, "tunnel", 403,
     "CONNECT to port 22 is not allowed"},
    {"ports: LAN clients, 443", LAN, NULL, "", MITM_DEFAULT, 0, false, CONNECT("example.com", 443),
     RP_ROUTE_TUNNEL, DIRECT, "tunnel", 0, NULL},
    {"ports: loopback and LAN is not loopback-only", LOOP "," LAN, NULL, "", MITM_DEFAULT, 0, false,
     CONNECT("example.com", 8080), RP_ROUTE_DENY_PORT, DIRECT, "tunnel", 403, NULL},
    {"ports: a port named in mitm opens it for every host", LAN, NULL, "", "reg.local:5000", 0,
     false, CONNECT("other.example", 5000), RP_ROUTE_TUNNEL, DIRECT, "tunnel", 0, NULL},
    {"ports: a port named in connect_to", LAN, NULL, "", MITM_DEFAULT, 8443, false,
     CONNECT("example.com", 8443), RP_ROUTE_TUNNEL, DIRECT, "tunnel", 0, NULL},
    {"ports: connect_to names no other port", LAN, NULL, "", MITM_DEFAULT, 8443, false,
     CONNECT("example.com", 8444), RP_ROUTE_DENY_PORT, DIRECT, "tunnel", 403, NULL},
    {"ports: explicit connect_ports", LAN, "22,5000-5010", "", MITM_DEFAULT, 0, false,
     CONNECT("example.com", 5005), RP_ROUTE_TUNNEL, DIRECT, "tunnel", 0, NULL},
    {"ports: explicit connect_ports replace 443", LAN, "22", "", MITM_DEFAULT, 0, false,
     CONNECT("example.com", 443), RP_ROUTE_DENY_PORT, DIRECT, "tunnel", 403, NULL},
    {"ports: explicit connect_ports bind loopback clients too", LOOP, "443", "", MITM_DEFAULT, 0,
     false, CONNECT("example.com", 22), RP_ROUTE_DENY_PORT, DIRECT, "tunnel", 403, NULL},
    {"ports: before bypass", LAN, NULL, "example.com", MITM_DEFAULT, 0, false,
     CONNECT("example.com", 22), RP_ROUTE_DENY_PORT, DIRECT, "tunnel", 403, NULL},
    {"ports: plain HTTP has no port policy", LAN, NULL, "", MITM_DEFAULT, 0, false,
     HTTP("example.com", 22, "/"), RP_ROUTE_FORWARD, DIRECT, "http", 0, NULL},

    /* 3. Bypass: direct, never MITM, never the parent. */
    {"bypass: no_proxy host", LOOP, NULL, "example.com", MITM_DEFAULT, 0, true,
     CONNECT("example.com", 443), RP_ROUTE_TUNNEL, DIRECT, "bypass", 0, NULL},
    {"bypass: no_proxy covers subdomains", LOOP, NULL, "example.com", MITM_DEFAULT, 0, true,
     CONNECT("a.example.com", 443), RP_ROUTE_TUNNEL, DIRECT, "bypass", 0, NULL},
    {"bypass: wins over mitm", LOOP, NULL, "ghcr.io", MITM_DEFAULT, 0, true,
     CONNECT("ghcr.io", 443), RP_ROUTE_TUNNEL, DIRECT, "bypass", 0, NULL},
    {"bypass: no_proxy host:port, other port", LOOP, NULL, "example.com:8443", MITM_DEFAULT, 0,
     true, CONNECT("example.com", 443), RP_ROUTE_TUNNEL, PARENT, "tunnel", 0, NULL},
    {"bypass: localhost always direct", LOOP, NULL, "", MITM_DEFAULT, 0, true,
     CONNECT("localhost", 8080), RP_ROUTE_TUNNEL, DIRECT, "bypass", 0, NULL},
    {"bypass: 127.0.0.1 always direct", LOOP, NULL, "", MITM_DEFAULT, 0, true,
     CONNECT("127.0.0.1", 443), RP_ROUTE_TUNNEL, DIRECT, "bypass", 0, NULL},
    {"bypass: ::1 always direct", LOOP, NULL, "", MITM_DEFAULT, 0, true, CONNECT("::1", 443),
     RP_ROUTE_TUNNEL, DIRECT, "bypass", 0, NULL},
    {"bypass: loopback even when mitm lists it", LOOP, NULL, "", "localhost", 0, false,
     CONNECT("localhost", 443), RP_ROUTE_TUNNEL, DIRECT, "bypass", 0, NULL},

    /* 4. MITM. */
    {"mitm: default entry", LOOP, NULL, "", MITM_DEFAULT, 0, false, CONNECT("ghcr.io", 443),
     RP_ROUTE_MITM, DIRECT, "mitm", 0, NULL},
    {"mitm: relayed through the parent", LOOP, NULL, "", MITM_DEFAULT, 0, true,
     CONNECT("registry-1.docker.io", 443), RP_ROUTE_MITM, PARENT, "mitm", 0, NULL},
    {"mitm: a host entry covers subdomains", LOOP, NULL, "", MITM_DEFAULT, 0, false,
     CONNECT("cdn.quay.io", 443), RP_ROUTE_MITM, DIRECT, "mitm", 0, NULL},
    {"mitm: a host entry covers every port", LOOP, NULL, "", MITM_DEFAULT, 0, false,
     CONNECT("ghcr.io", 8443), RP_ROUTE_MITM, DIRECT, "mitm", 0, NULL},
    {"mitm: .pkg.dev covers subdomains", LOOP, NULL, "", MITM_DEFAULT, 0, false,
     CONNECT("europe-docker.pkg.dev", 443), RP_ROUTE_MITM, DIRECT, "mitm", 0, NULL},
    {"mitm: .pkg.dev not pkg.dev itself", LOOP, NULL, "", MITM_DEFAULT, 0, false,
     CONNECT("pkg.dev", 443), RP_ROUTE_TUNNEL, DIRECT, "tunnel", 0, NULL},
    {"mitm: *.example.com covers subdomains", LOOP, NULL, "", "*.example.com", 0, false,
     CONNECT("r.example.com", 443), RP_ROUTE_MITM, DIRECT, "mitm", 0, NULL},
    {"mitm: host:port entry, its port", LAN, NULL, "", "reg.local:5000", 0, false,
     CONNECT("reg.local", 5000), RP_ROUTE_MITM, DIRECT, "mitm", 0, NULL},
    {"mitm: host:port entry, other port", LAN, NULL, "", "reg.local:5000", 0, false,
     CONNECT("reg.local", 443), RP_ROUTE_TUNNEL, DIRECT, "tunnel", 0, NULL},
    {"mitm: IP entry", LOOP, NULL, "", "192.0.2.7", 0, false, CONNECT("192.0.2.7", 443),
     RP_ROUTE_MITM, DIRECT, "mitm", 0, NULL},
    {"mitm: token services are tunnelled", LOOP, NULL, "", MITM_DEFAULT, 0, false,
     CONNECT("auth.docker.io", 443), RP_ROUTE_TUNNEL, DIRECT, "tunnel", 0, NULL},

    /* 5. Tunnel. */
    {"tunnel: direct without a parent", LOOP, NULL, "", MITM_DEFAULT, 0, false,
     CONNECT("example.com", 443), RP_ROUTE_TUNNEL, DIRECT, "tunnel", 0, NULL},
    {"tunnel: via the parent", LOOP, NULL, "", MITM_DEFAULT, 0, true, CONNECT("example.com", 443),
     RP_ROUTE_TUNNEL, PARENT, "tunnel", 0, NULL},
    {"tunnel: empty mitm", LOOP, NULL, "", "", 0, false, CONNECT("ghcr.io", 443), RP_ROUTE_TUNNEL,
     DIRECT, "tunnel", 0, NULL},

    /* Plain HTTP: forward, or the registry cache for a port-named mitm entry. */
    {"http: forward", LOOP, NULL, "", MITM_DEFAULT, 0, false, HTTP("example.com", 80, "/"),
     RP_ROUTE_FORWARD, DIRECT, "http", 0, NULL},
    {"http: forward via the parent", LOOP, NULL, "", MITM_DEFAULT, 0, true,
     HTTP("example.com", 80, "/"), RP_ROUTE_FORWARD, PARENT, "http", 0, NULL},
    {"http: bypass", LOOP, NULL, "example.com", MITM_DEFAULT, 0, true, HTTP("example.com", 80, "/"),
     RP_ROUTE_FORWARD, DIRECT, "bypass", 0, NULL},
    {"http: localhost always direct", LOOP, NULL, "", MITM_DEFAULT, 0, true,
     HTTP("localhost", 8080, "/"), RP_ROUTE_FORWARD, DIRECT, "bypass", 0, NULL},
    {"http: port-less mitm entry is not a plain registry", LOOP, NULL, "", MITM_DEFAULT, 0, false,
     HTTP("ghcr.io", 80, "/v2/"), RP_ROUTE_FORWARD, DIRECT, "http", 0, NULL},
    {"http: port-named mitm entry", LOOP, NULL, "", "reg.local:5000", 0, false,
     HTTP("reg.local", 5000, "/v2/"), RP_ROUTE_PLAIN_REGISTRY, DIRECT, "http", 0, NULL},
    {"http: port-named mitm entry via the parent", LOOP, NULL, "", "reg.local:5000", 0, true,
     HTTP("reg.local", 5000, "/v2/a/blobs/sha256:00"), RP_ROUTE_PLAIN_REGISTRY, PARENT, "http", 0,
     NULL},
    {"http: port-named subdomain entry", LOOP, NULL, "", "example.com:5000", 0, false,
     HTTP("reg.example.com", 5000, "/v2/"), RP_ROUTE_PLAIN_REGISTRY, DIRECT, "http", 0, NULL},
    {"http: port-named mitm entry, other port", LOOP, NULL, "", "reg.local:5000", 0, false,
     HTTP("reg.local", 80, "/v2/"), RP_ROUTE_FORWARD, DIRECT, "http", 0, NULL},
    {"http: * does not name a port", LOOP, NULL, "", "*", 0, false, HTTP("reg.local", 5000, "/v2/"),
     RP_ROUTE_FORWARD, DIRECT, "http", 0, NULL},
    {"http: bypass wins over a plain registry", LOOP, NULL, "reg.local", "reg.local:5000", 0, true,
     HTTP("reg.local", 5000, "/v2/"), RP_ROUTE_FORWARD, DIRECT, "bypass", 0, NULL},
    {"http: https:// needs CONNECT", LOOP, NULL, "", MITM_DEFAULT, 0, false, RP_ROUTE_ABSOLUTE, OK,
     "ghcr.io", 443, true, "/v2/", RP_ROUTE_BAD_REQUEST, DIRECT, "http", 400,
     "https:// targets need CONNECT"},
    {"http: https:// before bypass", LOOP, NULL, "localhost", MITM_DEFAULT, 0, false,
     RP_ROUTE_ABSOLUTE, OK, "localhost", 443, true, "/", RP_ROUTE_BAD_REQUEST, DIRECT, "http", 400,
     NULL},

    /* Origin form: the proxy itself. */
    {"origin: /v2/ is mirror", LOOP, NULL, "", MITM_DEFAULT, 0, false, ORIGIN("/v2/"),
     RP_ROUTE_MIRROR, DIRECT, "mirror", 0, NULL},
    {"origin: /v2 is mirror", LOOP, NULL, "", MITM_DEFAULT, 0, false, ORIGIN("/v2"),
     RP_ROUTE_MIRROR, DIRECT, "mirror", 0, NULL},
    {"origin: /v2?ns= is mirror", LOOP, NULL, "", MITM_DEFAULT, 0, false, ORIGIN("/v2?ns=ghcr.io"),
     RP_ROUTE_MIRROR, DIRECT, "mirror", 0, NULL},
    {"origin: mirror manifest, relayed via the parent", LOOP, NULL, "", MITM_DEFAULT, 0, true,
     ORIGIN("/v2/library/alpine/manifests/3"), RP_ROUTE_MIRROR, PARENT, "mirror", 0, NULL},
    {"origin: /v20 is admin", LOOP, NULL, "", MITM_DEFAULT, 0, false, ORIGIN("/v20"),
     RP_ROUTE_ADMIN, DIRECT, "admin", 0, NULL},
    {"origin: /V2/ is admin", LOOP, NULL, "", MITM_DEFAULT, 0, false, ORIGIN("/V2/"),
     RP_ROUTE_ADMIN, DIRECT, "admin", 0, NULL},
    {"origin: /metrics is admin, never the parent", LOOP, NULL, "", MITM_DEFAULT, 0, true,
     ORIGIN("/metrics"), RP_ROUTE_ADMIN, DIRECT, "admin", 0, NULL},
    {"origin: / is admin", LOOP, NULL, "", MITM_DEFAULT, 0, false, ORIGIN("/"), RP_ROUTE_ADMIN,
     DIRECT, "admin", 0, NULL},
    {"asterisk: 400", LOOP, NULL, "", MITM_DEFAULT, 0, false, RP_ROUTE_ASTERISK, OK, NULL, 0, false,
     NULL, RP_ROUTE_BAD_REQUEST, DIRECT, NULL, 400, "asterisk-form is not proxied"},
};

static void check_case(const struct route_case *t) {
  struct rp_acl *acl = NULL;
  struct rp_portset *ports = NULL;
  struct rp_hostlist *no_proxy = NULL, *mitm = NULL;
  struct rp_connect_to ct = {.host = (char *)"", .to_addr = (char *)""};
  struct rp_route_cfg cfg = {0};
  struct rp_route_in in = {0};
  struct rp_route_out out;
  char *err = NULL;

  if (t->allow != NULL)
    assert_int_equal(rp_acl_parse(t->allow, &acl, &err), 0);
  if (t->connect_ports != NULL)
    assert_int_equal(rp_portset_parse(t->connect_ports, &ports, &err), 0);
  assert_int_equal(rp_hostlist_parse(t->no_proxy, RP_HOSTLIST_LOOPBACK_DIRECT, &no_proxy, &err), 0);
  assert_int_equal(rp_hostlist_parse(t->mitm, 0, &mitm, &err), 0);
  ct.port = t->connect_to_port;
  cfg.acl = acl;
  cfg.connect_ports = ports;
  cfg.no_proxy = no_proxy;
  cfg.mitm = mitm;
  cfg.connect_to = t->connect_to_port != 0 ? &ct : NULL;
  cfg.n_connect_to = t->connect_to_port != 0 ? 1 : 0;
  cfg.parent = t->parent;
  in.way = t->way;
  in.client_allowed = t->client_allowed;
  in.host = t->host;
  in.port = t->port;
  in.https = t->https;
  in.path = t->path;
  in.path_len = t->path != NULL ? strlen(t->path) : 0;

  out = rp_route_decide(&in, &cfg);
  if (out.route != t->want || out.via_parent != t->want_parent ||
      (out.name == NULL) != (t->want_name == NULL) ||
      (out.name != NULL && strcmp(out.name, t->want_name) != 0) || out.status != t->want_status ||
      (t->want_reason != NULL && strcmp(out.reason, t->want_reason) != 0) ||
      (out.status != 0 && out.reason[0] == '\0'))
    fail_msg("%s: got route %d parent %d name %s status %d reason \"%s\"; want %d %d %s %d",
             t->what, out.route, out.via_parent, out.name ? out.name : "(none)", out.status,
             out.reason, t->want, t->want_parent, t->want_name ? t->want_name : "(none)",
             t->want_status);
  rp_acl_destroy(acl);
  rp_portset_destroy(ports);
  rp_hostlist_destroy(no_proxy);
  rp_hostlist_destroy(mitm);
}

static void test_route_table(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    check_case(&cases[i]);
}

/* Every way and every answer: each decision is one of the enum, with a
 * status exactly for the refusals. */
static void test_route_every_way(void **state) {
  struct rp_route_cfg cfg = {0};
  struct rp_route_in in = {0};
  (void)state;
  in.host = "example.com";
  in.port = 443;
  for (int w = 0; w < RP_ROUTE_WAY_LAST; w++) {
    struct rp_route_out out;
    in.way = (enum rp_route_way)w;
    in.client_allowed = true;
    out = rp_route_decide(&in, &cfg);
    assert_true(out.route < RP_ROUTE_LAST);
    assert_int_equal(out.status != 0, out.route == RP_ROUTE_DENY_ACL ||
                                          out.route == RP_ROUTE_DENY_PORT ||
                                          out.route == RP_ROUTE_BAD_REQUEST);
    in.client_allowed = false;
    assert_int_equal(rp_route_decide(&in, &cfg).route, RP_ROUTE_DENY_ACL);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_route_table),
      cmocka_unit_test(test_route_every_way),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
