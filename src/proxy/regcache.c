/* The registry cache inside MITM (SPEC §3): blobs and manifests requested by
 * digest are served from the content-addressed store when this client may
 * have them, or fetched once into it while the client reads the growing
 * fill. Everything else, and every case the cache cannot decide safely, is
 * left to the pass-through relay.
 *
 * Who may receive what: a cached object is served for (registry, repository)
 * only when it is known to belong there and the client's credential was
 * confirmed for that repository by an upstream 2xx within access_ttl (the
 * HEAD of a pull's tag check does that), or with access_check off. Otherwise
 * the request goes upstream, which decides. */
#include <llhttp.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "internal.h"
#include "regproxy/cache.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/metrics.h"

/* ---- access memo ---- */

#define MEMO_SLOTS 8192

struct memo_slot {
  unsigned char key[16]; /* sha256(registry, repository, credential) truncated */
  uint64_t when_ms;
};

struct rp__memo {
  struct memo_slot slot[MEMO_SLOTS];
};

static void memo_key(const char *registry, const char *repo, const struct rp_http_head *h,
                     unsigned char out[16]) {
  const struct rp_http_header *a = rp_http_header_find(h, "authorization");
  unsigned char md[32];
  unsigned int mdlen = 0;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();

  memset(out, 0, 16);
  if (ctx == NULL)
    return;
  if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1) {
    EVP_DigestUpdate(ctx, registry, strlen(registry) + 1);
    EVP_DigestUpdate(ctx, repo, strlen(repo) + 1);
    if (a != NULL)
      EVP_DigestUpdate(ctx, a->value, a->value_len);
    if (EVP_DigestFinal_ex(ctx, md, &mdlen) == 1)
      memcpy(out, md, 16);
  }
  EVP_MD_CTX_free(ctx);
}

static struct memo_slot *memo_find(struct rp__memo *m, const unsigned char key[16]) {
  uint32_t idx;
  memcpy(&idx, key, sizeof(idx));
  return &m->slot[idx % MEMO_SLOTS];
}

static void memo_confirm(struct rp_server *srv, const char *registry, const char *repo,
                         const struct rp_http_head *h) {
  unsigned char key[16];
  struct memo_slot *s;

  if (srv->memo == NULL && (srv->memo = calloc(1, sizeof(*srv->memo))) == NULL)
    return;
  memo_key(registry, repo, h, key);
  s = memo_find(srv->memo, key);
  memcpy(s->key, key, 16);
  s->when_ms = uv_now(srv->loop) + 1; /* 0 marks an empty slot */
}

static bool memo_ok(struct rp_server *srv, const char *registry, const char *repo,
                    const struct rp_http_head *h) {
  unsigned char key[16];
  struct memo_slot *s;

  if (srv->memo == NULL)
    return false;
  memo_key(registry, repo, h, key);
  s = memo_find(srv->memo, key);
  /* when_ms is the confirmation time plus one (0 marks an empty slot). */
  return s->when_ms != 0 && memcmp(s->key, key, 16) == 0 &&
         uv_now(srv->loop) + 1 - s->when_ms < srv->cfg->access_ttl_ms;
}

/* May this client read this repository without asking upstream? With
 * access_check off, yes; else when the repository is public or the client's
 * credential was confirmed there within access_ttl. */
static bool client_ok(struct rp_conn *c, const char *registry) {
  struct rp_server *srv = c->srv;
  return !srv->cfg->access_check || rp__public_known(srv, registry, c->reg.name) ||
         memo_ok(srv, registry, c->reg.name, c->head);
}

/* Learn in the background whether the repository is public. */
static void probe_public(struct rp_conn *c, const char *registry) {
  char origin[320];
  if (c->reg.kind != RP_REG_MANIFEST)
    return;
  rp__mitm_origin(c, origin, sizeof(origin));
  rp__public_probe(c->srv, registry, c->reg.name, origin, c->reg.ref);
}

static bool may_serve(struct rp_conn *c, const char *registry, const struct rp_digest *d) {
  return !c->srv->cfg->access_check ||
         (rp_cache_in_repo(c->srv->cache, d, registry, c->reg.name) && client_ok(c, registry));
}

/* ---- a manifest relayed by tag, kept ---- */

#define GRAB_MAX (4u << 20) /* distribution refuses manifests over 4 MiB */

struct rp__grab {
  struct rp_sbuf body;
  size_t len;
  bool failed;
  bool has_named;
  struct rp_digest named; /* Docker-Content-Digest of the GET answer, if any */
  char ctype[128];
};

/* ---- per-request state ---- */

struct rp__filljob;

struct rp__regreq {
  struct rp_conn *c;
  struct rp_reader *reader;
  struct rp__filljob *job;        /* while the upstream answer is still ours to relay */
  struct rp__filljob *waiting_on; /* coalesced before the fill started */
  struct rp__regreq *next_waiter;
  struct tagcheck *tc; /* GET by tag: the upstream HEAD in flight */
  uint64_t length;
  char registry[300];
};

/* One upstream fetch feeding one fill. It outlives the client that started
 * it: a fill nobody reads any more still completes (the cache decides when it
 * is too large to bother, through on_state). */
struct rp__filljob {
  struct rp__filljob *next;   /* srv->jobs */
  struct rp__regreq *waiters; /* same object, same repository, before the head */
  uint64_t size;
  char ctype[128];
  struct rp_server *srv;
  struct rp__regreq *rq; /* NULL once the client is gone or served by a reader */
  struct rp_fetch *fetch;
  struct rp_fill *fill;
  struct rp_digest d;
  bool is_manifest;
  struct saved_req *saved; /* the registry request, to resume a cut body */
  unsigned attempts;       /* resumptions so far (SPEC §3: at most 3) */
  uint64_t skip;           /* a resumed answer restarted at 0: bytes to drop */
  bool passing;            /* not a cacheable answer: relayed by the pass-through */
  bool done;               /* the transfer ended; the fill may still be publishing */
  bool paused;
  char registry[300];
  char repo[256];
};

static void regreq_finish(struct rp__regreq *rq) {
  struct rp_conn *c = rq->c;
  c->rc = NULL;
  free(rq);
  rp__conn_go_state(c, RP_CONN_RESPOND);
  rp__conn_response_done(c);
}

