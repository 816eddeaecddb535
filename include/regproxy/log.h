#ifndef RP_LOG_H
#define RP_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

enum rp_log_level { RP_LOG_DEBUG, RP_LOG_INFO, RP_LOG_WARN, RP_LOG_ERROR, RP_LOG_LEVEL_LAST };
enum rp_log_format { RP_LOG_LOGFMT, RP_LOG_JSON, RP_LOG_FORMAT_LAST };

/** Set the minimum level and the output format (both may change on reload). */
void rp_log_setup(enum rp_log_level level, enum rp_log_format format);
int rp_log_enabled(enum rp_log_level level);
/** Parse "debug|info|warn|error" / "logfmt|json"; -1 when unknown. */
int rp_log_level_parse(const char *s);
int rp_log_format_parse(const char *s);

/* A log line is built from key/value fields and written to stderr in one
 * write(2), so lines from one process never interleave. */
struct rp_logline {
  char buf[4096];
  size_t len;
  enum rp_log_level level;
  int json;
};

void rp_logline_begin(struct rp_logline *l, enum rp_log_level level, const char *msg);
void rp_logline_str(struct rp_logline *l, const char *key, const char *val);
void rp_logline_strn(struct rp_logline *l, const char *key, const char *val, size_t n);
void rp_logline_u64(struct rp_logline *l, const char *key, uint64_t val);
void rp_logline_ms(struct rp_logline *l, const char *key, double ms);
void rp_logline_end(struct rp_logline *l);

/** printf-style convenience: one line with msg="..." and no other fields. */
void rp_log(enum rp_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define rp_log_debug(...) rp_log(RP_LOG_DEBUG, __VA_ARGS__)
#define rp_log_info(...)  rp_log(RP_LOG_INFO, __VA_ARGS__)
#define rp_log_warn(...)  rp_log(RP_LOG_WARN, __VA_ARGS__)
#define rp_log_error(...) rp_log(RP_LOG_ERROR, __VA_ARGS__)

#endif
