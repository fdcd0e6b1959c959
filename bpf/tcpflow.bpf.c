// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* TCP flow accounting with no program per send or recv.
 *
 * The bytes an application wrote and read are in its socket already: write_seq
 * and copied_seq advance by exactly what sendmsg/sendfile queued and recvmsg
 * copied out (plus one for each FIN). Each socket's entry holds those numbers
 * as they were when counting began; tcpflow_poll (a syscall program user space
 * runs on the entries it read from the map) and the close turn the socket's
 * numbers now into byte counts. The lifecycle comes from inet_sock_set_state: entries
 * are created at connect()/establishment, or found in the established hash
 * when the agent starts (tcpflow_adopt), and closed at TCP_CLOSE, when the
 * final record goes to the ring buffer. Data the application reads after that
 * (a peer's reply after our FIN) is added by a late record when the socket is
 * destroyed (tcp_destroy_sock). The kernel is the only writer and deleter of
 * entries; user space only reads. */
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
	if (!err) {
		stat_add(&tcpflow_stats, TCPFLOW_STAT_LIVE, 1);
		stat_add(&tcpflow_stats, TCPFLOW_STAT_INSERTS, 1);
	} else if (err != -17 /* EEXIST: another CPU created it */)
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

/* A late record: data read, or a reset sent, after the close record. */
static __always_inline void emit_late(const struct sock *sk, const struct tcpflow_value *v,
				      __u64 received, __u32 rst_reason_plus1)
{
	struct tcpflow_event *e;

	if (!(received | rst_reason_plus1))
		return;
	e = bpf_ringbuf_reserve(&tcpflow_events, sizeof(*e), 0);
	if (!e) {
		stat_add(&tcpflow_stats, TCPFLOW_STAT_EVENTS_LOST, 1);
		stat_add(&tcpflow_stats, TCPFLOW_STAT_BYTES_LOST, received);
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
	e->bytes_received = received;
	stat_add(&tcpflow_stats, TCPFLOW_STAT_LATE, 1);
	bpf_ringbuf_submit(e, ringbuf_flags(&tcpflow_events, wakeup_bytes));
}

/* The RTT histogram is sampled where we already run (every poll, and at
 * close), not per segment: one sample when the smoothed RTT moved since the
 * last one. Several moves between two polls give one sample, the latest. A
 * poll and the close may race on two CPUs: the cmpxchg lets one of them count
 * a given value. */
static __always_inline void rtt_sample(const struct sock *sk, struct tcpflow_value *v)
{
	__u32 srtt, last, slot;

	if (!rtt_samples)
		return;
	srtt = BPF_CORE_READ((const struct tcp_sock *)sk, srtt_us) >> 3;
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

/* ---- bytes from the socket's sequence numbers ----------------------------
 * write_seq counts every byte the application queued (sendmsg, sendfile,
 * splice) and copied_seq every byte it read, each plus one for a FIN: ours
 * once it is queued, the peer's once the application read it. Both are 32
 * bits and wrap; the kernel's 64-bit totals (bytes_acked, bytes_received)
 * give the high bits, as they differ from the exact count only by what is in
 * flight or unread. A poll reads the socket without its lock: the reads are
 * ordered so that a half-done update makes a count one short, never one over
 * (the next poll has it right; counts are kept at their maximum). */

static __always_inline bool sock_flag_set(const struct sock *sk, __u64 bit)
{
	return BPF_CORE_READ(sk, __sk_common.skc_flags) & (1ULL << bit);
}

struct seq_now {
	__u64 sent_approx;     /* bytes_acked + unacked */
	__u64 received_approx; /* bytes_received - unread */
	__u64 tcp_received;
	__u32 write; /* write_seq less our FIN */
	__u32 copied; /* copied_seq less the peer's FIN */
	__u32 unread; /* data bytes received, not read yet */
	__u32 copied_raw;
};

static __always_inline void seq_read(const struct sock *sk, bool fin_sent, struct seq_now *n)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	__u32 write_seq, snd_una, copied, rcv_nxt, fin_read;
	bool done;
	__u64 acked;

	/* fin_sent was read before write_seq: tcpflow_state sets it before the
	 * FIN enters write_seq */
	acked = BPF_CORE_READ(tp, bytes_acked);
	snd_una = BPF_CORE_READ(tp, snd_una);
	write_seq = BPF_CORE_READ(tp, write_seq);
	/* copied_seq first: if it holds the peer's FIN, SOCK_DONE (set by
	 * tcp_fin() before the FIN can be read) and rcv_nxt, read after it,
	 * show the FIN too */
	copied = BPF_CORE_READ(tp, copied_seq);
	done = sock_flag_set(sk, bpf_core_enum_value(enum sock_flags, SOCK_DONE));
	rcv_nxt = BPF_CORE_READ(tp, rcv_nxt);
	n->tcp_received = BPF_CORE_READ(tp, bytes_received);
	n->sent_approx = acked + (__u32)(write_seq - snd_una);
	n->received_approx = n->tcp_received - (__u32)(rcv_nxt - copied);
	n->write = write_seq - fin_sent;
	n->copied_raw = copied;
	n->unread = rcv_nxt - copied;
	fin_read = 0;
	if (done) {
		/* the peer's FIN is the last sequence number rcv_nxt covers */
		if (copied == rcv_nxt)
			fin_read = 1;
		else
			n->unread -= 1;
	}
	n->copied = copied - fin_read;
}

/* Exact count from its low 32 bits and an estimate within 2^31 of it. */
static __always_inline __u64 widen(__u32 low, __u64 approx)
{
	__s64 v = (__s64)approx + (__s32)(low - (__u32)approx);

	return v > 0 ? v : 0;
}

/* Counting begins: at establishment, or when found by tcpflow_adopt. */
static __always_inline void counting_begin(const struct sock *sk, struct tcpflow_value *v)
{
	struct seq_now n;

	seq_read(sk, v->flags & TCPFLOW_F_FIN_SENT, &n);
	v->sent_base = n.sent_approx;
	v->received_base = n.received_approx;
	v->write_base = n.write;
	v->copied_base = n.copied;
	v->flags |= TCPFLOW_F_COUNTING;
}

/* Bring the entry's counts up to the socket's numbers; false if not counting. */
static __always_inline bool counts_update(const struct sock *sk, struct tcpflow_value *v,
					  struct seq_now *n)
{
	__u8 flags = *(volatile __u8 *)&v->flags;
	__u64 sent, received;

	if (!(flags & TCPFLOW_F_COUNTING))
		return false;
	seq_read(sk, flags & TCPFLOW_F_FIN_SENT, n);
	sent = widen(n->write - v->write_base, n->sent_approx - v->sent_base);
	received = widen(n->copied - v->copied_base, n->received_approx - v->received_base);
	if (sent > v->bytes_sent)
		v->bytes_sent = sent;
	if (received > v->bytes_received)
		v->bytes_received = received;
	return true;
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
		/* the handshake is done and no data moved yet (the state changes
		 * before the segment's data is queued) */
		counting_begin(sk, v);
	}
	if (emit_opens)
		emit_open(sk, v, dir == TCPFLOW_DIR_PASSIVE ? TCPFLOW_EV_ACCEPT : TCPFLOW_EV_CONNECT,
			  oldstate);
}

static __always_inline void flow_delete(__u64 key)
{
	if (!bpf_map_delete_elem(&tcpflow_flows, &key))
		stat_add(&tcpflow_stats, TCPFLOW_STAT_LIVE, -1);
}

/* The final record, with the entry's counts as of now. From here on the poll
 * leaves the entry alone and user space counts the record, not the entry; the
 * record goes out before any delete, so a reader that no longer finds the
 * entry is sure to find its record. */
static __always_inline void emit_close(const struct sock *sk, struct tcpflow_value *v,
				       int oldstate)
{
	struct tcpflow_event *e;

	v->flags |= TCPFLOW_F_CLOSING;
	e = bpf_ringbuf_reserve(&tcpflow_events, sizeof(*e), 0);

	if (!e) {
		stat_add(&tcpflow_stats, TCPFLOW_STAT_EVENTS_LOST, 1);
		stat_add(&tcpflow_stats, TCPFLOW_STAT_BYTES_LOST, v->bytes_sent + v->bytes_received);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	fill_event_from_sock(e, sk);
	fill_event_owner(e, v);
	e->type = TCPFLOW_EV_CLOSE;
	e->oldstate = oldstate;
	e->bytes_sent = v->bytes_sent;
	e->bytes_received = v->bytes_received;
	bpf_ringbuf_submit(e, ringbuf_flags(&tcpflow_events, wakeup_bytes));
}

static __always_inline void flow_close(const struct sock *sk, int oldstate)
{
	__u64 key = (__u64)sk;
	struct tcpflow_value *v = bpf_map_lookup_elem(&tcpflow_flows, &key);
	struct seq_now n = {};
	bool counting;

	if (oldstate == TCP_SYN_SENT) {
		/* connect() failed: not a connection; the record says why (sk_err) */
		emit_open(sk, v, TCPFLOW_EV_CONNECT_FAILED, oldstate);
		if (v)
			flow_delete(key);
		return;
	}
	if (!v || oldstate == TCP_SYN_RECV || oldstate == TCP_CLOSE)
		return;
	rtt_sample(sk, v); /* a move after the last poll; copied below */
	counting = counts_update(sk, v, &n);
	emit_close(sk, v, oldstate);
	if (!counting || !n.unread ||
	    sock_flag_set(sk, bpf_core_enum_value(enum sock_flags, SOCK_DEAD))) {
		flow_delete(key);
		return;
	}
	/* Unread data the application may still read (our FIN went first, then
	 * the peer's reply and FIN): tcpflow_destroy adds what it read. */
	v->copied_close = n.copied_raw;
	v->unread_close = n.unread;
	v->tcp_received_close = n.tcp_received;
}

/* Set before tcp_send_fin() queues the FIN (tcp_close_state() changes the
 * state first), so a poll never counts the FIN as data. */
static __always_inline void flow_fin_sent(const struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct tcpflow_value *v = bpf_map_lookup_elem(&tcpflow_flows, &key);

	if (v)
		v->flags |= TCPFLOW_F_FIN_SENT; /* under the socket lock, as every state change */
}

/* A connect() on a socket that tcp_disconnect() reset: what the old entry
 * waited for is gone with the receive queue. */
static __always_inline void flow_connect(const struct sock *sk)
{
	__u64 key = (__u64)sk;

	if (bpf_map_lookup_elem(&tcpflow_flows, &key))
		flow_delete(key);
	flow_create(sk, TCPFLOW_DIR_ACTIVE, true);
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
		flow_connect(sk);
	} else if (newstate == TCP_ESTABLISHED) {
		flow_established(sk, oldstate);
	} else if (newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK) {
		flow_fin_sent(sk);
	} else if (newstate == TCP_CLOSE) {
		flow_close(sk, oldstate);
	}
	return 0;
}

/* The socket is being freed: nothing reads it any more. An entry still here
 * waited for the data that was unread at close. */
SEC("raw_tp/tcp_destroy_sock")
int BPF_PROG(tcpflow_destroy, struct sock *sk)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	__u64 key = (__u64)sk;
	struct tcpflow_value *v = bpf_map_lookup_elem(&tcpflow_flows, &key);
	__u32 read;

	if (!v)
		return 0;
	if (!(v->flags & TCPFLOW_F_CLOSING)) {
		/* closed while tcpflow_adopt made its entry: its close went unseen */
		struct seq_now n;

		counts_update(sk, v, &n);
		emit_close(sk, v, TCP_CLOSE);
	} else if (BPF_CORE_READ(tp, bytes_received) == v->tcp_received_close) {
		/* (tcp_disconnect(), i.e. connect(AF_UNSPEC), moved copied_seq over
		 * the data it threw away, and zeroed bytes_received) */
		read = BPF_CORE_READ(tp, copied_seq) - v->copied_close;
		/* the peer's FIN, if read, is one past the data */
		emit_late(sk, v, read < v->unread_close ? read : v->unread_close, 0);
	}
	flow_delete(key);
	return 0;
}

