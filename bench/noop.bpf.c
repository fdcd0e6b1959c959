// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* The controls of bench/http_bench.py --scoped-pairs --control noop*: programs
 * that only return. A cgroup_skb program per direction is what any per-packet
 * design pays before it does any work; one on each socket-call tracepoint is
 * what any per-call design (the agent's) pays. */
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

SEC("raw_tp/sock_send_length")
int noop_send(void *ctx)
{
	return 0;
}

SEC("raw_tp/sock_recv_length")
int noop_recv(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
