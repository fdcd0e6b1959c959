// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* UDP flow accounting per socket and peer, at the socket layer: bytes and
 * datagrams from the sock_send_length / sock_recv_length raw tracepoints (what
 * the application wrote and read, in its own context), the peer of an
 * unconnected socket from the cgroup sendmsg/recvmsg hooks, which the kernel
 * runs for UDP alone. No per-packet program: TCP never pays for UDP accounting.
 *
 * The kernel owns each entry: it creates it on the first datagram and a
 * sweeper timer deletes it after idle_ns without traffic, submitting a final
 * record first. An adder racing with expiry gives back what it added as a late
 * record, so every datagram is reported exactly once. */
#include "meshlens.bpf.h"
#include "udpflow.h"

#define CLOCK_MONOTONIC 1

const volatile __u64 idle_ns = 30ULL * 1000000000ULL;
const volatile __u64 sweep_ns = 1000000000ULL;
const volatile __u64 wakeup_bytes = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct udpflow_key);
	__type(value, struct udpflow_value);
} udpflow_flows SEC(".maps");

/* thread id -> the peer its current sendto()/recvfrom() names; taken by the
 * tracepoint that ends the call (one thread is in one system call at a time) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct udpflow_peer);
} udpflow_peers SEC(".maps");

/* socket inode -> the peer an unconnected socket last sent to: the sender of
 * what it then reads with recv(), which does not say (the application assumes
 * the same) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct udpflow_peer);
} udpflow_last_peer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct udpflow_sweeper);
} udpflow_sweeper SEC(".maps");

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
	e->ino = k->ino;
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

/* Idle = no datagram since the sweep that last saw the counters move: the
 * adders never read a clock. */
static int expire_cb(void *map, struct udpflow_key *k, struct udpflow_value *v, __u64 *now)
{
	__u64 seen = v->datagrams_sent + v->datagrams_received;

	if (seen != v->seen) {
		v->seen = seen;
		v->quiet_ns = *now;
		return 0;
	}
	if (*now - v->quiet_ns < idle_ns)
		return 0;
	v->closing = 1;
	emit(k, v, UDPFLOW_EV_EXPIRE, TAKE(v, bytes_sent), TAKE(v, bytes_received),
	     TAKE(v, datagrams_sent), TAKE(v, datagrams_received));
	if (!bpf_map_delete_elem(map, k))
		stat_add(&udpflow_stats, UDPFLOW_STAT_LIVE, -1);
	return 0;
}

/* Every sweep_ns: expire the flows idle for idle_ns (so a flow goes between
 * idle_ns and idle_ns + 2 sweep_ns after its last datagram). */
__u32 sweeps_skipped = 0;

static int sweep(void *map, __u32 *key, struct udpflow_sweeper *s)
{
	__u64 now = bpf_ktime_get_ns();

	if (sweep_due(&udpflow_stats, UDPFLOW_STAT_LIVE, &sweeps_skipped))
		bpf_for_each_map_elem(&udpflow_flows, expire_cb, &now, 0);
	bpf_timer_start(&s->timer, sweep_ns, 0);
	return 0;
}

/* Run once by the loader (BPF_PROG_RUN) right after load. */
SEC("syscall")
int udpflow_start_sweeper(void *ctx)
{
	__u32 zero = 0;
	struct udpflow_sweeper *s = bpf_map_lookup_elem(&udpflow_sweeper, &zero);

	if (!s)
		return 1;
	if (bpf_timer_init(&s->timer, &udpflow_sweeper, CLOCK_MONOTONIC))
		return 2;
	if (bpf_timer_set_callback(&s->timer, sweep))
		return 3;
	if (bpf_timer_start(&s->timer, sweep_ns, 0))
		return 4;
	return 0;
}

static __always_inline void owner_from_current(struct udpflow_value *v)
{
	__u64 id = bpf_get_current_pid_tgid();

	v->tgid = id >> 32;
	v->pid = (__u32)id;
	v->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(v->comm, UDPFLOW_COMM_LEN);
}

