/* Proxy-Authorization for --proxy-auth-file (contract §4): requests to the proxy
 * (CONNECT and absolute-form, not the origin-form admin and mirror requests,
 * nor the requests inside an intercepted tunnel) must carry
 * `Proxy-Authorization: Basic` with a user and password the htpasswd file
 * accepts, else 407 with a Basic challenge. Checking a bcrypt hash takes
 * tens of milliseconds, so it runs on the thread pool and its answer is
 * remembered for a while (keyed by a hash of the header value); the request
 * waits, paused after its head, and is routed when the answer comes. */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "regproxy/htpasswd.h"
#include "regproxy/log.h"

#define PA_SLOTS  1024
#define PA_OK_MS  (5 * 60 * 1000) /* a credential that checked out */
#define PA_BAD_MS (2 * 1000)      /* one that did not: no hammering the pool */

struct pa_slot {
  unsigned char key[16];
  uint64_t until_ms; /* 0: empty */
  bool ok;
};

struct rp__proxyauth {
  struct pa_slot slot[PA_SLOTS];
};

struct rp__pa_job {
  uv_work_t work;
  struct rp_conn *c; /* NULL once the connection closed */
  struct rp_server *srv;
  struct rp_htpasswd *h;
  char *user, *pass;
  unsigned char key[16];
  bool ok;
};

static void key_of(const char *v, size_t n, unsigned char out[16]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;

  memset(out, 0, 16);
  if (EVP_Digest(v, n, md, &mdlen, EVP_sha256(), NULL) == 1)
    memcpy(out, md, 16);
}

static struct pa_slot *slot_of(struct rp_server *srv, const unsigned char key[16]) {
  uint32_t i;
  memcpy(&i, key, sizeof(i));
  return &srv->pauth->slot[i % PA_SLOTS];
}

static void challenge(struct rp_conn *c, const char *why) {
  rp__conn_respond_with(c, 407, why, "Proxy-Authenticate: Basic realm=\"regproxy\"\r\n", false);
}

static void on_work(uv_work_t *w) {
  struct rp__pa_job *j = w->data;
  j->ok = rp_htpasswd_verify(j->h, j->user, j->pass);
}

static void on_after(uv_work_t *w, int status) {
  struct rp__pa_job *j = w->data;
  struct rp_conn *c = j->c;
  struct rp_server *srv = j->srv;
  bool ok = status == 0 && j->ok;

  if (srv->pauth != NULL) {
    struct pa_slot *s = slot_of(srv, j->key);
    memcpy(s->key, j->key, 16);
    s->ok = ok;
    s->until_ms = uv_now(srv->loop) + (ok ? PA_OK_MS : PA_BAD_MS);
  }
  rp_htpasswd_destroy(j->h);
  memset(j->pass, 0, strlen(j->pass));
  free(j->user); /* pass lives in the same allocation */
  free(j);
  if (c == NULL)
    return;
  c->pa_job = NULL;
  if (c->closing)
    return;
  if (!ok) {
    challenge(c, "proxy authentication failed");
    rp__conn_resume_input(c);
    return;
  }
  rp__conn_route(c, c->head);
  rp__conn_resume_input(c);
}

bool rp__proxyauth_check(struct rp_conn *c, const struct rp_http_head *h) {
  struct rp_server *srv = c->srv;
  const struct rp_http_header *a = rp_http_header_find(h, "proxy-authorization");
  struct rp__pa_job *j;
  struct pa_slot *s;
  unsigned char key[16];
  char *dec = NULL, *colon;
  size_t declen = 0, skip;

  if (srv->htpasswd == NULL)
    return true;
  if (a == NULL || a->value_len < 7 || strncasecmp(a->value, "basic ", 6) != 0) {
    challenge(c, "proxy authentication required");
    return false;
  }
  if (srv->pauth == NULL && (srv->pauth = calloc(1, sizeof(*srv->pauth))) == NULL) {
    rp__conn_respond(c, 500, "out of memory", true);
    return false;
  }
  key_of(a->value, a->value_len, key);
  s = slot_of(srv, key);
  if (s->until_ms != 0 && memcmp(s->key, key, 16) == 0 && uv_now(srv->loop) < s->until_ms) {
    if (s->ok)
      return true;
    challenge(c, "proxy authentication failed");
    return false;
  }
  skip = 6;
  while (skip < a->value_len && a->value[skip] == ' ')
    skip++;
  if (rp_base64_decode(a->value + skip, a->value_len - skip, &dec, &declen) != 0 ||
      (colon = memchr(dec, ':', declen)) == NULL || memchr(dec, '\0', declen) != NULL) {
    free(dec);
    challenge(c, "malformed Proxy-Authorization");
    return false;
  }
  j = calloc(1, sizeof(*j));
  if (j == NULL) {
    free(dec);
    rp__conn_respond(c, 500, "out of memory", true);
    return false;
  }
  *colon = '\0';
  j->user = dec;
  j->pass = colon + 1;
  j->c = c;
  j->srv = srv;
  j->h = srv->htpasswd;
  rp_htpasswd_ref(j->h);
  memcpy(j->key, key, 16);
  j->work.data = j;
  if (uv_queue_work(srv->loop, &j->work, on_work, on_after) != 0) {
    rp_htpasswd_destroy(j->h);
    free(dec);
    free(j);
    rp__conn_respond(c, 500, "cannot check the credential", true);
    return false;
  }
  c->pa_job = j;
  return false; /* routed when the answer comes */
}

void rp__proxyauth_detach(struct rp_conn *c) {
  if (c->pa_job != NULL) {
    c->pa_job->c = NULL;
    c->pa_job = NULL;
  }
}

void rp__proxyauth_shutdown(struct rp_server *srv) {
  free(srv->pauth);
  srv->pauth = NULL;
}
