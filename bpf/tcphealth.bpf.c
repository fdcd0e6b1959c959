// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* Network health a service mesh cannot see, aggregated in the kernel:
 *  - packet drops with the kernel's reason (skb:kfree_skb; consumed packets
 *    are traced by consume_skb instead, so normal frees never show up here),
 *  - resets sent for no socket (a connect to a closed port), with the reason,
 *  - per listener: drops (accept-queue overflows and other refused SYNs),
 *    SYN-ACK retransmits and the accept-queue length at each handshake
 *    (bcc's tcpsynbl).
 * Counters only grow and are never deleted by user space. */
#include "meshlens.bpf.h"
#include "tcphealth.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

/* Drop/reset counts by (kind, reason, tuple); LRU so a flood of distinct
 * tuples evicts the coldest keys (counted as evictions by user space). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tcphealth_key);
	__type(value, __u64);
} tcphealth_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct tcphealth_listen_key);
	__type(value, struct tcphealth_listen_value);
} tcphealth_listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TCPHEALTH_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} tcphealth_stats SEC(".maps");

static __always_inline void count(struct tcphealth_key *k)
{
	__u64 one = 1, *c = bpf_map_lookup_elem(&tcphealth_events, k);

	if (c) {
		__sync_fetch_and_add(c, 1);
		return;
	}
	if (bpf_map_update_elem(&tcphealth_events, k, &one, BPF_NOEXIST)) {
		c = bpf_map_lookup_elem(&tcphealth_events, k);
		if (c)
			__sync_fetch_and_add(c, 1);
		else
			stat_add(&tcphealth_stats, TCPHEALTH_STAT_EVENTS_FULL, 1);
	}
}

/* Addresses from the packet's own headers: destination as local. */
static __always_inline bool key_from_packet(const struct sk_buff *skb, struct tcphealth_key *k)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 proto = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	__u32 l4;

	if (nh == (__u16)~0U)
		return false;
	if (proto == ETH_P_IP) {
		struct iphdr iph;

		if (bpf_probe_read_kernel(&iph, sizeof(iph), head + nh) || iph.version != 4)
			return false;
		__builtin_memcpy(k->laddr, &iph.daddr, 4);
		__builtin_memcpy(k->raddr, &iph.saddr, 4);
		k->family = AF_INET;
		k->proto = iph.protocol;
		l4 = nh + iph.ihl * 4;
	} else if (proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;

		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh))
			return false;
		__builtin_memcpy(k->laddr, &ip6.daddr, 16);
		__builtin_memcpy(k->raddr, &ip6.saddr, 16);
		k->family = AF_INET6;
		k->proto = ip6.nexthdr;
		l4 = nh + sizeof(ip6);
	} else {
		return false;
	}
	if (k->proto == IPPROTO_TCP || k->proto == IPPROTO_UDP) {
		__be16 ports[2];

		if (!bpf_probe_read_kernel(ports, sizeof(ports), head + l4)) {
			k->rport = bpf_ntohs(ports[0]);
			k->lport = bpf_ntohs(ports[1]);
		}
	}
	return true;
}

static __always_inline void key_from_sock(const struct sock *sk, struct tcphealth_key *k)
{
	k->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	k->proto = BPF_CORE_READ(sk, sk_protocol);
	k->netns = sock_netns(sk);
	k->has_sock = 1;
	if (k->family == AF_INET || k->family == AF_INET6)
		read_sock_tuple(sk, k->family, k->laddr, k->raddr, &k->lport, &k->rport);
	else
		k->family = 0;
}

static __always_inline __u64 skb_netns(const struct sk_buff *skb)
{
	struct net_device *dev = BPF_CORE_READ(skb, dev);

	return dev ? BPF_CORE_READ(dev, nd_net.net, ns.inum) : 0;
}

SEC("raw_tp/kfree_skb")
int BPF_PROG(tcphealth_drop, struct sk_buff *skb, void *location, int reason, struct sock *rx_sk)
{
	struct tcphealth_key k = {.kind = TCPHEALTH_DROP, .reason = reason};
	struct sock *sk = rx_sk ? rx_sk : BPF_CORE_READ(skb, sk);

	if (reason == SKB_CONSUMED)
		return 0; /* not a drop */
	if (sk) {
		__u8 state = BPF_CORE_READ(sk, __sk_common.skc_state);

		/* a listener's tuple says nothing of the peer: use the packet's */
		if (state == TCP_LISTEN && key_from_packet(skb, &k))
			k.netns = sock_netns(sk);
		else
			key_from_sock(sk, &k);
	} else if (key_from_packet(skb, &k)) {
		k.netns = skb_netns(skb);
	} else {
		k.family = 0;
		k.netns = skb_netns(skb);
		stat_add(&tcphealth_stats, TCPHEALTH_STAT_UNPARSED, 1);
	}
	count(&k);
	return 0;
}

