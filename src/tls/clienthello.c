/* The ClientHello of a connection a transparent listener accepted, read from
 * peeked bytes (RFC 8446 §4.1.2, §5.1; RFC 6066 §3 server_name; RFC 7301
 * ALPN). Records are walked and their handshake payload reassembled into
 * one bounded buffer; the message is then read with a cursor whose every
 * step checks the bytes left, so no length in the input is ever trusted. */
#include <arpa/inet.h>
#include <string.h>

#include "regproxy/clienthello.h"

#define REC_HEADER     5
#define REC_MAX        16384 /* a TLSPlaintext fragment, RFC 8446 §5.1 */
#define HS_HEADER      4
#define EXT_SNI        0x0000
#define EXT_ALPN       0x0010
#define EXT_ECH        0xfe0d
#define EXTENSIONS_MAX 128 /* real clients send about twenty, GREASE included */

/* A cursor over bytes: every read checks what is left and fails sticky. */
struct cur {
  const uint8_t *p;
  size_t n;
  bool bad;
};

static bool take(struct cur *c, size_t k, const uint8_t **out) {
  if (c->bad || c->n < k) {
    c->bad = true;
    return false;
  }
  *out = c->p;
  c->p += k;
  c->n -= k;
  return true;
}

static unsigned u8(struct cur *c) {
  const uint8_t *b;
  return take(c, 1, &b) ? b[0] : 0;
}

static unsigned u16(struct cur *c) {
  const uint8_t *b;
  return take(c, 2, &b) ? (unsigned)b[0] << 8 | b[1] : 0;
}

/* A sub-cursor of the next len bytes (a length-prefixed vector). */
static struct cur sub(struct cur *c, size_t len) {
  struct cur s = {NULL, 0, true};
  const uint8_t *b;
  if (take(c, len, &b)) {
    s.p = b;
    s.n = len;
    s.bad = false;
  }
  return s;
}

/* host_name: a DNS name in ASCII (RFC 6066), one trailing dot allowed. */
static bool sni_copy(const uint8_t *p, size_t n, struct rp_client_hello *out) {
  struct in6_addr a6;
  struct in_addr a4;

  if (n > 0 && p[n - 1] == '.')
    n--;
  if (n == 0 || n >= sizeof(out->sni))
    return false;
  for (size_t i = 0; i < n; i++) {
    uint8_t ch = p[i];
    bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '.' || ch == '_' || ch == ':';
    if (!ok)
      return false;
    out->sni[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + ('a' - 'A') : ch);
  }
  out->sni[n] = '\0';
  out->has_sni = true;
  out->sni_is_ip =
      inet_pton(AF_INET, out->sni, &a4) == 1 || inet_pton(AF_INET6, out->sni, &a6) == 1;
  if (!out->sni_is_ip && strchr(out->sni, ':') != NULL)
    return false; /* a colon belongs only in an IPv6 literal */
  return true;
}

static bool parse_sni(struct cur e, struct rp_client_hello *out) {
  struct cur list = sub(&e, u16(&e));
  bool host_seen = false;

  if (e.bad || e.n != 0 || list.n == 0)
    return false;
  while (list.n > 0) {
    unsigned type = u8(&list);
    struct cur name = sub(&list, u16(&list));
    if (list.bad)
      return false;
    if (type != 0)
      continue; /* no other name type is defined; skip it */
    if (host_seen || !sni_copy(name.p, name.n, out))
      return false;
    host_seen = true;
  }
  return true;
}

static bool parse_alpn(struct cur e, struct rp_client_hello *out) {
  struct cur list = sub(&e, u16(&e));

  if (e.bad || e.n != 0 || list.n == 0)
    return false;
  while (list.n > 0) {
    struct cur proto = sub(&list, u8(&list));
    if (list.bad || proto.n == 0)
      return false;
    if (proto.n == 8 && memcmp(proto.p, "http/1.1", 8) == 0)
      out->alpn_http11 = true;
    else if (proto.n == 2 && memcmp(proto.p, "h2", 2) == 0)
      out->alpn_h2 = true;
  }
  return true;
}

