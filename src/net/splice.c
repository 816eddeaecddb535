/* A blind relay between two TCP sockets with splice(2): bytes go socket →
 * pipe → socket inside the kernel, never through a user-space buffer.
 *
 * libuv allows one handle per fd, and the streams' uv_tcp_t handles keep
 * theirs, so each side is polled through a dup() of its socket (epoll
 * registers the (fd, file) pair: a dup is a distinct registration). A
 * direction reads only while its pipe is empty, so EAGAIN from the read
 * splice always means the socket has nothing, never that the pipe is full;
 * bytes the destination does not take at once stay in the pipe, and the
 * source is not read again until the destination, polled for writability,
 * has taken them (backpressure). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* splice, pipe2, F_SETPIPE_SZ */
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "regproxy/net.h"

#ifdef __linux__

/* A larger pipe moves more per system call (1 MiB: about 10% less CPU per
 * GiB than 512 KiB, 25% less than 128 KiB); its pages are the sockets' own
 * (SPLICE_F_MOVE), so an empty pipe costs only its slot array. But the
 * kernel charges every pipe's slots to a per-user budget
 * (fs.pipe-user-pages-soft, 64 MiB by default), and once an unprivileged
 * user is over it every new pipe gets two slots. So only the first
 * BIG_PIPES_MAX bytes of pipes held at once are large; the rest keep the
 * default 64 KiB, and a pipe smaller than that (the budget is spent) is not
 * used at all: the tunnel goes back to read/write. */
#define PIPE_SIZE     (1024 * 1024)
#define PIPE_MIN      (64 * 1024)
#define BIG_PIPES_MAX (16 * 1024 * 1024)
/* Bound the work done per readiness callback (libuv's count = 32 in
 * uv__read), so one busy tunnel does not starve the loop. */
#define ROUNDS 16

struct side {
  uv_poll_t poll;
  int fd; /* our dup of the stream's socket */
  int events;
  struct rp_splice *sp;
};

struct dir {
  int pipe[2]; /* -1 until the direction first reads */
  size_t size; /* the pipe's capacity */
  size_t inpipe;
  int eof; /* EOF read and passed on */
};

struct rp_splice {
  struct side side[2];
  struct dir dir[2]; /* dir[d]: side d → side 1-d */
  struct rp_splice_cbs cbs;
  void *data;
  int handles;
  int dead;
};

static void on_poll(uv_poll_t *p, int status, int events);

/* Bytes of pipe capacity held by all relays (the loop's thread only). */
static size_t pipe_bytes;

/* Make direction d's pipe; 0 or an errno value. */
static int pipe_open(struct dir *dr) {
  int size;

  if (pipe2(dr->pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
    dr->pipe[0] = dr->pipe[1] = -1;
    return errno;
  }
  if (pipe_bytes + PIPE_SIZE <= BIG_PIPES_MAX)
    (void)fcntl(dr->pipe[1], F_SETPIPE_SZ, PIPE_SIZE);
  size = fcntl(dr->pipe[1], F_GETPIPE_SZ);
  if (size < PIPE_MIN) {
    close(dr->pipe[0]);
    close(dr->pipe[1]);
    dr->pipe[0] = dr->pipe[1] = -1;
    return ENOBUFS;
  }
  dr->size = (size_t)size;
  pipe_bytes += dr->size;
  return 0;
}

static void pipe_close(struct dir *dr) {
  if (dr->pipe[0] < 0)
    return;
  close(dr->pipe[0]);
  close(dr->pipe[1]);
  dr->pipe[0] = dr->pipe[1] = -1;
  pipe_bytes -= dr->size;
}

static int sock_error(int fd, int fallback) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err == 0)
    return fallback;
  return -err;
}

/* Errors after which the caller may go back to read/write: the kernel does
 * not splice these sockets, or no pipe could be made. */
static bool kernel_refused(int err) {
  return err == EINVAL || err == ENOSYS || err == EOPNOTSUPP || err == EMFILE || err == ENFILE ||
         err == ENOMEM || err == ENOBUFS;
}

static void fail(struct rp_splice *sp, int side, int err, bool writing) {
  bool fallback =
      !writing && kernel_refused(err) && sp->dir[0].inpipe == 0 && sp->dir[1].inpipe == 0;
  sp->cbs.on_error(sp->data, side, -err, writing, fallback);
}

static void update_events(struct rp_splice *sp) {
  for (int s = 0; s < 2 && !sp->dead; s++) {
    struct side *sd = &sp->side[s];
    int ev = 0;
    if (!sp->dir[s].eof && sp->dir[s].inpipe == 0)
      ev |= UV_READABLE;
    if (sp->dir[1 - s].inpipe > 0)
      ev |= UV_WRITABLE;
    if (ev == sd->events)
      continue;
    sd->events = ev;
    if (ev == 0)
      uv_poll_stop(&sd->poll);
    else
      uv_poll_start(&sd->poll, ev, on_poll);
  }
}

/* Empty direction d's pipe into its destination as far as it takes.
 * false: the relay failed (and may be gone). */