SEC("raw_tp/tcp_send_reset")
int BPF_PROG(tcphealth_reset_nosock, struct sock *sk, struct sk_buff *skb, int reason)
{
	struct tcphealth_key k = {.kind = TCPHEALTH_RST_NOSK, .reason = reason};

	if (sk)
		return 0; /* sockets are tcpflow's: counted per connection there */
	/* skb is the segment that had no socket: its destination is local */
	if (!key_from_packet(skb, &k))
		k.family = 0;
	k.netns = skb_netns(skb);
	count(&k);
	return 0;
}

static __always_inline struct tcphealth_listen_value *listener(__u64 netns, __u16 port)
{
	struct tcphealth_listen_key lk = {.netns = netns, .port = port};
	struct tcphealth_listen_value zero = {}, *v;

	v = bpf_map_lookup_elem(&tcphealth_listeners, &lk);
	if (v)
		return v;
	if (bpf_map_update_elem(&tcphealth_listeners, &lk, &zero, BPF_NOEXIST) &&
	    !bpf_map_lookup_elem(&tcphealth_listeners, &lk)) {
		stat_add(&tcphealth_stats, TCPHEALTH_STAT_LISTEN_FULL, 1);
		return 0;
	}
	return bpf_map_lookup_elem(&tcphealth_listeners, &lk);
}

SEC("raw_tp/tcp_retransmit_synack")
int BPF_PROG(tcphealth_synack_retrans, struct sock *sk, struct request_sock *req)
{
	struct tcphealth_listen_value *v =
		listener(sock_netns(sk), BPF_CORE_READ(sk, __sk_common.skc_num));

	if (v)
		__sync_fetch_and_add(&v->synack_retrans, 1);
	return 0;
}

/* ---- listen queues, with no per-packet program ----------------------------
 * A listener counts what it drops in sk_drops (tcp_listendrop(): the kernel's
 * ListenDrops, i.e. ListenOverflows plus SYNs refused for other reasons).
 * Nothing traces those drops (an overflowing SYN is even freed as consumed),
 * so the listening sockets are kept here by address and their sk_drops read
 * at every refresh (tcphealth_poll, run by user space) and when they close. */

/* A listening socket we read the drops of. */
struct listen_sock {
	__u64 netns;
	__u64 drops_seen; /* sk_drops (32 bits, wraps) when last added */
	__u16 port;
	__u16 __pad0;
	__u32 __pad1;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64); /* struct sock * */
	__type(value, struct listen_sock);
} tcphealth_listen_socks SEC(".maps");

static __always_inline __u32 sock_drops(const struct sock *sk)
{
	__u32 drops = BPF_CORE_READ(sk, sk_drops.counter);

	/* 6.18+: some sockets keep per-NUMA-node counters on the side */
	if (bpf_core_field_exists(sk->sk_drop_counters)) {
		struct numa_drop_counters *c = BPF_CORE_READ(sk, sk_drop_counters);

		if (c)
			drops += BPF_CORE_READ(c, drops0.counter) + BPF_CORE_READ(c, drops1.counter);
	}
	return drops;
}

/* Add the drops since the last read to the listener's port. Two readers (a
 * refresh and the close) may race: only the one whose swap succeeds adds, so
 * nothing is counted twice. False when the other reader won: its read may be
 * older than ours, so the caller reads again when there is no next read. */
static __always_inline bool listen_sock_read(struct listen_sock *r, const struct sock *sk)
{
	__u64 seen = r->drops_seen, now = sock_drops(sk);
	struct tcphealth_listen_value *v;

	if (now == seen)
		return true;
	if (__sync_val_compare_and_swap(&r->drops_seen, seen, now) != seen)
		return false;
	v = listener(r->netns, r->port);
	if (v)
		__sync_fetch_and_add(&v->overflows, (__u32)(now - seen));
	return true;
}

/* Still the listener it was registered as? (A socket freed between a walk of
 * the listen hash and its registration would not be.) */
static __always_inline bool listen_sock_valid(const struct listen_sock *r, const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_LISTEN &&
	       BPF_CORE_READ(sk, __sk_common.skc_num) == r->port && sock_netns(sk) == r->netns;
}

