// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* DNS from the packets of local sockets (cgroup_skb on the cgroup-v2 root):
 * a query a socket sends (UDP, or TCP with its 2-byte length prefix) to port
 * 53 or a configured port is kept in a pending map under (socket cookie,
 * server, server port, DNS id); the response the same socket receives from
 * that server completes it. Counts and a latency histogram per owner, server,
 * type and rcode are aggregated here; each completed query also goes to user
 * space (question + first bytes of the response) for names and the trace.
 *
 * One kernel timer walks the pending map every sweep_ns and times out what is
 * older than timeout_ns. The response and the sweeper both try to delete the
 * pending entry and only the one whose delete succeeds counts the query, so
 * each query is counted exactly once, even when its answer comes after the
 * timeout. (A bpf_timer per query would allocate per query; on 6.18 that
 * allocation fails with -ENOMEM under load, leaving queries that never time out.)
 *
 * Non-DNS packets return after reading the IP protocol and the ports from the
 * linear header; all DNS work is in global subprograms, verified once each. */
#include "meshlens.bpf.h"
#include "dns.h"
#include "skbchain.h"

#define CLOCK_MONOTONIC 1
#define ETH_P_IP_BE 0x0008   /* htons(0x0800) */
#define ETH_P_IPV6_BE 0xDD86 /* htons(0x86DD) */
#define DNS_HDR_LEN 12
#define DNS_NAME_MAX 255
#define DNS_TCP_MSGS 4 /* messages parsed per TCP segment */
#define CMP_CHUNK 32
#define EEXIST 17
#define EBUSY 16

const volatile __u64 timeout_ns = 5ULL * 1000000000ULL;
const volatile __u64 sweep_ns = 250ULL * 1000000ULL;
const volatile __u64 wakeup_bytes = 0;
const volatile __u32 n_ports = 1;
const volatile __u16 ports[DNS_PORTS_MAX] = {53};
const volatile __u64 bucket_ns[DNS_BUCKETS] = {};

/* outstanding queries; the kernel inserts and deletes, user space only reads */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dns_key);
	__type(value, struct dns_pending);
} dns_pending SEC(".maps");

/* counts and latency histograms; read in batches, never deleted */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dns_agg_key);
	__type(value, struct dns_agg_value);
} dns_agg SEC(".maps");

/* the timer that times queries out */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_sweeper);
} dns_sweeper SEC(".maps");

/* TCP sockets whose current message continues in later segments */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct dns_tcp_key);
	__type(value, __u32); /* sequence number where the next message starts */
} dns_tcp_next SEC(".maps");

/* completed queries: question and response bytes, for names and the trace */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} dns_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DNS_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} dns_stats SEC(".maps");

/* zero values to insert from (no large zeroed struct on the stack) */
static const struct dns_pending zero_pending;
static const struct dns_agg_value zero_agg;

/* What the fast path found out about a packet to or from a DNS port. */
struct dns_pkt {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 proto;
	__u8 egress;
	__u32 off; /* offset of the L4 payload from skb->data */
	__u32 len; /* L4 payload bytes */
	__u32 seq; /* TCP sequence number of the payload */
	__u32 __pad0;
};

static __always_inline void stat_inc(__u32 idx)
{
	stat_add(&dns_stats, idx, 1);
}

static __always_inline bool is_dns_port(__u16 port)
{
	if (port == 53)
		return true;
	for (__u32 i = 1; i < DNS_PORTS_MAX; i++) {
		if (i >= n_ports)
			break;
		if (ports[i] == port)
			return true;
	}
	return false;
}

static __always_inline void agg_add(const struct dns_agg_key *k, __u32 tgid, __u64 lat_ns,
				    bool timed_out)
{
	struct dns_agg_value *a = bpf_map_lookup_elem(&dns_agg, k);

	if (!a) {
		bpf_map_update_elem(&dns_agg, k, &zero_agg, BPF_NOEXIST);
		a = bpf_map_lookup_elem(&dns_agg, k);
		if (!a) {
			stat_inc(DNS_STAT_AGG_FULL);
			return;
		}
	}
	__sync_fetch_and_add(&a->count, 1);
	a->tgid = tgid;
	if (timed_out)
		return;
	__sync_fetch_and_add(&a->sum_ns, lat_ns);
	for (__u32 i = 0; i < DNS_BUCKETS; i++) {
		if (lat_ns <= bucket_ns[i]) {
			__sync_fetch_and_add(&a->buckets[i], 1);
			break;
		}
	}
}

