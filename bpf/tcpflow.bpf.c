// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* TCP flow accounting without lost updates.
 *
 * Bytes and calls come from the sock_send_length / sock_recv_length raw
 * tracepoints (process context, after every sendmsg/recvmsg), so they are what
 * the application wrote and read. The lifecycle comes from inet_sock_set_state.
 * Entries are keyed by the socket's address and owned by the kernel: created at
 * connect()/establishment/first I/O, deleted at TCP_CLOSE right after the final
 * record is submitted to the ring buffer. User space only reads. Counters taken
 * by the close handler are swapped out atomically; an adder that finds the
 * entry closing swaps out what it added and reports it as a late record, so
 * every byte is reported exactly once. */
#include "meshlens.bpf.h"
#include "tcpflow.h"

/* Set from user space before load. */
const volatile __u8 emit_opens = 0;    /* trace mode: report connect/accept */
const volatile __u64 wakeup_bytes = 0; /* 0: wake per record (trace mode) */
const volatile __u8 rtt_samples = 1;   /* 0: no RTT histogram (no health hooks) */

/* Per-socket counters; BPF_F_NO_PREALLOC so a deleted element is freed after
 * an RCU grace period, never recycled under a concurrent adder. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct tcpflow_value);
} tcpflow_flows SEC(".maps");

/* Who listens where, so accepted sockets get their owner in softirq context. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct tcpflow_listen_key);
	__type(value, struct tcpflow_owner);
} tcpflow_listeners SEC(".maps");

/* Close, late and (trace mode) open records. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} tcpflow_events SEC(".maps");

/* Self-metrics (enum tcpflow_stat). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TCPFLOW_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} tcpflow_stats SEC(".maps");

static __always_inline bool is_tcp(const struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP;
}

static __always_inline void owner_from_current(__u32 *tgid, __u32 *pid, __u64 *cgroup_id,
					       char *comm)
{
	__u64 id = bpf_get_current_pid_tgid();

	*tgid = id >> 32;
	*pid = (__u32)id;
	*cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(comm, TCPFLOW_COMM_LEN);
}

static __always_inline struct tcpflow_value *flow_create(const struct sock *sk, __u8 dir,
							 bool in_process)
{
	struct tcpflow_value init = {};
	__u64 key = (__u64)sk;
	long err;

	init.start_ns = bpf_ktime_get_ns();
	init.netns = sock_netns(sk);
	init.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	init.dir = dir;
	read_sock_tuple(sk, init.family, init.laddr, init.raddr, &init.lport, &init.rport);
	if (in_process) {
		owner_from_current(&init.tgid, &init.pid, &init.cgroup_id, init.comm);
	} else {
		struct tcpflow_listen_key lk = {.netns = init.netns, .port = init.lport};
		struct tcpflow_owner *o = bpf_map_lookup_elem(&tcpflow_listeners, &lk);

		init.cgroup_id = sock_cgroup_id(sk);
		if (o) {
			init.tgid = o->tgid;
			init.pid = o->pid;
			__builtin_memcpy(init.comm, o->comm, TCPFLOW_COMM_LEN);
		}
	}
	err = bpf_map_update_elem(&tcpflow_flows, &key, &init, BPF_NOEXIST);
	if (!err)
		stat_add(&tcpflow_stats, TCPFLOW_STAT_LIVE, 1);
	else if (err != -17 /* EEXIST: another CPU created it */)
		stat_add(&tcpflow_stats, TCPFLOW_STAT_FLOWS_FULL, 1);
	return bpf_map_lookup_elem(&tcpflow_flows, &key);
}

