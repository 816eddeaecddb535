#ifndef RP_CONFIG_INTERNAL_H
#define RP_CONFIG_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
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

#endif
