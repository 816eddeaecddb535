/* base64 over OpenSSL's block functions, with the strictness our callers
 * had: padding optional on input, nothing but the canonical encoding. */
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "regproxy/error.h"
#include "regproxy/util.h"

char *rp_base64_encode(const void *in, size_t len) {
  char *out;

  if (len > RP_BASE64_MAX)
    return NULL;
  out = malloc((len + 2) / 3 * 4 + 1);
  if (out == NULL)
    return NULL;
  EVP_EncodeBlock((unsigned char *)out, in, (int)len); /* NUL-terminates */
  return out;
}

int rp_base64_decode(const char *in, size_t len, char **out, size_t *outlen) {
  size_t pad = 0, padded;
  char *full = NULL, *bytes = NULL, *again = NULL;
  int rc = RP_EPARSE, n;

  while (len > 0 && in[len - 1] == '=' && pad < 2)
    len--, pad++;
  if (len > RP_BASE64_MAX || len % 4 == 1 || (pad > 0 && (len + pad) % 4 != 0))
    return RP_EPARSE;
  /* EVP_DecodeBlock wants whole quanta: put the padding back if it was left out. */
  pad = (4 - len % 4) % 4;
  padded = len + pad;
  full = malloc(padded + 1);
  bytes = malloc(padded / 4 * 3 + 1);
  again = malloc(padded + 1);
  if (full == NULL || bytes == NULL || again == NULL) {
    rc = RP_ENOMEM;
    goto out;
  }
  memcpy(full, in, len);
  memset(full + len, '=', pad);
  full[padded] = '\0';
  n = EVP_DecodeBlock((unsigned char *)bytes, (const unsigned char *)full, (int)padded);
  if (n < 0)
    goto out;
  /* It decodes each '=' to a zero byte and counts it. */
  n -= (int)pad;
  /* It also skips leading whitespace, drops trailing junk and reads '='
   * anywhere as zero bits; so accept the input only if it is exactly the
   * encoding of what came out (which also rules out non-zero pad bits). */
  EVP_EncodeBlock((unsigned char *)again, (const unsigned char *)bytes, n);
  if (strcmp(again, full) != 0)
    goto out;
  bytes[n] = '\0';
  *out = bytes;
  *outlen = (size_t)n;
  bytes = NULL;
  rc = 0;
out:
  /* The input is usually a credential. */
  if (full != NULL)
    explicit_bzero(full, padded);
  if (again != NULL)
    explicit_bzero(again, padded);
  if (bytes != NULL)
    explicit_bzero(bytes, padded / 4 * 3);
  free(full);
  free(again);
  free(bytes);
  return rc;
}