static void on_reader_done(struct rp_reader *r, void *data, int status) {
  struct rp__regreq *rq = data;
  struct rp_conn *c = rq->c;

  (void)r;
  rq->reader = NULL;
  if (status != 0) {
    /* Never a complete wrong body: the client sees the connection cut. */
    snprintf(c->log.reason, sizeof(c->log.reason), "cache read failed: %s", rp_strerror(status));
    rp__conn_close(c);
    return;
  }
  c->log.bytes_out += rq->length;
  /* Only the client that caused a fill cost upstream bytes; hits, joiners,
   * revalidated and stale answers are bytes the cache saved. */
  rp_metrics
      .bytes[1][strcmp(c->log.cache, "miss") == 0 ? RP_SRC_BYTES_UPSTREAM : RP_SRC_BYTES_CACHE] +=
      rq->length;
  regreq_finish(rq);
}

/* 200 (or 206 for a range) with the object's identity, then the bytes from a
 * reader on the published object (d) or the running fill (f). */
static int serve(struct rp_conn *c, struct rp__regreq *rq, const struct rp_digest *d,
                 struct rp_fill *f, uint64_t size, const char *media_type, uint64_t off,
                 int64_t len, bool partial) {
  struct rp_sbuf b = {0};
  char dg[140];
  uint64_t n = len < 0 ? size - off : (uint64_t)len;
  char *head;
  size_t hlen;
  uv_buf_t buf;

  rp_digest_format(d, dg, sizeof(dg));
  if (partial)
    rp_sbuf_addf(&b, "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %llu-%llu/%llu\r\n",
                 (unsigned long long)off, (unsigned long long)(off + n - 1),
                 (unsigned long long)size);
  else
    rp_sbuf_adds(&b, "HTTP/1.1 200 OK\r\n");
  rp_sbuf_addf(&b,
               "Content-Type: %s\r\nContent-Length: %llu\r\nDocker-Content-Digest: %s\r\n"
               "Accept-Ranges: bytes\r\nDocker-Distribution-API-Version: registry/2.0\r\n%s\r\n",
               media_type != NULL && media_type[0] ? media_type : "application/octet-stream",
               (unsigned long long)n, dg, c->keep_alive ? "" : "Connection: close\r\n");
  head = rp_sbuf_take(&b, &hlen);
  if (head == NULL)
    return UV_ENOMEM;
  buf = uv_buf_init(head, (unsigned)hlen);
  if (rp__conn_write(c, c->client, &buf, 1, NULL, head) != 0)
    return UV_EPIPE;
  c->log.status = partial ? 206 : 200;
  if (c->req_is_head || n == 0) {
    regreq_finish(rq);
    return 0;
  }
  rq->length = n;
  /* The reader paces itself on the stream; the idle timer would not see it. */
  rp__conn_set_timer(c, RP_TM_NONE, 0);
  rq->reader = rp_reader_start(c->srv->cache, f == NULL ? d : NULL, f, off, (int64_t)n, c->client,
                               on_reader_done, rq);
  if (rq->reader == NULL)
    return UV_EIO;
  return 0;
}

/* "bytes=N-" or "bytes=N-M" against a known size; false for anything else
 * (multiple ranges, suffix ranges): those go upstream. */
static bool parse_range(const struct rp_http_head *h, uint64_t size, uint64_t *off, int64_t *len,
                        bool *present) {
  const struct rp_http_header *r = rp_http_header_find(h, "range");
  char buf[64], *end;
  unsigned long long a, b;

  *present = r != NULL;
  *off = 0;
  *len = -1;
  if (r == NULL)
    return true;
  if (r->value_len >= sizeof(buf) || r->value_len < 7 || strncasecmp(r->value, "bytes=", 6) != 0)
    return false;
  memcpy(buf, r->value + 6, r->value_len - 6);
  buf[r->value_len - 6] = '\0';
  if (buf[0] < '0' || buf[0] > '9')
    return false;
  a = strtoull(buf, &end, 10);
  if (*end != '-' || a >= size)
    return false;
  if (end[1] == '\0') {
    *off = a;
    return true;
  }
  b = strtoull(end + 1, &end, 10);
  if (*end != '\0' || b < a)
    return false;
  if (b >= size)
    b = size - 1;
  *off = a;
  *len = (int64_t)(b - a + 1);
  return true;
}

/* The client's range (or the whole object) of a fill whose size the upstream
 * just told; 416 for a range that lies outside it. */
static void serve_range(struct rp_conn *c, struct rp__regreq *rq, const struct rp_digest *d,
                        struct rp_fill *f, uint64_t size, const char *ctype) {
  uint64_t off;
  int64_t len;
  bool partial;

  if (!parse_range(c->head, size, &off, &len, &partial)) {
    struct rp_sbuf b = {0};
    char *p;
    size_t n;
    uv_buf_t buf;

    c->rc = NULL;
    free(rq);
    c->log.status = 416;
    rp_sbuf_addf(&b,
                 "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */%llu\r\n"
                 "Content-Length: 0\r\n%s\r\n",
                 (unsigned long long)size, c->keep_alive ? "" : "Connection: close\r\n");
    p = rp_sbuf_take(&b, &n);
    buf = uv_buf_init(p, (unsigned)n);
    if (p == NULL || rp__conn_write(c, c->client, &buf, 1, NULL, p) != 0) {
      rp__conn_close(c);
      return;
    }
    rp__conn_go_state(c, RP_CONN_RESPOND);
    rp__conn_response_done(c);
    return;
  }
  if (serve(c, rq, d, f, size, ctype, off, len, partial) != 0) {
    c->rc = NULL;
    free(rq);
    rp__conn_close(c);
  }
}

/* ---- the fill job ---- */

/* A deep copy of an upstream request, so it can be sent again (with a Range)
 * after the client that caused it left; one allocation. */
struct saved_req {
  struct rp_fetch_req req;
  size_t n;
  struct rp_http_header h[];
};

static struct saved_req *saved_req_copy(const struct rp_fetch_req *r) {
  size_t n = r->nheaders,
         bytes = sizeof(struct saved_req) + (n + 1) * sizeof(struct rp_http_header);
  struct saved_req *sr;
  char *p;