static __always_inline struct udpflow_value *flow_get(const struct sock *sk,
						      const struct udpflow_key *k, bool send)
{
	struct udpflow_value *v = bpf_map_lookup_elem(&udpflow_flows, k);
	struct udpflow_value init = {};
	long err;

	if (v)
		return v;
	/* process context: the thread that sends or reads owns the socket */
	owner_from_current(&init);
	init.netns = sock_netns(sk);
	init.start_ns = bpf_ktime_get_ns();
	init.quiet_ns = init.start_ns;
	init.dir = send ? UDPFLOW_DIR_SOURCE : UDPFLOW_DIR_DESTINATION;
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
	return v;
}

/* An IPv4 peer of an IPv6 socket (::ffff:a.b.c.d) is counted as IPv4. */
static __always_inline void unmap(struct udpflow_key *k)
{
	if (k->family == AF_INET6 && v4_mapped(k->raddr)) {
		__builtin_memcpy(k->raddr, k->raddr + 12, 4);
		__builtin_memset(k->raddr + 4, 0, 12);
		k->family = AF_INET;
	}
}

/* The socket's inode number: unique among live sockets and not reused soon,
 * unlike the struct sock's address (which the slab hands to the next socket). */
static __always_inline __u64 sock_ino(const struct sock *s)
{
	const struct socket_alloc *sa =
		bpf_rdonly_cast(s->sk_socket, bpf_core_type_id_kernel(struct socket_alloc));

	return sa ? sa->vfs_inode.i_ino : 0;
}

static __always_inline void peer_to_key(struct udpflow_key *k, const struct udpflow_peer *p)
{
	k->family = p->family;
	__builtin_memcpy(k->raddr, p->addr, 16);
	k->rport = p->port;
}

/* The peer: the one this call's hook saw (sendto/recvfrom on any socket), else
 * the connected one, else (recv() on an unconnected socket) the one it last
 * sent to, else none. `s` is a read-only BTF pointer: plain loads. */
static __always_inline void flow_key(const struct sock *s, struct udpflow_key *k, bool send)
{
	__u64 cookie = s->__sk_common.skc_cookie.counter;
	__u16 sk_family = s->__sk_common.skc_family;
	struct udpflow_peer *p = 0, *last;
	__u32 tid;

	k->ino = sock_ino(s);
	k->lport = s->__sk_common.skc_num;
	k->family = sk_family;
	if (cookie) { /* a hook gives the socket a cookie: without one, none ran */
		tid = (__u32)bpf_get_current_pid_tgid();
		p = bpf_map_lookup_elem(&udpflow_peers, &tid);
	}
	if (p && p->cookie == cookie) {
		p->cookie = 0;
		peer_to_key(k, p);
		if (send) {
			last = bpf_map_lookup_elem(&udpflow_last_peer, &k->ino);
			if (last)
				*last = *p;
			else
				bpf_map_update_elem(&udpflow_last_peer, &k->ino, p, BPF_ANY);
		}
	} else if (s->__sk_common.skc_state == TCP_ESTABLISHED) {
		if (sk_family == AF_INET)
			*(__u32 *)k->raddr = s->__sk_common.skc_daddr;
		else
			__builtin_memcpy(k->raddr, &s->__sk_common.skc_v6_daddr, 16);
		k->rport = bpf_ntohs(s->__sk_common.skc_dport);
	} else if (!send) {
		last = bpf_map_lookup_elem(&udpflow_last_peer, &k->ino);
		if (last) {
			peer_to_key(k, last);
			stat_add(&udpflow_stats, UDPFLOW_STAT_PEER_ASSUMED, 1);
		}
	}
	unmap(k);
	/* the bound address; a wildcard-bound socket (0.0.0.0, ::) keeps zeros:
	 * which local address a datagram used is known only to the packet */
	if (k->family == AF_INET)
		*(__u32 *)k->laddr = s->__sk_common.skc_rcv_saddr;
	else
		__builtin_memcpy(k->laddr, &s->__sk_common.skc_v6_rcv_saddr, 16);
}