/* The ClientHello body (after its 4-byte handshake header). */
static bool parse_body(struct cur c, struct rp_client_hello *out) {
  unsigned seen[EXTENSIONS_MAX];
  size_t nseen = 0;
  struct cur exts, suites, comp, sid;
  const uint8_t *random;

  out->legacy_version = (uint16_t)u16(&c);
  take(&c, 32, &random);
  sid = sub(&c, u8(&c));
  suites = sub(&c, u16(&c));
  comp = sub(&c, u8(&c));
  if (c.bad || (out->legacy_version >> 8) != 3 || sid.n > 32 || suites.n < 2 || suites.n % 2 != 0 ||
      comp.n < 1)
    return false;
  if (c.n == 0)
    return true; /* no extensions at all (allowed before TLS 1.3) */
  exts = sub(&c, u16(&c));
  if (c.bad || c.n != 0)
    return false;
  while (exts.n > 0) {
    unsigned type = u16(&exts);
    struct cur e = sub(&exts, u16(&exts));
    if (exts.bad || nseen == EXTENSIONS_MAX)
      return false;
    /* RFC 8446 §4.2: no extension type twice. */
    for (size_t i = 0; i < nseen; i++)
      if (seen[i] == type)
        return false;
    seen[nseen++] = type;
    if (type == EXT_SNI && !parse_sni(e, out))
      return false;
    if (type == EXT_ALPN && !parse_alpn(e, out))
      return false;
    if (type == EXT_ECH)
      out->ech = true;
  }
  return true;
}

enum rp_ch_status rp_client_hello_parse(const uint8_t *p, size_t n, struct rp_client_hello *out) {
  uint8_t msg[RP_CLIENT_HELLO_MAX];
  size_t have = 0, off = 0, need = 0;

  memset(out, 0, sizeof(*out));
  /* Walk the records, reassembling their handshake payload. */
  for (;;) {
    size_t len, k;

    if (n - off < REC_HEADER) {
      /* Judge the partial header by what is there. */
      if ((n > off && p[off] != 0x16) || (n > off + 1 && p[off + 1] != 3) ||
          (n > off + 2 && p[off + 2] > 4))
        return RP_CH_INVALID;
      return RP_CH_NEED_MORE;
    }
    if (p[off] != 0x16 || p[off + 1] != 3 || p[off + 2] > 4)
      return RP_CH_INVALID;
    len = (size_t)p[off + 3] << 8 | p[off + 4];
    if (len == 0 || len > REC_MAX)
      return RP_CH_INVALID;
    k = n - off - REC_HEADER < len ? n - off - REC_HEADER : len;
    if (have + k > sizeof(msg))
      k = sizeof(msg) - have; /* past the bound: the length check below refuses */
    memcpy(msg + have, p + off + REC_HEADER, k);
    have += k;
    if (need == 0 && have >= HS_HEADER) {
      if (msg[0] != 1) /* client_hello */
        return RP_CH_INVALID;
      need = HS_HEADER + ((size_t)msg[1] << 16 | (size_t)msg[2] << 8 | msg[3]);
      if (need > RP_CLIENT_HELLO_MAX)
        return RP_CH_INVALID;
    }
    if (off + REC_HEADER + len > n)
      return RP_CH_NEED_MORE; /* this record is not all here yet */
    off += REC_HEADER + len;
    if (need != 0 && have >= need)
      break;
  }
  out->record_bytes = off;
  {
    struct cur c = {msg + HS_HEADER, need - HS_HEADER, false};
    if (!parse_body(c, out)) {
      memset(out, 0, sizeof(*out));
      return RP_CH_INVALID;
    }
  }
  return RP_CH_OK;
}