  bytes += strlen(r->url) + 1 + (r->proxy ? strlen(r->proxy) + 1 : 0) +
           (r->proxy_userinfo ? strlen(r->proxy_userinfo) + 1 : 0) + 64;
  for (size_t i = 0; i < n; i++)
    bytes += r->headers[i].name_len + r->headers[i].value_len;
  sr = malloc(bytes);
  if (sr == NULL)
    return NULL;
  sr->req = *r;
  sr->n = n;
  p = (char *)&sr->h[n + 1];
  for (size_t i = 0; i < n; i++) {
    sr->h[i].name = memcpy(p, r->headers[i].name, r->headers[i].name_len);
    sr->h[i].name_len = r->headers[i].name_len;
    p += r->headers[i].name_len;
    sr->h[i].value = memcpy(p, r->headers[i].value, r->headers[i].value_len);
    sr->h[i].value_len = r->headers[i].value_len;
    p += r->headers[i].value_len;
  }
  sr->req.url = strcpy(p, r->url);
  p += strlen(r->url) + 1;
  if (r->proxy != NULL) {
    sr->req.proxy = strcpy(p, r->proxy);
    p += strlen(r->proxy) + 1;
  }
  if (r->proxy_userinfo != NULL) {
    sr->req.proxy_userinfo = strcpy(p, r->proxy_userinfo);
    p += strlen(r->proxy_userinfo) + 1;
  }
  sr->req.headers = sr->h;
  /* The last slot and 64 bytes are kept for the Range of a resumption. */
  sr->h[n].name = "Range";
  sr->h[n].name_len = 5;
  sr->h[n].value = p;
  sr->h[n].value_len = 0;
  return sr;
}

static void job_free(struct rp__filljob *job) {
  struct rp__filljob **pp = &job->srv->jobs;
  free(job->saved);
  while (*pp != NULL && *pp != job)
    pp = &(*pp)->next;
  if (*pp == job)
    *pp = job->next;
  rp_fill_unref(job->fill);
  free(job);
}

/* A job stays listed after its transfer ended until its fill is published or
 * failed: in between (verify, fsync, rename on the thread pool) new readers
 * still join the fill. Settled jobs are swept here. */
static struct rp__filljob *job_find(struct rp_server *srv, const struct rp_digest *d) {
  struct rp__filljob *found = NULL, *j, *next;
  for (j = srv->jobs; j != NULL; j = next) {
    next = j->next;
    if (j->done && (j->fill == NULL || rp_fill_state(j->fill) != RP_FILL_RUNNING)) {
      job_free(j);
      continue;
    }
    if (found == NULL && j->d.algo == d->algo && strcmp(j->d.hex, d->hex) == 0 && !j->passing)
      found = j;
  }
  return found;
}

static const struct rp_fetch_callbacks confirm_callbacks;
static bool start_head(struct rp_conn *c, const struct rp_http_head *h,
                       const struct rp_fetch_callbacks *cb, const struct rp_digest *d);

/* The waiters of a job are served from its fill once it started, or relay
 * their own request when the upstream answer was not cacheable. */
static void release_waiters(struct rp__filljob *job) {
  while (job->waiters != NULL) {
    struct rp__regreq *rq = job->waiters;
    struct rp_conn *c = rq->c;
    job->waiters = rq->next_waiter;
    rq->waiting_on = NULL;
    if (job->fill != NULL && !job->passing && rp_fill_state(job->fill) != RP_FILL_FAILED) {
      if (client_ok(c, job->registry)) {
        c->log.cache = "coalesced";
        serve_range(c, rq, &job->d, job->fill, job->size, job->ctype);
      } else {
        /* Another credential than the one the upstream just accepted. */
        c->rc = NULL;
        free(rq);
        if (!start_head(c, c->head, &confirm_callbacks, &job->d))
          rp__mitm_pass_start(c);
      }
    } else {
      c->rc = NULL;
      free(rq);
      rp__mitm_pass_start(c);
    }
  }
}

static void on_fill_writable(struct rp_fill *f, void *data) {
  struct rp__filljob *job = data;
  (void)f;
  if (job->paused && job->fetch != NULL) {
    job->paused = false;
    rp_fetch_resume(job->fetch);
  }
}

static void on_fill_state(struct rp_fill *f, void *data) {
  struct rp__filljob *job = data;
  (void)f;
  /* The cache gave the fill up: stop the upstream transfer. */
  if (job->fetch != NULL) {
    rp_fetch_cancel(job->fetch);
    job->fetch = NULL;
  }
  if (job->rq == NULL)
    job_free(job);
}