/* ---- the poll and the adoption, run by user space ---------------------- */

/* Still the socket it was registered as? A socket found by tcpflow_adopt may
 * have been freed before its entry was made, and its memory reused. */
static __always_inline bool flow_valid(const struct sock *sk, const struct tcpflow_value *v)
{
	__u16 lport, rport;

	if (!v->lport)
		return true; /* connect() in progress: not counting yet */
	lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	return lport == v->lport && rport == v->rport && sock_netns(sk) == v->netns &&
	       BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP;
}

/* tcpflow_poll's output (see struct tcpflow_poll_args) and its input copied
 * where a loop may index it. One refresh runs at a time. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TCPFLOW_POLL_BATCH);
	__type(key, __u32);
	__type(value, struct tcpflow_value);
} tcpflow_polled SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tcpflow_poll_args);
} tcpflow_poll_in SEC(".maps");

/* The entry of one socket brought up to date into *out; false if it is gone. */
static __always_inline bool poll_one(__u64 key, struct tcpflow_value *out)
{
	const struct sock *sk = (const struct sock *)key;
	struct tcpflow_value *v = bpf_map_lookup_elem(&tcpflow_flows, &key);
	struct seq_now n;

	if (!v)
		return false; /* closed and deleted since user space read it */
	if (!(v->flags & TCPFLOW_F_CLOSING)) { /* else counted by its record */
		if (!flow_valid(sk, v)) {
			/* its last counts go out as its final record */
			emit_close(sk, v, 0);
			flow_delete(key);
			stat_add(&tcpflow_stats, TCPFLOW_STAT_STALE, 1);
			return false;
		}
		rtt_sample(sk, v);
		counts_update(sk, v, &n);
	}
	__builtin_memcpy(out, v, sizeof(*out));
	return true;
}