static __always_inline void fill_event_from_sock(struct tcpflow_event *e, const struct sock *sk)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;

	e->sk = (__u64)sk;
	e->end_ns = bpf_ktime_get_ns();
	e->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->netns = sock_netns(sk);
	read_sock_tuple(sk, e->family, e->laddr, e->raddr, &e->lport, &e->rport);
	e->bytes_acked = BPF_CORE_READ(tp, bytes_acked);
	e->tcp_bytes_received = BPF_CORE_READ(tp, bytes_received);
	e->segs_out = BPF_CORE_READ(tp, segs_out);
	e->segs_in = BPF_CORE_READ(tp, segs_in);
	e->total_retrans = BPF_CORE_READ(tp, total_retrans);
	e->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
	e->shutdown = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_shutdown);
}

/* The flow's own copy of the tuple: by TCP_CLOSE the kernel may have released
 * the local port already (inet_put_port). */
static __always_inline void fill_event_owner(struct tcpflow_event *e, const struct tcpflow_value *v)
{
	if (v->lport) { /* else never established: the socket's own tuple is newer */
		__builtin_memcpy(e->laddr, v->laddr, 16);
		__builtin_memcpy(e->raddr, v->raddr, 16);
		e->lport = v->lport;
		e->rport = v->rport;
	}
	e->start_ns = v->start_ns;
	e->cgroup_id = v->cgroup_id;
	e->tgid = v->tgid;
	e->pid = v->pid;
	e->dir = v->dir;
	e->flags = v->flags;
	__builtin_memcpy(e->comm, v->comm, TCPFLOW_COMM_LEN);
	__builtin_memcpy(e->retrans, v->retrans, sizeof(e->retrans));
	e->resets_sent = v->resets_sent;
	e->resets_received = v->resets_received;
	e->rst_reason = v->rst_reason;
	e->rtt_sum_us = v->rtt_sum_us;
	__builtin_memcpy(e->rtt_hist, v->rtt_hist, sizeof(e->rtt_hist));
}

/* Bytes counted after (or while) the close record was made. */
static __always_inline void emit_late(const struct sock *sk, const struct tcpflow_value *v,
				      __u64 sent, __u64 received, __u64 sends, __u64 recvs,
				      __u32 rst_reason_plus1)
{
	struct tcpflow_event *e;

	if (!(sent | received | sends | recvs | rst_reason_plus1))
		return;
	e = bpf_ringbuf_reserve(&tcpflow_events, sizeof(*e), 0);
	if (!e) {
		stat_add(&tcpflow_stats, TCPFLOW_STAT_EVENTS_LOST, 1);
		stat_add(&tcpflow_stats, TCPFLOW_STAT_BYTES_LOST, sent + received);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	fill_event_from_sock(e, sk);
	if (v) {
		fill_event_owner(e, v);
		/* health was counted with the live entry or its final record */
		__builtin_memset(e->retrans, 0, sizeof(e->retrans));
		__builtin_memset(e->rtt_hist, 0, sizeof(e->rtt_hist));
		e->rtt_sum_us = 0;
		e->resets_sent = e->resets_received = 0;
	} else {
		owner_from_current(&e->tgid, &e->pid, &e->cgroup_id, e->comm);
	}
	if (rst_reason_plus1) {
		e->resets_sent = 1;
		e->rst_reason = rst_reason_plus1 - 1;
	}
	e->type = TCPFLOW_EV_LATE;
	e->bytes_sent = sent;
	e->bytes_received = received;
	e->sends = sends;
	e->recvs = recvs;
	stat_add(&tcpflow_stats, TCPFLOW_STAT_LATE, 1);
	bpf_ringbuf_submit(e, ringbuf_flags(&tcpflow_events, wakeup_bytes));
}

/* The RTT histogram is sampled where we already run (each send/recv, and at
 * close), not per segment: one sample when the smoothed RTT moved since the
 * last one. Several moves between two calls give one sample, the latest. send
 * and recv of one socket may race on two CPUs: the cmpxchg lets one of them
 * count a given value. */
static __always_inline void rtt_sample(const struct sock *sk, struct tcpflow_value *v)
{
	__u32 srtt, last, slot;

	if (!rtt_samples)
		return;
	srtt = ((const struct tcp_sock *)bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct tcp_sock)))
		       ->srtt_us >> 3;
	last = v->srtt_us;
	if (!srtt || srtt == last)
		return;
	if (__sync_val_compare_and_swap(&v->srtt_us, last, srtt) != last)
		return;
	slot = log2_u32(srtt);
	if (slot >= TCPFLOW_RTT_SLOTS)
		slot = TCPFLOW_RTT_SLOTS - 1;
	__sync_fetch_and_add(&v->rtt_hist[slot], 1);
	__sync_fetch_and_add(&v->rtt_sum_us, srtt);
}

