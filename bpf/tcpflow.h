/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* TCP flow accounting: structs and constants shared by tcpflow.bpf.c and
 * src/meshlens/probes/tcpflow.py (which checks its mirror against this BTF). */
#ifndef MESHLENS_TCPFLOW_H
#define MESHLENS_TCPFLOW_H

#define TCPFLOW_COMM_LEN 16
/* RTT histogram: slot i counts smoothed RTTs in [2^i, 2^(i+1)) microseconds;
 * slot 0 also takes < 1 us, the last slot everything from 2^23 us (8.4 s). */
#define TCPFLOW_RTT_SLOTS 24

/* Retransmission types, told apart by the socket's state and the congestion
 * avoidance state at the time (icsk_ca_state). */
enum tcpflow_retrans {
	TCPFLOW_RETRANS_TIMEOUT = 0, /* TCP_CA_Loss: after a retransmission timeout */
	TCPFLOW_RETRANS_FAST = 1,    /* TCP_CA_Recovery: fast retransmit / loss recovery */
	TCPFLOW_RETRANS_SYN = 2,     /* SYN_SENT: the SYN itself */
	TCPFLOW_RETRANS_OTHER = 3,   /* probes (TLP) and others */
	TCPFLOW_RETRANS_TYPES = 4,
};

/* How the socket came to be. */
enum tcpflow_dir {
	TCPFLOW_DIR_UNKNOWN = 0, /* established before the agent started */
	TCPFLOW_DIR_ACTIVE = 1,  /* connect(): the source side */
	TCPFLOW_DIR_PASSIVE = 2, /* accept(): the destination side */
};

enum tcpflow_flag {
	TCPFLOW_F_OPENED = 1,   /* reached ESTABLISHED while we watched */
	TCPFLOW_F_CLOSING = 2,  /* the close record is out; the entry waits for reads after it */
	TCPFLOW_F_COUNTING = 4, /* the *_base fields are set: bytes are counted from them */
	TCPFLOW_F_FIN_SENT = 8, /* a FIN is (about to be) in write_seq */
};

enum tcpflow_event_type {
	TCPFLOW_EV_CLOSE = 1,   /* final record; the kernel deleted the entry */
	TCPFLOW_EV_LATE = 2,    /* bytes read or a reset sent after the close record */
	TCPFLOW_EV_CONNECT = 3, /* active open finished (trace only) */
	TCPFLOW_EV_ACCEPT = 4,  /* passive open finished (trace only) */
	TCPFLOW_EV_CONNECT_FAILED = 5, /* SYN_SENT -> CLOSE; error says why */
};

/* Self-metrics, indexes into the per-CPU tcpflow_stats array. */
enum tcpflow_stat {
	TCPFLOW_STAT_FLOWS_FULL = 0,     /* flow not tracked: map full */
	TCPFLOW_STAT_LISTENERS_FULL = 1, /* listener owner not recorded: map full */
	TCPFLOW_STAT_EVENTS_LOST = 2,    /* ring buffer full: record dropped */
	TCPFLOW_STAT_BYTES_LOST = 3,     /* bytes in dropped records */
	TCPFLOW_STAT_LATE = 4,           /* late records sent */
	TCPFLOW_STAT_LIVE = 5,           /* inserts minus deletes: live entries */
	TCPFLOW_STAT_STALE = 6,          /* entry whose socket was gone at a poll */
	TCPFLOW_STAT_INSERTS = 7,        /* entries made: user space walks the map only
					    when this moved (docs/tcpflow.md) */
	TCPFLOW_STAT_MAX = 8,
};

/* Value of tcpflow_flows, keyed by the socket's kernel address. The byte
 * counts are what the application wrote and read, taken from the socket's own
 * sequence numbers (tcpflow_poll at every refresh, and at close): nothing runs
 * per send or recv. They never decrease while the entry lives; user space never
 * writes or deletes it. */