static __always_inline void agg_key_of(struct dns_agg_key *ak, const struct dns_key *k,
				       const struct dns_pending *v, __u16 rcode)
{
	ak->netns = v->netns;
	ak->cgroup_id = v->cgroup_id;
	__builtin_memcpy(ak->comm, v->comm, DNS_COMM_LEN);
	__builtin_memcpy(ak->client, v->client, 16);
	__builtin_memcpy(ak->server, k->server, 16);
	ak->server_port = k->server_port;
	ak->family = k->family;
	ak->qtype = v->qtype;
	ak->rcode = rcode;
	ak->proto = v->proto;
}

#define EV_HDR offsetof(struct dns_event, data)

/* A record with room for `need` bytes of data: 128, 256 or 512 (`*cap`). */
static __always_inline struct dns_event *event_reserve(__u32 need, __u32 *cap)
{
	if (need <= 128) {
		*cap = 128;
		return bpf_ringbuf_reserve(&dns_events, EV_HDR + 128, 0);
	}
	if (need <= 256) {
		*cap = 256;
		return bpf_ringbuf_reserve(&dns_events, EV_HDR + 256, 0);
	}
	*cap = DNS_DATA_MAX;
	return bpf_ringbuf_reserve(&dns_events, EV_HDR + DNS_DATA_MAX, 0);
}

/* Fill a record's header from a pending entry (before the entry is deleted). */
static __always_inline void event_fill(struct dns_event *e, const struct dns_key *k,
				       const struct dns_pending *v, __u16 rcode, __u8 type,
				       __u32 cap)
{
	e->cookie = k->cookie;
	e->start_ns = v->start_ns;
	e->netns = v->netns;
	e->cgroup_id = v->cgroup_id;
	e->tgid = v->tgid;
	e->pid = v->pid;
	__builtin_memcpy(e->comm, v->comm, DNS_COMM_LEN);
	__builtin_memcpy(e->client, v->client, 16);
	__builtin_memcpy(e->server, k->server, 16);
	e->client_port = v->client_port;
	e->server_port = k->server_port;
	e->family = k->family;
	e->id = k->id;
	e->qtype = v->qtype;
	e->rcode = rcode;
	e->qlen = v->qlen;
	e->data_len = 0;
	e->msg_total = 0;
	e->data_cap = cap;
	e->proto = v->proto;
	e->type = type;
	e->flags = 0;
	e->__pad0 = 0;
}

/* The query's own question as the record's data (timeouts; answers without one). */
static __always_inline struct dns_event *question_event(const struct dns_key *k,
							 const struct dns_pending *v, __u16 rcode,
							 __u8 type)
{
	struct dns_event *e;
	__u32 cap;

	e = event_reserve(v->qlen, &cap);
	if (!e)
		return 0;
	event_fill(e, k, v, rcode, type, cap);
	e->flags = DNS_EVF_QUESTION;
	e->data_len = v->qlen;
	if (cap == 128)
		__builtin_memcpy(e->data, v->question, 128);
	else if (cap == 256)
		__builtin_memcpy(e->data, v->question, 256);
	else
		__builtin_memcpy(e->data, v->question, DNS_QUESTION_MAX);
	return e;
}

struct sweep_ctx {
	__u64 now;
};

/* One pending query: time it out if it is old enough. */
static long sweep_one(void *map, struct dns_key *k, struct dns_pending *v, struct sweep_ctx *c)
{
	struct dns_agg_key ak = {};
	struct dns_event *e;
	__u64 start = v->start_ns;
	__u32 tgid = v->tgid;

	/* being filled (0), newer than this sweep (another CPU), or not yet due */
	if (!start || start > c->now || c->now - start < timeout_ns)
		return 0;
	agg_key_of(&ak, k, v, DNS_RCODE_TIMEOUT);
	e = question_event(k, v, DNS_RCODE_TIMEOUT, DNS_EV_TIMEOUT);
	if (e)
		e->end_ns = c->now;
	/* a response that deleted the entry first has counted the query */
	if (bpf_map_delete_elem(&dns_pending, k)) {
		if (e)
			bpf_ringbuf_discard(e, 0);
		return 0;
	}
	stat_add(&dns_stats, DNS_STAT_LIVE, -1);
	stat_inc(DNS_STAT_TIMEOUTS);
	agg_add(&ak, tgid, 0, true);
	if (e)
		bpf_ringbuf_submit(e, ringbuf_flags(&dns_events, wakeup_bytes));
	else
		stat_inc(DNS_STAT_EVENTS_LOST);
	return 0;
}

