/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* The cgroup_skb chain: one program per direction is attached to the cgroup
 * root and every feature's cgroup_skb program runs behind it by tail call.
 *
 * Why: each program attached to a cgroup is reached by an indirect call, which
 * costs ~20 ns per packet on a retpoline kernel even when the program returns
 * at once (docs/skbchain.md has the numbers). A tail call with an index known
 * at load time is patched into a direct jump.
 *
 * A member includes this header, ends its program with SKBCHAIN_NEXT_EGRESS()
 * or SKBCHAIN_NEXT_INGRESS(), and the loader (src/meshlens/probes/skbchain.py)
 * shares the chain's program arrays with it and sets its slot before load. */
#ifndef MESHLENS_SKBCHAIN_H
#define MESHLENS_SKBCHAIN_H

#define SKBCHAIN_SLOTS 8

struct skbchain_array {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, SKBCHAIN_SLOTS);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
};

struct skbchain_array skbchain_egress SEC(".maps");
struct skbchain_array skbchain_ingress SEC(".maps");

#ifndef SKBCHAIN_DISPATCHER
/* This member's slot in each array (set by the loader; a constant to the
 * verifier, so the tail call below becomes a direct jump). */
const volatile __u32 skbchain_egress_slot = SKBCHAIN_SLOTS;
const volatile __u32 skbchain_ingress_slot = SKBCHAIN_SLOTS;

/* Run the next member; falls through (and the caller returns) at the end. */
#define SKBCHAIN_NEXT_EGRESS(skb) bpf_tail_call(skb, &skbchain_egress, skbchain_egress_slot + 1)
#define SKBCHAIN_NEXT_INGRESS(skb) bpf_tail_call(skb, &skbchain_ingress, skbchain_ingress_slot + 1)
#endif

#endif /* MESHLENS_SKBCHAIN_H */
