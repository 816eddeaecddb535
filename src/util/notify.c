/* The service manager's notification protocol (sd_notify(3)): readiness,
 * reloads and stops for a Type=notify unit. The protocol is one datagram
 * to the AF_UNIX socket named by $NOTIFY_SOCKET ("@name" is in the abstract
 * namespace), so it is spoken here rather than through libsystemd: linking
 * libsystemd loaded it and five libraries of its own (gcrypt, lzma, lz4,
 * zstd, cap) into every start, about 1 MiB of resident memory and a few
 * milliseconds, for this one call. -DRP_SYSTEMD=OFF makes it a no-op (and
 * the generated unit Type=simple). */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "regproxy/util.h"

void rp_notify(const char *state) {
#ifdef RP_HAVE_SYSTEMD
  /* Keep NOTIFY_SOCKET: READY=1 follows every reload, not only start-up.
   * Without it (not under systemd) nothing is sent; a failure to send is not
   * worth stopping a proxy for. */
  const char *path = getenv("NOTIFY_SOCKET");
  struct sockaddr_un sa;
  size_t n;
  socklen_t len;
  int fd;

  if (state == NULL || path == NULL || (path[0] != '/' && path[0] != '@'))
    return;
  n = strlen(path);
  if (n < 2 || n >= sizeof(sa.sun_path))
    return;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, n);
  if (sa.sun_path[0] == '@')
    sa.sun_path[0] = '\0';
  len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
  fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return;
  (void)sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, len);
  close(fd);
#else
  (void)state;
#endif
}
