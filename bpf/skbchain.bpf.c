// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* The two programs attached to the cgroup-v2 root for the whole process, and
 * the pass-through programs that stand in for a member that is gone, so the
 * members after it still run (see skbchain.h). */
#define SKBCHAIN_DISPATCHER
#include "meshlens.bpf.h"
#include "skbchain.h"

SEC("cgroup_skb/egress")
int skbchain_egress_run(struct __sk_buff *skb)
{
	bpf_tail_call(skb, &skbchain_egress, 0);
	return 1;
}

SEC("cgroup_skb/ingress")
int skbchain_ingress_run(struct __sk_buff *skb)
{
	bpf_tail_call(skb, &skbchain_ingress, 0);
	return 1;
}

#define PASS(dir, k)                                                   \
	SEC("cgroup_skb/" #dir)                                        \
	int skbchain_##dir##_pass##k(struct __sk_buff *skb)            \
	{                                                              \
		bpf_tail_call(skb, &skbchain_##dir, (k) + 1);          \
		return 1;                                              \
	}

PASS(egress, 0) PASS(egress, 1) PASS(egress, 2) PASS(egress, 3)
PASS(egress, 4) PASS(egress, 5) PASS(egress, 6) PASS(egress, 7)
PASS(ingress, 0) PASS(ingress, 1) PASS(ingress, 2) PASS(ingress, 3)
PASS(ingress, 4) PASS(ingress, 5) PASS(ingress, 6) PASS(ingress, 7)

char LICENSE[] SEC("license") = "Dual BSD/GPL";
