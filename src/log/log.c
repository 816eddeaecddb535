/* Log lines: logfmt (default) or JSON, one write(2) per line on stderr. */
#include "regproxy/log.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static enum rp_log_level min_level = RP_LOG_INFO;
static enum rp_log_format format = RP_LOG_LOGFMT;

static const char *const level_names[RP_LOG_LEVEL_LAST] = {"debug", "info", "warn", "error"};
static const char *const format_names[RP_LOG_FORMAT_LAST] = {"logfmt", "json"};

void rp_log_setup(enum rp_log_level level, enum rp_log_format fmt) {
  min_level = level;
  format = fmt;
}

int rp_log_enabled(enum rp_log_level level) {
  return level >= min_level;
}

int rp_log_level_parse(const char *s) {
  for (int i = 0; i < RP_LOG_LEVEL_LAST; i++)
    if (strcmp(s, level_names[i]) == 0)
      return i;
  if (strcmp(s, "warning") == 0)
    return RP_LOG_WARN;
  return -1;
}

int rp_log_format_parse(const char *s) {
  for (int i = 0; i < RP_LOG_FORMAT_LAST; i++)
    if (strcmp(s, format_names[i]) == 0)
      return i;
  return -1;
}

/* Append raw bytes, silently truncating: a log line never grows past its
 * buffer (the last bytes are reserved for the closing brace and newline). */
static void put(struct rp_logline *l, const char *s, size_t n) {
  size_t room = sizeof(l->buf) - 3 - l->len;
  if (n > room)
    n = room;
  memcpy(l->buf + l->len, s, n);
  l->len += n;
}

static void putc_(struct rp_logline *l, char c) {
  put(l, &c, 1);
}

static void put_escaped(struct rp_logline *l, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      putc_(l, '\\');
      putc_(l, (char)c);
    } else if (c == '\n') {
      put(l, "\\n", 2);
    } else if (c == '\r') {
      put(l, "\\r", 2);
    } else if (c == '\t') {
      put(l, "\\t", 2);
    } else if (c < 0x20 || c == 0x7f) {
      char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      put(l, esc, 6);
    } else {
      putc_(l, (char)c);
    }
  }
}

static int needs_quotes(const char *s, size_t n) {
  if (n == 0)
    return 1;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= ' ' || c == '=' || c == '"' || c == '\\' || c == 0x7f)
      return 1;
  }
  return 0;
}

static void put_key(struct rp_logline *l, const char *key) {
  if (l->json) {
    put(l, ",\"", 2);
    put(l, key, strlen(key));
    put(l, "\":", 2);
  } else {
    putc_(l, ' ');
    put(l, key, strlen(key));
    putc_(l, '=');
  }
}

void rp_logline_strn(struct rp_logline *l, const char *key, const char *val, size_t n) {
  put_key(l, key);
  if (l->json || needs_quotes(val, n)) {
    putc_(l, '"');
    put_escaped(l, val, n);
    putc_(l, '"');
  } else {
    put(l, val, n);
  }
}

void rp_logline_str(struct rp_logline *l, const char *key, const char *val) {
  if (val == NULL)
    val = "-";
  rp_logline_strn(l, key, val, strlen(val));
}

void rp_logline_u64(struct rp_logline *l, const char *key, uint64_t val) {
  char tmp[24];
  int n = snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)val);
  put_key(l, key);
  put(l, tmp, (size_t)n);
}

void rp_logline_ms(struct rp_logline *l, const char *key, double ms) {
  char tmp[32];
  int n = snprintf(tmp, sizeof(tmp), "%.1f", ms);
  put_key(l, key);
  put(l, tmp, (size_t)n);
}

void rp_logline_begin(struct rp_logline *l, enum rp_log_level level, const char *msg) {
  struct timeval tv;
  struct tm tm;
  char ts[64];

  l->len = 0;
  l->level = level;
  l->json = format == RP_LOG_JSON;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
           tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
  if (l->json) {
    put(l, "{\"ts\":\"", 7);
    put(l, ts, strlen(ts));
    putc_(l, '"');
  } else {
    put(l, "ts=", 3);
    put(l, ts, strlen(ts));
  }
  rp_logline_str(l, "level", level_names[level]);
  if (msg != NULL)
    rp_logline_str(l, "msg", msg);
}

void rp_logline_end(struct rp_logline *l) {
  if (!rp_log_enabled(l->level))
    return;
  if (l->json)
    l->buf[l->len++] = '}';
  l->buf[l->len++] = '\n';
  /* One write per line; a short write to stderr is not worth a retry loop
   * that could block the event loop. */
  ssize_t rc = write(STDERR_FILENO, l->buf, l->len);
  (void)rc;
}

void rp_log(enum rp_log_level level, const char *fmt, ...) {
  struct rp_logline l;
  char msg[1024];
  va_list ap;

  if (!rp_log_enabled(level))
    return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  rp_logline_begin(&l, level, msg);
  rp_logline_end(&l);
}
