/* libFuzzer target for rp_digest_parse: whatever it accepts must format back
 * to exactly the input, and be a name that is safe as a path component. */

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "regproxy/cache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct rp_digest d;
  char back[160];
  size_t hexlen;

  memset(&d, 0xa5, sizeof d);
  if (rp_digest_parse((const char *)data, size, &d) != 0)
    return 0;
  if (d.algo != 256 && d.algo != 512)
    abort();
  hexlen = strlen(d.hex);
  if (hexlen != (size_t)d.algo / 4)
    abort();
  for (size_t i = 0; i < hexlen; i++) {
    char ch = d.hex[i];
    if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
      abort();
  }
  rp_digest_format(&d, back, sizeof back);
  if (strlen(back) != size || memcmp(back, data, size) != 0)
    abort();
  return 0;
}
