#ifndef RP_RULES_H
#define RP_RULES_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

/* Host lists (no_proxy, mitm) with the semantics of Go's
 * golang.org/x/net/http/httpproxy, and the client ACL (IPs and CIDRs). */

struct rp_hostlist;

enum rp_hostlist_flags {
  /* no_proxy semantics: localhost and loopback IP literals always match
   * (they are always reached directly). mitm lists leave this off. */
  RP_HOSTLIST_LOOPBACK_DIRECT = 1u << 0,
};

/** Parse a comma-separated list. On error returns RP_EPARSE and sets *err
 * (malloc'd, names the bad entry). The empty string is a valid empty list. */
int rp_hostlist_parse(const char *spec, unsigned flags, struct rp_hostlist **out, char **err);
/** Does host (a name, an IPv4 literal or an IPv6 literal without brackets;
 * any case, may carry one trailing dot) with this port match the list? */
bool rp_hostlist_match(const struct rp_hostlist *list, const char *host, uint16_t port);
/** Like rp_hostlist_match, but only entries that name this port ("host:port")
 * count; "*" does not (contract §3: a plain-HTTP registry is trusted only when
 * listed with its port). */
bool rp_hostlist_match_port_named(const struct rp_hostlist *list, const char *host, uint16_t port);
void rp_hostlist_destroy(struct rp_hostlist *list);
/** Does an entry name this port explicitly ("host:port")? */
bool rp_hostlist_names_port(const struct rp_hostlist *list, uint16_t port);

/* One entry of a host list taken apart, for the CA's name constraints. */
struct rp_hostlist_entry {
  const char *text; /* the entry as written (trimmed, lower-case) */
  bool is_net;      /* an IP or CIDR entry; else a domain entry */
  /* Domain: "foo.com" for the name and its subdomains, ".foo.com" for its
   * subdomains only ("*.foo.com" too); punycode, no trailing dot. */
  const char *domain;
  /* IP (full mask) or CIDR, addr already masked. IPv4 when is4: then only
   * bytes 12..15 count, the first twelve being ::ffff:. */
  uint8_t addr[16];
  uint8_t mask[16];
  bool is4;
};

/** Does the list hold a "*" entry (every host)? */
bool rp_hostlist_has_star(const struct rp_hostlist *list);
/** Number of entries besides "*". */
size_t rp_hostlist_count(const struct rp_hostlist *list);
/** Entry i (< rp_hostlist_count) into *out; its strings belong to the list. */
void rp_hostlist_entry(const struct rp_hostlist *list, size_t i, struct rp_hostlist_entry *out);

struct rp_acl;

/** Parse "127.0.0.1,10.0.0.0/8,::1,fd00::/8". RP_EPARSE + *err on a bad entry. */
int rp_acl_parse(const char *spec, struct rp_acl **out, char **err);
/** Does the address match? IPv4-mapped IPv6 addresses are unmapped first. */
bool rp_acl_match(const struct rp_acl *acl, const struct sockaddr *sa);
void rp_acl_destroy(struct rp_acl *acl);
/** True when every entry lies inside loopback (127.0.0.0/8, ::1): only
 * local clients can connect (contract §2 CONNECT port policy). */
bool rp_acl_loopback_only(const struct rp_acl *acl);

/** True for 127.0.0.0/8, ::1 and IPv4-mapped loopback. */
bool rp_sockaddr_is_loopback(const struct sockaddr *sa);

struct rp_portset;
/** Parse "443,8443,5000-5010". */
int rp_portset_parse(const char *spec, struct rp_portset **out, char **err);
bool rp_portset_has(const struct rp_portset *set, uint16_t port);
void rp_portset_destroy(struct rp_portset *set);

#endif
