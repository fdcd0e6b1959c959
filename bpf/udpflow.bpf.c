// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* UDP flow accounting per socket and peer, from cgroup_skb on the cgroup-v2
 * root: every datagram a local socket sends or receives, with both addresses,
 * which the socket-level tracepoints cannot give for unconnected sockets.
 *
 * The kernel owns each entry: it creates it on the first datagram and a
 * bpf_timer deletes it after idle_ns without traffic, submitting a final
 * record first. An adder racing with expiry gives back what it added as a late
 * record, so every datagram is reported exactly once. */
#include "meshlens.bpf.h"
#include "udpflow.h"
#include "skbchain.h"

#define CLOCK_MONOTONIC 1
#define ETH_P_IP_BE 0x0008   /* htons(0x0800) */
#define ETH_P_IPV6_BE 0xDD86 /* htons(0x86DD) */

const volatile __u64 idle_ns = 30ULL * 1000000000ULL;
const volatile __u64 wakeup_bytes = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct udpflow_key);
	__type(value, struct udpflow_value);
} udpflow_flows SEC(".maps");

/* socket cookie -> sender, so a flow first seen on ingress gets its owner */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct udpflow_owner);
} udpflow_owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} udpflow_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UDPFLOW_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} udpflow_stats SEC(".maps");

static __always_inline void emit(const struct udpflow_key *k, const struct udpflow_value *v,
				 __u32 type, __u64 bs, __u64 br, __u64 ds, __u64 dr)
{
	struct udpflow_event *e;

	if (!(bs | br | ds | dr) && type == UDPFLOW_EV_LATE)
		return;
	e = bpf_ringbuf_reserve(&udpflow_events, sizeof(*e), 0);
	if (!e) {
		stat_add(&udpflow_stats, UDPFLOW_STAT_EVENTS_LOST, 1);
		stat_add(&udpflow_stats, UDPFLOW_STAT_BYTES_LOST, bs + br);
		return;
	}
	e->cookie = k->cookie;
	__builtin_memcpy(e->laddr, k->laddr, 16);
	__builtin_memcpy(e->raddr, k->raddr, 16);
	e->lport = k->lport;
	e->rport = k->rport;
	e->family = k->family;
	e->__pad1 = 0;
	e->bytes_sent = bs;
	e->bytes_received = br;
	e->datagrams_sent = ds;
	e->datagrams_received = dr;
	e->start_ns = v->start_ns;
	e->end_ns = bpf_ktime_get_ns();
	e->netns = v->netns;
	e->cgroup_id = v->cgroup_id;
	e->tgid = v->tgid;
	e->pid = v->pid;
	__builtin_memcpy(e->comm, v->comm, UDPFLOW_COMM_LEN);
	e->type = type;
	e->dir = v->dir;
	bpf_ringbuf_submit(e, ringbuf_flags(&udpflow_events, wakeup_bytes));
}

/* Take the counters out of a flow, atomically with respect to adders. */
#define TAKE(v, f) __sync_lock_test_and_set(&(v)->f, 0)

static int expire_cb(void *map, struct udpflow_key *k, struct udpflow_value *v)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 last = v->last_ns;

	if (now - last < idle_ns) {
		bpf_timer_start(&v->timer, idle_ns - (now - last), 0);
		return 0;
	}
	v->closing = 1;
	emit(k, v, UDPFLOW_EV_EXPIRE, TAKE(v, bytes_sent), TAKE(v, bytes_received),
	     TAKE(v, datagrams_sent), TAKE(v, datagrams_received));
	if (!bpf_map_delete_elem(map, k))
		stat_add(&udpflow_stats, UDPFLOW_STAT_LIVE, -1);
	return 0;
}

/* Set the expiry timer; under memory pressure bpf_timer_init fails and the
 * next datagram of the flow tries again, so no flow stays forever. */
static __always_inline void arm(struct udpflow_value *v)
{
	long err = bpf_timer_init(&v->timer, &udpflow_flows, CLOCK_MONOTONIC);

	if (err && err != -16 /* EBUSY: initialised by an earlier try */)
		return;
	if (bpf_timer_set_callback(&v->timer, expire_cb) || bpf_timer_start(&v->timer, idle_ns, 0))
		return;
	v->armed = 1;
}

static __always_inline void owner_from_current(struct udpflow_owner *o)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	o->tgid = id >> 32;
	o->pid = (__u32)id;
	o->cgroup_id = bpf_get_current_cgroup_id();
	o->netns = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
	bpf_get_current_comm(o->comm, UDPFLOW_COMM_LEN);
}

