// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* Network health a service mesh cannot see, aggregated in the kernel:
 *  - packet drops with the kernel's reason (skb:kfree_skb; consumed packets
 *    are traced by consume_skb instead, so normal frees never show up here),
 *  - resets sent for no socket (a connect to a closed port), with the reason,
 *  - per listener: accept-queue overflows, SYN-ACK retransmits and the
 *    accept-queue length at SYN time (bcc's tcpsynbl).
 * Counters only grow and are never deleted by user space. */
#include "meshlens.bpf.h"
#include "tcphealth.h"
#include "skbchain.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

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

/* Runs in tcp_filter() for every segment a listening socket receives, before
 * tcp_conn_request() (SYN) or the request-socket / cookie check (the ACK that
 * completes a handshake). Either one is dropped as a ListenOverflow when the
 * accept queue is full at that point; this sees the same queue length. */
static __always_inline int listen_check(struct __sk_buff *skb)
{
	struct bpf_sock *bsk = skb->sk;
	struct tcphealth_listen_value *v;
	struct tcp_sock *tp;
	__u32 backlog, max, slot, off;
	__u8 flags;

	if (!bsk || bsk->state != BPF_TCP_LISTEN)
		return 1;
	bsk = bpf_sk_fullsock(bsk);
	if (!bsk || bsk->protocol != IPPROTO_TCP)
		return 1;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 vihl;

		if (bpf_skb_load_bytes(skb, 0, &vihl, 1))
			return 1;
		off = (vihl & 0xf) * 4;
	} else {
		off = sizeof(struct ipv6hdr);
	}
	if (bpf_skb_load_bytes(skb, off + 13, &flags, 1) || (flags & TCP_FLAG_RST))
		return 1;
	tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return 1;
	v = listener(tp->inet_conn.icsk_inet.sk.__sk_common.skc_net.net->ns.inum,
		     tp->inet_conn.icsk_inet.sk.__sk_common.skc_num);
	if (!v)
		return 1;
	backlog = tp->inet_conn.icsk_inet.sk.sk_ack_backlog;
	max = tp->inet_conn.icsk_inet.sk.sk_max_ack_backlog;
	v->max_backlog = max;
	if (backlog > max) /* sk_acceptq_is_full() */
		__sync_fetch_and_add(&v->overflows, 1);
	if ((flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN) {
		__sync_fetch_and_add(&v->syns, 1);
		slot = backlog ? log2_u32(backlog) + 1 : 0;
		if (slot >= TCPHEALTH_BACKLOG_SLOTS)
			slot = TCPHEALTH_BACKLOG_SLOTS - 1;
		__sync_fetch_and_add(&v->backlog_hist[slot], 1);
	}
	return 1;
}

SEC("cgroup_skb/ingress")
int tcphealth_listen(struct __sk_buff *skb)
{
	listen_check(skb);
	SKBCHAIN_NEXT_INGRESS(skb);
	return 1;
}

const struct tcphealth_key *unused_tcphealth_key __attribute__((unused));

char LICENSE[] SEC("license") = "Dual BSD/GPL";
