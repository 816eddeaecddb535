/* Client authentication for --proxy-auth-file (contract §4): an htpasswd file
 * ("user:hash" per line) checked with apr-util's apr_password_validate, the
 * function Apache's htpasswd and mod_authn_file use, so every hash htpasswd
 * writes works: bcrypt ($2y$), apr1-MD5 ($apr1$, htpasswd's default), SHA1
 * ({SHA}), crypt(3). Verification is deliberately slow for bcrypt: callers
 * run it on the thread pool and remember the answer. */
#include <apr_general.h>
#include <apr_md5.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "regproxy/error.h"
#include "regproxy/htpasswd.h"

struct entry {
  char *user;
  char *hash;
};

struct rp_htpasswd {
  struct entry *e;
  size_t n;
  unsigned refs; /* changed on the loop only; verifications on the pool hold one */
};

static pthread_once_t apr_once = PTHREAD_ONCE_INIT;
static int apr_ok;

static void apr_init(void) {
  apr_ok = apr_initialize() == APR_SUCCESS;
}

static void set_err(char **err, const char *path, unsigned line, const char *why) {
  if (err == NULL)
    return;
  free(*err);
  *err = NULL;
  if (line > 0) {
    int n = snprintf(NULL, 0, "%s:%u: %s", path, line, why);
    *err = malloc((size_t)n + 1);
    if (*err != NULL)
      snprintf(*err, (size_t)n + 1, "%s:%u: %s", path, line, why);
  } else {
    int n = snprintf(NULL, 0, "%s: %s", path, why);
    *err = malloc((size_t)n + 1);
    if (*err != NULL)
      snprintf(*err, (size_t)n + 1, "%s: %s", path, why);
  }
}

void rp_htpasswd_ref(struct rp_htpasswd *h) {
  h->refs++;
}

void rp_htpasswd_destroy(struct rp_htpasswd *h) {
  if (h == NULL || --h->refs > 0)
    return;
  for (size_t i = 0; i < h->n; i++) {
    free(h->e[i].user);
    if (h->e[i].hash != NULL) {
      memset(h->e[i].hash, 0, strlen(h->e[i].hash));
      free(h->e[i].hash);
    }
  }
  free(h->e);
  free(h);
}

int rp_htpasswd_load(const char *path, struct rp_htpasswd **out, char **err) {
  struct rp_htpasswd *h;
  char line[4096];
  unsigned lineno = 0;
  FILE *f;

  *out = NULL;
  pthread_once(&apr_once, apr_init);
  if (!apr_ok) {
    set_err(err, path, 0, "apr_initialize failed");
    return RP_ECONFIG;
  }
  f = fopen(path, "re");
  if (f == NULL) {
    set_err(err, path, 0, strerror(errno));
    return RP_ECONFIG;
  }
  h = calloc(1, sizeof(*h));
  if (h == NULL) {
    fclose(f);
    return RP_ENOMEM;
  }
  h->refs = 1;
  while (fgets(line, sizeof(line), f) != NULL) {
    size_t len = strlen(line);
    char *colon;
    struct entry *ne;

    lineno++;
    if (len > 0 && line[len - 1] != '\n' && !feof(f)) {
      set_err(err, path, lineno, "line too long");
      goto bad;
    }
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
      line[--len] = '\0';
    if (len == 0 || line[0] == '#')
      continue;
    colon = strchr(line, ':');
    if (colon == NULL || colon == line || colon[1] == '\0') {
      set_err(err, path, lineno, "expected user:hash");
      goto bad;
    }
    *colon = '\0';
    ne = realloc(h->e, (h->n + 1) * sizeof(*ne));
    if (ne == NULL)
      goto oom;
    h->e = ne;
    h->e[h->n].user = strdup(line);
    h->e[h->n].hash = strdup(colon + 1);
    h->n++;
    if (h->e[h->n - 1].user == NULL || h->e[h->n - 1].hash == NULL)
      goto oom;
    memset(colon + 1, 0, strlen(colon + 1));
  }
  fclose(f);
  if (h->n == 0) {
    set_err(err, path, 0, "no users");
    rp_htpasswd_destroy(h);
    return RP_ECONFIG;
  }
  *out = h;
  return 0;
oom:
  set_err(err, path, lineno, "out of memory");
bad:
  memset(line, 0, sizeof(line));
  fclose(f);
  rp_htpasswd_destroy(h);
  return RP_ECONFIG;
}

size_t rp_htpasswd_count(const struct rp_htpasswd *h) {
  return h != NULL ? h->n : 0;
}

bool rp_htpasswd_verify(const struct rp_htpasswd *h, const char *user, const char *pass) {
  if (h == NULL || user == NULL || pass == NULL)
    return false;
  for (size_t i = 0; i < h->n; i++) {
    if (strcmp(h->e[i].user, user) == 0)
      return apr_password_validate(pass, h->e[i].hash) == APR_SUCCESS;
  }
  return false;
}
