#ifndef RP_REGISTRY_INTERNAL_H
#define RP_REGISTRY_INTERNAL_H

/* The registry service's shared declarations. One request is a struct
 * rp__rq, alive from rp_registry_serve until its exchange's `end`. The files:
 *   service.c  the service object, rp_registry_serve (the ways in), the
 *              request's life, the upstream request built from it
 *   serve.c    the decision for a request (hit, miss, coalesced, confirm,
 *              tag check), answers from the store or a running fill, ranges
 *   check.c    the upstream HEADs: tag checks and access confirmations
 *   job.c      fill jobs: one upstream fetch per digest feeding one fill
 *   access.c   who may receive what: the credential memo, public repositories
 *   public.c   asking the registry whether a repository is public
 *   memory.c   tag memory, answers from memory (--tag-ttl, stale), manifests
 *              relayed by tag and kept
 *   relay.c    the pass-through: the client's request to the registry as it is
 *   mirror.c   mirror mode: ?ns= to a registry, regproxy's own credential
 *   stats.c    the service's numbers: counters, pull limits, the status page
 * docs/architecture.md "The registry service" tells the story. */

#include <stdbool.h>
#include <stdint.h>

#include "regproxy/cache.h"
#include "regproxy/error.h"
#include "regproxy/exchange.h"
#include "regproxy/registry.h"
#include "regproxy/registry_service.h"
#include "regproxy/upstream.h"

#define RP__MEMO_KEY_LEN 16
#define RP__REGISTRY_LEN 300
#define RP__AUTH_KEY_MAX 256 /* a registry key of the auth client (credentials.c, token.c) */

struct rp__memo;
struct rp__mirror;
struct rp__mirror_op;
struct rp__public;
struct rp__stats;
struct rp__filljob;
struct rp__headcheck;

/* A registry's upstream mirrors (job.c): tried in order, each skipped for a
 * while after it failed. */
struct rp__source {
  char *url;              /* "http(s)://host[:port][/path]" */
  uint64_t backoff_until; /* uv_now() before which it is skipped */
};

struct rp__upmirrors {
  char registry[RP__REGISTRY_LEN]; /* canonical identity */
  struct rp__source *src;
  size_t n;
};

/* A registry that asked a credential to leave it alone (429/503 with
 * Retry-After): limits are per account as often as per address, so one
 * client's spent limit never stops the others. */
#define RP__WAIT_SLOTS 16
struct rp__wait {
  unsigned char key[16]; /* rp__wait_key: registry and credential */
  uint64_t until_ms;     /* uv_now() */
};

struct rp_registry {
  uv_loop_t *loop;
  struct rp_upstream *up;
  struct rp_cache *cache;
  char *parent_url, *parent_userinfo;
  bool access_check;
  uint64_t access_ttl_ms, tag_ttl_ms;
  char *registry_auth;
  const struct rp_hostlist *mitm;
  char *mirror_default;

  struct rp__memo *memo;       /* access confirmations (registry, repository, credential) */
  struct rp__filljob *jobs;    /* upstream fetches feeding fills, for single-flight */
  struct rp__headcheck *heads; /* upstream HEADs in flight (tag checks, confirmations) */
  struct rp__mirror *mirror;   /* the mirror's auth client and registry challenges */
  struct rp__public *pub;      /* which repositories are public */
  struct rp__stats *stats;     /* the status page's numbers */
  struct rp__wait waits[RP__WAIT_SLOTS]; /* Retry-After per registry */
  struct rp__upmirrors *upmirrors;       /* upstream mirrors per registry */
  size_t n_upmirrors;
  struct rp_registry_counters counters;
};

/* ---- a manifest relayed by tag, kept (memory.c) ---- */

#define GRAB_MAX (4u << 20) /* distribution refuses manifests over 4 MiB */

struct rp__grab {
  struct rp_sbuf body;
  size_t len;
  bool failed;
  bool has_named;
  struct rp_digest named; /* Docker-Content-Digest of the GET answer, if any */
  char ctype[128];
};

/* ---- one request ---- */

