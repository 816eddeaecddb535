/* Header helpers shared by every path that writes HTTP: lookups, the
 * hop-by-hop rule and reason phrases. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "regproxy/error.h"
#include "regproxy/http.h"
#include "regproxy/util.h"

bool rp_http_token_eq(const char *a, size_t alen, const char *lit) {
  return strlen(lit) == alen && strncasecmp(a, lit, alen) == 0;
}

const struct rp_http_header *rp_http_header_find(const struct rp_http_head *h, const char *name) {
  for (size_t i = 0; i < h->nheaders; i++)
    if (rp_http_token_eq(h->headers[i].name, h->headers[i].name_len, name))
      return &h->headers[i];
  return NULL;
}

/* Is name one of the comma-separated tokens of a Connection header? */
static bool listed_in_connection(const struct rp_http_head *h, const char *name, size_t nlen) {
  for (size_t i = 0; i < h->nheaders; i++) {
    const struct rp_http_header *c = &h->headers[i];
    const char *v, *end;
    if (!rp_http_token_eq(c->name, c->name_len, "connection"))
      continue;
    v = c->value;
    end = c->value + c->value_len;
    while (v < end) {
      const char *tok, *tend;
      while (v < end && (*v == ' ' || *v == '\t' || *v == ','))
        v++;
      tok = v;
      while (v < end && *v != ',')
        v++;
      tend = v;
      while (tend > tok && (tend[-1] == ' ' || tend[-1] == '\t'))
        tend--;
      if ((size_t)(tend - tok) == nlen && strncasecmp(tok, name, nlen) == 0)
        return true;
    }
  }
  return false;
}

bool rp_http_is_hop_by_hop(const struct rp_http_head *h, const struct rp_http_header *hd) {
  static const char *const names[] = {"connection",
                                      "keep-alive",
                                      "proxy-connection",
                                      "proxy-authenticate",
                                      "proxy-authorization",
                                      "te",
                                      "trailer",
                                      "transfer-encoding",
                                      "upgrade"};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
    if (rp_http_token_eq(hd->name, hd->name_len, names[i]))
      return true;
  return listed_in_connection(h, hd->name, hd->name_len);
}

void rp_sbuf_add_end_to_end(struct rp_sbuf *b, const struct rp_http_head *h, const char *skip) {
  for (size_t i = 0; i < h->nheaders; i++) {
    const struct rp_http_header *hd = &h->headers[i];
    if (rp_http_is_hop_by_hop(h, hd) ||
        (skip != NULL && rp_http_token_eq(hd->name, hd->name_len, skip)))
      continue;
    rp_sbuf_add(b, hd->name, hd->name_len);
    rp_sbuf_adds(b, ": ");
    rp_sbuf_add(b, hd->value, hd->value_len);
    rp_sbuf_adds(b, "\r\n");
  }
}

/* Decimal digits at *p (at least one), no sign, no space, no overflow. */
static bool range_number(const char **p, const char *end, uint64_t *out) {
  uint64_t v = 0;
  const char *s = *p;

  if (s == end || *s < '0' || *s > '9')
    return false;
  for (; s < end && *s >= '0' && *s <= '9'; s++) {
    unsigned d = (unsigned)(*s - '0');
    if (v > (UINT64_MAX - d) / 10)
      return false;
    v = v * 10 + d;
  }
  *p = s;
  *out = v;
  return true;
}

int rp_http_range_parse(const char *v, size_t n, uint64_t size, uint64_t *off, uint64_t *len) {
  const char *p = v, *end = v + n;
  uint64_t first, last;

  if (n < 8 || strncasecmp(v, "bytes=", 6) != 0)
    return RP_EPARSE;
  p += 6;
  if (!range_number(&p, end, &first) || p == end || *p++ != '-')
    return RP_EPARSE;
  if (p == end) {
    last = UINT64_MAX;
  } else if (!range_number(&p, end, &last) || p != end || last < first) {
    return RP_EPARSE;
  }
  if (first >= size)
    return RP_EINVAL;
  if (last >= size)
    last = size - 1;
  *off = first;
  *len = last - first + 1;
  return 0;
}

const char *rp_http_reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 407: return "Proxy Authentication Required";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 413: return "Content Too Large";
  case 416: return "Range Not Satisfiable";
  case 421: return "Misdirected Request";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return "Unknown";
  }
}

int64_t rp_http_header_size(const struct rp_http_header *h, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++) {
    if (rp_http_token_eq(h[i].name, h[i].name_len, name)) {
      char buf[32];
      char *end;
      unsigned long long v;
      if (h[i].value_len == 0 || h[i].value_len >= sizeof(buf))
        return -1;
      memcpy(buf, h[i].value, h[i].value_len);
      buf[h[i].value_len] = '\0';
      v = strtoull(buf, &end, 10);
      return *end == '\0' ? (int64_t)v : -1;
    }
  }
  return -1;
}