static long poll_step(__u64 i, void *unused)
{
	__u32 zero = 0, slot = i;
	struct tcpflow_poll_args *in = bpf_map_lookup_elem(&tcpflow_poll_in, &zero);
	struct tcpflow_value *out = bpf_map_lookup_elem(&tcpflow_polled, &slot);

	if (!in || !out || slot >= TCPFLOW_POLL_BATCH)
		return 1;
	if (!poll_one(in->sk[slot], out))
		__builtin_memset(out, 0, sizeof(*out));
	return 0;
}

/* Run by user space (BPF_PROG_RUN) on a batch of the keys it read from
 * tcpflow_flows: their counts now go to tcpflow_polled. The map is read in
 * batches, and so polled, so that no single run walks all its buckets
 * (65,536 by default) with the CPU held. */
SEC("syscall")
int tcpflow_poll(struct tcpflow_poll_args *args)
{
	__u32 zero = 0, n = args->n;
	struct tcpflow_poll_args *in = bpf_map_lookup_elem(&tcpflow_poll_in, &zero);

	if (!in || n > TCPFLOW_POLL_BATCH)
		return -1;
	/* the context cannot be indexed by a variable: copy it into a map value */
	if (bpf_probe_read_kernel(in, sizeof(*in), args))
		return -1;
	bpf_loop(n, poll_step, NULL, 0);
	return 0;
}