struct rp__rq {
  struct rp_registry *reg;
  struct rp_exchange *x;
  const struct rp_http_head *head; /* x->head */
  enum rp_registry_way way;
  struct rp_reg_path path; /* the registry path of the request */
  char host[256];          /* the origin */
  uint16_t port;
  char connect_ip[64]; /* transparent: where host is reached, or "" */
  uint16_t connect_port;
  char registry[RP__REGISTRY_LEN]; /* identity: canonical, "http://" for plain */
  char *up_path;                   /* upstream path and query when not the client's */
  char ns[256];                    /* mirror: ?ns=, echoed as OCI-Namespace */
  char *authz;                     /* mirror: regproxy's own Authorization, or NULL */
  struct rp__mirror_op *mop;       /* mirror: its credential being prepared */
  char method[24];                 /* the request's */
  const char *label;               /* the log's cache= */
  bool is_head;
  bool answered; /* an answer was started */

  /* Serving from the store or a fill (serve.c, job.c, check.c). */
  struct rp_reader *reader;
  uint64_t length;
  struct rp__filljob *job;        /* while the upstream answer is still ours to relay */
  struct rp__filljob *waiting_on; /* coalesced before the fill started */
  struct rp__rq *next_waiter;
  struct rp__headcheck *tc; /* an upstream HEAD in flight for it */

  /* The pass-through relay (relay.c). */
  struct rp_fetch *fetch;
  bool fetch_paused;  /* the answer's body waits for `drained` */
  bool body_waiting;  /* libcurl asked for request body and got none yet */
  bool grab_manifest; /* GET by tag relayed without a digest: hash the body */
  bool stale_pending; /* upstream answered 5xx/429: answer from memory */
  struct rp__grab *grab;
};

/** Is the registry unreachable or failing (contract §3: answers from memory)?
 * status: the transfer's; http: the answer's status. A TLS failure never is:
 * a certificate that does not verify is not papered over. */
static inline bool rp__reg_unreachable(int status, int http) {
  return (status != 0 && status != RP_EUPSTREAM_TLS && status != RP_EUPSTREAM_HANDSHAKE) ||
         http >= 500 || http == 429;
}

/* service.c: the request's answer (every answer of the service goes out here) */
/** Start the answer (adds the way in's own headers, e.g. OCI-Namespace). */
int rp__rq_start(struct rp__rq *rq, int status, const struct rp_http_header *h, size_t n,
                 int64_t length);
/** A whole small answer. */
void rp__rq_reply(struct rp__rq *rq, int status, const struct rp_http_header *h, size_t n,
                  const char *body, size_t len);
void rp__rq_label(struct rp__rq *rq, const char *cache);
void rp__rq_reason(struct rp__rq *rq, const char *reason);
/** The client's request as an upstream request. */
struct rp__upreq {
  struct rp_fetch_req req;
  struct rp_http_header *headers;
  char *url;
};
/** path: the upstream path and query, NULL for the request's. */
int rp__upreq_build(struct rp__rq *rq, const char *method, bool drop_range, const char *path,
                    struct rp__upreq *u);
void rp__upreq_free(struct rp__upreq *u);
/** "https://host[:port]" (or http:// for plain) of the request's registry. */
void rp__rq_origin(const struct rp__rq *rq, char *buf, size_t bufsz);
void rp__header_copy(const struct rp_http_header *h, size_t n, const char *name, char *out,
                     size_t outsz);
/** The upstream request settings shared by every fetch (the parent proxy). */
void rp__fetch_req_defaults(const struct rp_registry *reg, struct rp_fetch_req *req);

/* serve.c */
/** Decide and answer a registry read (everything else goes to the relay). */
void rp__serve(struct rp__rq *rq);
/** 200 (206 when partial) with the object's identity, then bytes
 * [off, off+len) from the published object d or the running fill f. */
int rp__serve_object(struct rp__rq *rq, const struct rp_digest *d, struct rp_fill *f, uint64_t size,
                     const char *media_type, uint64_t off, int64_t len, bool partial);
/** rp__serve_object; on failure the exchange is aborted. */
void rp__serve_or_abort(struct rp__rq *rq, const struct rp_digest *d, struct rp_fill *f,
                        uint64_t size, const char *media_type, uint64_t off, int64_t len,
                        bool partial);
/** "bytes=N-" / "bytes=N-M" against size; false for anything else. */
bool rp__parse_range(const struct rp_http_head *h, uint64_t size, uint64_t *off, int64_t *len,
                     bool *present);
/** The client's range (or all) of a fill whose size is now known; 416 outside it. */
void rp__serve_range(struct rp__rq *rq, const struct rp_digest *d, struct rp_fill *f, uint64_t size,
                     const char *ctype);
/** The request's serving state goes (reader, HEAD, waiting, job): end of request. */
void rp__serve_detach(struct rp__rq *rq);