static __always_inline int account(const struct sock *sk, int ret, int flags, bool send)
{
	const struct sock *s = SOCK_RO(sk);
	struct tcpflow_value *v;
	__u64 key = (__u64)sk;

	if (ret <= 0 || !s || (!send && (flags & MSG_PEEK_FLAG)))
		return 0;
	/* a plain load: cheaper than the map lookup a UDP socket would miss */
	if (s->sk_protocol != IPPROTO_TCP)
		return 0;
	v = bpf_map_lookup_elem(&tcpflow_flows, &key);
	if (!v) {
		if (s->__sk_common.skc_state == TCP_CLOSE) {
			emit_late(sk, 0, send ? ret : 0, send ? 0 : ret, send, !send, 0);
			return 0;
		}
		v = flow_create(sk, TCPFLOW_DIR_UNKNOWN, true);
		if (!v)
			return 0;
	} else if (!v->tgid) {
		/* accepted before its listener was seen: the reader owns it */
		owner_from_current(&v->tgid, &v->pid, &v->cgroup_id, v->comm);
	}
	rtt_sample(sk, v);
	if (send) {
		__sync_fetch_and_add(&v->bytes_sent, ret);
		__sync_fetch_and_add(&v->sends, 1);
	} else {
		__sync_fetch_and_add(&v->bytes_received, ret);
		__sync_fetch_and_add(&v->recvs, 1);
	}
	if (v->flags & TCPFLOW_F_CLOSING) {
		/* The close handler may already have taken the counters: whatever is
		 * left now is ours to report. */
		emit_late(sk, v, __sync_lock_test_and_set(&v->bytes_sent, 0),
			  __sync_lock_test_and_set(&v->bytes_received, 0),
			  __sync_lock_test_and_set(&v->sends, 0),
			  __sync_lock_test_and_set(&v->recvs, 0), 0);
	}
	return 0;
}

SEC("raw_tp/sock_send_length")
int BPF_PROG(tcpflow_send, struct sock *sk, int ret, int flags)
{
	return account(sk, ret, flags, true);
}

SEC("raw_tp/sock_recv_length")
int BPF_PROG(tcpflow_recv, struct sock *sk, int ret, int flags)
{
	return account(sk, ret, flags, false);
}

static __always_inline void listener_add(const struct sock *sk)
{
	struct tcpflow_listen_key k = {.netns = sock_netns(sk),
				       .port = BPF_CORE_READ(sk, __sk_common.skc_num)};
	struct tcpflow_owner o = {};

	owner_from_current(&o.tgid, &o.pid, &o.cgroup_id, o.comm);
	if (bpf_map_update_elem(&tcpflow_listeners, &k, &o, BPF_ANY))
		stat_add(&tcpflow_stats, TCPFLOW_STAT_LISTENERS_FULL, 1);
}

static __always_inline void listener_del(const struct sock *sk)
{
	struct tcpflow_listen_key k = {.netns = sock_netns(sk),
				       .port = BPF_CORE_READ(sk, __sk_common.skc_num)};

	bpf_map_delete_elem(&tcpflow_listeners, &k);
}