static int64_t header_size(const struct rp_http_header *h, size_t n, const char *name) {
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

static void header_copy(const struct rp_http_header *h, size_t n, const char *name, char *out,
                        size_t outsz) {
  out[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    if (rp_http_token_eq(h[i].name, h[i].name_len, name)) {
      size_t k = h[i].value_len < outsz - 1 ? h[i].value_len : outsz - 1;
      memcpy(out, h[i].value, k);
      out[k] = '\0';
      return;
    }
  }
}

static int job_on_head(struct rp_fetch *f, void *data, int status, const char *reason,
                       const struct rp_http_header *h, size_t n) {
  struct rp__filljob *job = data;
  struct rp__regreq *rq = job->rq;
  struct rp_conn *c = rq != NULL ? rq->c : NULL;
  char ctype[128];
  int64_t size = header_size(h, n, "content-length");

  header_copy(h, n, "content-type", ctype, sizeof(ctype));
  if (job->fill != NULL) {
    /* A resumption: 206 continues where the fill stands; a registry that
     * ignores Range answers 200 from the start, which we skip up to there. */
    if (status == 206)
      return 0;
    if (status == 200) {
      job->skip = rp_fill_received(job->fill);
      return 0;
    }
    return -1;
  }
  if (c == NULL)
    return -1; /* the client left before any answer: nothing worth keeping */
  if (status != 200 || size < 0 || (job->is_manifest && strstr(ctype, "prettyjws") != NULL)) {
    /* Not a cacheable answer (401, 404, a signed schema-1 manifest…): the
     * pass-through relays it as it is. */
    job->passing = true;
    c->fetch = f;
    release_waiters(job);
    return rp__mitm_pass_head(f, c, status, reason, h, n);
  }
  job->size = (uint64_t)size;
  snprintf(job->ctype, sizeof(job->ctype), "%s", ctype);
  job->fill = rp_fill_start(c->srv->cache, &job->d, size, job->is_manifest, ctype);
  if (job->fill == NULL) {
    /* Another fill for this digest started meanwhile: relay this one plainly. */
    job->passing = true;
    c->fetch = f;
    release_waiters(job);
    return rp__mitm_pass_head(f, c, status, reason, h, n);
  }
  rp_fill_set_producer(job->fill, on_fill_writable, on_fill_state, job);
  rp_cache_note_repo(c->srv->cache, &job->d, job->registry, job->repo);
  memo_confirm(c->srv, job->registry, job->repo, c->head);
  probe_public(c, job->registry);
  c->log.cache = "miss";
  job->rq = NULL; /* from here the reader serves the client; the job only fills */
  rq->job = NULL;
  serve_range(c, rq, &job->d, job->fill, (uint64_t)size, ctype);
  release_waiters(job);
  return 0;
}

static int job_on_body(struct rp_fetch *f, void *data, const char *p, size_t n) {
  struct rp__filljob *job = data;
  int rc;

  if (job->passing)
    return job->rq != NULL ? rp__mitm_pass_body(f, job->rq->c, p, n) : -1;
  if (job->skip > 0) {
    size_t drop = job->skip < n ? (size_t)job->skip : n;
    job->skip -= drop;
    p += drop;
    n -= drop;
    if (n == 0)
      return 0;
  }
  rc = rp_fill_write(job->fill, p, n);
  if (rc == RP_FILL_AGAIN) {
    job->paused = true;
    return RP_FETCH_PAUSE;
  }
  rp_metrics.upstream_bytes += n;
  return rc == 0 ? 0 : -1;
}

static const struct rp_fetch_callbacks job_callbacks;

static void job_on_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct rp__filljob *job = data;

  job->fetch = NULL;
  release_waiters(job);
  if (status != 0 && job->fill != NULL && !job->passing && job->saved != NULL &&
      job->attempts < 3 && rp_fill_state(job->fill) == RP_FILL_RUNNING) {
    /* Upstream cut mid-fill: ask the registry URL again (a CDN URL may have
     * expired) for the rest, with the same credentials. */
    struct saved_req *sr = job->saved;
    char *range = (char *)sr->h[sr->n].value;
    job->attempts++;
    sr->h[sr->n].value_len =
        (size_t)snprintf(range, 64, "bytes=%llu-", (unsigned long long)rp_fill_received(job->fill));
    sr->req.nheaders = sr->n + 1;
    rp_log_info("fill %s: upstream cut (%s), resuming at byte %s (attempt %u of 3)", job->d.hex,
                reason, range + 6, job->attempts);
    job->fetch = rp_fetch_start(job->srv->up, &sr->req, &job_callbacks, job);
    if (job->fetch != NULL)
      return;
  }
  if (job->fill != NULL && !job->passing) {
    job->done = true;
    if (status == 0) {
      rp_fill_finish(job->fill);
      return; /* listed until published: job_find sweeps it */
    }
    rp_fill_abort(job->fill, reason);
  } else if (job->rq != NULL) {
    /* A relayed answer ended, or the fetch failed before any head: the
     * pass-through finishes the client's response (its 502 then). */
    struct rp_conn *c = job->rq->c;
    job->rq->job = NULL;
    c->rc = NULL;
    free(job->rq);
    rp__mitm_pass_done(f, c, status, reason);
  }
  job_free(job);
}

static const struct rp_fetch_callbacks job_callbacks = {
    .on_head = job_on_head,
    .on_body = job_on_body,
    .on_done = job_on_done,
};

/* Fetch d from upstream into a new fill while c reads it (cache=miss).
 * path: the upstream path (manifests by digest after a tag check), or NULL
 * for the client's. false (rq freed) when the request should pass instead. */
static bool start_job(struct rp_conn *c, struct rp__regreq *rq, const struct rp_http_head *h,
                      const struct rp_digest *dp, bool is_manifest, const char *path) {
  struct rp_server *srv = c->srv;
  struct rp__filljob *job;
  struct rp__upreq u;
  struct rp_digest d = *dp;

  job = calloc(1, sizeof(*job));
  if (job == NULL || rp__upreq_build(c, h, "GET", true, path, &u) != 0) {
    free(job);
    free(rq);
    return false;
  }
  job->srv = srv;
  job->rq = rq;
  job->d = d;
  job->next = srv->jobs;
  srv->jobs = job;
  job->is_manifest = is_manifest;
  snprintf(job->registry, sizeof(job->registry), "%s", rq->registry);
  snprintf(job->repo, sizeof(job->repo), "%s", c->reg.name);
  /* Redirects to a CDN are followed here; the digest stays the key. */
  u.req.follow_redirects = true;
  u.req.body_len = 0;
  job->saved = saved_req_copy(&u.req);
  rq->job = job;
  c->rc = rq;
  rp__conn_go_state(c, RP_CONN_PASS);
  job->fetch = rp_fetch_start(srv->up, &u.req, &job_callbacks, job);
  rp__upreq_free(&u);
  if (job->fetch == NULL) {
    c->rc = NULL;
    free(rq);
    job_free(job);
    rp__conn_respond(c, 502, "out of memory", true);
  }
  return true;
}

/* ---- tag memory and answers from memory (SPEC §3 "Upstream unreachable") ---- */

static void remember_tag(struct rp_conn *c, const char *registry, struct rp_tag_entry *e) {
  char key[RP_REG_ACCEPT_KEY_SIZE];
  if (c->reg.kind != RP_REG_MANIFEST || c->reg.ref_is_digest || e->media_type[0] == '\0')
    return;
  rp_reg_accept_key(c->head, key, sizeof(key));
  e->checked = (int64_t)time(NULL);
  rp_cache_tag_put(c->srv->cache, registry, c->reg.name, c->reg.ref, key, e);
}

