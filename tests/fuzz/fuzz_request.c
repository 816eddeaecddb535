/* libFuzzer: the request-head glue, target and Host parsers, input split at
 * a point chosen by the first byte (splits exercise the cross-buffer checks). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "regproxy/http.h"

static int on_head(void *data, const struct rp_http_head *h) {
  struct rp_target t;
  const char *why;
  (void)data;
  rp_target_parse(h->target, h->target_len,
                  h->method_len == 7 && memcmp(h->method, "CONNECT", 7) == 0, &t, &why);
  (void)rp_http_request_host(h, 443, &t, &why);
  for (size_t i = 0; i < h->nheaders; i++)
    (void)rp_http_is_hop_by_hop(h, &h->headers[i]);
  return 0;
}

static int on_body(void *data, const char *at, size_t len) {
  (void)data;
  (void)at;
  (void)len;
  return 0;
}

static const struct rp_http_callbacks cbs = {on_head, on_body};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct rp_http_parser *p;
  size_t split, off = 0;
  if (size < 1)
    return 0;
  split = data[0] % 64 + 1;
  data++;
  size--;
  p = rp_http_parser_create(RP_HTTP_REQUEST, &cbs, NULL);
  while (off < size) {
    size_t n = size - off < split ? size - off : split, used = 0;
    enum rp_http_status st = rp_http_parser_execute(p, (const char *)data + off, n, &used);
    off += used;
    if (st == RP_HTTP_ERROR || st == RP_HTTP_UPGRADE)
      break;
    if (st == RP_HTTP_HEAD || st == RP_HTTP_DONE)
      rp_http_parser_resume(p);
  }
  rp_http_parser_destroy(p);
  return 0;
}
