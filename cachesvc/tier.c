/* tier.c - what every tier shares: the list's names and the generic ops. */
#include "tier.h"

const char *kvs__tier_name(unsigned wire_tier) {
#define KVS__TIER_NAME_ONE(name, ops, dir, subdir, cap, opt) name,
  static const char *const names[] = {"ram", KVS__TIER_LIST(KVS__TIER_NAME_ONE)};
#undef KVS__TIER_NAME_ONE
  return wire_tier < sizeof names / sizeof names[0] ? names[wire_tier] : "?";
}

uint64_t kvs__tier_used(const kvs__tier *t) { return t ? t->used : 0; }
uint64_t kvs__tier_capacity(const kvs__tier *t) { return t ? t->capacity : 0; }
const char *kvs__tier_get_name(const kvs__tier *t) { return t ? t->name : "?"; }