/* check.c */
/* An upstream HEAD: a tag check or an access confirmation. */
struct rp__headcheck {
  struct rp__headcheck *next, **pprev; /* reg->heads */
  struct rp_registry *reg;
  struct rp__rq *rq; /* NULL once the client left */
  struct rp_fetch *fetch;
  int status;
  bool have_digest;
  struct rp_digest d;
  char ctype[128];
  int64_t size;
  bool authenticated;         /* which pull limit the answer's ratelimit headers name */
  unsigned char wait_key[16]; /* rp__wait_key of the request that asked */
  char registry[RP__REGISTRY_LEN];
};

extern const struct rp_fetch_callbacks rp__confirm_callbacks;
extern const struct rp_fetch_callbacks rp__tag_callbacks;
/* Confirms the request's credential with the registry before its object is
 * fetched from an upstream mirror (which is sent no credential). */
extern const struct rp_fetch_callbacks rp__premirror_callbacks;
/** An upstream HEAD of the request's path with its credentials; cb gets it
 * (with the digest d, NULL for a tag check). false: nothing started. */
bool rp__start_head(struct rp__rq *rq, const struct rp_fetch_callbacks *cb,
                    const struct rp_digest *d);
void rp__heads_shutdown(struct rp_registry *reg);

/* job.c */
struct rp__filljob {
  struct rp__filljob *next; /* reg->jobs */
  struct rp__rq *waiters;   /* same object, same repository, before the head */
  uint64_t size;
  char ctype[128];
  struct rp_registry *reg;
  struct rp__rq *rq; /* NULL once the client is gone or served by a reader */
  struct rp_fetch *fetch;
  struct rp_fill *fill;
  struct rp_digest d;
  bool is_manifest;
  struct saved_req *saved; /* the registry request, to resume a cut body */
  unsigned attempts;       /* resumptions so far (contract §3: at most 3) */
  uint64_t skip;           /* a resumed answer restarted at 0: bytes to drop */
  bool passing;            /* not a cacheable answer: relayed by the pass-through */
  bool memo_pending;       /* confirm memo_key once the fill is published */
  unsigned char memo_key[RP__MEMO_KEY_LEN]; /* the credential the upstream accepted */
  bool done; /* the transfer ended; the fill may still be publishing */
  bool paused;
  /* Upstream mirrors to try before the registry (copied at the start). */
  char **srcs;
  size_t nsrc, next_src;
  char *on_mirror;   /* the mirror the transfer is from, or NULL for the registry */
  char *fed_by;      /* the mirror that wrote into the fill, or NULL */
  bool fall_back;    /* the mirror's answer was refused: the next source follows */
  bool holding;      /* a mirror feeds the fill: clients wait until it verified */
  unsigned restarts; /* fills started again from the registry after a mirror's failed */
  char registry[RP__REGISTRY_LEN];
  char repo[256];
};

struct rp__filljob *rp__job_find(struct rp_registry *reg, const struct rp_digest *d);
void rp__job_free(struct rp__filljob *job);
/** Fetch d into a new fill while rq reads it. path: the upstream path, NULL
 * for the request's. false: nothing started (the caller relays instead). */
bool rp__job_start(struct rp__rq *rq, const struct rp_digest *dp, bool is_manifest,
                   const char *path);
void rp__job_release_waiters(struct rp__filljob *job);
/** Does rq send the credential the upstream accepted for this job's fill? */
bool rp__job_same_credential(const struct rp__filljob *job, const struct rp__rq *rq);
/** The request left: a job nothing is cached by yet has no reason to go on. */
void rp__job_detach(struct rp__filljob *job);
/** A finished fill of a manifest kept from a relay, listed until published. */
void rp__job_add_finished(struct rp_registry *reg, struct rp_fill *fill, const struct rp_digest *d,
                          uint64_t size, const char *ctype, const char *registry, const char *repo);
void rp__jobs_shutdown(struct rp_registry *reg);
/** Does the request's registry have upstream mirrors? */
bool rp__has_mirrors(const struct rp__rq *rq);
int rp__upmirrors_set(struct rp_registry *reg, char *const *items, size_t n);
void rp__upmirrors_free(struct rp_registry *reg);
void rp__jobs_json(const struct rp_registry *reg, struct json_t *arr);

/* access.c: every "who may receive what" decision (contract §3). offline: the
 * registry is unreachable now (a public answer of any age counts). */
