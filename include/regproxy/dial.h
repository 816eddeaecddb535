#ifndef RP_DIAL_H
#define RP_DIAL_H

/* The --connect-to rules of the dialer (net). A header of its own, free of
 * libuv, so config can parse the rules into this type without pulling in the
 * rest of net.h. */

#include <stddef.h>
#include <stdint.h>

struct rp_connect_to {
  char *host;       /* lower-case; "" matches any host; IPv6 without brackets */
  uint16_t port;    /* 0 matches any port */
  char *to_addr;    /* "" keeps the host; IPv6 without brackets */
  uint16_t to_port; /* 0 keeps the port */
};

/** Apply the --connect-to list to (host, port) in place (host buffer holds
 * at least 256 bytes). Returns 1 when a rule applied. */
int rp_connect_to_apply(const struct rp_connect_to *rules, size_t n, char *host, size_t hostsz,
                        uint16_t *port);

#endif