static __always_inline void listen_sock_add(const struct sock *sk, __u64 flags)
{
	__u64 key = (__u64)sk;
	struct listen_sock r = {.netns = sock_netns(sk),
				.port = BPF_CORE_READ(sk, __sk_common.skc_num),
				.drops_seen = sock_drops(sk)};
	struct tcphealth_listen_value *v;

	if (bpf_map_update_elem(&tcphealth_listen_socks, &key, &r, flags) && flags == BPF_ANY)
		stat_add(&tcphealth_stats, TCPHEALTH_STAT_LISTEN_FULL, 1);
	v = listener(r.netns, r.port);
	if (v)
		v->max_backlog = BPF_CORE_READ(sk, sk_max_ack_backlog);
}

static __always_inline void listen_sock_close(const struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct listen_sock *r = bpf_map_lookup_elem(&tcphealth_listen_socks, &key);

	if (!r)
		return;
	/* the last read: a refresh racing it must not leave drops uncounted */
	for (int i = 0; i < 4 && !listen_sock_read(r, sk); i++)
		;
	bpf_map_delete_elem(&tcphealth_listen_socks, &key);
}

/* A handshake completed on a listener: the child, cloned from the listener a
 * moment ago in tcp_v4/v6_syn_recv_sock() (after its accept-queue check),
 * still carries the listener's queue length and limit. That is where bcc's
 * tcpsynbl samples the backlog. */
static __always_inline void listen_handshake(const struct sock *child)
{
	struct tcphealth_listen_value *v;
	__u32 backlog, slot;

	v = listener(sock_netns(child), BPF_CORE_READ(child, __sk_common.skc_num));
	if (!v)
		return;
	backlog = BPF_CORE_READ(child, sk_ack_backlog);
	v->max_backlog = BPF_CORE_READ(child, sk_max_ack_backlog);
	__sync_fetch_and_add(&v->queued, 1);
	slot = backlog ? log2_u32(backlog) + 1 : 0;
	if (slot >= TCPHEALTH_BACKLOG_SLOTS)
		slot = TCPHEALTH_BACKLOG_SLOTS - 1;
	__sync_fetch_and_add(&v->backlog_hist[slot], 1);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(tcphealth_state, struct sock *sk, int oldstate, int newstate)
{
	if (oldstate != TCP_LISTEN && newstate != TCP_LISTEN)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	if (newstate == TCP_LISTEN)
		listen_sock_add(sk, BPF_ANY);
	else if (newstate == TCP_SYN_RECV) /* LISTEN->SYN_RECV: a child being cloned */
		listen_handshake(sk);
	else if (newstate == TCP_CLOSE)
		listen_sock_close(sk);
	return 0;
}

static long poll_one(struct bpf_map *map, __u64 *key, struct listen_sock *r, void *ctx)
{
	const struct sock *sk = (const struct sock *)*key;

	if (listen_sock_valid(r, sk))
		listen_sock_read(r, sk);
	else
		bpf_map_delete_elem(map, key);
	return 0;
}

/* Run by user space (BPF_PROG_RUN) before it reads tcphealth_listeners. */
SEC("syscall")
int tcphealth_poll(void *ctx)
{
	bpf_for_each_map_elem(&tcphealth_listen_socks, poll_one, NULL, 0);
	return 0;
}

/* Listeners older than the agent: walked once in the listen hash, which every
 * network namespace shares (inet_pernet_hashinfo_alloc() shares lhash2). */
struct adopt_walk {
	struct nulls_walk walk;
	__u32 adopted;
};

static long adopt_step(__u64 i, struct adopt_walk *w)
{
	bool done = false;
	const struct sock *sk = nulls_walk_next(&w->walk, &done);

	if (done)
		return 1;
	if (sk && BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_LISTEN &&
	    BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP) {
		listen_sock_add(sk, BPF_NOEXIST);
		w->adopted++;
	}
	return 0;
}

/* Run by user space once the tracepoint is attached; returns how many
 * listeners it found (those registered since are skipped: BPF_NOEXIST). */
SEC("syscall")
int tcphealth_adopt(void *ctx)
{
	struct inet_hashinfo *h = tcp_hashinfo();
	struct adopt_walk w = {};

	if (!h)
		return -1;
	w.walk.buckets = (__u64)BPF_CORE_READ(h, lhash2);
	w.walk.n_buckets = BPF_CORE_READ(h, lhash2_mask) + 1;
	w.walk.stride = bpf_core_type_size(struct inet_listen_hashbucket);
	w.walk.head_off = bpf_core_field_offset(struct inet_listen_hashbucket, nulls_head);
	bpf_loop(1 << 22, adopt_step, &w, 0);
	return w.adopted;
}

/* Name the types user space mirrors once, so they are in the object's BTF
 * for the user-side checks. */
const struct tcphealth_key *unused_tcphealth_key __attribute__((unused));
const enum tcphealth_stat *unused_tcphealth_stat __attribute__((unused));

char LICENSE[] SEC("license") = "Dual BSD/GPL";
