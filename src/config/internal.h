#ifndef RP_CONFIG_INTERNAL_H
#define RP_CONFIG_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "regproxy/config.h"

/* The file read when neither --config nor REGPROXY_CONFIG names one. */
#define RP_CONFIG_DEFAULT_PATH "/etc/regproxy/regproxy.yml"

/* Config files larger than this are refused before parsing. */
#define RP_CONFIG_MAX_FILE (1024 * 1024)

/* One scalar of the YAML file: its text and its 1-based line. A plain null
 * (empty, "~", "null") reads as "". */
struct rp__yaml_value {
  char *text;
  unsigned line;
};

/* One top-level key of the YAML file, in file order. A scalar value is one
 * element with is_seq false; a sequence has n_values elements (maybe 0). */
struct rp__yaml_entry {
  char *key;
  unsigned line;
  bool is_seq;
  struct rp__yaml_value *values;
  size_t n_values;
};

struct rp__yaml_doc {
  struct rp__yaml_entry *entries;
  size_t n;
};

/** Read a config file: a mapping of keys to scalars or sequences of scalars.
 * Syntax errors, a non-mapping top level, nested collections, aliases and a
 * second document are RP_ECONFIG with *err = "FILE:LINE: reason". On success
 * the caller owns *doc (release with rp__yaml_doc_clear). */
int rp__yaml_read_file(const char *path, struct rp__yaml_doc *doc, char **err);
/** Same for a buffer; name is used in messages in place of the file name. */
int rp__yaml_read_buffer(const char *name, const void *buf, size_t len, struct rp__yaml_doc *doc,
                         char **err);
void rp__yaml_doc_clear(struct rp__yaml_doc *doc);

/** Copy s into buf for an error message: unprintable bytes become '?', and
 * a value longer than size-4 is cut with "...". */
void rp__show(const char *s, char *buf, size_t size);

/** malloc'd printf; NULL when out of memory. */
char *rp__aprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *rp__vaprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));

/* Knobs the unit tests and the fuzzer turn; rp_config_load uses the zero
 * values except euid = -1. */
struct rp__config_opts {
  int euid;                   /* -1: geteuid(); decides the root defaults of cache_dir/ca_dir */
  const char *default_config; /* NULL: RP_CONFIG_DEFAULT_PATH */
  /* When yaml_buf is set it is read as the config file instead of any path. */
  const char *yaml_name;
  const void *yaml_buf;
  size_t yaml_len;
};

/** rp_config_load with knobs. */
int rp__config_load_ex(struct rp_config **out, int argc, char **argv, char **envp,
                       const struct rp__config_opts *opts, char **err);

/** Load defaults plus a YAML buffer as the config file, with an empty
 * environment and no flags (the fuzz target's entry point). */
int rp__config_load_yaml_buffer(struct rp_config **out, const char *name, const void *buf,
                                size_t len, char **err);

/** Write --help to fp. */
void rp__config_usage_write(FILE *fp);
/** Write the man page's OPTIONS section, generated from the option table, to
 * fp as scdoc text (man/rp_manpage.c splices it into man/regproxy.1.scd). */
void rp__config_scdoc_write(FILE *fp);

/* The default mitm list, also what a CA is made for while interception is off. */
#define RP_CONFIG_DEFAULT_MITM                                                                     \
  "registry-1.docker.io,index.docker.io,ghcr.io,quay.io,registry.k8s.io,gcr.io,.pkg.dev,"          \
  "mcr.microsoft.com,public.ecr.aws,nvcr.io,registry.gitlab.com"

/* ---- the option table (options.c) ---- */

enum opt_type {
  OT_STRING,     /* mirror_default: a registry name */
  OT_PATH,       /* "~/" expanded; "" = none */
  OT_SIZE,       /* uint64_t bytes */
  OT_DURATION,   /* uint64_t milliseconds */
  OT_BOOL,       /* bool */
  OT_UINT,       /* unsigned, within [min, max] */
  OT_MARK,       /* uint32_t at off, bool "is set" at off2 */
  OT_HOSTLIST,   /* char * text at off, struct rp_hostlist * at off2 */
  OT_ACL,        /* char * text at off, struct rp_acl * at off2 */
  OT_PORTSET,    /* char * text at off, struct rp_portset * at off2; "" = default */
  OT_LOGLEVEL,   /* int */
  OT_LOGFORMAT,  /* int */
  OT_URL,        /* parent_proxy and its parsed parts */
  OT_LISTEN,     /* list: struct rp_listen_addr * at off, size_t count at off2 */
  OT_CONNECT_TO, /* list: struct rp_connect_to * at off, size_t count at off2 */
  OT_NAMES,      /* list: struct rp_strv at off */
  OT_PATHS,      /* list of directories ("~/" expanded, must exist): struct rp_strv at off */
  OT_MIRRORS,    /* list of "registry=URL[,URL…]": struct rp_strv at off */
};

enum opt_flags {
  OF_NO_KEY = 1u << 0,          /* not a config-file key */
  OF_NO_ENV = 1u << 1,          /* no REGPROXY_* variable */
  OF_NONZERO = 1u << 2,         /* 0 is refused */
  OF_NONEMPTY = 1u << 3,        /* a path that must be given */
  OF_MUST_EXIST = 1u << 4,      /* a file that must be readable when given */
  OF_LOOPBACK_DIRECT = 1u << 5, /* host list with no_proxy semantics */
  OF_CONFIG = 1u << 6,          /* --config: consumed before the layers are applied */
};

