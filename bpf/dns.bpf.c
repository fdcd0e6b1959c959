// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* DNS from the socket calls of local clients: a message a socket sends (UDP,
 * or TCP with its 2-byte length prefix) to port 53 or a configured port is
 * read from the caller's own buffers at the end of the call (sock_send_length,
 * behind the socket chain, docs/sockchain.md) and, if it is a query, kept in a
 * pending map under (socket, DNS id); a message the same socket receives
 * (sock_recv_length) with that id and the same question completes it. Counts
 * and a latency histogram per owner, server, type and rcode are aggregated
 * here; each completed query also goes to user space (question + first bytes
 * of the response) for names and the trace.
 *
 * One kernel timer walks the pending map every sweep_ns and times out what is
 * older than timeout_ns. The response and the sweeper both try to delete the
 * pending entry and only the one whose delete succeeds counts the query, so
 * each query is counted exactly once, even when its answer comes after the
 * timeout. (A bpf_timer per query would allocate per query; on 6.18 that
 * allocation fails with -ENOMEM under load, leaving queries that never time out.)
 *
 * No packet runs a program: a call on a socket that is not DNS returns after
 * reading its protocol and peer port (an unconnected UDP socket: the
 * destination its caller gave, or whether it has sent a query). All DNS work
 * is in global subprograms, verified once each. */
#include "meshlens.bpf.h"
#include "dns.h"
#include "sockcall.h"
#include "sockchain.h"

#define CLOCK_MONOTONIC 1
#define DNS_HDR_LEN 12
#define DNS_NAME_MAX 255
#define DNS_TCP_MSGS 4 /* messages parsed per TCP call */
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

/* TCP sockets whose current message continues in later calls */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct dns_tcp_key);
	__type(value, struct dns_tcp_next);
} dns_tcp_next SEC(".maps");

/* Unconnected UDP sockets that sent a query: only their received calls are
 * read (the answer's source is not known at the tracepoint). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);   /* socket address */
	__type(value, __u64); /* time of its last query */
} dns_socks SEC(".maps");

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

/* A call's buffers and the first bytes of one message, per CPU. */
struct dns_scratch {
	__u32 busy; /* a program on this CPU is using it (nested: skip) */
	__u32 __pad0;
	struct call_segs segs;
	/* a message's first DNS_DATA_MAX bytes; twice that so that a copy at a
	 * masked offset stays inside for the verifier */
	__u8 buf[2 * DNS_DATA_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_scratch);
} dns_scratch SEC(".maps");

/* A call to or from a DNS server: the client's socket, the server end. */
struct dns_peer {
	__u64 sock; /* the client socket's kernel address */
	__u8 addr[16];
	__u16 port;
	__u16 family;
	__u8 proto;   /* IPPROTO_UDP or IPPROTO_TCP */
	__u8 sending; /* a send (query) or a receive (answer) */
	__u8 __pad0[2];
};

static const struct dns_pending zero_pending;
static const struct dns_agg_value zero_agg;

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
	__builtin_memcpy(ak->server, v->server, 16);
	ak->server_port = v->server_port;
	ak->family = v->family;
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
	e->sock = k->sock;
	e->start_ns = v->start_ns;
	e->netns = v->netns;
	e->cgroup_id = v->cgroup_id;
	e->tgid = v->tgid;
	e->pid = v->pid;
	__builtin_memcpy(e->comm, v->comm, DNS_COMM_LEN);
	__builtin_memcpy(e->client, v->client, 16);
	__builtin_memcpy(e->server, v->server, 16);
	e->client_port = v->client_port;
	e->server_port = v->server_port;
	e->family = v->family;
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

__u32 sweeps_skipped = 0;

static int sweep(void *map, __u32 *key, struct dns_sweeper *s)
{
	struct sweep_ctx c = {.now = bpf_ktime_get_ns()};

	if (sweep_due(&dns_stats, DNS_STAT_LIVE, &sweeps_skipped)) {
		stat_inc(DNS_STAT_SWEEPS);
		bpf_for_each_map_elem(&dns_pending, sweep_one, &c, 0);
	}
	bpf_timer_start(&s->timer, sweep_ns, 0);
	return 0;
}

/* Run once by the loader (BPF_PROG_RUN) right after load: the socket
 * tracepoints' programs may not use a bpf_timer, so the timer is started here
 * and re-arms itself. */