static int sweep(void *map, __u32 *key, struct dns_sweeper *s)
{
	struct sweep_ctx c = {.now = bpf_ktime_get_ns()};

	stat_inc(DNS_STAT_SWEEPS);
	bpf_for_each_map_elem(&dns_pending, sweep_one, &c, 0);
	bpf_timer_start(&s->timer, sweep_ns, 0);
	return 0;
}

/* Start the sweeper with the first query (and retry with later ones until it
 * runs: arming can fail when the kernel cannot allocate the timer). */
static __always_inline void sweeper_arm(void)
{
	struct dns_sweeper *s;
	__u32 zero = 0;
	long err;

	s = bpf_map_lookup_elem(&dns_sweeper, &zero);
	if (!s || s->armed)
		return;
	err = bpf_timer_init(&s->timer, &dns_sweeper, CLOCK_MONOTONIC);
	if (err && err != -EBUSY) {
		stat_inc(DNS_STAT_SWEEPER_RETRY);
		return;
	}
	if (bpf_timer_set_callback(&s->timer, sweep) || bpf_timer_start(&s->timer, sweep_ns, 0)) {
		stat_inc(DNS_STAT_SWEEPER_RETRY);
		return;
	}
	s->armed = 1;
}

/* Walk the question's name in a pending entry: the question's length (name,
 * qtype, qclass), or minus a stat index for a malformed one. A global
 * function: verified once, whatever the caller's state. */
__noinline int dns_question_len(const __u8 (*q)[DNS_QUESTION_MAX], __u32 avail)
{
	__u32 pos = 0;

	if (!q)
		return -DNS_STAT_MAL_TRUNCATED;
	for (__u32 i = 0; i < 128; i++) {
		__u8 c;

		if (pos >= avail || pos >= DNS_QUESTION_MAX)
			return -DNS_STAT_MAL_TRUNCATED;
		c = (*q)[pos];
		if (c == 0)
			break;
		if ((c & 0xc0) == 0xc0)
			return -DNS_STAT_MAL_POINTER; /* nothing precedes it to point at */
		if (c & 0xc0)
			return -DNS_STAT_MAL_LABEL;
		pos += c + 1;
		if (pos >= DNS_NAME_MAX)
			return -DNS_STAT_MAL_NAME_LONG;
	}
	if (pos >= DNS_NAME_MAX)
		return -DNS_STAT_MAL_NAME_LONG;
	/* root byte, qtype, qclass */
	if (pos + 5 > avail)
		return -DNS_STAT_MAL_TRUNCATED;
	return pos + 5;
}

static __always_inline void owner_fill(struct __sk_buff *skb, struct dns_pending *v)
{
	__u64 cg = bpf_skb_cgroup_id(skb);
	struct task_struct *task;
	__u64 id;

	v->cgroup_id = cg;
	/* UDP is sent in the sender's context; a TCP segment may leave from
	 * softirq, where `current` is someone else: then only the cgroup. */
	if (bpf_get_current_cgroup_id() != cg)
		return;
	id = bpf_get_current_pid_tgid();
	task = (struct task_struct *)bpf_get_current_task();
	v->tgid = id >> 32;
	v->pid = (__u32)id;
	v->netns = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
	bpf_get_current_comm(v->comm, DNS_COMM_LEN);
}