static __always_inline void emit_open(const struct sock *sk, const struct tcpflow_value *v,
				      __u8 type, int oldstate)
{
	struct tcpflow_event *e = bpf_ringbuf_reserve(&tcpflow_events, sizeof(*e), 0);

	if (!e) {
		stat_add(&tcpflow_stats, TCPFLOW_STAT_EVENTS_LOST, 1);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	fill_event_from_sock(e, sk);
	if (v)
		fill_event_owner(e, v);
	e->type = type;
	e->oldstate = oldstate;
	e->error = BPF_CORE_READ(sk, sk_err);
	bpf_ringbuf_submit(e, ringbuf_flags(&tcpflow_events, wakeup_bytes));
}

static __always_inline void flow_established(const struct sock *sk, int oldstate)
{
	__u8 dir = oldstate == TCP_SYN_SENT   ? TCPFLOW_DIR_ACTIVE
		   : oldstate == TCP_SYN_RECV ? TCPFLOW_DIR_PASSIVE
					      : TCPFLOW_DIR_UNKNOWN;
	__u64 key = (__u64)sk;
	struct tcpflow_value *v = bpf_map_lookup_elem(&tcpflow_flows, &key);

	if (!v)
		v = flow_create(sk, dir, false);
	if (v) {
		v->dir = dir;
		v->flags |= TCPFLOW_F_OPENED;
		/* the local port was not yet bound when connect() created the entry */
		read_sock_tuple(sk, v->family, v->laddr, v->raddr, &v->lport, &v->rport);
	}
	if (emit_opens)
		emit_open(sk, v, dir == TCPFLOW_DIR_PASSIVE ? TCPFLOW_EV_ACCEPT : TCPFLOW_EV_CONNECT,
			  oldstate);
}

static __always_inline void flow_close(const struct sock *sk, int oldstate)
{
	__u64 key = (__u64)sk;
	struct tcpflow_value *v = bpf_map_lookup_elem(&tcpflow_flows, &key);
	struct tcpflow_event *e;
	__u64 sent = 0, received = 0, sends = 0, recvs = 0;

	if (oldstate == TCP_SYN_SENT) {
		/* connect() failed: not a connection; the record says why (sk_err) */
		emit_open(sk, v, TCPFLOW_EV_CONNECT_FAILED, oldstate);
		if (v && !bpf_map_delete_elem(&tcpflow_flows, &key))
			stat_add(&tcpflow_stats, TCPFLOW_STAT_LIVE, -1);
		return;
	}
	if (oldstate == TCP_SYN_RECV || oldstate == TCP_CLOSE)
		return;
	if (v) {
		rtt_sample(sk, v); /* a move after the last send/recv; copied below */
		v->flags |= TCPFLOW_F_CLOSING;
		sent = __sync_lock_test_and_set(&v->bytes_sent, 0);
		received = __sync_lock_test_and_set(&v->bytes_received, 0);
		sends = __sync_lock_test_and_set(&v->sends, 0);
		recvs = __sync_lock_test_and_set(&v->recvs, 0);
	}
	e = bpf_ringbuf_reserve(&tcpflow_events, sizeof(*e), 0);
	if (!e) {
		stat_add(&tcpflow_stats, TCPFLOW_STAT_EVENTS_LOST, 1);
		stat_add(&tcpflow_stats, TCPFLOW_STAT_BYTES_LOST, sent + received);
	} else {
		__builtin_memset(e, 0, sizeof(*e));
		fill_event_from_sock(e, sk);
		if (v)
			fill_event_owner(e, v);
		else
			e->cgroup_id = sock_cgroup_id(sk); /* older than the agent, idle since */
		e->type = TCPFLOW_EV_CLOSE;
		e->oldstate = oldstate;
		e->bytes_sent = sent;
		e->bytes_received = received;
		e->sends = sends;
		e->recvs = recvs;
		/* submit before delete: a reader that no longer finds the entry is
		 * sure to find its record */
		bpf_ringbuf_submit(e, ringbuf_flags(&tcpflow_events, wakeup_bytes));
	}
	if (v && !bpf_map_delete_elem(&tcpflow_flows, &key))
		stat_add(&tcpflow_stats, TCPFLOW_STAT_LIVE, -1);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(tcpflow_state, struct sock *sk, int oldstate, int newstate)
{
	if (!is_tcp(sk))
		return 0;
	if (newstate == TCP_LISTEN) {
		listener_add(sk);
	} else if (oldstate == TCP_LISTEN) {
		/* LISTEN->SYN_RECV is a child being cloned, not the listener */
		if (newstate == TCP_CLOSE)
			listener_del(sk);
	} else if (newstate == TCP_SYN_SENT) {
		flow_create(sk, TCPFLOW_DIR_ACTIVE, true);
	} else if (newstate == TCP_ESTABLISHED) {
		flow_established(sk, oldstate);
	} else if (newstate == TCP_CLOSE) {
		flow_close(sk, oldstate);
	}
	return 0;
}

/* ---- network health per socket ---------------------------------------- */

SEC("raw_tp/tcp_retransmit_skb")
int BPF_PROG(tcpflow_retransmit, struct sock *sk, struct sk_buff *skb, int err)
{
	const struct inet_connection_sock *icsk = (const struct inet_connection_sock *)sk;
	void *cb = (void *)skb + bpf_core_field_offset(struct sk_buff, cb);
	struct tcpflow_value *v;
	__u64 key = (__u64)sk;
	__u32 type, segs;
	__u8 ca;

	if (err)
		return 0; /* not sent: the kernel does not count it either */
	v = bpf_map_lookup_elem(&tcpflow_flows, &key);
	if (!v)
		return 0;
	ca = BPF_CORE_READ_BITFIELD_PROBED(icsk, icsk_ca_state);
	if (BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_SYN_SENT)
		type = TCPFLOW_RETRANS_SYN;
	else if (ca == TCP_CA_Loss)
		type = TCPFLOW_RETRANS_TIMEOUT;
	else if (ca == TCP_CA_Recovery)
		type = TCPFLOW_RETRANS_FAST;
	else
		type = TCPFLOW_RETRANS_OTHER;
	/* one skb may carry several segments (TSO); TcpRetransSegs counts segments */
	if (!v->lport) /* a SYN: the tuple is complete only after connect() bound it */
		read_sock_tuple(sk, v->family, v->laddr, v->raddr, &v->lport, &v->rport);
	segs = BPF_CORE_READ((struct tcp_skb_cb *)cb, tcp_gso_segs);
	__sync_fetch_and_add(&v->retrans[type & 3], segs ? segs : 1);
	return 0;
}

SEC("raw_tp/tcp_send_reset")
int BPF_PROG(tcpflow_reset_sent, struct sock *sk, struct sk_buff *skb, int reason)
{
	struct tcpflow_value *v;
	__u64 key = (__u64)sk;
	__u8 state;

	if (!sk)
		return 0; /* no socket: tcphealth counts it from the packet */
	state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV)
		return 0; /* mini sockets are never flows */
	v = bpf_map_lookup_elem(&tcpflow_flows, &key);
	if (v) {
		__sync_fetch_and_add(&v->resets_sent, 1);
		v->rst_reason = reason;
	} else if (state == TCP_CLOSE) {
		/* e.g. close() with unread data: CLOSE first, then the reset */
		emit_late(sk, 0, 0, 0, 0, 0, reason + 1);
	}
	return 0;
}

SEC("raw_tp/tcp_receive_reset")
int BPF_PROG(tcpflow_reset_received, struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct tcpflow_value *v = bpf_map_lookup_elem(&tcpflow_flows, &key);

	if (!v)
		return 0;
	__sync_fetch_and_add(&v->resets_received, 1);
	if (!v->lport) /* refused connect: the port is released before CLOSE */
		read_sock_tuple(sk, v->family, v->laddr, v->raddr, &v->lport, &v->rport);
	return 0;
}

/* Ring buffer records are only ever void pointers to the compiler: name the
 * type once so it is in the object's BTF for the user-side layout check. */
const struct tcpflow_event *unused_tcpflow_event __attribute__((unused));

char LICENSE[] SEC("license") = "Dual BSD/GPL";
