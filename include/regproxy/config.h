#ifndef RP_CONFIG_H
#define RP_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "regproxy/dial.h"
#include "regproxy/rules.h"

/* Where a value came from; higher wins (contract §4 precedence). */
enum rp_config_source {
  RP_SRC_DEFAULT,
  RP_SRC_PROXY_ENV, /* HTTPS_PROXY / HTTP_PROXY / NO_PROXY of our own environment */
  RP_SRC_FILE,
  RP_SRC_ENV, /* REGPROXY_<KEY> */
  RP_SRC_FLAG,
  RP_SRC_LAST
};

struct rp_strv {
  char **v;
  size_t n;
};

struct rp_listen_addr {
  char *text;    /* as given, e.g. "127.0.0.1:2080" or "[::1]:2080" */
  char host[64]; /* without brackets */
  uint16_t port;
};

struct rp_config {
  char *config_file; /* NULL when none was read */

  struct rp_listen_addr *listen;
  size_t n_listen;
  struct rp_listen_addr *transparent;
  size_t n_transparent;
  bool tproxy;
  bool mark_set;
  uint32_t mark;

  char *cache_dir;
  uint64_t cache_max_size;
  uint64_t orphan_fill_max;
  char *ca_dir;

  char *mitm; /* the list as text, and parsed below */
  char *no_proxy;
  char *parent_proxy; /* URL or NULL/"" for none */
  enum rp_config_source parent_proxy_source;
  /* parent_proxy taken apart (NULL/0 when there is none). parent_proxy itself
   * is normalised to "http[s]://[userinfo@]host:port" ("squid:3128" becomes
   * "http://squid:3128"); userinfo is percent-decoded "user:pass" for a
   * Proxy-Authorization: Basic header, NULL when the URL has none. */
  char *parent_proxy_host;    /* lower-case, IPv6 without brackets */
  uint16_t parent_proxy_port; /* http: 80, https: 443 when the URL has none */
  bool parent_proxy_tls;      /* https:// parent */
  char *parent_proxy_userinfo;
  char *allow;
  enum rp_config_source allow_source; /* RP_SRC_DEFAULT = not explicit */
  char *admin_allow; /* contract §5: who may read the endpoints that reveal digests */
  enum rp_config_source cache_max_size_source;
  char *connect_ports; /* NULL = contract §2 default policy */
  char *proxy_auth_file;
  struct rp_connect_to *connect_to;
  size_t n_connect_to;
  char *upstream_ca;
  /* certs.d directories read for per-registry upstream TLS (contract §4), and
   * whether they are the defaults (then an unreadable host directory is a
   * warning, not an error: a user's regproxy may not read root's keys). */
  struct rp_strv upstream_certs_dir;
  bool upstream_certs_dir_default;
  char *registry_auth;
  char *mirror_default;
  /* upstream_mirrors: "registry=URL[,URL…]" each, the registry lower-case
   * and every URL checked (http(s)://host[:port][/path], no query). */
  struct rp_strv upstream_mirrors;
  struct rp_strv server_names;

  uint64_t tag_ttl_ms;
  uint64_t access_ttl_ms;
  bool access_check;
  uint64_t header_timeout_ms;
  uint64_t idle_timeout_ms;
  uint64_t tunnel_idle_timeout_ms;
  uint64_t connect_timeout_ms;
  uint64_t shutdown_grace_ms;
  unsigned max_connections;

  int log_level;  /* enum rp_log_level */
  int log_format; /* enum rp_log_format */

  /* Parsed forms, built by rp_config_load. */
  struct rp_hostlist *mitm_list;
  struct rp_hostlist *no_proxy_list; /* RP_HOSTLIST_LOOPBACK_DIRECT */
  struct rp_acl *acl;
  struct rp_acl *admin_acl;
  struct rp_portset *connect_portset; /* NULL = contract §2 default policy */

  /* What a CA created now may sign for (its name constraints): the mitm
   * list, or contract §2's default mitm list when mitm is empty. */
  struct rp_hostlist *ca_names;

  /* Flags of `regproxy ca init` and CA creation (flag-only). */
  bool ca_force;         /* --force: ca init replaces an existing CA */
  bool ca_unconstrained; /* --unconstrained: a new CA gets no name constraints */

  /* Flags of `regproxy setup` (flag-only, no key, no environment). */
  bool dry_run;          /* --dry-run */
  char *root;            /* --root DIR, NULL = "/" */
  bool setup_mirror;     /* --mirror: containerd hosts.toml instead of proxy + CA */
  char *setup_interface; /* --interface IF: setup gateway's LAN interface, NULL = all */

  /* Positional arguments left after the options (subcommand words). */
  struct rp_strv args;
  bool want_help;
  bool want_version;

  /* Things the caller should log once logging is set up (e.g. a parent proxy
   * from HTTPS_PROXY that points at our own listener and was ignored). */
  struct rp_strv warnings;
};

/** Build a configuration from defaults < $HTTPS_PROXY/$NO_PROXY < file <
 * REGPROXY_* environment < argv. argv[0] is the program name; envp is the
 * environment (NULL-terminated). On a usage or configuration error returns
 * RP_ECONFIG and sets *err (malloc'd) naming the flag/key and, for files,
 * "file:line". The caller owns *out. */
int rp_config_load(struct rp_config **out, int argc, char **argv, char **envp, char **err);
void rp_config_destroy(struct rp_config *cfg);

/** Parse "10G", "512M", "1024", "2k" (binary units). */
int rp_config_parse_size(const char *s, uint64_t *out);
/** Parse "30s", "10m", "1h", "250ms", "0" into milliseconds. */
int rp_config_parse_duration(const char *s, uint64_t *out_ms);
/** Parse "HOST:PORT:ADDR:PORT" (curl --connect-to); "[v6]" forms allowed. */
int rp_config_parse_connect_to(const char *s, struct rp_connect_to *out);
/** Parse "ADDR:PORT" / "[v6]:PORT" / ":PORT" (all IPv4 addresses). */
int rp_config_parse_listen(const char *s, struct rp_listen_addr *out);
/** Replace every listener (and transparent listener) with addr alone (an
 * in-process instance for `regproxy prefetch`). 0, RP_EPARSE or RP_ENOMEM. */
int rp_config_listen_only(struct rp_config *cfg, const char *addr);

/** Print --help (every option with its default) to stdout. */
void rp_config_usage(void);

/** The start-up check of `regproxy run` (contract §2): a listener (--listen or
 * --transparent) on a non-loopback address needs an explicit allow (flag,
 * environment or file). Returns RP_ECONFIG and sets *err (malloc'd) when not. */
int rp_config_check_listeners(const struct rp_config *cfg, char **err);

#endif
