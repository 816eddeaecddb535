/* Address classes for the engine's address policy (rp_fetch_req.
 * forbid_internal) and the auth client's realm rule: which addresses lead
 * back into the host or its networks rather than to the Internet. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "regproxy/upstream.h"

/* IANA's special-purpose registries, the most specific entry first. */
static const struct {
  uint32_t net;
  unsigned bits;
  enum rp_addr_class cls;
} v4_ranges[] = {
    {0x00000000, 8, RP_ADDR_UNSPECIFIED}, /* 0.0.0.0/8 "this network" */
    {0x0a000000, 8, RP_ADDR_PRIVATE},     /* 10.0.0.0/8 */
    {0x64400000, 10, RP_ADDR_PRIVATE},    /* 100.64.0.0/10 shared (CGNAT) */
    {0x7f000000, 8, RP_ADDR_LOOPBACK},    /* 127.0.0.0/8 */
    {0xa9fe0000, 16, RP_ADDR_LINK_LOCAL}, /* 169.254.0.0/16 */
    {0xac100000, 12, RP_ADDR_PRIVATE},    /* 172.16.0.0/12 */
    {0xc0000000, 24, RP_ADDR_PRIVATE},    /* 192.0.0.0/24 protocol assignments */
    {0xc0000200, 24, RP_ADDR_RESERVED},   /* 192.0.2.0/24 documentation */
    {0xc0a80000, 16, RP_ADDR_PRIVATE},    /* 192.168.0.0/16 */
    {0xc6120000, 15, RP_ADDR_PRIVATE},    /* 198.18.0.0/15 benchmarking */
    {0xc6336400, 24, RP_ADDR_RESERVED},   /* 198.51.100.0/24 documentation */
    {0xcb007100, 24, RP_ADDR_RESERVED},   /* 203.0.113.0/24 documentation */
    {0xe0000000, 4, RP_ADDR_RESERVED},    /* 224.0.0.0/4 multicast */
    {0xf0000000, 4, RP_ADDR_RESERVED},    /* 240.0.0.0/4, 255.255.255.255 */
};

static const struct {
  uint8_t net[16];
  unsigned bits;
  enum rp_addr_class cls;
} v6_ranges[] = {
    {{0}, 128, RP_ADDR_UNSPECIFIED},                                           /* :: */
    {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 128, RP_ADDR_LOOPBACK}, /* ::1 */
    {{0x00, 0x64, 0xff, 0x9b, 0x00, 0x01}, 48, RP_ADDR_PRIVATE},               /* local-use NAT64 */
    {{0x01, 0x00}, 64, RP_ADDR_RESERVED},             /* 100::/64 discard */
    {{0x20, 0x01, 0x0d, 0xb8}, 32, RP_ADDR_RESERVED}, /* documentation */
    {{0xfc}, 7, RP_ADDR_PRIVATE},                     /* unique local */
    {{0xfe, 0x80}, 10, RP_ADDR_LINK_LOCAL},
    {{0xfe, 0xc0}, 10, RP_ADDR_PRIVATE}, /* site-local (deprecated) */
    {{0xff}, 8, RP_ADDR_RESERVED},       /* multicast */
    {{0}, 8, RP_ADDR_RESERVED},          /* the rest of ::/8 (IPv4-compatible, ...) */
};

static enum rp_addr_class v4_class(uint32_t a) {
  for (size_t i = 0; i < sizeof(v4_ranges) / sizeof(v4_ranges[0]); i++) {
    uint32_t mask = 0xffffffffu << (32 - v4_ranges[i].bits);
    if ((a & mask) == v4_ranges[i].net)
      return v4_ranges[i].cls;
  }
  return RP_ADDR_PUBLIC;
}

static int prefix_match(const uint8_t *a, const uint8_t *net, unsigned bits) {
  unsigned whole = bits / 8, rest = bits % 8;
  if (memcmp(a, net, whole) != 0)
    return 0;
  return rest == 0 || ((a[whole] ^ net[whole]) & (0xff << (8 - rest))) == 0;
}

static enum rp_addr_class v6_class(const uint8_t a[16]) {
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b};
  /* Both lead to an IPv4 address: judge that one. */
  if (memcmp(a, mapped, 12) == 0 || memcmp(a, nat64, 12) == 0)
    return v4_class((uint32_t)a[12] << 24 | (uint32_t)a[13] << 16 | (uint32_t)a[14] << 8 | a[15]);
  for (size_t i = 0; i < sizeof(v6_ranges) / sizeof(v6_ranges[0]); i++)
    if (prefix_match(a, v6_ranges[i].net, v6_ranges[i].bits))
      return v6_ranges[i].cls;
  return RP_ADDR_PUBLIC;
}

enum rp_addr_class rp_upstream_addr_class(const struct sockaddr *sa) {
  if (sa != NULL && sa->sa_family == AF_INET)
    return v4_class(ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr));
  if (sa != NULL && sa->sa_family == AF_INET6)
    return v6_class(((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr);
  return RP_ADDR_RESERVED;
}

int rp_upstream_host_class(const char *host) {
  char buf[INET6_ADDRSTRLEN + 8];
  size_t n;
  struct in_addr a4;
  struct in6_addr a6;
  if (host == NULL)
    return -1;
  n = strlen(host);
  if (n > 0 && host[0] == '[') {
    if (n < 2 || host[n - 1] != ']')
      return -1;
    host++;
    n -= 2;
  }
  if (n >= sizeof(buf))
    return -1;
  memcpy(buf, host, n);
  buf[n] = '\0';
  if (strcasecmp(buf, "localhost") == 0 || strcasecmp(buf, "localhost.") == 0)
    return RP_ADDR_LOOPBACK;
  /* inet_aton, not inet_pton: resolvers also take "127.1" and "0x7f000001". */
  if (inet_aton(buf, &a4) != 0)
    return v4_class(ntohl(a4.s_addr));
  buf[strcspn(buf, "%")] = '\0'; /* fe80::1%eth0 */
  if (inet_pton(AF_INET6, buf, &a6) == 1)
    return v6_class(a6.s6_addr);
  return -1;
}

const char *rp_upstream_addr_class_name(enum rp_addr_class c) {
  switch (c) {
  case RP_ADDR_PUBLIC: return "public";
  case RP_ADDR_LOOPBACK: return "loopback";
  case RP_ADDR_LINK_LOCAL: return "link-local";
  case RP_ADDR_PRIVATE: return "private";
  case RP_ADDR_UNSPECIFIED: return "unspecified";
  case RP_ADDR_RESERVED: return "reserved";
  default: return "?";
  }
}
