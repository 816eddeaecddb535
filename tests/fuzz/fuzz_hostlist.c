/* libFuzzer target for the host-list, ACL and port-set parsers. The input
 * up to the first newline is the list; what follows, if anything, is one
 * more host to match besides a fixed set that exercises every rule kind. */

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "regproxy/rules.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const hosts[] = {
    "localhost",
    "127.0.0.1",
    "::1",
    "::ffff:127.0.0.1",
    "example.com",
    "www.example.com",
    "xn--bcher-kva.example",
    "bücher.example",
    "10.1.2.3",
    "::ffff:10.1.2.3",
    "2001:db8::1",
    "fe80::1%eth0",
    "1000::%.example.com",
    "foo.com.",
    "",
    ".",
    "*",
    "１２７．０．０．１",
};

static void match_all(const struct rp_hostlist *list, const char *extra) {
  static const uint16_t ports[] = {0, 80, 443, 65535};

  for (size_t i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++)
    (void)rp_hostlist_match(list, hosts[i], ports[i % 4]);
  if (extra) {
    for (size_t i = 0; i < sizeof(ports) / sizeof(ports[0]); i++)
      (void)rp_hostlist_match(list, extra, ports[i]);
  }
}

static void match_acl(const struct rp_acl *acl) {
  struct sockaddr_in sin;
  struct sockaddr_in6 sin6;

  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(0x0a010203);
  (void)rp_acl_match(acl, (struct sockaddr *)&sin);
  memset(&sin6, 0, sizeof(sin6));
  sin6.sin6_family = AF_INET6;
  sin6.sin6_addr.s6_addr[10] = 0xff;
  sin6.sin6_addr.s6_addr[11] = 0xff;
  sin6.sin6_addr.s6_addr[12] = 127;
  sin6.sin6_addr.s6_addr[15] = 1;
  (void)rp_acl_match(acl, (struct sockaddr *)&sin6);
  sin6.sin6_addr.s6_addr[0] = 0x20;
  (void)rp_acl_match(acl, (struct sockaddr *)&sin6);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *buf = malloc(size + 1);
  char *extra = NULL;
  char *nl;
  struct rp_hostlist *list = NULL;
  struct rp_acl *acl = NULL;
  struct rp_portset *ports = NULL;
  char *err = NULL;

  if (!buf)
    return 0;
  memcpy(buf, data, size);
  buf[size] = '\0';
  nl = strchr(buf, '\n');
  if (nl) {
    *nl = '\0';
    extra = nl + 1;
  }

  for (unsigned flags = 0; flags <= RP_HOSTLIST_LOOPBACK_DIRECT; flags++) {
    if (rp_hostlist_parse(buf, flags, &list, &err) == 0) {
      match_all(list, extra);
      rp_hostlist_destroy(list);
      list = NULL;
    }
    free(err);
    err = NULL;
  }
  if (rp_acl_parse(buf, &acl, &err) == 0)
    match_acl(acl);
  rp_acl_destroy(acl);
  free(err);
  err = NULL;
  if (rp_portset_parse(buf, &ports, &err) == 0)
    (void)rp_portset_has(ports, 443);
  rp_portset_destroy(ports);
  free(err);
  free(buf);
  return 0;
}
