/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Kernel-only helpers shared by meshlens probes. */
#ifndef MESHLENS_BPF_H
#define MESHLENS_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef IPPROTO_TCP
#define IPPROTO_TCP 6
#endif
#ifndef IPPROTO_UDP
#define IPPROTO_UDP 17
#endif
#define MSG_PEEK_FLAG 2

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

/* A raw tracepoint's socket argument as a read-only BTF pointer: its fields are
 * read by plain loads that the JIT guards against faults, not one
 * bpf_probe_read_kernel() call per field (measured: ~8 ns each). */
#define SOCK_RO(sk) ((const struct sock *)bpf_rdonly_cast((sk), bpf_core_type_id_kernel(struct sock)))

/* An IPv4 address in IPv6 form (::ffff:a.b.c.d), as an IPv6 socket talking IPv4 has. */
static __always_inline bool v4_mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return !w[0] && !w[1] && w[2] == bpf_htonl(0xffff);
}

/* Add to a per-CPU self-metric counter; `stats` is a PERCPU_ARRAY of __u64. */
static __always_inline void stat_add(void *stats, __u32 idx, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(stats, &idx);

	if (c)
		*c += n;
}

/* Slot idx of a per-CPU u64 array summed over every CPU, as a timer reads a
 * count the programs keep per CPU. */
#define MESHLENS_MAX_CPUS 1024

static __always_inline __u64 percpu_sum(void *stats, __u32 idx)
{
	__u64 sum = 0;

	for (__u32 cpu = 0; cpu < MESHLENS_MAX_CPUS; cpu++) {
		__u64 *c = bpf_map_lookup_percpu_elem(stats, &idx, cpu);

		if (!c)
			break; /* past the last CPU */
		sum += *c;
	}
	return sum;
}

/* A sweep timer walks every bucket of its map, empty or not, in softirq: skip
 * the walk while the live count (inserts minus deletes) is 0, but not every
 * time, so a count that drifted (a per-CPU add interrupted on its CPU) cannot
 * stop expiry for good. */
#define SWEEP_ANYWAY_EVERY 16

static __always_inline bool sweep_due(void *stats, __u32 live_idx, __u32 *skipped)
{
	if (percpu_sum(stats, live_idx) || ++*skipped >= SWEEP_ANYWAY_EVERY) {
		*skipped = 0;
		return true;
	}
	return false;
}

/* Copy a socket's addresses and ports (local first) into 16-byte slots.
 * IPv4 goes in the first 4 bytes, like bcc's tools do. Ports in host order. */
static __always_inline void read_sock_tuple(const struct sock *sk, __u16 family, __u8 *laddr,
					    __u8 *raddr, __u16 *lport, __u16 *rport)
{
	if (family == AF_INET) {
		BPF_CORE_READ_INTO((__u32 *)laddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)raddr, sk, __sk_common.skc_daddr);
	} else {
		/* all 16 bytes: BPF_CORE_READ_INTO would copy sizeof(*laddr), one */
		bpf_core_read(laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(raddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	*lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	*rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

static __always_inline __u64 sock_netns(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline __u64 sock_cgroup_id(const struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
}

/* Ring buffers wake the reader only once this much data waits, so a burst of
 * events costs one wake-up; a refresh drains them first. */
static __always_inline __u64 ringbuf_flags(void *rb, __u64 wakeup_bytes)
{
	if (!wakeup_bytes)
		return 0;
	return bpf_ringbuf_query(rb, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
									 : BPF_RB_NO_WAKEUP;
}

/* floor(log2(v)) for v > 0, branch-free (BPF has no count-leading-zeros). */
static __always_inline __u32 log2_u32(__u32 v)
{
	__u32 r, shift;

	r = (v > 0xFFFF) << 4;
	v >>= r;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	return r;
}

/* A walk over the sockets of one of the kernel's socket hashes (lhash2,
 * ehash): an array of buckets, each holding an hlist_nulls chain linked
 * through skc_nulls_node. Made for bpf_loop(), one node per step. */
struct nulls_walk {
	__u64 buckets;  /* address of bucket 0 */
	__u64 node;     /* the hlist_nulls_node being visited; 0: take the next bucket */
	__u32 stride;   /* size of a bucket */
	__u32 head_off; /* offset of the chain's head in a bucket */
	__u32 bucket;
	__u32 n_buckets;
};

/* The walk's next socket; 0 between buckets. *done at the end. */
static __always_inline const struct sock *nulls_walk_next(struct nulls_walk *w, bool *done)
{
	const struct hlist_nulls_node *node;

	if (!w->node) {
		if (w->bucket >= w->n_buckets) {
			*done = true;
			return 0;
		}
		bpf_probe_read_kernel(&w->node, sizeof(w->node),
				      (void *)(w->buckets + (__u64)w->bucket * w->stride + w->head_off));
		w->bucket++;
		if (w->node & 1) /* a nulls marker ends the chain */
			w->node = 0;
		return 0;
	}
	node = (const struct hlist_nulls_node *)w->node;
	w->node = (__u64)BPF_CORE_READ(node, next);
	if (w->node & 1)
		w->node = 0;
	return (const struct sock *)((void *)node -
				     bpf_core_field_offset(struct sock, __sk_common.skc_nulls_node));
}

/* The socket hashes of the caller's network namespace (every namespace shares
 * them unless tcp_child_ehash_entries gave it an ehash of its own). */
static __always_inline struct inet_hashinfo *tcp_hashinfo(void)
{
	struct task_struct *task = bpf_get_current_task_btf();

	return BPF_CORE_READ(task, nsproxy, net_ns, ipv4.tcp_death_row.hashinfo);
}

#endif /* MESHLENS_BPF_H */
