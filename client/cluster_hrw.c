/* cluster_hrw.c - rendezvous (highest random weight) placement.
 *
 * Each (key, node) pair gets a pseudo-random u in (0, 1) from a hash of the
 * key and the node id; the node's score is capacity / -ln(u) (weighted
 * rendezvous hashing: node i wins a key with probability w_i / sum w). The
 * R best nodes own the key. Adding a node moves only the keys it now wins
 * (about w_new / sum w of them); removing one moves only its own keys. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"

static uint64_t mix64(uint64_t x) { /* splitmix64 finalizer */
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

double kvs__hrw_score(const kvs_key *key, const char *node_id, uint64_t weight) {
  uint8_t buf[16 + KVS__CL_ID_MAX + 1];
  size_t n = strlen(node_id);
  if (n > KVS__CL_ID_MAX) n = KVS__CL_ID_MAX;
  memcpy(buf, key->b, 16);
  memcpy(buf + 16, node_id, n);
  uint64_t h = mix64(kvs_checksum64(buf, 16 + n));
  double u = ((double)(h >> 11) + 0.5) * (1.0 / 9007199254740992.0); /* (0, 1) */
  double w = weight ? (double)weight : 1.0;
  return w / -log(u);
}

void kvs__hrw_order(const kvs_key *key, const kvs__node *nodes, size_t n, size_t *order, size_t k) {
  if (k > n) k = n;
  double best[KVS__CL_MAX_R * 4];
  double *sc = k <= sizeof best / sizeof best[0] ? best : malloc(k * sizeof *sc);
  if (!sc) return;
  size_t m = 0; /* a partial insertion sort keeps the k best */
  for (size_t i = 0; i < n; i++) {
    double s = kvs__hrw_score(key, nodes[i].id, nodes[i].capacity);
    if (nodes[i].draining) s = -1.0 / s; /* below every live node, same relative order */
    size_t j = m < k ? m++ : k;
    if (j == k && (k == 0 || s <= sc[k - 1])) continue;
    if (j == k) j = k - 1;
    while (j > 0 &&
           (sc[j - 1] < s || (sc[j - 1] == s && strcmp(nodes[order[j - 1]].id, nodes[i].id) > 0))) {
      sc[j] = sc[j - 1];
      order[j] = order[j - 1];
      j--;
    }
    sc[j] = s;
    order[j] = i;
  }
  if (sc != best) free(sc);
}
