#include "regproxy/error.h"

#include <uv.h>

const char *rp_strerror(int err) {
  switch (err) {
#define XX(name, code, msg)                                                                        \
  case RP_E##name: return msg;
    RP_ERRNO_MAP(XX)
#undef XX
  default: return uv_strerror(err);
  }
}