struct tcpflow_value {
	__u64 bytes_sent;
	__u64 bytes_received;
	/* where counting began (TCPFLOW_F_COUNTING): the exact low 32 bits come
	 * from the sequence numbers, the high bits from the kernel's 64-bit totals */
	__u64 sent_base;     /* bytes_acked + unacked (write_seq - snd_una) */
	__u64 received_base; /* bytes_received - unread (rcv_nxt - copied_seq) */
	__u32 write_base;    /* write_seq, less a FIN in it */
	__u32 copied_base;   /* copied_seq, less a FIN read */
	/* at close, for what the application still reads after it */
	__u64 tcp_received_close; /* tcp_sock.bytes_received (tcp_disconnect() zeroes it) */
	__u32 copied_close;
	__u32 unread_close; /* data received, not yet read */
	__u32 tgid;
	__u32 srtt_us; /* smoothed RTT of the last sample */
	__u8 dir;
	__u8 flags;
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u64 start_ns;
	__u64 netns;
	__u64 cgroup_id;
	__u32 pid;
	__u32 __pad0;
	__u8 laddr[16];
	__u8 raddr[16];
	char comm[TCPFLOW_COMM_LEN];
	/* network health; monotonic, copied (not taken) into the final record */
	__u32 retrans[TCPFLOW_RETRANS_TYPES]; /* retransmitted segments by type */
	__u32 resets_sent;
	__u32 resets_received;
	__u32 rst_reason; /* last enum sk_rst_reason sent */
	__u32 __pad1;
	__u64 rtt_sum_us; /* sum of the samples in rtt_hist */
	__u32 rtt_hist[TCPFLOW_RTT_SLOTS];
};

/* tcpflow_poll's input, its context (BPF_PROG_RUN): the sockets to bring up to
 * date, as user space found them in tcpflow_flows. Its output is
 * tcpflow_polled[i], the entry of sk[i] now, all zero (start_ns 0) if the
 * socket's entry is gone. A batch at a time, so no run walks the whole map. */
#define TCPFLOW_POLL_BATCH 256

struct tcpflow_poll_args {
	__u32 n;
	__u32 __pad;
	__u64 sk[TCPFLOW_POLL_BATCH];
};

/* Ring buffer record: close, late bytes, or (trace mode) an open. */
struct tcpflow_event {
	__u64 sk;
	__u64 start_ns;
	__u64 end_ns;
	__u64 bytes_sent;
	__u64 bytes_received;
	__u64 netns;
	__u64 cgroup_id;
	__u64 bytes_acked; /* the kernel's own totals from tcp_sock */
	__u64 tcp_bytes_received;
	__u32 segs_out;
	__u32 segs_in;
	__u32 total_retrans;
	__u32 srtt_us;
	__u32 tgid;
	__u32 pid;
	__u8 laddr[16];
	__u8 raddr[16];
	char comm[TCPFLOW_COMM_LEN];
	__u16 lport;
	__u16 rport;
	__u16 family;
	__u8 dir;
	__u8 flags;
	__u8 type;
	__u8 oldstate;
	__u16 shutdown; /* sk_shutdown at the record: RCV_SHUTDOWN (1) once a FIN came */
	__u32 error;    /* connect result for TCPFLOW_EV_CONNECT*: 0 or the socket error */
	__u32 retrans[TCPFLOW_RETRANS_TYPES];
	__u32 resets_sent;
	__u32 resets_received;
	__u32 rst_reason;
	__u32 __pad1;
	__u64 rtt_sum_us;
	__u32 rtt_hist[TCPFLOW_RTT_SLOTS];
};

/* Key of tcpflow_listeners: who listens on a port in a network namespace. */
struct tcpflow_listen_key {
	__u64 netns;
	__u16 port;
	__u16 __pad0;
	__u32 __pad1;
};

struct tcpflow_owner {
	__u64 cgroup_id;
	__u32 tgid;
	__u32 pid;
	char comm[TCPFLOW_COMM_LEN];
};

#endif /* MESHLENS_TCPFLOW_H */