enum opt_group { G_GENERAL, G_LISTEN, G_ROUTING, G_CACHE, G_TIMEOUTS, G_CA, G_SETUP, G_LAST };

struct rp__opt {
  const char *key; /* config key; --flag and REGPROXY_ENV are derived from it */
  enum opt_type type;
  unsigned flags;
  size_t off;
  size_t off2;
  const char *def;   /* default text, parsed like any value; NULL = computed or none */
  const char *shown; /* default as --help shows it; NULL = def */
  const char *metavar;
  const char *help;
  enum opt_group group;
  uint64_t min, max; /* OT_UINT */
};

/* The number of options; options.c checks it against the table. */
#define RP__N_OPTS 40
extern const struct rp__opt rp__opts[RP__N_OPTS];

size_t rp__opt_index(const struct rp__opt *o);
/** The field of cfg at offset off (struct rp__opt's off and off2). */
void *rp__config_field(struct rp_config *cfg, size_t off);
/** A repeatable option (listen, transparent, connect_to, server_names,
 * upstream_certs_dir). */
bool rp__opt_is_list(const struct rp__opt *o);
/** "--cache-max-size" for cache_max_size. */
void rp__opt_flag_name(const struct rp__opt *o, char *buf, size_t size);
/** "REGPROXY_CACHE_MAX_SIZE" for cache_max_size. */
void rp__opt_env_name(const struct rp__opt *o, char *buf, size_t size);
/** The option of a flag name (without "--", name[0..len)), a config key, or
 * a variable name after "REGPROXY_"; NULL when there is none. */
const struct rp__opt *rp__opt_find_flag(const char *name, size_t len);
const struct rp__opt *rp__opt_find_key(const char *name);
/** "registry=URL[,URL…]" checked and normalised into *out (malloc'd):
 * the registry lower-case, URLs without a trailing '/'. */
int rp__mirrors_parse(const char *s, char **out, char *why, size_t whylen);
const struct rp__opt *rp__opt_find_env(const char *name, size_t len);

/* ---- value parsers and string helpers (values.c) ---- */

int rp__strv_push(struct rp_strv *sv, const char *s);
void rp__strv_clear(struct rp_strv *sv);
/** Lower-case s in place (ASCII). */
void rp__lower(char *s);
/** s[0..n) is 1-253 of [A-Za-z0-9._-]. */
bool rp__valid_hostname(const char *s, size_t n);
/** Leading decimal digits of *s into *v (advancing *s); false on none or overflow. */
bool rp__take_u64(const char **s, uint64_t *v);
/** on|true|yes / off|false|no, any case; false when s is neither. */
bool rp__parse_bool(const char *s, bool *out);
/** The value of a hex digit, -1 when c is not one. */
int rp__hexval(char c);
/** The parsers behind rp_config_parse_listen / _connect_to: RP_EPARSE with
 * the reason in why, RP_ENOMEM, or 0 with out owning its strings. */
int rp__listen_parse(const char *s, struct rp_listen_addr *out, char *why, size_t whylen);
int rp__connect_to_parse(const char *s, struct rp_connect_to *out, char *why, size_t whylen);
/** Free an array of n items and the strings they own. */
void rp__listen_free(struct rp_listen_addr *a, size_t n);
void rp__connect_to_free(struct rp_connect_to *c, size_t n);

/* parent_proxy taken apart (see struct rp_config). */
struct rp__proxy_url {
  char *url;
  char *host;
  uint16_t port;
  bool tls;
  char *userinfo;
};

/** "http[s]://[user:pass@]host[:port][/]", or a scheme-less "host:port";
 * RP_EPARSE with the reason in why. On success u owns its strings. */
int rp__proxy_url_parse(const char *s, struct rp__proxy_url *u, char *why, size_t whylen);

/* ---- one load in progress (apply.c, sources.c, check.c) ---- */

/* Where one value came from, for error messages. */
struct rp__origin {
  enum rp_config_source src;
  char name[64];    /* the environment variable for RP_SRC_ENV / RP_SRC_PROXY_ENV */
  const char *file; /* RP_SRC_FILE */
  unsigned line;
};

struct rp__flagval {
  const struct rp__opt *o;
  const char *value;
};

struct rp__load {
  struct rp_config *cfg;
  char **envp;
  const struct rp__config_opts *opts;
  char *home; /* NULL when unknown */
  char **err;
  enum rp_config_source src[RP__N_OPTS];
  struct rp__origin where[RP__N_OPTS]; /* who set the current value */
  unsigned file_line[RP__N_OPTS];      /* line of the key in the file, for duplicates */
  struct rp__flagval *flags;
  size_t n_flags;
};

/** Set *ld->err to the message, prefixed with where the value came from
 * (flag, variable, file:line or key); RP_ECONFIG, or RP_ENOMEM. */
int rp__config_fail(struct rp__load *ld, const struct rp__opt *o, const struct rp__origin *org,
                    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/** Expand "~" and "~/" with $HOME; a relative path from a config file is
 * taken next to that file. *out is malloc'd. */
int rp__expand_path(struct rp__load *ld, const struct rp__opt *o, const struct rp__origin *org,
                    const char *v, char **out);
/** Apply one text value (flag, environment variable or default) to o.
 * split: an environment list is comma-separated. */
int rp__apply_text(struct rp__load *ld, const struct rp__opt *o, const struct rp__origin *org,
                   const char *v, bool split);
/** Apply one top-level key of the config file. */
int rp__apply_yaml_entry(struct rp__load *ld, const struct rp__yaml_entry *e);

/** The checks across options once every layer is applied (check.c). */
int rp__config_finish(struct rp__load *ld);

#endif
