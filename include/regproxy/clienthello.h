#ifndef RP_CLIENTHELLO_H
#define RP_CLIENTHELLO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A TLS ClientHello read from the bytes a transparent listener peeked,
 * without consuming them (issue 9: route on SNI, then terminate TLS or tunnel
 * the untouched bytes). The parser is stateless: call it again with all the
 * bytes peeked so far until it says OK or INVALID. Every length is checked;
 * the handshake message may span TLS records (and so TCP segments), up to
 * RP_CLIENT_HELLO_MAX bytes: Go 1.24+ clients offer X25519MLKEM768 and their
 * ClientHello no longer fits one segment. */

#define RP_CLIENT_HELLO_MAX (16 * 1024)

enum rp_ch_status {
  RP_CH_NEED_MORE, /* a prefix of a valid ClientHello: peek again */
  RP_CH_INVALID,   /* not a TLS ClientHello (or a malformed one) */
  RP_CH_OK,
};

struct rp_client_hello {
  char sni[256]; /* host_name of server_name, lower-cased; "" when none */
  bool has_sni;
  bool sni_is_ip;          /* an IP literal was sent as the name (RFC 6066 forbids it) */
  bool ech;                /* encrypted_client_hello: the SNI above is the public name */
  bool alpn_http11;        /* ALPN offers http/1.1 */
  bool alpn_h2;            /* ALPN offers h2 */
  uint16_t legacy_version; /* client_version, 0x0303 for TLS 1.2 and 1.3 */
  size_t record_bytes;     /* the records that carry the ClientHello, headers included */
};

/** Parse the start of a client's byte stream. A stream that does not begin
 * with a handshake record is INVALID at once (the caller then tells TLS from
 * plain HTTP and anything else). */
enum rp_ch_status rp_client_hello_parse(const uint8_t *p, size_t n, struct rp_client_hello *out);

#endif
