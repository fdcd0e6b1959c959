// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* The control of bench/http_bench.py --scoped-pairs --control noop*: a cgroup_skb
 * program per direction that only lets the packet through. What any per-packet
 * design pays before it does any work. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("cgroup_skb/egress")
int noop_egress(struct __sk_buff *skb)
{
	return 1;
}

SEC("cgroup_skb/ingress")
int noop_ingress(struct __sk_buff *skb)
{
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
