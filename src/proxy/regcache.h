#ifndef RP_PROXY_REGCACHE_H
#define RP_PROXY_REGCACHE_H

/* The registry cache glue (SPEC §3), in four files:
 *   regcache.c   entry points, the tag check and the access confirmation HEADs
 *   regaccess.c  who may receive what: credential memo, public repositories
 *   regfill.c    serving from the store or a running fill; fill jobs
 *   regmemory.c  tag memory, answers from memory, manifests kept from a relay
 * docs/architecture.md "The cache's serving path" tells the story. */

#include <stdbool.h>
#include <stdint.h>

#include "internal.h"
#include "regproxy/cache.h"
#include "regproxy/error.h"
#include "regproxy/upstream.h"

#define RP__MEMO_KEY_LEN 16

/* ---- a manifest relayed by tag, kept (regmemory.c) ---- */

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
  struct rp__headcheck *tc; /* GET by tag: the upstream HEAD in flight */
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
  bool memo_pending;       /* confirm memo_key once the fill is published */
  unsigned char memo_key[RP__MEMO_KEY_LEN]; /* the credential the upstream accepted */
  bool done; /* the transfer ended; the fill may still be publishing */
  bool paused;
  char registry[300];
  char repo[256];
};

/** Is the registry unreachable or failing (SPEC §3: answers from memory)?
 * status: the transfer's; http: the answer's status. A TLS failure never is:
 * a certificate that does not verify is not papered over. */
static inline bool rp__reg_unreachable(int status, int http) {
  return (status != 0 && status != RP_EUPSTREAM_TLS && status != RP_EUPSTREAM_HANDSHAKE) ||
         http >= 500 || http == 429;
}

/* regaccess.c: every "who may receive what" decision (SPEC §3). offline:
 * the registry is unreachable now (a public answer of any age counts). */
/** The memo key of this client's credential for (registry, repo). */
void rp__reg_memo_key(const struct rp_conn *c, const char *registry, const char *repo,
                      unsigned char out[RP__MEMO_KEY_LEN]);
/** Remember that a credential read (registry, repo) upstream. */
void rp__reg_memo_confirm(struct rp_conn *c, const char *registry, const char *repo);
void rp__reg_memo_confirm_key(struct rp_server *srv, const unsigned char key[RP__MEMO_KEY_LEN]);
/** May this client read the repository without asking upstream? */
bool rp__reg_client_ok(struct rp_conn *c, const char *registry, bool offline);
/** Learn in the background whether the repository is public. */
void rp__reg_probe_public(struct rp_conn *c, const char *registry);
/** Known in the repository and this client may read it (or access_check off). */
bool rp__reg_may_serve(struct rp_conn *c, const char *registry, const struct rp_digest *d,
                       bool offline);
/** Does an upstream answer to a HEAD with the client's credential confirm
 * it? 2xx; 3xx only for a blob of an HTTPS registry (a CDN redirect). */
bool rp__reg_head_confirms(const struct rp_conn *c, int status);

/* regfill.c */
/** The request is answered: free rq, back to reading requests. */
void rp__reg_finish(struct rp__regreq *rq);
/** 200 (206 when partial) with the object's identity, then bytes
 * [off, off+len) from the published object d or the running fill f. */
int rp__reg_serve(struct rp_conn *c, struct rp__regreq *rq, const struct rp_digest *d,
                  struct rp_fill *f, uint64_t size, const char *media_type, uint64_t off,
                  int64_t len, bool partial);
/** "bytes=N-" / "bytes=N-M" against size; false for anything else. */
bool rp__reg_parse_range(const struct rp_http_head *h, uint64_t size, uint64_t *off, int64_t *len,
                         bool *present);
/** The client's range (or all) of a fill whose size is now known; 416 outside it. */
void rp__reg_serve_range(struct rp_conn *c, struct rp__regreq *rq, const struct rp_digest *d,
                         struct rp_fill *f, uint64_t size, const char *ctype);
struct rp__filljob *rp__reg_job_find(struct rp_server *srv, const struct rp_digest *d);
void rp__reg_job_free(struct rp__filljob *job);
/** Fetch d into a new fill while c reads it; false (rq freed) to pass instead. */
bool rp__reg_start_job(struct rp_conn *c, struct rp__regreq *rq, const struct rp_http_head *h,
                       const struct rp_digest *dp, bool is_manifest, const char *path);
void rp__reg_release_waiters(struct rp__filljob *job);
/** Does c send the credential the upstream accepted for this job's fill? */
bool rp__reg_job_same_credential(const struct rp__filljob *job, const struct rp_conn *c);
void rp__reg_header_copy(const struct rp_http_header *h, size_t n, const char *name, char *out,
                         size_t outsz);

/* regmemory.c */
void rp__reg_remember_tag(struct rp_conn *c, const char *registry, struct rp_tag_entry *e);
/** --tag-ttl: the tag was confirmed upstream recently enough. */
bool rp__reg_tag_fresh(struct rp_conn *c);
/** Answer from the tag memory and the cache alone; label is the log's cache=. */
bool rp__reg_answer_from_memory(struct rp_conn *c, const char *label, bool offline);

/* regcache.c */
extern const struct rp_fetch_callbacks rp__reg_confirm_callbacks;
/** An upstream HEAD of the client's path with its credentials; cb gets it
 * (with the digest d, NULL for a tag check). */
bool rp__reg_start_head(struct rp_conn *c, const struct rp_http_head *h,
                        const struct rp_fetch_callbacks *cb, const struct rp_digest *d);

#endif