static __always_inline int account(const struct sock *sk, int ret, int flags, bool send)
{
	const struct sock *s = SOCK_RO(sk);
	struct udpflow_key k = {};
	struct udpflow_value *v;
	const struct udp_sock *up;
	__u64 segs = 1;
	__u16 gso;

	if (!s || s->sk_protocol != IPPROTO_UDP)
		return 0;
	flow_key(s, &k, send); /* also takes this call's peer when it failed */
	if (ret <= 0 || (!send && (flags & MSG_PEEK_FLAG)))
		return 0;
	if (!k.rport)
		stat_add(&udpflow_stats, UDPFLOW_STAT_NO_PEER, 1);
	v = flow_get(sk, &k, send);
	if (!v)
		return 0;
	if (send) {
		/* UDP_SEGMENT set on the socket: one send, many datagrams */
		up = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct udp_sock));
		gso = up->gso_size;
		if (gso && ret > gso)
			segs = ((__u64)ret + gso - 1) / gso;
		__sync_fetch_and_add(&v->bytes_sent, ret);
		__sync_fetch_and_add(&v->datagrams_sent, segs);
	} else {
		__sync_fetch_and_add(&v->bytes_received, ret);
		__sync_fetch_and_add(&v->datagrams_received, 1);
	}
	if (v->closing)
		emit(&k, v, UDPFLOW_EV_LATE, TAKE(v, bytes_sent), TAKE(v, bytes_received),
		     TAKE(v, datagrams_sent), TAKE(v, datagrams_received));
	return 0;
}

SEC("raw_tp/sock_send_length")
int BPF_PROG(udpflow_send, struct sock *sk, int ret, int flags)
{
	return account(sk, ret, flags, true);
}

SEC("raw_tp/sock_recv_length")
int BPF_PROG(udpflow_recv, struct sock *sk, int ret, int flags)
{
	return account(sk, ret, flags, false);
}

/* sendto()/sendmsg() with an address (the hook runs for unconnected sends
 * only) and recvfrom()/recvmsg() asking for the sender: keep the peer for this
 * thread's tracepoint. Ports are in network order in user_port. */
static __always_inline void keep_peer(struct bpf_sock_addr *ctx, bool v6)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct udpflow_peer *p = bpf_map_lookup_elem(&udpflow_peers, &tid);
	struct udpflow_peer fresh = {};

	if (ctx->protocol != IPPROTO_UDP)
		return;
	if (!p) {
		if (bpf_map_update_elem(&udpflow_peers, &tid, &fresh, BPF_ANY))
			return;
		p = bpf_map_lookup_elem(&udpflow_peers, &tid);
		if (!p)
			return;
	}
	p->port = bpf_ntohs((__u16)ctx->user_port);
	if (v6) {
		__u32 *a = (__u32 *)p->addr;

		p->family = AF_INET6;
		a[0] = ctx->user_ip6[0];
		a[1] = ctx->user_ip6[1];
		a[2] = ctx->user_ip6[2];
		a[3] = ctx->user_ip6[3];
	} else {
		p->family = AF_INET;
		*(__u32 *)p->addr = ctx->user_ip4;
		__builtin_memset(p->addr + 4, 0, 12);
	}
	p->cookie = bpf_get_socket_cookie(ctx); /* the socket gets one if it had none */
}

SEC("cgroup/sendmsg4")
int udpflow_sendmsg4(struct bpf_sock_addr *ctx)
{
	keep_peer(ctx, false);
	return 1;
}

SEC("cgroup/sendmsg6")
int udpflow_sendmsg6(struct bpf_sock_addr *ctx)
{
	keep_peer(ctx, true);
	return 1;
}

SEC("cgroup/recvmsg4")
int udpflow_recvmsg4(struct bpf_sock_addr *ctx)
{
	keep_peer(ctx, false);
	return 1;
}

SEC("cgroup/recvmsg6")
int udpflow_recvmsg6(struct bpf_sock_addr *ctx)
{
	keep_peer(ctx, true);
	return 1;
}

/* Ring buffer records are only ever void pointers to the compiler, and the
 * stats only indexes: name the types once so they are in the object's BTF for
 * the user-side checks. */
const struct udpflow_event *unused_udpflow_event __attribute__((unused));
const enum udpflow_stat *unused_udpflow_stat __attribute__((unused));

char LICENSE[] SEC("license") = "Dual BSD/GPL";