static __always_inline struct udpflow_value *flow_get(struct __sk_buff *skb,
						      const struct udpflow_key *k, bool egress)
{
	struct udpflow_value *v = bpf_map_lookup_elem(&udpflow_flows, k);
	struct udpflow_value init = {};
	struct udpflow_owner *o, cur;
	long err;

	if (v) {
		if (egress && !v->tgid) {
			/* first seen on receive (a server): its reply names the owner */
			owner_from_current(&cur);
			v->netns = cur.netns;
			v->cgroup_id = cur.cgroup_id;
			v->pid = cur.pid;
			__builtin_memcpy(v->comm, cur.comm, UDPFLOW_COMM_LEN);
			v->tgid = cur.tgid;
			bpf_map_update_elem(&udpflow_owners, &k->cookie, &cur, BPF_ANY);
		}
		return v;
	}
	if (egress) {
		/* UDP is sent in the sender's own context */
		owner_from_current(&cur);
		bpf_map_update_elem(&udpflow_owners, &k->cookie, &cur, BPF_ANY);
		o = &cur;
	} else {
		o = bpf_map_lookup_elem(&udpflow_owners, &k->cookie);
	}
	if (o) {
		init.netns = o->netns;
		init.cgroup_id = o->cgroup_id;
		init.tgid = o->tgid;
		init.pid = o->pid;
		__builtin_memcpy(init.comm, o->comm, UDPFLOW_COMM_LEN);
	} else {
		init.cgroup_id = bpf_skb_cgroup_id(skb);
	}
	init.start_ns = bpf_ktime_get_ns();
	init.last_ns = init.start_ns;
	init.dir = egress ? UDPFLOW_DIR_SOURCE : UDPFLOW_DIR_DESTINATION;
	err = bpf_map_update_elem(&udpflow_flows, k, &init, BPF_NOEXIST);
	v = bpf_map_lookup_elem(&udpflow_flows, k);
	if (err) {
		if (err != -17 /* EEXIST: another CPU was first */)
			stat_add(&udpflow_stats, UDPFLOW_STAT_FLOWS_FULL, 1);
		return v;
	}
	if (!v)
		return 0;
	stat_add(&udpflow_stats, UDPFLOW_STAT_LIVE, 1);
	arm(v);
	return v;
}

/* Fill the key from the IP and UDP headers; returns the datagram's payload
 * bytes, -1 when unparsable, -2 for a later IP fragment. */
static __always_inline long parse(struct __sk_buff *skb, struct udpflow_key *k, bool egress,
				  __u32 *l4off_out)
{
	struct udphdr uh;
	__u32 l4off;

	if (skb->protocol == ETH_P_IP_BE) {
		struct iphdr iph;

		if (bpf_skb_load_bytes(skb, 0, &iph, sizeof(iph)))
			return -1;
		if (iph.protocol != IPPROTO_UDP)
			return -1;
		/* later fragments carry no UDP header; the first counted them all */
		if (iph.frag_off & bpf_htons(0x1fff))
			return -2;
		l4off = iph.ihl * 4;
		k->family = AF_INET;
		__builtin_memcpy(egress ? k->laddr : k->raddr, &iph.saddr, 4);
		__builtin_memcpy(egress ? k->raddr : k->laddr, &iph.daddr, 4);
	} else if (skb->protocol == ETH_P_IPV6_BE) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return -1;
		if (ip6.nexthdr != IPPROTO_UDP)
			return -1; /* extension headers: counted as unparsed */
		l4off = sizeof(ip6);
		k->family = AF_INET6;
		__builtin_memcpy(egress ? k->laddr : k->raddr, &ip6.saddr, 16);
		__builtin_memcpy(egress ? k->raddr : k->laddr, &ip6.daddr, 16);
	} else {
		return -1;
	}
	if (bpf_skb_load_bytes(skb, l4off, &uh, sizeof(uh)))
		return -1;
	k->lport = bpf_ntohs(egress ? uh.source : uh.dest);
	k->rport = bpf_ntohs(egress ? uh.dest : uh.source);
	*l4off_out = l4off;
	/* the UDP length covers the whole datagram even when IP fragments it */
	return (long)bpf_ntohs(uh.len) - (long)sizeof(uh);
}

static __always_inline int handle(struct __sk_buff *skb, bool egress)
{
	struct bpf_sock *sk = skb->sk;
	struct udpflow_key k = {};
	struct udpflow_value *v;
	__u32 l4off = 0;
	__u64 segs;
	long len;

	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_UDP)
		return 1;
	len = parse(skb, &k, egress, &l4off);
	if (len == -2)
		return 1;
	if (len < 0) {
		stat_add(&udpflow_stats, UDPFLOW_STAT_UNPARSED, 1);
		return 1;
	}
	k.cookie = bpf_get_socket_cookie(skb);
	v = flow_get(skb, &k, egress);
	if (!v)
		return 1;
	segs = skb->gso_segs > 1 ? skb->gso_segs : 1;
	if (segs > 1) /* one UDP header for the whole GSO train */
		len = (long)skb->len - (long)l4off - (long)sizeof(struct udphdr);
	/* per datagram: the coarse clock (a jiffy behind at most) is plenty for
	 * idle expiry and costs a fraction of the precise one */
	v->last_ns = bpf_ktime_get_coarse_ns();
	if (!v->armed)
		arm(v);
	if (egress) {
		__sync_fetch_and_add(&v->bytes_sent, len);
		__sync_fetch_and_add(&v->datagrams_sent, segs);
	} else {
		__sync_fetch_and_add(&v->bytes_received, len);
		__sync_fetch_and_add(&v->datagrams_received, segs);
	}
	if (v->closing)
		emit(&k, v, UDPFLOW_EV_LATE, TAKE(v, bytes_sent), TAKE(v, bytes_received),
		     TAKE(v, datagrams_sent), TAKE(v, datagrams_received));
	return 1;
}

SEC("cgroup_skb/egress")
int udpflow_egress(struct __sk_buff *skb)
{
	handle(skb, true);
	SKBCHAIN_NEXT_EGRESS(skb);
	return 1;
}

SEC("cgroup_skb/ingress")
int udpflow_ingress(struct __sk_buff *skb)
{
	handle(skb, false);
	SKBCHAIN_NEXT_INGRESS(skb);
	return 1;
}

/* Ring buffer records are only ever void pointers to the compiler: name the
 * type once so it is in the object's BTF for the user-side layout check. */
const struct udpflow_event *unused_udpflow_event __attribute__((unused));

char LICENSE[] SEC("license") = "Dual BSD/GPL";