static bool write_local(struct rp_conn *c, const char *head, const char *body) {
  struct rp_sbuf b = {0};
  char *p;
  size_t n;
  uv_buf_t buf;

  rp_sbuf_adds(&b, head);
  if (body != NULL)
    rp_sbuf_adds(&b, body);
  p = rp_sbuf_take(&b, &n);
  if (p == NULL)
    return false;
  buf = uv_buf_init(p, (unsigned)n);
  if (rp__conn_write(c, c->client, &buf, 1, NULL, p) != 0)
    return false;
  rp__conn_go_state(c, RP_CONN_RESPOND);
  rp__conn_response_done(c);
  return true;
}

/* What memory can answer for the current request, without answering. */
static bool stale_lookup(struct rp_conn *c, const char *registry, struct rp_digest *d,
                         struct rp_object_info *info, struct rp_tag_entry *tag, bool *by_tag) {
  struct rp_server *srv = c->srv;
  const struct rp_http_head *h = c->head;
  bool head_only = h->method_id == HTTP_HEAD;

  *by_tag = false;
  if (srv->cache == NULL || (h->method_id != HTTP_GET && !head_only))
    return false;
  /* /v2/ is vouched for only for a registry pulled from before: a 200 for
   * one never reached would stop clients falling back from https to http. */
  if (c->reg.kind == RP_REG_BASE)
    return rp_cache_knows_registry(srv->cache, registry);
  if (c->reg.kind == RP_REG_MANIFEST && !c->reg.ref_is_digest) {
    char key[RP_REG_ACCEPT_KEY_SIZE];
    rp_reg_accept_key(h, key, sizeof(key));
    if (!rp_cache_tag_get(srv->cache, registry, c->reg.name, c->reg.ref, key, tag) ||
        !rp_reg_accept_allows(key, tag->media_type))
      return false;
    *by_tag = true;
    *d = tag->digest;
  } else if ((c->reg.kind == RP_REG_MANIFEST || c->reg.kind == RP_REG_BLOB) &&
             c->reg.ref_is_digest) {
    if (rp_digest_parse(c->reg.ref, strlen(c->reg.ref), d) != 0)
      return false;
  } else {
    return false;
  }
  if (!rp_cache_has(srv->cache, d, info) || !may_serve(c, registry, d))
    return *by_tag && head_only; /* a HEAD by tag needs only the memory */
  return true;
}

bool rp__regcache_can_stale(struct rp_conn *c) {
  char registry[300];
  struct rp_digest d;
  struct rp_object_info info;
  struct rp_tag_entry tag;
  bool by_tag;

  if (!(c->mitm || c->up_plain) || c->head == NULL)
    return false;
  rp__mitm_registry(c, registry, sizeof(registry));
  return stale_lookup(c, registry, &d, &info, &tag, &by_tag);
}

static bool answer_from_memory(struct rp_conn *c, const char *label);

bool rp__regcache_stale(struct rp_conn *c) {
  return answer_from_memory(c, "stale");
}

/* --tag-ttl: a tag confirmed upstream that recently is answered from memory. */
static bool tag_fresh(struct rp_conn *c) {
  struct rp_server *srv = c->srv;
  char registry[300], key[RP_REG_ACCEPT_KEY_SIZE];
  struct rp_tag_entry e;
  int64_t age;

  if (srv->cfg->tag_ttl_ms == 0 || srv->cache == NULL)
    return false;
  rp__mitm_registry(c, registry, sizeof(registry));
  rp_reg_accept_key(c->head, key, sizeof(key));
  if (!rp_cache_tag_get(srv->cache, registry, c->reg.name, c->reg.ref, key, &e) ||
      !rp_reg_accept_allows(key, e.media_type))
    return false;
  age = (int64_t)time(NULL) - e.checked;
  return age >= 0 && (uint64_t)age * 1000 < srv->cfg->tag_ttl_ms;
}

/* Answer from the tag memory and the cache alone; label is the log's cache=. */
static bool answer_from_memory(struct rp_conn *c, const char *label) {
  char registry[300], dg[140], head[600];
  struct rp_digest d;
  struct rp_object_info info;
  struct rp_tag_entry tag;
  struct rp__regreq *rq;
  bool by_tag;

  if (!(c->mitm || c->up_plain) || c->head == NULL || c->closing)
    return false;
  rp__mitm_registry(c, registry, sizeof(registry));
  memset(&info, 0, sizeof(info));
  if (!stale_lookup(c, registry, &d, &info, &tag, &by_tag))
    return false;
  c->log.cache = label;
  c->log.status = 200;
  if (c->reg.kind == RP_REG_BASE)
    return write_local(c,
                       "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                       "Docker-Distribution-API-Version: registry/2.0\r\nContent-Length: 2\r\n\r\n",
                       c->head->method_id == HTTP_HEAD ? NULL : "{}");
  if (c->head->method_id == HTTP_HEAD && by_tag) {
    rp_digest_format(&d, dg, sizeof(dg));
    snprintf(head, sizeof(head),
             "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %llu\r\n"
             "Docker-Content-Digest: %s\r\nDocker-Distribution-API-Version: registry/2.0\r\n\r\n",
             tag.media_type, (unsigned long long)tag.size, dg);
    return write_local(c, head, NULL);
  }
  rq = calloc(1, sizeof(*rq));
  if (rq == NULL)
    return false;
  rq->c = c;
  snprintf(rq->registry, sizeof(rq->registry), "%s", registry);
  c->rc = rq;
  rp__conn_go_state(c, RP_CONN_PASS);
  if (serve(c, rq, &d, NULL, info.size, info.media_type, 0, -1, false) != 0) {
    c->rc = NULL;
    free(rq);
    rp__conn_close(c);
  }
  return true;
}

/* ---- GET manifest by tag: an upstream HEAD, the body from the cache ----
 * SPEC §3: a HEAD is free against Docker Hub's pull limit and names the
 * current digest; when that manifest is cached for this repository the body
 * comes from the cache (cache=revalidated), otherwise it is fetched by digest
 * into the cache. A registry that answers the HEAD without a digest, or with
 * anything but 200, gets the client's GET as it was. */

