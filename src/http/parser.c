/* llhttp glue: collects a message head into one bounded arena, applies the
 * checks llhttp 8 leaves to us (obsolete line folding, head size, header
 * count), pauses after each message so pipelined requests are handled one at
 * a time, and reports errors as the status to answer. */
#include <llhttp.h>
#include <stdlib.h>
#include <string.h>

#include "regproxy/http.h"

enum span { SPAN_NONE, SPAN_FIELD, SPAN_VALUE };

struct hdr_off {
  uint32_t name, name_len, value, value_len;
};

struct rp_http_parser {
  llhttp_t llhttp;
  enum rp_http_type type;
  const struct rp_http_callbacks *cb;
  void *data;

  int in_message; /* between message begin and complete */
  int head_done;
  int no_body;     /* response to HEAD */
  int paused_head; /* the last pause was at the end of a request head */
  /* Request-line shape: llhttp 8 takes runs of spaces between method,
   * target and version, RFC 9112 §3 exactly one. */
  int rl_started, rl_done, rl_prev_sp;
  unsigned rl_spaces;
  size_t head_raw; /* raw bytes seen while in the head */

  /* The current input buffer, for looking one byte behind a span. */
  const char *buf_start;
  char prev_nonblank; /* last byte other than SP/HT in earlier buffers */

  enum span span;
  uint32_t url, url_len; /* also the reason phrase of responses */
  size_t nhdr;
  struct hdr_off hdr[RP_HTTP_MAX_HEADERS];
  struct rp_http_header out[RP_HTTP_MAX_HEADERS];
  struct rp_http_head head;

  int err_status;
  const char *err_reason;

  /* The first bytes of the current message, to tell an unknown method
   * (501) from garbage (400) however the input was split. */
  char lead[16];
  size_t lead_len;

  size_t arena_len;
  char arena[RP_HTTP_HEAD_MAX];
};

static struct rp_http_parser *P(llhttp_t *l) {
  return (struct rp_http_parser *)l;
}

static int fail(struct rp_http_parser *p, int status, const char *reason) {
  if (p->err_status == 0) {
    p->err_status = status;
    p->err_reason = reason;
  }
  return HPE_USER;
}

static int too_big(struct rp_http_parser *p) {
  return fail(p, p->type == RP_HTTP_REQUEST ? 431 : 502,
              p->type == RP_HTTP_REQUEST ? "request head too large" : "response head too large");
}

static int arena_add(struct rp_http_parser *p, const char *at, size_t len) {
  if (len > sizeof(p->arena) - p->arena_len)
    return too_big(p);
  memcpy(p->arena + p->arena_len, at, len);
  p->arena_len += len;
  return 0;
}

static int on_message_begin(llhttp_t *l) {
  struct rp_http_parser *p = P(l);
  p->in_message = 1;
  p->head_done = 0;
  p->span = SPAN_NONE;
  p->arena_len = 0;
  p->url = 0;
  p->url_len = 0;
  p->nhdr = 0;
  return 0;
}

static int on_url(llhttp_t *l, const char *at, size_t len) {
  struct rp_http_parser *p = P(l);
  int rc = arena_add(p, at, len);
  if (rc == 0)
    p->url_len += (uint32_t)len;
  return rc;
}

/* The last byte before 'at' that is not a blank, possibly from an earlier
 * buffer (input may arrive one byte at a time). */
static char nonblank_before(const struct rp_http_parser *p, const char *at) {
  while (at > p->buf_start && (at[-1] == ' ' || at[-1] == '\t'))
    at--;
  return at > p->buf_start ? at[-1] : p->prev_nonblank;
}

static int on_header_field(llhttp_t *l, const char *at, size_t len) {
  struct rp_http_parser *p = P(l);
  if (p->span != SPAN_FIELD) {
    struct hdr_off *h;
    if (p->nhdr == RP_HTTP_MAX_HEADERS)
      return fail(p, p->type == RP_HTTP_REQUEST ? 431 : 502, "too many header fields");
    h = &p->hdr[p->nhdr++];
    h->name = (uint32_t)p->arena_len;
    h->name_len = 0;
    h->value = (uint32_t)p->arena_len;
    h->value_len = 0;
    p->span = SPAN_FIELD;
  }
  if (arena_add(p, at, len) != 0)
    return HPE_USER;
  p->hdr[p->nhdr - 1].name_len += (uint32_t)len;
  return 0;
}

static int on_header_value(llhttp_t *l, const char *at, size_t len) {
  struct rp_http_parser *p = P(l);
  struct hdr_off *h = &p->hdr[p->nhdr - 1];

  if (p->span != SPAN_VALUE) {
    /* A value span that starts (after optional blanks) right behind a line
     * break is an obsolete folded continuation line (RFC 9112 §5.2), which
     * llhttp 8 accepts even in strict mode. A normal value follows "name:". */
    char c = len > 0 ? nonblank_before(p, at) : ':';
    if (c == '\n' || c == '\r')
      return fail(p, 400, "obsolete line folding in header");
    h->value = (uint32_t)p->arena_len;
    h->value_len = 0;
    p->span = SPAN_VALUE;
  } else if (len > 0 && (at[0] == ' ' || at[0] == '\t') && nonblank_before(p, at) == '\n') {
    return fail(p, 400, "obsolete line folding in header");
  }
  if (arena_add(p, at, len) != 0)
    return HPE_USER;
  h->value_len += (uint32_t)len;
  return 0;
}

