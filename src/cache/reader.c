/* Readers: the one serving path for a published file and a growing fill.
 * Chunks of RP_CACHE_CHUNK bytes are read and written to the sink (the
 * answer's body); the write callback is the backpressure. A chunk whose pages
 * are in the page cache is read right on the loop (preadv2 with RWF_NOWAIT,
 * which refuses rather than wait for the disk) when the previous chunk's
 * write completes: one chunk in flight per reader, since the socket's send
 * buffer, not a second chunk, keeps the client busy meanwhile (50 readers
 * peak at 48 MiB instead of 69). Any other chunk goes to libuv's thread pool
 * (uv_fs_read, one read in flight), and then the next chunk is read while
 * this one is written (two chunks at most). A reader caught up with a running
 * fill waits for the fill to wake it, and never reads a fill's last byte
 * before the fill is verified (it stays one byte behind the committed length
 * until then). */

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "cache/internal.h"
#include "regproxy/error.h"

static void run(struct rp_reader *r);

static void reader_free(struct rp_reader *r) {
  struct rp_cache *c = r->c;

  for (size_t i = 0; i < 2; i++)
    rp__chunk_free(c, r->ch[i].buf);
  rp_fill_unref(r->f);
  free(r);
  c->alive--;
  rp__cache_maybe_finalize(c);
}

static void on_closed(uv_fs_t *req) {
  struct rp_reader *r = req->data;

  uv_fs_req_cleanup(req);
  reader_free(r);
}

/* Freed once it is over (done ran, or cancelled) and nothing it started is
 * still in flight. */
static void maybe_free(struct rp_reader *r) {
  uv_file fd = r->fd;

  if (r->refs > 0 || !(r->finished || r->cancelled))
    return;
  r->fd = -1;
  r->close_req.data = r;
  if (fd >= 0 && uv_fs_close(r->c->loop, &r->close_req, fd, on_closed) == 0)
    return;
  reader_free(r);
}

static void release(struct rp_reader *r) {
  r->refs--;
  maybe_free(r);
}

static void detach(struct rp_reader *r) {
  struct rp__obj *o = r->obj;

  if (r->f != NULL && r->attached)
    rp__fill_detach(r->f, r);
  if (o != NULL) {
    r->obj = NULL;
    rp__obj_unpin(r->c, o);
  }
}

/* Only reached from run(), whose caller (a task, a read, write or open
 * completion) holds a reference: its release frees r. */
static void finish(struct rp_reader *r, int status) {
  r->finished = true;
  detach(r);
  r->done(r, r->data, status);
}

static void on_task(struct rp__task *t) {
  struct rp_reader *r = rp__container_of(t, struct rp_reader, task);

  run(r);
  release(r);
}

void rp__reader_wake(struct rp_reader *r) {
  if (r->cancelled || r->finished || r->task.queued)
    return;
  r->refs++;
  rp__task_post(r->c, &r->task);
}

static void on_write(void *arg, int status) {
  struct rp__rchunk *ch = arg;
  struct rp_reader *r = ch->r;

  r->nwrites--;
  ch->busy = false;
  if (!r->cancelled && !r->finished) {
    if (status < 0 && r->status == 0)
      r->status = status;
    run(r);
  }
  release(r);
}

static void submit_write(struct rp_reader *r, struct rp__rchunk *ch, size_t len) {
  int rc;

  ch->busy = true;
  ch->ub = uv_buf_init(ch->buf, (unsigned)len);
  r->nwrites++;
  r->refs++;
  rc = r->s->write(r->s, &ch->ub, 1, on_write, ch);
  if (rc != 0) {
    r->nwrites--;
    r->refs--;
    ch->busy = false;
    if (r->status == 0)
      r->status = rc;
  }
}

static void on_read(uv_fs_t *req) {
  struct rp__rchunk *ch = req->data;
  struct rp_reader *r = ch->r;
  ssize_t res = req->result;

  uv_fs_req_cleanup(req);
  r->nreads--;
  if (r->cancelled || r->finished) {
    ch->busy = false;
    release(r);
    return;
  }
  if (res <= 0) {
    ch->busy = false;
    if (r->status == 0)
      r->status = res < 0 ? (int)res : UV_EIO; /* the file is shorter than it should be */
  } else {
    if ((size_t)res < ch->want)
      r->rpos -= ch->want - (size_t)res;
    submit_write(r, ch, (size_t)res);
  }
  run(r);
  release(r);
}