static bool drain(struct rp_splice *sp, int d) {
  struct dir *dr = &sp->dir[d];
  while (dr->inpipe > 0) {
    ssize_t n = splice(dr->pipe[0], NULL, sp->side[1 - d].fd, NULL, dr->inpipe,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      dr->inpipe -= (size_t)n;
      sp->cbs.on_write(sp->data, 1 - d, (size_t)n);
      if (sp->dead)
        return false;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      return true;
    fail(sp, 1 - d, n < 0 ? errno : EPIPE, true);
    return false;
  }
  return true;
}

static bool pass_eof(struct rp_splice *sp, int d) {
  sp->dir[d].eof = 1;
  if (shutdown(sp->side[1 - d].fd, SHUT_WR) != 0) {
    fail(sp, 1 - d, errno, true);
    return false;
  }
  sp->cbs.on_eof(sp->data, d);
  return !sp->dead;
}

/* Side d is readable: move what it has to side 1-d. */
static bool pump(struct rp_splice *sp, int d) {
  struct dir *dr = &sp->dir[d];

  if (dr->eof || dr->inpipe > 0)
    return true;
  if (dr->pipe[0] < 0) {
    int err = pipe_open(dr);
    if (err != 0) {
      fail(sp, d, err, false);
      return false;
    }
  }
  for (int i = 0; i < ROUNDS; i++) {
    ssize_t n = splice(sp->side[d].fd, NULL, dr->pipe[1], NULL, dr->size,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n == 0)
      return pass_eof(sp, d);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN)
        return true;
      fail(sp, d, errno, false);
      return false;
    }
    dr->inpipe += (size_t)n;
    sp->cbs.on_read(sp->data, d, (size_t)n);
    if (sp->dead || !drain(sp, d))
      return false;
    if (dr->inpipe > 0)
      return true; /* the destination is full: wait until it is writable */
  }
  return true;
}

static void on_poll(uv_poll_t *p, int status, int events) {
  struct side *sd = p->data;
  struct rp_splice *sp = sd->sp;
  int s = (int)(sd - sp->side);

  if (sp->dead)
    return;
  if (status < 0) {
    /* POLLERR: libuv stopped the handle; the socket says what happened. */
    sd->events = 0;
    fail(sp, s, -sock_error(sd->fd, status), sp->dir[1 - s].inpipe > 0);
    return;
  }
  if ((events & UV_WRITABLE) && !drain(sp, 1 - s))
    return;
  if ((events & UV_READABLE) && !pump(sp, s))
    return;
  update_events(sp);
}

static void on_poll_close(uv_handle_t *h) {
  struct side *sd = h->data;
  struct rp_splice *sp = sd->sp;
  if (--sp->handles == 0)
    free(sp);
}

int rp_splice_start(struct rp_stream *a, struct rp_stream *b, bool a_eof, bool b_eof,
                    const struct rp_splice_cbs *cbs, void *data, struct rp_splice **out) {
  struct rp_stream *st[2] = {a, b};
  struct rp_splice *sp;
  int fd[2];
  int rc;

  if (rp_tcp_stream_fd(a, &fd[0]) != 0 || rp_tcp_stream_fd(b, &fd[1]) != 0)
    return UV_ENOTSUP;
  sp = calloc(1, sizeof(*sp));
  if (sp == NULL)
    return UV_ENOMEM;
  sp->cbs = *cbs;
  sp->data = data;
  for (int s = 0; s < 2; s++) {
    sp->side[s].fd = -1;
    sp->side[s].sp = sp;
    sp->dir[s].pipe[0] = sp->dir[s].pipe[1] = -1;
  }
  sp->dir[0].eof = a_eof;
  sp->dir[1].eof = b_eof;
  for (int s = 0; s < 2; s++) {
    sp->side[s].fd = fcntl(fd[s], F_DUPFD_CLOEXEC, 0);
    if (sp->side[s].fd < 0) {
      rc = -errno;
      goto fail;
    }
  }
  for (int s = 0; s < 2; s++) {
    rc = uv_poll_init(st[s]->ops->loop(st[s]), &sp->side[s].poll, sp->side[s].fd);
    if (rc != 0)
      goto fail_handles;
    sp->side[s].poll.data = &sp->side[s];
    sp->handles++;
  }
  update_events(sp);
  *out = sp;
  return 0;

fail_handles:
  /* The poll handles that were initialised free sp when they are closed. */
  if (sp->handles > 0) {
    int n = sp->handles;
    for (int s = 0; s < 2; s++)
      close(sp->side[s].fd);
    for (int s = 0; s < n; s++)
      uv_close((uv_handle_t *)&sp->side[s].poll, on_poll_close);
    return rc;
  }
fail:
  for (int s = 0; s < 2; s++)
    if (sp->side[s].fd >= 0)
      close(sp->side[s].fd);
  free(sp);
  return rc;
}

void rp_splice_destroy(struct rp_splice *sp) {
  if (sp == NULL || sp->dead)
    return;
  sp->dead = 1;
  for (int s = 0; s < 2; s++) {
    /* uv_close of a poll handle takes the fd out of epoll at once, so the
     * dup can go now; the handle's memory waits for its close callback. */
    uv_close((uv_handle_t *)&sp->side[s].poll, on_poll_close);
    close(sp->side[s].fd);
    pipe_close(&sp->dir[s]);
  }
}

#else /* !__linux__ */

int rp_splice_start(struct rp_stream *a, struct rp_stream *b, bool a_eof, bool b_eof,
                    const struct rp_splice_cbs *cbs, void *data, struct rp_splice **out) {
  (void)a, (void)b, (void)a_eof, (void)b_eof, (void)cbs, (void)data, (void)out;
  return UV_ENOTSUP;
}

void rp_splice_destroy(struct rp_splice *sp) {
  (void)sp;
}

#endif