static int on_header_value_complete(llhttp_t *l) {
  P(l)->span = SPAN_NONE;
  return 0;
}

static int on_headers_complete(llhttp_t *l) {
  struct rp_http_parser *p = P(l);
  struct rp_http_head *h = &p->head;
  int rc;

  memset(h, 0, sizeof(*h));
  for (size_t i = 0; i < p->nhdr; i++) {
    p->out[i].name = p->arena + p->hdr[i].name;
    p->out[i].name_len = p->hdr[i].name_len;
    p->out[i].value = p->arena + p->hdr[i].value;
    p->out[i].value_len = p->hdr[i].value_len;
    /* Trailing blanks are not part of a field value. */
    while (p->out[i].value_len > 0 && (p->out[i].value[p->out[i].value_len - 1] == ' ' ||
                                       p->out[i].value[p->out[i].value_len - 1] == '\t'))
      p->out[i].value_len--;
  }
  h->headers = p->out;
  h->nheaders = p->nhdr;
  h->major = l->http_major;
  h->minor = l->http_minor;
  if (p->type == RP_HTTP_REQUEST) {
    h->method_id = l->method;
    h->method = llhttp_method_name((llhttp_method_t)l->method);
    h->method_len = strlen(h->method);
    h->target = p->arena + p->url;
    h->target_len = p->url_len;
  } else {
    h->status = l->status_code;
    h->reason = p->arena + p->url;
    h->reason_len = p->url_len;
  }
  h->content_length = (l->flags & F_CONTENT_LENGTH) ? (int64_t)l->content_length : -1;
  h->chunked = (l->flags & F_CHUNKED) != 0;
  h->keep_alive = llhttp_should_keep_alive(l) != 0;
  h->upgrade = l->upgrade != 0;
  p->head_done = 1;
  if (p->type == RP_HTTP_REQUEST && h->major != 1)
    return fail(p, 505, "unsupported HTTP version");
  rc = p->cb->on_head(p->data, h);
  if (rc != 0)
    return fail(p, 400, "request refused");
  if (p->type == RP_HTTP_RESPONSE)
    return p->no_body ? 1 : 0; /* 1: skip the body */
  /* Requests pause here so the caller can route before any body byte. */
  p->paused_head = 1;
  return HPE_PAUSED;
}

static int on_body(llhttp_t *l, const char *at, size_t len) {
  struct rp_http_parser *p = P(l);
  if (p->cb->on_body != NULL && p->cb->on_body(p->data, at, len) != 0)
    return fail(p, 400, "body refused");
  return 0;
}