struct tagcheck {
  struct rp__regreq *rq; /* NULL once the client left */
  struct rp_fetch *fetch;
  int status;
  bool have_digest;
  struct rp_digest d;
  char ctype[128];
  int64_t size;
};

static int tag_on_head(struct rp_fetch *f, void *data, int status, const char *reason,
                       const struct rp_http_header *h, size_t n) {
  struct tagcheck *tc = data;
  char dg[160];

  (void)f;
  (void)reason;
  tc->status = status;
  header_copy(h, n, "docker-content-digest", dg, sizeof(dg));
  tc->have_digest = dg[0] != '\0' && rp_digest_parse(dg, strlen(dg), &tc->d) == 0;
  header_copy(h, n, "content-type", tc->ctype, sizeof(tc->ctype));
  tc->size = header_size(h, n, "content-length");
  return 0;
}

static void tag_on_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct tagcheck *tc = data;
  struct rp__regreq *rq = tc->rq;
  struct rp_conn *c;
  struct rp_object_info info;
  struct rp_digest d = tc->d;
  bool ok = status == 0 && tc->status == 200 && tc->have_digest;
  char path[600];

  bool unreachable =
      (status != 0 && status != RP_EUPSTREAM_TLS) || tc->status >= 500 || tc->status == 429;
  int tc_status = tc->status;
  bool have_digest = tc->have_digest;
  struct rp_tag_entry e;

  (void)f;
  (void)reason;
  memset(&e, 0, sizeof(e));
  e.digest = tc->d;
  snprintf(e.media_type, sizeof(e.media_type), "%s", tc->ctype);
  e.size = tc->size > 0 ? (uint64_t)tc->size : 0;
  free(tc);
  if (rq == NULL)
    return;
  rq->tc = NULL;
  c = rq->c;
  if (!ok) {
    c->rc = NULL;
    free(rq);
    if (unreachable && rp__regcache_stale(c))
      return;
    /* A registry that answers HEAD with 405 or names no digest: its GET
     * answer is hashed as it is relayed, then kept like one by digest. */
    c->grab_manifest = status == 0 && (tc_status == 405 || (tc_status == 200 && !have_digest));
    rp__mitm_pass_start(c);
    return;
  }
  memo_confirm(c->srv, rq->registry, c->reg.name, c->head);
  probe_public(c, rq->registry);
  remember_tag(c, rq->registry, &e);
  if (rp_cache_has(c->srv->cache, &d, &info) && info.is_manifest &&
      rp_cache_in_repo(c->srv->cache, &d, rq->registry, c->reg.name)) {
    c->log.cache = "revalidated";
    if (serve(c, rq, &d, NULL, info.size, info.media_type, 0, -1, false) != 0) {
      c->rc = NULL;
      free(rq);
      rp__conn_close(c);
    }
    return;
  }
  {
    char dg[140];
    rp_digest_format(&d, dg, sizeof(dg));
    snprintf(path, sizeof(path), "/v2/%s/manifests/%s", c->reg.name, dg);
  }
  {
    struct rp_fill *running = rp_fill_find(c->srv->cache, &d);
    bool busy = running != NULL || job_find(c->srv, &d) != NULL;
    rp_fill_unref(running);
    if (!busy) {
      if (!start_job(c, rq, c->head, &d, true, path)) { /* rq is gone then */
        c->rc = NULL;
        rp__mitm_pass_start(c);
      }
      return;
    }
  }
  /* Someone else is fetching it: the plain GET is simpler than joining. */
  c->rc = NULL;
  free(rq);
  rp__mitm_pass_start(c);
}

static const struct rp_fetch_callbacks tag_callbacks = {
    .on_head = tag_on_head,
    .on_done = tag_on_done,
};

/* ---- a cached object this client is not confirmed for ----
 * SPEC §3: an upstream HEAD of the same path with the client's credential
 * decides. 2xx/3xx: the object belongs to the repository and the credential
 * reads it; the body comes from the cache (cache=revalidated). Anything else
 * goes to the registry as the client's own GET, whose answer is relayed. */

static int confirm_on_head(struct rp_fetch *f, void *data, int status, const char *reason,
                           const struct rp_http_header *h, size_t n) {
  struct tagcheck *tc = data;
  (void)f;
  (void)reason;
  (void)h;
  (void)n;
  tc->status = status;
  return 0;
}

static void confirm_on_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct tagcheck *tc = data;
  struct rp__regreq *rq = tc->rq;
  struct rp_digest d = tc->d;
  int st = tc->status;
  bool unreachable = (status != 0 && status != RP_EUPSTREAM_TLS) || st >= 500 || st == 429;
  struct rp_object_info info;
  struct rp_conn *c;
  uint64_t off;
  int64_t len;
  bool partial;

  (void)f;
  (void)reason;
  free(tc);
  if (rq == NULL)
    return;
  rq->tc = NULL;
  c = rq->c;
  if (status == 0 && st >= 200 && st < 400) {
    memo_confirm(c->srv, rq->registry, c->reg.name, c->head);
    rp_cache_note_repo(c->srv->cache, &d, rq->registry, c->reg.name);
    probe_public(c, rq->registry);
    if (rp_cache_has(c->srv->cache, &d, &info) &&
        parse_range(c->head, info.size, &off, &len, &partial)) {
      c->log.cache = "revalidated";
      if (serve(c, rq, &d, NULL, info.size, info.media_type, off, len, partial) != 0) {
        c->rc = NULL;
        free(rq);
        rp__conn_close(c);
      }
      return;
    }
    {
      /* Still being fetched (for another client): join the fill. */
      struct rp__filljob *run = job_find(c->srv, &d);
      if (run != NULL && run->fill != NULL && rp_fill_state(run->fill) != RP_FILL_FAILED &&
          parse_range(c->head, run->size, &off, &len, &partial)) {
        c->log.cache = "coalesced";
        if (serve(c, rq, &d, run->fill, run->size, run->ctype, off, len, partial) != 0) {
          c->rc = NULL;
          free(rq);
          rp__conn_close(c);
        }
        return;
      }
    }
  }
  c->rc = NULL;
  free(rq);
  if (unreachable && rp__regcache_stale(c))
    return;
  rp__mitm_pass_start(c);
}