/** The memo key of this request's credential for (registry, repo). */
void rp__memo_key(const struct rp__rq *rq, const char *registry, const char *repo,
                  unsigned char out[RP__MEMO_KEY_LEN]);
/** Remember that the request's credential read its repository upstream. */
void rp__memo_confirm(struct rp__rq *rq);
void rp__memo_confirm_key(struct rp_registry *reg, const unsigned char key[RP__MEMO_KEY_LEN]);
void rp__memo_free(struct rp_registry *reg);
/** May this request read its repository without asking upstream? */
bool rp__client_ok(struct rp__rq *rq, bool offline);
/** Known in the repository and this request may read it (or access_check off). */
bool rp__may_serve(struct rp__rq *rq, const struct rp_digest *d, bool offline);
/** Does an upstream answer to a HEAD with the request's credential confirm
 * it? 2xx; 3xx only for a blob of an HTTPS registry (a CDN redirect). */
bool rp__head_confirms(const struct rp__rq *rq, int status);
/** Learn in the background whether the repository is public. */
void rp__probe_public(struct rp__rq *rq);

/* public.c */
bool rp__public_known(struct rp_registry *reg, const char *registry, const char *repo,
                      bool offline);
void rp__public_probe(struct rp_registry *reg, const char *registry, const char *repo,
                      const char *origin, const char *ref);
void rp__public_shutdown(struct rp_registry *reg);

/* memory.c */
void rp__remember_tag(struct rp__rq *rq, struct rp_tag_entry *e);
/** --tag-ttl: the tag was confirmed upstream recently enough. */
bool rp__tag_fresh(struct rp__rq *rq);
/** Answer from the tag memory and the cache alone; label is the log's cache=. */
bool rp__answer_from_memory(struct rp__rq *rq, const char *label, bool offline);
/** Could rp__answer_from_memory answer it while the registry is unreachable? */
bool rp__can_stale(struct rp__rq *rq);
/** The key a Retry-After is kept under: the registry and the request's credential. */
void rp__wait_key(const struct rp__rq *rq, unsigned char out[16]);
/** A 429 or 503 with Retry-After: the registry is not asked again with that
 * credential (key) before then. */
void rp__note_retry_after(struct rp_registry *reg, const char *registry,
                          const unsigned char key[16], int status, const struct rp_http_header *h,
                          size_t n);
/** While the registry asked to wait: answer from memory, else a local 429
 * (reads only). true: answered. */
bool rp__wait_answer(struct rp__rq *rq);
/** An upstream answer of the relay: a 2xx confirms the credential, a tag is remembered. */
void rp__observe(struct rp__rq *rq, int status, const struct rp_http_header *h, size_t n);
void rp__grab_body(struct rp__rq *rq, const char *p, size_t n);
/** The relayed answer ended (status 0: complete): keep a grabbed manifest. */
void rp__grab_done(struct rp__rq *rq, int status);

/* relay.c */
/** The request as it is, to the registry, its answer back. */
void rp__relay(struct rp__rq *rq);
int rp__relay_head(struct rp_fetch *f, void *data, int status, const char *reason,
                   const struct rp_http_header *headers, size_t n);
int rp__relay_body(struct rp_fetch *f, void *data, const char *p, size_t n);
void rp__relay_done(struct rp_fetch *f, void *data, int status, const char *reason);
void rp__relay_drained(struct rp__rq *rq);
void rp__relay_body_ready(struct rp__rq *rq);
void rp__relay_detach(struct rp__rq *rq);

/* mirror.c */
/** A mirror request: its registry from ?ns= or mirror_default, /v2/ and
 * refusals answered here, then regproxy's credential, then rp__serve. */
void rp__mirror_serve(struct rp__rq *rq);
/** The registry refused regproxy's credential: forget the token. */
void rp__mirror_unauthorized(struct rp__rq *rq);
void rp__mirror_detach(struct rp__rq *rq);
void rp__mirror_shutdown(struct rp_registry *reg);

/* stats.c */
/** Which pull limit the request's credential counts against. */
bool rp__stats_authenticated(const struct rp__rq *rq);
void rp__stats_ratelimit(struct rp_registry *reg, const char *registry, bool authenticated,
                         const struct rp_http_header *h, size_t n);
/** A finished request, for the status page. */
void rp__stats_note(struct rp__rq *rq, const struct rp_exchange_summary *s);
void rp__stats_free(struct rp_registry *reg);

#endif