static void submit_read(struct rp_reader *r, struct rp__rchunk *ch, size_t n) {
  uv_file fd = r->fd >= 0 ? r->fd : r->f->fd;
  int rc;

  r->read_ahead = true;
  ch->busy = true;
  ch->want = n;
  ch->ub = uv_buf_init(ch->buf, (unsigned)n);
  ch->req.data = ch;
  r->nreads++;
  r->refs++;
  rc = uv_fs_read(r->c->loop, &ch->req, fd, &ch->ub, 1, (int64_t)r->rpos, on_read);
  if (rc != 0) {
    r->nreads--;
    r->refs--;
    ch->busy = false;
    if (r->status == 0)
      r->status = rc;
    return;
  }
  r->rpos += n;
}

/* Read a chunk right here when its pages are cached: no thread-pool round
 * trip (a futex and an eventfd wake-up per chunk) for a warm hit. false:
 * not read (not cached, or not supported); the pool reads it. */
static bool read_now(struct rp_reader *r, struct rp__rchunk *ch, size_t n) {
#ifdef RWF_NOWAIT
  uv_file fd = r->fd >= 0 ? r->fd : r->f->fd;
  struct iovec iov = {ch->buf, n};
  ssize_t k;

  if (r->c->no_nowait)
    return false;
  k = preadv2(fd, &iov, 1, (off_t)r->rpos, RWF_NOWAIT);
  if (k < 0) {
    if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL)
      r->c->no_nowait = true;
    return false; /* EAGAIN: on disk, not in memory */
  }
  if (k == 0)
    return false; /* the pool's read reports a short file */
  r->rpos += (uint64_t)k;
  r->read_ahead = false;
  submit_write(r, ch, (size_t)k);
  return true;
#else
  (void)r;
  (void)ch;
  (void)n;
  return false;
#endif
}

/* How far r may read now. */
static uint64_t limit_of(const struct rp_reader *r) {
  const struct rp_fill *f = r->f;
  uint64_t avail;

  if (f == NULL)
    return r->end;
  if (f->verified)
    return f->final_size;
  avail = f->disk_failed ? f->accepted : f->committed;
  return avail > 0 ? avail - 1 : 0; /* the last byte waits for the verdict */
}

static struct rp__rchunk *free_chunk(struct rp_reader *r) {
  for (size_t i = 0; i < 2; i++) {
    if (!r->ch[i].busy)
      return &r->ch[i];
  }
  return NULL;
}

static void check_fill(struct rp_reader *r) {
  struct rp_fill *f = r->f;

  if (r->status != 0 || f == NULL)
    return;
  if (f->verified) {
    if (!r->end_known) {
      r->end = f->final_size;
      r->end_known = true;
    }
    if (r->end > f->final_size || r->rpos > r->end)
      r->status = RP_EINVAL; /* the range lies past the end of the blob */
  } else if (f->state == RP_FILL_FAILED) {
    r->status = f->error != 0 ? f->error : RP_EUPSTREAM;
  }
}