static const struct rp_fetch_callbacks confirm_callbacks = {
    .on_head = confirm_on_head,
    .on_done = confirm_on_done,
};

/* An upstream HEAD of the client's path with its credentials; the answer
 * goes to cb with tc->d = d (NULL for a tag check). */
static bool start_head(struct rp_conn *c, const struct rp_http_head *h,
                       const struct rp_fetch_callbacks *cb, const struct rp_digest *d) {
  struct rp__regreq *rq = calloc(1, sizeof(*rq));
  struct tagcheck *tc = calloc(1, sizeof(*tc));
  struct rp__upreq u;

  if (rq == NULL || tc == NULL || rp__upreq_build(c, h, "HEAD", true, NULL, &u) != 0) {
    free(rq);
    free(tc);
    return false;
  }
  rq->c = c;
  rp__mitm_registry(c, rq->registry, sizeof(rq->registry));
  u.req.body_len = 0;
  if (d != NULL)
    tc->d = *d;
  tc->rq = rq;
  rq->tc = tc;
  c->rc = rq;
  rp__conn_go_state(c, RP_CONN_PASS);
  tc->fetch = rp_fetch_start(c->srv->up, &u.req, cb, tc);
  rp__upreq_free(&u);
  if (tc->fetch == NULL) {
    c->rc = NULL;
    free(rq);
    free(tc);
    return false;
  }
  return true;
}

/* ---- entry points ---- */

bool rp__regcache_request(struct rp_conn *c, const struct rp_http_head *h) {
  struct rp_server *srv = c->srv;
  struct rp_object_info info;
  struct rp_digest d;
  struct rp__regreq *rq;
  bool is_manifest = c->reg.kind == RP_REG_MANIFEST, partial;
  uint64_t off;
  int64_t len;

  if (c->reg.kind == RP_REG_MANIFEST && !c->reg.ref_is_digest &&
      (h->method_id == HTTP_GET || h->method_id == HTTP_HEAD) && tag_fresh(c) &&
      answer_from_memory(c, "hit"))
    return true;
  if (srv->cache != NULL && c->reg.kind == RP_REG_MANIFEST && !c->reg.ref_is_digest &&
      h->method_id == HTTP_GET && rp_http_header_find(h, "range") == NULL)
    return start_head(c, h, &tag_callbacks, NULL);
  if (srv->cache == NULL || !c->reg.ref_is_digest ||
      (c->reg.kind != RP_REG_BLOB && c->reg.kind != RP_REG_MANIFEST) ||
      (h->method_id != HTTP_GET && h->method_id != HTTP_HEAD) ||
      rp_digest_parse(c->reg.ref, strlen(c->reg.ref), &d) != 0)
    return false;
  /* SPEC §3: HEAD on a blob goes upstream (push relies on a truthful HEAD). */
  if (h->method_id == HTTP_HEAD && !is_manifest)
    return false;
  rq = calloc(1, sizeof(*rq));
  if (rq == NULL)
    return false;
  rq->c = c;
  rp__mitm_registry(c, rq->registry, sizeof(rq->registry));

  if (rp_cache_has(srv->cache, &d, &info) && info.is_manifest == is_manifest &&
      may_serve(c, rq->registry, &d)) {
    if (!parse_range(h, info.size, &off, &len, &partial)) {
      free(rq);
      return false;
    }
    c->rc = rq;
    c->log.cache = "hit";
    rp__conn_go_state(c, RP_CONN_PASS);
    if (serve(c, rq, &d, NULL, info.size, info.media_type, off, len, partial) != 0) {
      c->rc = NULL;
      free(rq);
      rp__conn_close(c);
    }
    return true;
  }
  if (rp_cache_has(srv->cache, &d, &info) && info.is_manifest == is_manifest &&
      h->method_id == HTTP_GET) {
    free(rq);
    return start_head(c, h, &confirm_callbacks, &d);
  }
  /* Single-flight: the same object being fetched for the same repository by
   * a confirmed client. Join it (now, or when its fill starts). */
  {
    struct rp__filljob *run = job_find(srv, &d);
    if (run != NULL && strcmp(run->repo, c->reg.name) == 0 &&
        strcmp(run->registry, rq->registry) == 0 && h->method_id == HTTP_GET) {
      if (run->fill == NULL) {
        /* Before the upstream answered: wait for it. The size (for a range)
         * and this client's access are checked when the waiter is released. */
        c->rc = rq;
        rp__conn_go_state(c, RP_CONN_PASS);
        rq->waiting_on = run;
        rq->next_waiter = run->waiters;
        run->waiters = rq;
        return true;
      }
      if (rp_fill_state(run->fill) == RP_FILL_FAILED ||
          !parse_range(h, run->size, &off, &len, &partial)) {
        free(rq);
        return false;
      }
      if (!client_ok(c, rq->registry)) {
        free(rq);
        return start_head(c, h, &confirm_callbacks, &d);
      }
      c->rc = rq;
      rp__conn_go_state(c, RP_CONN_PASS);
      c->log.cache = "coalesced";
      if (serve(c, rq, &d, run->fill, run->size, run->ctype, off, len, partial) != 0) {
        c->rc = NULL;
        free(rq);
        rp__conn_close(c);
      }
      return true;
    }
  }
  /* Not servable from the cache. A fill already running, or an object
   * cached but not yet confirmed for this client: upstream decides. A range
   * of an object nobody fetches yet starts the whole fill and is served from
   * it (a resumed pull then leaves the object cached). */
  if (rp_cache_has(srv->cache, &d, NULL) || h->method_id == HTTP_HEAD) {
    free(rq);
    return false;
  }
  {
    struct rp_fill *running = rp_fill_find(srv->cache, &d);
    if (running != NULL) {
      rp_fill_unref(running);
      free(rq);
      return false;
    }
  }
  return start_job(c, rq, h, &d, is_manifest, NULL);
}