/* A message a local socket sends: track it if it is a query. */
__noinline int dns_query(struct __sk_buff *skb, struct dns_pkt *p, __u32 off, __u32 avail,
			 __u32 total)
{
	struct dns_pending *v;
	struct dns_key k = {};
	__u8 hdr[DNS_HDR_LEN];
	__u32 qlen;
	long ret;

	if (!p)
		return 0;
	if (total < DNS_HDR_LEN) {
		stat_inc(DNS_STAT_MAL_SHORT);
		return 0;
	}
	if (avail < DNS_HDR_LEN || bpf_skb_load_bytes(skb, off, hdr, DNS_HDR_LEN)) {
		stat_inc(DNS_STAT_MAL_TCP);
		return 0;
	}
	if (hdr[2] & 0x80) /* QR: a response this host serves */
		return 0;
	if (hdr[2] & 0x78) {
		stat_inc(DNS_STAT_MAL_OPCODE);
		return 0;
	}
	if (hdr[4] != 0 || hdr[5] != 1) {
		stat_inc(DNS_STAT_MAL_QDCOUNT);
		return 0;
	}
	if (avail == DNS_HDR_LEN) {
		stat_inc(DNS_STAT_MAL_TRUNCATED);
		return 0;
	}
	k.cookie = bpf_get_socket_cookie(skb);
	__builtin_memcpy(k.server, p->daddr, 16);
	k.server_port = p->dport;
	k.id = ((__u16)hdr[0] << 8) | hdr[1];
	k.family = p->family;
	ret = bpf_map_update_elem(&dns_pending, &k, &zero_pending, BPF_NOEXIST);
	if (ret) {
		stat_inc(ret == -EEXIST ? DNS_STAT_DUPLICATE : DNS_STAT_PENDING_FULL);
		return 0;
	}
	v = bpf_map_lookup_elem(&dns_pending, &k);
	if (!v)
		return 0;
	avail -= DNS_HDR_LEN;
	if (avail > DNS_QUESTION_MAX)
		avail = DNS_QUESTION_MAX;
	/* the response cannot arrive before this program returns: the query
	 * has not left yet, so filling the entry in place races with nothing */
	ret = bpf_skb_load_bytes(skb, off + DNS_HDR_LEN, v->question, avail & 0x1ff)
		      ? -DNS_STAT_MAL_TRUNCATED
		      : dns_question_len(&v->question, avail);
	qlen = (__u32)ret & 0x1ff;
	if (ret < 0 || qlen < 5 || qlen > DNS_QUESTION_MAX) {
		bpf_map_delete_elem(&dns_pending, &k);
		stat_inc(ret < 0 ? -ret : DNS_STAT_MAL_TRUNCATED);
		return 0;
	}
	/* bytes past qlen (an EDNS record) are not part of the question */
	v->qlen = qlen;
	v->qtype = ((__u16)v->question[qlen - 4] << 8) | v->question[qlen - 3];
	__builtin_memcpy(v->client, p->saddr, 16);
	v->client_port = p->sport;
	v->proto = p->proto;
	owner_fill(skb, v);
	v->start_ns = bpf_ktime_get_ns(); /* last: the sweeper skips entries at 0 */
	stat_inc(DNS_STAT_QUERIES);
	stat_add(&dns_stats, DNS_STAT_LIVE, 1);
	sweeper_arm();
	return 0;
}

/* Does the response's question (at off) equal the query's? 1 or 0. */
__noinline int dns_same_question(struct __sk_buff *skb, __u32 off, __u32 avail,
				 const __u8 (*q)[DNS_QUESTION_MAX], __u32 qlen)
{
	__u8 buf[CMP_CHUNK];

	if (!q)
		return 0;
	if (qlen < 5 || qlen > DNS_QUESTION_MAX || qlen > avail)
		return 0;
	for (__u32 c = 0; c < DNS_QUESTION_MAX; c += CMP_CHUNK) {
		__u32 n;

		if (c >= qlen)
			break;
		n = qlen - c;
		if (n > CMP_CHUNK)
			n = CMP_CHUNK;
		if (n < 1 || bpf_skb_load_bytes(skb, off + c, buf, n))
			return 0;
		for (__u32 i = 0; i < CMP_CHUNK; i++) {
			if (i >= n)
				break;
			if (c + i >= DNS_QUESTION_MAX || buf[i] != (*q)[c + i])
				return 0;
		}
	}
	return 1;
}