SEC("syscall")
int dns_start_sweeper(void *ctx)
{
	struct dns_sweeper *s;
	__u32 zero = 0;

	s = bpf_map_lookup_elem(&dns_sweeper, &zero);
	if (!s)
		return 1;
	if (s->armed)
		return 0;
	if (bpf_timer_init(&s->timer, &dns_sweeper, CLOCK_MONOTONIC))
		return 2;
	if (bpf_timer_set_callback(&s->timer, sweep))
		return 3;
	if (bpf_timer_start(&s->timer, sweep_ns, 0))
		return 4;
	s->armed = 1;
	return 0;
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

/* ---------------------------------------------------------------- the call's bytes */

static __always_inline struct dns_scratch *scratch_take(void)
{
	__u32 zero = 0;
	struct dns_scratch *s = bpf_map_lookup_elem(&dns_scratch, &zero);

	if (!s)
		return 0;
	if (s->busy) { /* a preempted call on this CPU holds it: counted, not silent */
		stat_inc(DNS_STAT_UNREADABLE);
		return 0;
	}
	s->busy = 1;
	return s;
}

/* Copy bytes [off, off + n) of the call (n <= DNS_DATA_MAX) to buf[0...]. */
static __always_inline int gather(struct dns_scratch *s, __u64 off, __u32 n)
{
	return call_segs_read(&s->segs, s->buf, DNS_DATA_MAX - 1, DNS_DATA_MAX, 0, off, n);
}

static __always_inline void peer_of_sock(const struct sock *sk, struct dns_peer *p)
{
	p->family = sk->__sk_common.skc_family;
	p->port = bpf_ntohs(sk->__sk_common.skc_dport);
	if (p->family == AF_INET)
		__builtin_memcpy(p->addr, &sk->__sk_common.skc_daddr, 4);
	else
		__builtin_memcpy(p->addr, &sk->__sk_common.skc_v6_daddr, 16);
}

/* The destination the caller of an unconnected send gave (on_call checked its
 * port); false if it is not an IPv4 or IPv6 address. */
static __always_inline bool peer_of_dest(struct dns_peer *p)
{
	struct pt_regs *r = syscall_regs();
	struct sockaddr_in6 a = {};
	__u64 name = 0;

	if (!r)
		return false;
	call_dest(r, &name);
	if (!name || bpf_probe_read_user(&a, sizeof(a), (const void *)name))
		return false;
	p->family = a.sin6_family;
	p->port = bpf_ntohs(a.sin6_port);
	if (p->family == AF_INET)
		__builtin_memcpy(p->addr, &((struct sockaddr_in *)&a)->sin_addr, 4);
	else if (p->family == AF_INET6)
		__builtin_memcpy(p->addr, &a.sin6_addr, 16);
	else
		return false;
	return true;
}

/* ---------------------------------------------------------------- messages */

/* A message a local socket sends: track it if it is a query. buf holds its
 * first `avail` bytes; `total` is its length. */
__noinline int dns_query(struct dns_scratch *s, __u64 skp, __u32 avail, __u32 total,
			 struct dns_peer *peer)
{
	const struct sock *sk = SOCK_RO((void *)skp);
	struct dns_pending *v;
	struct dns_key k = {};
	__u32 qlen, n;
	__u64 id;
	long ret;

	if (!s || !peer || !sk)
		return 0;
	if (total < DNS_HDR_LEN) {
		stat_inc(DNS_STAT_MAL_SHORT);
		return 0;
	}
	if (avail < DNS_HDR_LEN) {
		stat_inc(DNS_STAT_MAL_TCP);
		return 0;
	}
	if (s->buf[2] & 0x80) /* QR: a response this host serves */
		return 0;
	if (s->buf[2] & 0x78) {
		stat_inc(DNS_STAT_MAL_OPCODE);
		return 0;
	}
	if (s->buf[4] != 0 || s->buf[5] != 1) {
		stat_inc(DNS_STAT_MAL_QDCOUNT);
		return 0;
	}
	if (avail == DNS_HDR_LEN) {
		stat_inc(DNS_STAT_MAL_TRUNCATED);
		return 0;
	}
	k.sock = skp;
	k.id = ((__u16)s->buf[0] << 8) | s->buf[1];
	ret = bpf_map_update_elem(&dns_pending, &k, &zero_pending, BPF_NOEXIST);
	if (ret) {
		stat_inc(ret == -EEXIST ? DNS_STAT_DUPLICATE : DNS_STAT_PENDING_FULL);
		return 0;
	}
	v = bpf_map_lookup_elem(&dns_pending, &k);
	if (!v)
		return 0;
	n = avail - DNS_HDR_LEN;
	if (n > DNS_QUESTION_MAX)
		n = DNS_QUESTION_MAX;
	/* the answer cannot complete the entry before start_ns is set (last) */
	ret = bpf_probe_read_kernel(v->question, n, s->buf + DNS_HDR_LEN)
		      ? -DNS_STAT_MAL_TRUNCATED
		      : dns_question_len(&v->question, n);
	qlen = (__u32)ret & 0x1ff;
	if (ret < 0 || qlen < 5 || qlen > DNS_QUESTION_MAX) {
		bpf_map_delete_elem(&dns_pending, &k);
		stat_inc(ret < 0 ? -ret : DNS_STAT_MAL_TRUNCATED);
		return 0;
	}
	/* bytes past qlen (an EDNS record) are not part of the question */
	v->qlen = qlen;
	v->qtype = ((__u16)v->question[qlen - 4] << 8) | v->question[qlen - 3];
	v->family = peer->family;
	__builtin_memcpy(v->server, peer->addr, 16);
	v->server_port = peer->port;
	if (v->family == AF_INET)
		__builtin_memcpy(v->client, &sk->__sk_common.skc_rcv_saddr, 4);
	else
		__builtin_memcpy(v->client, &sk->__sk_common.skc_v6_rcv_saddr, 16);
	if (v->family == AF_INET6 && v4_mapped(v->server)) {
		/* an IPv6 socket talking IPv4: the addresses as an IPv4 socket's */
		v->family = AF_INET;
		__builtin_memcpy(v->server, v->server + 12, 4);
		__builtin_memset(v->server + 4, 0, 12);
		__builtin_memcpy(v->client, v->client + 12, 4);
		__builtin_memset(v->client + 4, 0, 12);
	}
	v->client_port = sk->__sk_common.skc_num;
	v->proto = peer->proto;
	id = bpf_get_current_pid_tgid();
	v->tgid = id >> 32;
	v->pid = (__u32)id;
	v->cgroup_id = bpf_get_current_cgroup_id();
	v->netns = sock_netns(sk);
	bpf_get_current_comm(v->comm, DNS_COMM_LEN);
	v->start_ns = bpf_ktime_get_ns(); /* last: the sweeper skips entries at 0 */
	stat_inc(DNS_STAT_QUERIES);
	stat_add(&dns_stats, DNS_STAT_LIVE, 1);
	return 0;
}

/* Does the response's question (buf[12...]) equal the query's? 1 or 0. Eight
 * bytes at a time; the last word is masked to the question's length. */
__noinline int dns_same_question(struct dns_scratch *s, const struct dns_pending *v, __u32 avail)
{
	__u32 qlen;

	if (!s || !v)
		return 0;
	qlen = v->qlen;
	if (qlen < 5 || qlen > DNS_QUESTION_MAX || DNS_HDR_LEN + qlen > avail)
		return 0;
	for (__u32 i = 0; i < DNS_QUESTION_MAX; i += 8) {
		__u64 a = 0, b = 0, m = ~0ULL;
		__u32 left;

		if (i >= qlen)
			break;
		left = qlen - i;
		if (bpf_probe_read_kernel(&a, 8, s->buf + DNS_HDR_LEN + i) ||
		    bpf_probe_read_kernel(&b, 8, v->question + (i & 0x1ff)))
			return 0;
		if (left < 8)
			m = (1ULL << (left * 8)) - 1; /* little-endian: the low bytes come first */
		if ((a ^ b) & m)
			return 0;
	}
	return 1;
}

/* A message a local socket receives: complete its query if it answers one. */
__noinline int dns_response(struct dns_scratch *s, __u64 skp, __u32 avail, __u32 total)
{
	struct dns_agg_key ak = {};
	struct dns_pending *v;
	struct dns_event *e;
	struct dns_key k = {};
	__u16 rcode, qdcount;
	__u64 now, lat;
	__u32 tgid, n, cap;

	if (!s)
		return 0;
	if (total < DNS_HDR_LEN) {
		stat_inc(DNS_STAT_MAL_SHORT);
		return 0;
	}
	if (avail < DNS_HDR_LEN) {
		stat_inc(DNS_STAT_MAL_TCP);
		return 0;
	}
	if (!(s->buf[2] & 0x80)) /* a query this host receives */
		return 0;
	k.sock = skp;
	k.id = ((__u16)s->buf[0] << 8) | s->buf[1];
	v = bpf_map_lookup_elem(&dns_pending, &k);
	if (!v || !v->start_ns) { /* none, or a query being created with a reused id */
		stat_inc(DNS_STAT_UNMATCHED);
		return 0;
	}
	rcode = s->buf[3] & 0x0f;
	qdcount = ((__u16)s->buf[4] << 8) | s->buf[5];
	/* as a resolver does: an answer to another question is not the answer;
	 * error responses may leave the question out */
	if (qdcount == 1 ? !dns_same_question(s, v, avail) : (qdcount != 0 || rcode == 0)) {
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
			if (n >= 1 && n <= DNS_DATA_MAX &&
			    !bpf_probe_read_kernel(e->data, n, s->buf))
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

/* One message of the call at `off`: its first bytes into buf, then parsed. */
__noinline int dns_message(struct dns_scratch *s, struct dns_peer *peer, __u64 off, __u32 avail,
			   __u32 total)
{
	__u32 n = avail < DNS_DATA_MAX ? avail : DNS_DATA_MAX;

	if (!s || !peer)
		return 0;
	if (n && gather(s, off, n)) {
		stat_inc(DNS_STAT_UNREADABLE);
		return 0;
	}
	if (peer->sending)
		dns_query(s, peer->sock, n, total, peer);
	else
		dns_response(s, peer->sock, n, total);
	return 0;
}

/* ---------------------------------------------------------------- calls */

/* A UDP call: one datagram. `connected`: the socket's peer is a DNS port. */
__noinline int dns_udp_call(__u64 skp, __u32 ret, __u32 sending, __u32 connected)
{
	const struct sock *sk = SOCK_RO((void *)skp);
	struct dns_peer peer = {};
	struct dns_scratch *s;
	__u64 now;

	if (!sk)
		return 0;
	s = scratch_take();
	if (!s)
		return 0;
	if (call_segs_fill(&s->segs, ret)) {
		stat_inc(DNS_STAT_UNREADABLE);
		goto out;
	}
	if (connected)
		peer_of_sock(sk, &peer);
	else if (sending && !peer_of_dest(&peer))
		goto out;
	if (sending && !fd_is_sock(sk))
		goto out;
	peer.proto = IPPROTO_UDP;
	peer.sock = skp;
	peer.sending = sending;
	dns_message(s, &peer, 0, ret, ret);
	if (sending && !connected) {
		now = bpf_ktime_get_ns();
		bpf_map_update_elem(&dns_socks, &skp, &now, BPF_ANY);
	}
out:
	s->busy = 0;
	return 0;
}

/* A TCP call on a connection to a DNS port: messages with a 2-byte length
 * prefix, any number per call, a message possibly continuing over several
 * (glibc reads the prefix and the message in two calls). The first
 * DNS_TCP_MSGS messages starting in a call are parsed; a message running past
 * the call leaves where the next one starts, so its continuation is skipped. */
__noinline int dns_tcp_call(__u64 skp, __u32 ret, __u32 sending)
{
	const struct sock *sk = SOCK_RO((void *)skp);
	const struct tcp_sock *tp = TCP_RO((void *)skp);
	struct dns_tcp_key tk = {};
	struct dns_tcp_next nx, *st;
	struct dns_peer peer = {};
	struct dns_scratch *s;
	__u32 start, o = 0, body = 0;

	if (!sk || !tp)
		return 0;
	start = (sending ? tp->write_seq : read_end(sk, tp)) - ret;
	tk.sock = skp;
	tk.egress = sending;
	st = bpf_map_lookup_elem(&dns_tcp_next, &tk);
	if (st) {
		__s32 d = (__s32)(st->seq - start);

		if (d >= (__s32)ret) {
			stat_inc(DNS_STAT_TCP_CONTINUED);
			return 0;
		}
		if (d >= 0) {
			o = d;
			body = st->body;
		}
		bpf_map_delete_elem(&dns_tcp_next, &tk);
	}
	s = scratch_take();
	if (!s)
		return 0;
	if (call_segs_fill(&s->segs, ret)) {
		stat_inc(DNS_STAT_UNREADABLE);
		goto out;
	}
	peer_of_sock(sk, &peer);
	peer.proto = IPPROTO_TCP;
	peer.sock = skp;
	peer.sending = sending;
	if (body) { /* the prefix ended the last call: the message starts here */
		dns_message(s, &peer, o, ret - o < body ? ret - o : body, body);
		o += body;
	}
	for (__u32 i = 0; i < DNS_TCP_MSGS; i++) {
		__u32 total, avail;

		if (o >= ret)
			break;
		if (ret - o < 2 || gather(s, o, 2)) {
			stat_inc(DNS_STAT_MAL_TCP);
			goto out;
		}
		total = ((__u32)s->buf[0] << 8) | s->buf[1];
		if (ret - o == 2) { /* the message follows in the next call */
			nx.seq = start + ret;
			nx.body = total;
			bpf_map_update_elem(&dns_tcp_next, &tk, &nx, BPF_ANY);
			goto out;
		}
		avail = ret - o - 2;
		if (avail > total)
			avail = total;
		dns_message(s, &peer, o + 2, avail, total);
		o += 2 + total;
	}
	if (o > ret) {
		nx.seq = start + o;
		nx.body = 0;
		bpf_map_update_elem(&dns_tcp_next, &tk, &nx, BPF_ANY);
	} else if (o < ret) {
		stat_inc(DNS_STAT_TCP_EXTRA);
	}
out:
	s->busy = 0;
	return 0;
}

/* An unconnected send: is the destination its caller gave a DNS port? Reads
 * the address's first 4 bytes (family, port) only. */
static __always_inline bool dest_is_dns(void)
{
	struct pt_regs *r = syscall_regs();
	__u16 fp[2] = {};
	__u64 name = 0;

	if (!r)
		return false;
	call_dest(r, &name);
	if (!name || bpf_probe_read_user(fp, sizeof(fp), (const void *)name))
		return false;
	return (fp[0] == AF_INET || fp[0] == AF_INET6) && is_dns_port(bpf_ntohs(fp[1]));
}

/* The per-call cost for everything else: the protocol and the peer port (for
 * an unconnected UDP socket, the destination its caller gave, or whether it
 * sent a query). */
static __always_inline void on_call(__u64 skp, int ret, int flags, bool sending, bool *tcp)
{
	const struct sock *sk = SOCK_RO((void *)skp);
	__u16 dport;

	if (!sk)
		return;
	*tcp = sk->sk_protocol == IPPROTO_TCP;
	if (ret <= 0 || (!sending && (flags & (MSG_PEEK_FLAG | MSG_OOB_FLAG | MSG_TRUNC_FLAG))))
		return; /* bytes read again later, or never copied */
	dport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (*tcp) {
		if (is_dns_port(dport))
			dns_tcp_call(skp, ret, sending);
	} else if (sk->sk_protocol == IPPROTO_UDP) {
		if (dport) {
			if (is_dns_port(dport))
				dns_udp_call(skp, ret, sending, 1);
		} else if (sending ? dest_is_dns() : !!bpf_map_lookup_elem(&dns_socks, &skp)) {
			dns_udp_call(skp, ret, sending, 0);
		}
	}
}

SEC("raw_tp/sock_send_length")
int BPF_PROG(dns_send, struct sock *sk, int ret, int flags)
{
	bool tcp = false;

	on_call((__u64)sk, ret, flags, true, &tcp);
	SOCKCHAIN_NEXT_PROTO(ctx, sockchain_send_progs, tcp);
	return 0;
}

SEC("raw_tp/sock_recv_length")
int BPF_PROG(dns_recv, struct sock *sk, int ret, int flags)
{
	bool tcp = false;

	on_call((__u64)sk, ret, flags, false, &tcp);
	SOCKCHAIN_NEXT_PROTO(ctx, sockchain_recv_progs, tcp);
	return 0;
}

/* Name record types and enums once so they are in the object's BTF. */
const struct dns_event *unused_dns_event __attribute__((unused));
const enum dns_stat *unused_dns_stat __attribute__((unused));
const enum dns_event_type *unused_dns_event_type __attribute__((unused));
const enum dns_event_flags *unused_dns_event_flags __attribute__((unused));

char LICENSE[] SEC("license") = "Dual BSD/GPL";