static void run(struct rp_reader *r) {
  struct rp_fill *f = r->f;

  if (r->cancelled || r->finished || r->opening)
    return;
  check_fill(r);
  while (r->status == 0 && r->nreads == 0 && !(r->end_known && r->rpos >= r->end)) {
    struct rp__rchunk *ch = free_chunk(r);
    uint64_t limit;
    size_t n;

    if (ch == NULL || (r->nwrites > 0 && !r->read_ahead))
      break; /* one chunk in flight while the pages are cached */
    limit = limit_of(r);
    if (r->end_known && limit > r->end)
      limit = r->end;
    if (r->rpos >= limit)
      break; /* wait for the fill to grow (it wakes us) */
    n = limit - r->rpos > RP_CACHE_CHUNK ? RP_CACHE_CHUNK : (size_t)(limit - r->rpos);
    if (ch->buf == NULL) {
      ch->buf = rp__chunk_alloc(r->c);
      if (ch->buf == NULL) {
        r->status = RP_ENOMEM;
        break;
      }
    }
    if (f != NULL && f->disk_failed && r->rpos >= f->disk_committed) {
      ssize_t k = rp__fill_copy(f, r->rpos, ch->buf, n);
      if (k <= 0) {
        r->status = k < 0 ? (int)k : UV_EIO; /* fell behind the window */
        break;
      }
      r->rpos += (uint64_t)k;
      rp__fill_reader_moved(f);
      submit_write(r, ch, (size_t)k);
      continue;
    }
    if (f != NULL && f->disk_failed && r->rpos + n > f->disk_committed)
      n = (size_t)(f->disk_committed - r->rpos);
    if (!read_now(r, ch, n))
      submit_read(r, ch, n);
  }
  if (r->nreads == 0 && r->nwrites == 0 && (r->status != 0 || (r->end_known && r->rpos >= r->end)))
    finish(r, r->status);
}

static void on_open(uv_fs_t *req) {
  struct rp_reader *r = req->data;
  ssize_t res = req->result;

  uv_fs_req_cleanup(req);
  r->opening = false;
  if (res >= 0)
    r->fd = (uv_file)res;
  if (!r->cancelled && !r->finished) {
    if (res < 0 && r->status == 0)
      r->status = (int)res;
    run(r);
  }
  release(r);
}

struct rp_reader *rp_reader_start(struct rp_cache *c, const struct rp_digest *d, struct rp_fill *f,
                                  uint64_t offset, int64_t length, struct rp_sink *s,
                                  rp_reader_done_cb done, void *data) {
  struct rp_reader *r = NULL;
  struct rp__obj *o = NULL;
  char *path = NULL;
  int rc;

  if (c == NULL || s == NULL || done == NULL || (d == NULL) == (f == NULL) || c->closing ||
      length < -1)
    return NULL;
  if (d != NULL) {
    o = rp__obj_find(c, d);
    if (o == NULL || offset > o->size || (length >= 0 && (uint64_t)length > o->size - offset))
      return NULL;
  } else {
    uint64_t known = f->verified ? f->final_size : f->expected >= 0 ? (uint64_t)f->expected : 0;
    bool size_known = f->verified || f->expected >= 0;
    if (f->state == RP_FILL_FAILED && !f->verified)
      return NULL;
    if (size_known && (offset > known || (length >= 0 && (uint64_t)length > known - offset)))
      return NULL;
  }
  r = calloc(1, sizeof *r);
  if (r == NULL)
    goto fail;
  r->c = c;
  r->s = s;
  r->done = done;
  r->data = data;
  r->fd = -1;
  r->rpos = offset;
  r->task.run = on_task;
  r->ch[0].r = r->ch[1].r = r;
  if (length >= 0) {
    r->end = offset + (uint64_t)length;
    r->end_known = true;
  }
  if (d != NULL) {
    if (!r->end_known) {
      r->end = o->size;
      r->end_known = true;
    }
    path = rp__blob_path(c, d);
    if (path == NULL)
      goto fail;
    r->opening = true;
    r->open_req.data = r;
    rc = uv_fs_open(c->loop, &r->open_req, path, O_RDONLY, 0, on_open);
    free(path);
    if (rc != 0)
      goto fail;
    r->refs++; /* the open */
  } else {
    rp_fill_ref(f);
    r->f = f;
    if (f->state == RP_FILL_RUNNING) {
      rp__fill_attach(f, r);
    } else {
      o = rp__obj_find(c, &f->digest);
    }
    rp__reader_wake(r);
  }
  if (o != NULL) {
    r->obj = o;
    o->pins++;
    rp__obj_touch(c, o);
  }
  c->alive++;
  return r;
fail:
  free(r);
  return NULL;
}

void rp_reader_cancel(struct rp_reader *r) {
  if (r == NULL || r->cancelled || r->finished)
    return;
  r->cancelled = true;
  detach(r);
  maybe_free(r);
}