/* A message a local socket receives: complete its query if it answers one. */
__noinline int dns_response(struct __sk_buff *skb, struct dns_pkt *p, __u32 off, __u32 avail,
			    __u32 total)
{
	struct dns_agg_key ak = {};
	struct dns_pending *v;
	struct dns_event *e;
	struct dns_key k = {};
	__u8 hdr[DNS_HDR_LEN];
	__u16 rcode, qdcount;
	__u64 now, lat;
	__u32 tgid, n, cap;

	if (!p)
		return 0;
	if (total < DNS_HDR_LEN) {
		stat_inc(DNS_STAT_MAL_SHORT);
		return 0;
	}
	if (avail < DNS_HDR_LEN || bpf_skb_load_bytes(skb, off, hdr, DNS_HDR_LEN)) {
		stat_inc(DNS_STAT_MAL_TCP);
		return 0;
	}
	if (!(hdr[2] & 0x80)) /* a query this host receives */
		return 0;
	k.cookie = bpf_get_socket_cookie(skb);
	__builtin_memcpy(k.server, p->saddr, 16);
	k.server_port = p->sport;
	k.id = ((__u16)hdr[0] << 8) | hdr[1];
	k.family = p->family;
	v = bpf_map_lookup_elem(&dns_pending, &k);
	if (!v || !v->start_ns) { /* none, or a query being created with a reused id */
		stat_inc(DNS_STAT_UNMATCHED);
		return 0;
	}
	rcode = hdr[3] & 0x0f;
	qdcount = ((__u16)hdr[4] << 8) | hdr[5];
	/* as a resolver does: an answer to another question is not the answer;
	 * error responses may leave the question out */
	if (qdcount == 1 ? !dns_same_question(skb, off + DNS_HDR_LEN, avail - DNS_HDR_LEN,
						 &v->question, v->qlen)
			 : (qdcount != 0 || rcode == 0)) {
		stat_inc(DNS_STAT_MISMATCH);
		return 0;
	}
	agg_key_of(&ak, &k, v, rcode);
	tgid = v->tgid;
	now = bpf_ktime_get_ns();
	lat = now - v->start_ns;
	if (qdcount == 1) {
		/* the response: its question is the query's, its answers follow */
		n = avail < DNS_DATA_MAX ? avail : DNS_DATA_MAX;
		e = event_reserve(n, &cap);
		if (e) {
			event_fill(e, &k, v, rcode, DNS_EV_RESPONSE, cap);
			e->msg_total = total;
			if (n > cap)
				n = cap;
			if (n >= 1 && n <= cap && !bpf_skb_load_bytes(skb, off, e->data, n))
				e->data_len = n;
		}
	} else {
		e = question_event(&k, v, rcode, DNS_EV_RESPONSE);
		if (e)
			e->msg_total = total;
	}
	if (e)
		e->end_ns = now;
	/* the sweeper may have timed it out meanwhile: whoever deletes counts */
	if (bpf_map_delete_elem(&dns_pending, &k)) {
		if (e)
			bpf_ringbuf_discard(e, 0);
		stat_inc(DNS_STAT_UNMATCHED);
		return 0;
	}
	stat_add(&dns_stats, DNS_STAT_LIVE, -1);
	stat_inc(DNS_STAT_RESPONSES);
	agg_add(&ak, tgid, lat, false);
	if (e)
		bpf_ringbuf_submit(e, ringbuf_flags(&dns_events, wakeup_bytes));
	else
		stat_inc(DNS_STAT_EVENTS_LOST);
	return 0;
}

static __always_inline void dns_message(struct __sk_buff *skb, struct dns_pkt *p, __u32 off,
					__u32 avail, __u32 total)
{
	if (p->egress)
		dns_query(skb, p, off, avail, total);
	else
		dns_response(skb, p, off, avail, total);
}

/* DNS over TCP: messages with a 2-byte length prefix, any number per segment,
 * a message possibly continuing over several. The first DNS_TCP_MSGS
 * messages starting in a segment are parsed; a message running past the
 * segment leaves its end's sequence number, so its continuation is skipped. */
__noinline int dns_tcp(struct __sk_buff *skb, struct dns_pkt *p)
{
	struct dns_tcp_key tk = {};
	__u32 o = 0, plen, *next;
	__u16 prefix;

	if (!p)
		return 0;
	plen = p->len;
	tk.cookie = bpf_get_socket_cookie(skb);
	tk.egress = p->egress;
	next = bpf_map_lookup_elem(&dns_tcp_next, &tk);
	if (next) {
		__s32 d = (__s32)(*next - p->seq);

		if (d >= (__s32)plen) {
			stat_inc(DNS_STAT_TCP_CONTINUED); /* or a retransmission of one */
			return 0;
		}
		if (d > 0)
			o = d;
		bpf_map_delete_elem(&dns_tcp_next, &tk);
	}
	for (__u32 i = 0; i < DNS_TCP_MSGS; i++) {
		__u32 total, avail;

		if (o >= plen)
			return 0;
		if (plen - o < 2 || bpf_skb_load_bytes(skb, p->off + o, &prefix, 2)) {
			stat_inc(DNS_STAT_MAL_TCP);
			return 0;
		}
		total = bpf_ntohs(prefix);
		avail = plen - o - 2;
		if (avail > total)
			avail = total;
		dns_message(skb, p, p->off + o + 2, avail, total);
		o += 2 + total;
		if (o > plen) {
			__u32 at = p->seq + o;

			bpf_map_update_elem(&dns_tcp_next, &tk, &at, BPF_ANY);
			return 0;
		}
	}
	if (o < plen)
		stat_inc(DNS_STAT_TCP_EXTRA);
	return 0;
}