/* Connections older than the agent: walked once in the established hash.
 * Counted from now, as a connection of unknown direction: user space tells
 * the side from the listeners. */
struct adopt_walk {
	struct nulls_walk walk;
	__u32 adopted;
};

#define TCPF_ADOPTABLE                                                                  \
	((1 << TCP_ESTABLISHED) | (1 << TCP_FIN_WAIT1) | (1 << TCP_FIN_WAIT2) |         \
	 (1 << TCP_CLOSE_WAIT) | (1 << TCP_LAST_ACK) | (1 << TCP_CLOSING))
#define TCPF_FIN_SENT ((1 << TCP_FIN_WAIT1) | (1 << TCP_FIN_WAIT2) | (1 << TCP_LAST_ACK) | \
		       (1 << TCP_CLOSING))

static __always_inline void flow_adopt(const struct sock *sk, __u8 state, struct adopt_walk *w)
{
	__u64 key = (__u64)sk;
	struct tcpflow_value *v;

	if (bpf_map_lookup_elem(&tcpflow_flows, &key))
		return; /* seen live since the programs were attached */
	v = flow_create(sk, TCPFLOW_DIR_UNKNOWN, false);
	if (!v || (v->flags & TCPFLOW_F_COUNTING))
		return;
	/* A FIN already queued is not data. (A socket caught between its state
	 * change and tcp_send_fin() is read as if the FIN were queued: it then
	 * counts one byte too many. The window is a few instructions long.) */
	if ((1 << state) & TCPF_FIN_SENT)
		v->flags |= TCPFLOW_F_FIN_SENT;
	/* not OPENED: it opened before we watched, as a socket first seen at
	 * its close */
	counting_begin(sk, v);
	w->adopted++;
}

static long adopt_step(__u64 i, struct adopt_walk *w)
{
	bool done = false;
	const struct sock *sk = nulls_walk_next(&w->walk, &done);
	__u8 state;

	if (done)
		return 1;
	if (!sk)
		return 0;
	/* the chains also hold TIME_WAIT and NEW_SYN_RECV mini-sockets: the
	 * state, in the common part, tells them apart before anything else is read */
	state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (state < 16 && ((1 << state) & TCPF_ADOPTABLE) &&
	    BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP)
		flow_adopt(sk, state, w);
	return 0;
}

/* Run by user space once the programs are attached; returns how many
 * connections it found (those seen live since are skipped). */
SEC("syscall")
int tcpflow_adopt(void *ctx)
{
	struct inet_hashinfo *h = tcp_hashinfo();
	struct adopt_walk w = {};

	if (!h)
		return -1;
	w.walk.buckets = (__u64)BPF_CORE_READ(h, ehash);
	w.walk.n_buckets = BPF_CORE_READ(h, ehash_mask) + 1;
	w.walk.stride = bpf_core_type_size(struct inet_ehash_bucket);
	w.walk.head_off = bpf_core_field_offset(struct inet_ehash_bucket, chain);
	bpf_loop(1 << 23, adopt_step, &w, 0);
	return w.adopted;
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
	if (v && !(v->flags & TCPFLOW_F_CLOSING)) {
		__sync_fetch_and_add(&v->resets_sent, 1);
		v->rst_reason = reason;
	} else if (state == TCP_CLOSE) {
		/* e.g. close() with unread data: CLOSE first, then the reset */
		emit_late(sk, v, 0, reason + 1);
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

/* Ring buffer records are only ever void pointers to the compiler, and the
 * stats only indexes: name the types once so they are in the object's BTF for
 * the user-side checks. */
const struct tcpflow_event *unused_tcpflow_event __attribute__((unused));
const enum tcpflow_stat *unused_tcpflow_stat __attribute__((unused));

char LICENSE[] SEC("license") = "Dual BSD/GPL";