void rp__regcache_observe(struct rp_conn *c, int status, const struct rp_http_header *h, size_t n) {
  char registry[300], dg[160];
  struct rp_tag_entry e;
  int64_t size;

  if (status < 200 || status > 299 || c->head == NULL ||
      (c->reg.kind != RP_REG_MANIFEST && c->reg.kind != RP_REG_BLOB))
    return;
  rp__mitm_registry(c, registry, sizeof(registry));
  memo_confirm(c->srv, registry, c->reg.name, c->head);
  probe_public(c, registry);
  /* A manifest by tag: remember what the tag names, for answers from memory. */
  memset(&e, 0, sizeof(e));
  header_copy(h, n, "docker-content-digest", dg, sizeof(dg));
  header_copy(h, n, "content-type", e.media_type, sizeof(e.media_type));
  size = header_size(h, n, "content-length");
  if (c->srv->cache != NULL && dg[0] != '\0' && size > 0 &&
      rp_digest_parse(dg, strlen(dg), &e.digest) == 0) {
    e.size = (uint64_t)size;
    remember_tag(c, registry, &e);
  }
  if (c->grab_manifest && status == 200 && !c->req_is_head && c->srv->cache != NULL &&
      size <= GRAB_MAX && strstr(e.media_type, "prettyjws") == NULL) {
    c->grab = calloc(1, sizeof(*c->grab));
    if (c->grab != NULL) {
      snprintf(c->grab->ctype, sizeof(c->grab->ctype), "%s", e.media_type);
      if (dg[0] != '\0' && rp_digest_parse(dg, strlen(dg), &c->grab->named) == 0)
        c->grab->has_named = true;
    }
  }
}

void rp__regcache_relay_body(struct rp_conn *c, const char *p, size_t n) {
  struct rp__grab *g = c->grab;
  if (g->failed)
    return;
  if (g->len + n > GRAB_MAX) {
    g->failed = true; /* larger than any manifest we keep */
    return;
  }
  rp_sbuf_add(&g->body, p, n);
  g->failed = g->body.oom != 0;
  g->len += n;
}

/* Keep a manifest that was relayed by tag: its digest is its sha256. */
void rp__regcache_relay_done(struct rp_conn *c, int status) {
  struct rp__grab *g = c->grab;
  struct rp_server *srv = c->srv;
  struct rp_tag_entry e;
  struct rp_fill *fill;
  struct rp__filljob *job;
  char registry[300];
  unsigned char md[32];
  size_t n = 0;
  char *body;

  if (g == NULL)
    return;
  c->grab = NULL;
  body = rp_sbuf_take(&g->body, &n);
  if (status != 0 || g->failed || body == NULL || n == 0) {
    free(body);
    free(g);
    return;
  }
  memset(&e, 0, sizeof(e));
  SHA256((const unsigned char *)body, n, md);
  e.digest.algo = 256;
  for (size_t i = 0; i < 32; i++)
    snprintf(e.digest.hex + 2 * i, 3, "%02x", md[i]);
  if (g->has_named && (g->named.algo != 256 || strcmp(g->named.hex, e.digest.hex) != 0)) {
    /* A digest header that does not match the bytes: remember nothing. */
    rp_log_warn("manifest %s: Docker-Content-Digest does not match its body; not cached",
                c->log.path);
    free(body);
    free(g);
    return;
  }
  rp__mitm_registry(c, registry, sizeof(registry));
  snprintf(e.media_type, sizeof(e.media_type), "%s", g->ctype);
  e.size = n;
  remember_tag(c, registry, &e);
  rp_cache_note_repo(srv->cache, &e.digest, registry, c->reg.name);
  fill = rp_fill_start(srv->cache, &e.digest, (int64_t)n, true, g->ctype);
  if (fill != NULL && rp_fill_write(fill, body, n) == 0) {
    rp_fill_finish(fill);
    /* Listed as a finished job until published (job_find sweeps it). */
    job = calloc(1, sizeof(*job));
    if (job != NULL) {
      job->srv = srv;
      job->fill = fill;
      job->d = e.digest;
      job->is_manifest = true;
      job->size = n;
      job->done = true;
      snprintf(job->ctype, sizeof(job->ctype), "%s", g->ctype);
      snprintf(job->registry, sizeof(job->registry), "%s", registry);
      snprintf(job->repo, sizeof(job->repo), "%s", c->reg.name);
      job->next = srv->jobs;
      srv->jobs = job;
      fill = NULL;
    }
  } else if (fill != NULL) {
    rp_fill_abort(fill, "write failed");
  }
  rp_fill_unref(fill);
  free(body);
  free(g);
}

void rp__regcache_destroy(struct rp_conn *c) {
  struct rp__regreq *rq = c->rc;
  if (c->grab != NULL)
    rp__regcache_relay_done(c, RP_EABORTED);
  if (rq == NULL)
    return;
  c->rc = NULL;
  rp_reader_cancel(rq->reader);
  if (rq->tc != NULL) {
    /* The HEAD finishes on its own (it is small); it just has nobody to tell. */
    rq->tc->rq = NULL;
  }
  if (rq->waiting_on != NULL) {
    struct rp__regreq **pp = &rq->waiting_on->waiters;
    while (*pp != NULL && *pp != rq)
      pp = &(*pp)->next_waiter;
    if (*pp == rq)
      *pp = rq->next_waiter;
  }
  if (rq->job != NULL) {
    struct rp__filljob *job = rq->job;
    job->rq = NULL;
    if (job->passing || job->fill == NULL) {
      /* Nothing is being cached yet: the transfer has no reason to go on;
       * clients waiting for it relay their own requests. */
      if (job->fetch != NULL)
        rp_fetch_cancel(job->fetch);
      job->fetch = NULL;
      job->passing = true;
      release_waiters(job);
      if (c->fetch == job->fetch)
        c->fetch = NULL;
      job_free(job);
    }
  }
  free(rq);
}

void rp__regcache_shutdown(struct rp_server *srv) {
  while (srv->jobs != NULL) {
    struct rp__filljob *job = srv->jobs;
    if (job->fetch != NULL)
      rp_fetch_cancel(job->fetch);
    job->fetch = NULL;
    if (job->rq != NULL)
      job->rq->job = NULL;
    job->rq = NULL;
    job->passing = true;
    release_waiters(job);
    job_free(job);
  }
  free(srv->memo);
  srv->memo = NULL;
}