/* Slow path: addresses, L4 header, then the message(s). */
__noinline int dns_packet(struct __sk_buff *skb, __u32 l4off, __u32 proto_egress)
{
	struct dns_pkt p = {};
	__u32 len = skb->len;

	p.proto = proto_egress & 0xff;
	p.egress = proto_egress >> 8;
	if (skb->protocol == ETH_P_IP_BE) {
		p.family = AF_INET;
		if (bpf_skb_load_bytes(skb, offsetof(struct iphdr, saddr), p.saddr, 4) ||
		    bpf_skb_load_bytes(skb, offsetof(struct iphdr, daddr), p.daddr, 4))
			return 0;
	} else {
		p.family = AF_INET6;
		if (bpf_skb_load_bytes(skb, offsetof(struct ipv6hdr, saddr), p.saddr, 16) ||
		    bpf_skb_load_bytes(skb, offsetof(struct ipv6hdr, daddr), p.daddr, 16))
			return 0;
	}
	if (p.proto == IPPROTO_UDP) {
		struct udphdr uh;
		__u32 ulen;

		if (bpf_skb_load_bytes(skb, l4off, &uh, sizeof(uh)))
			return 0;
		p.sport = bpf_ntohs(uh.source);
		p.dport = bpf_ntohs(uh.dest);
		p.off = l4off + sizeof(uh);
		ulen = bpf_ntohs(uh.len);
		if (ulen < sizeof(uh) || p.off > len)
			return 0;
		p.len = ulen - sizeof(uh);
		if (p.len > len - p.off)
			p.len = len - p.off;
		dns_message(skb, &p, p.off, p.len, p.len);
		return 0;
	}
	{
		struct tcphdr th;

		if (bpf_skb_load_bytes(skb, l4off, &th, sizeof(th)))
			return 0;
		p.sport = bpf_ntohs(th.source);
		p.dport = bpf_ntohs(th.dest);
		p.seq = bpf_ntohl(th.seq);
		p.off = l4off + th.doff * 4;
		if (p.off >= len)
			return 0; /* no payload: handshake, ACK, FIN */
		p.len = len - p.off;
		dns_tcp(skb, &p);
	}
	return 0;
}

/* The per-packet cost for everything else: protocol and ports from the
 * linear header, compared with the DNS ports. */
static __always_inline int handle(struct __sk_buff *skb, bool egress)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 l4off;
	__u16 *pp;
	__u8 proto;

	if (skb->protocol == ETH_P_IP_BE) {
		struct iphdr *ip = data;

		if ((void *)(ip + 1) > end)
			return 1;
		proto = ip->protocol;
		if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
			return 1;
		/* later fragments carry no L4 header (the egress hook sees whole datagrams) */
		if (ip->frag_off & bpf_htons(0x1fff))
			return 1;
		l4off = ip->ihl * 4;
	} else if (skb->protocol == ETH_P_IPV6_BE) {
		struct ipv6hdr *ip6 = data;

		if ((void *)(ip6 + 1) > end)
			return 1;
		proto = ip6->nexthdr; /* extension headers are not walked */
		if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
			return 1;
		l4off = sizeof(*ip6);
	} else {
		return 1;
	}
	pp = data + l4off;
	if ((void *)(pp + 2) > end)
		return 1;
	if (!is_dns_port(bpf_ntohs(egress ? pp[1] : pp[0])))
		return 1;
	dns_packet(skb, l4off, proto | ((__u32)egress << 8));
	return 1;
}

SEC("cgroup_skb/egress")
int dns_egress(struct __sk_buff *skb)
{
	handle(skb, true);
	SKBCHAIN_NEXT_EGRESS(skb);
	return 1;
}

SEC("cgroup_skb/ingress")
int dns_ingress(struct __sk_buff *skb)
{
	handle(skb, false);
	SKBCHAIN_NEXT_INGRESS(skb);
	return 1;
}

/* Name record types and enums once so they are in the object's BTF. */
const struct dns_event *unused_dns_event __attribute__((unused));
const enum dns_stat *unused_dns_stat __attribute__((unused));
const enum dns_event_type *unused_dns_event_type __attribute__((unused));
const enum dns_event_flags *unused_dns_event_flags __attribute__((unused));

char LICENSE[] SEC("license") = "Dual BSD/GPL";