static int on_message_complete(llhttp_t *l) {
  struct rp_http_parser *p = P(l);
  p->in_message = 0;
  /* Stop after each message: the caller handles one at a time. */
  return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_status = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

struct rp_http_parser *rp_http_parser_create(enum rp_http_type type,
                                             const struct rp_http_callbacks *cb, void *data) {
  struct rp_http_parser *p = malloc(sizeof(*p));
  if (p == NULL)
    return NULL;
  /* Only the bookkeeping is cleared; the arena is written before it is read. */
  memset(p, 0, offsetof(struct rp_http_parser, arena));
  p->type = type;
  p->cb = cb;
  p->data = data;
  llhttp_init(&p->llhttp, type == RP_HTTP_REQUEST ? HTTP_REQUEST : HTTP_RESPONSE, &settings);
  return p;
}

void rp_http_parser_destroy(struct rp_http_parser *p) {
  free(p);
}

void rp_http_parser_reset(struct rp_http_parser *p) {
  enum rp_http_type type = p->type;
  const struct rp_http_callbacks *cb = p->cb;
  void *data = p->data;
  memset(p, 0, offsetof(struct rp_http_parser, arena));
  p->type = type;
  p->cb = cb;
  p->data = data;
  llhttp_init(&p->llhttp, type == RP_HTTP_REQUEST ? HTTP_REQUEST : HTTP_RESPONSE, &settings);
}

/* 0, or -1 when the request line has a doubled space, a tab, or more than
 * two spaces. Scans only until the line's LF, across any input split. */
static int check_request_line(struct rp_http_parser *p, const char *at, size_t len) {
  for (size_t i = 0; i < len && !p->rl_done; i++) {
    char c = at[i];
    if (!p->rl_started) {
      if (c == '\r' || c == '\n')
        continue; /* llhttp decides about blank lines before a request */
      p->rl_started = 1;
    }
    if (c == '\n' || c == '\r') {
      p->rl_done = 1;
    } else if (c == ' ') {
      if (p->rl_prev_sp || ++p->rl_spaces > 2)
        return -1;
      p->rl_prev_sp = 1;
    } else if (c == '\t') {
      return -1;
    } else {
      p->rl_prev_sp = 0;
    }
  }
  return 0;
}

static int is_tchar(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* llhttp knows a fixed set of methods and stops at the first byte that
 * fits none; a token (so far) is a method we do not implement, 501 (RFC 9110
 * §9.1, contract §7; 405 is for a known method a resource does not allow),
 * anything else 400. */
static int method_status(const char *at, size_t len) {
  size_t i = 0;
  while (i < len && is_tchar((unsigned char)at[i]))
    i++;
  return (i > 0 && (i == len || at[i] == ' ')) ? 501 : 400;
}

enum rp_http_status rp_http_parser_execute(struct rp_http_parser *p, const char *at, size_t len,
                                           size_t *consumed) {
  int was_idle = !p->in_message;
  llhttp_errno_t e;

  *consumed = 0;
  if (p->err_status != 0)
    return RP_HTTP_ERROR;
  if (len == 0 && !p->in_message)
    return RP_HTTP_OK;
  if (!p->head_done || was_idle)
    p->head_raw = was_idle ? len : p->head_raw + len;
  if (was_idle) {
    p->lead_len = 0;
    p->rl_started = p->rl_done = p->rl_prev_sp = 0;
    p->rl_spaces = 0;
  }
  if (p->type == RP_HTTP_REQUEST && !p->rl_done && check_request_line(p, at, len) != 0) {
    fail(p, 400, "malformed request line");
    return RP_HTTP_ERROR;
  }
  if (p->lead_len < sizeof(p->lead) && (was_idle || !p->head_done)) {
    size_t n = len < sizeof(p->lead) - p->lead_len ? len : sizeof(p->lead) - p->lead_len;
    memcpy(p->lead + p->lead_len, at, n);
    p->lead_len += n;
  }
  p->buf_start = at;
  /* An empty call still runs the states that need no input: after a pause
   * at the end of a bodiless head it completes the message. */
  e = llhttp_execute(&p->llhttp, at, len);
  {
    size_t i = len;
    while (i > 0 && (at[i - 1] == ' ' || at[i - 1] == '\t'))
      i--;
    if (i > 0)
      p->prev_nonblank = at[i - 1];
  }
  switch (e) {
  case HPE_OK:
    *consumed = len;
    if (p->in_message && !p->head_done && p->head_raw > RP_HTTP_HEAD_MAX) {
      too_big(p);
      return RP_HTTP_ERROR;
    }
    return RP_HTTP_OK;
  case HPE_PAUSED:
    *consumed = (size_t)(llhttp_get_error_pos(&p->llhttp) - at);
    if (p->paused_head) {
      p->paused_head = 0;
      return RP_HTTP_HEAD;
    }
    return RP_HTTP_DONE;
  case HPE_PAUSED_UPGRADE:
    *consumed = (size_t)(llhttp_get_error_pos(&p->llhttp) - at);
    return RP_HTTP_UPGRADE;
  case HPE_USER: return RP_HTTP_ERROR;
  case HPE_INVALID_METHOD:
    if (method_status(p->lead, p->lead_len) == 501)
      fail(p, 501, "unknown method");
    else
      fail(p, 400, "malformed request line");
    return RP_HTTP_ERROR;
  case HPE_UNEXPECTED_CONTENT_LENGTH:
    fail(p, 400, "conflicting Content-Length or Transfer-Encoding");
    return RP_HTTP_ERROR;
  case HPE_INVALID_VERSION:
    fail(p, p->type == RP_HTTP_REQUEST ? 400 : 502, "malformed HTTP version");
    return RP_HTTP_ERROR;
  default:
    fail(p, p->type == RP_HTTP_REQUEST ? 400 : 502, llhttp_get_error_reason(&p->llhttp));
    return RP_HTTP_ERROR;
  }
}

void rp_http_parser_resume(struct rp_http_parser *p) {
  if (llhttp_get_errno(&p->llhttp) == HPE_PAUSED)
    llhttp_resume(&p->llhttp);
}

enum rp_http_status rp_http_parser_finish(struct rp_http_parser *p) {
  llhttp_errno_t e;
  if (!p->in_message)
    return RP_HTTP_OK;
  e = llhttp_finish(&p->llhttp);
  if (e == HPE_PAUSED || (e == HPE_OK && !p->in_message))
    return RP_HTTP_DONE;
  fail(p, 502, "connection closed in the middle of a message");
  return RP_HTTP_ERROR;
}

void rp_http_parser_expect_no_body(struct rp_http_parser *p, bool no_body) {
  p->no_body = no_body;
}

int rp_http_parser_error(const struct rp_http_parser *p, const char **reason) {
  if (reason != NULL)
    *reason = p->err_reason != NULL ? p->err_reason : "malformed request";
  return p->err_status != 0 ? p->err_status : 400;
}

bool rp_http_parser_in_head(const struct rp_http_parser *p) {
  return p->in_message && !p->head_done;
}

bool rp_http_parser_in_body(const struct rp_http_parser *p) {
  return p->in_message && p->head_done;
}

bool rp_http_parser_body_until_close(const struct rp_http_parser *p) {
  return p->head_done && p->in_message && !(p->llhttp.flags & (F_CHUNKED | F_CONTENT_LENGTH));
}
