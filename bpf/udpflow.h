/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* UDP flow accounting: structs and constants shared by udpflow.bpf.c and
 * src/meshlens/probes/udpflow.py (which checks its mirror against this BTF). */
#ifndef MESHLENS_UDPFLOW_H
#define MESHLENS_UDPFLOW_H

#define UDPFLOW_COMM_LEN 16

enum udpflow_event_type {
	UDPFLOW_EV_EXPIRE = 1, /* final record of an idle flow; the kernel deleted it */
	UDPFLOW_EV_LATE = 2,   /* datagrams counted while the flow expired */
};

enum udpflow_dir {
	UDPFLOW_DIR_SOURCE = 1,      /* first datagram was sent: this socket initiated */
	UDPFLOW_DIR_DESTINATION = 2, /* first datagram was received */
};

enum udpflow_stat {
	UDPFLOW_STAT_FLOWS_FULL = 0,  /* flow not tracked: map full */
	UDPFLOW_STAT_EVENTS_LOST = 1, /* ring buffer full: record dropped */
	UDPFLOW_STAT_BYTES_LOST = 2,  /* bytes in dropped records */
	UDPFLOW_STAT_UNPARSED = 3,    /* UDP socket traffic we could not parse */
	UDPFLOW_STAT_LIVE = 4,        /* inserts minus deletes */
	UDPFLOW_STAT_MAX = 5,
};

/* One UDP socket talking to one peer. Ports in host order; IPv4 addresses in
 * the first 4 bytes. */
struct udpflow_key {
	__u64 cookie; /* the socket's cookie: unique for the life of the host */
	__u8 laddr[16];
	__u8 raddr[16];
	__u16 lport;
	__u16 rport;
	__u16 family;
	__u16 __pad0;
};

struct udpflow_value {
	struct bpf_timer timer; /* expires the flow after idle_ns without traffic */
	__u64 start_ns;
	__u64 last_ns;
	__u64 bytes_sent; /* UDP payload bytes */
	__u64 bytes_received;
	__u64 datagrams_sent;
	__u64 datagrams_received;
	__u64 netns; /* 0 when first seen on ingress from an unknown socket */
	__u64 cgroup_id;
	__u32 tgid;
	__u32 pid;
	__u16 closing;
	__u16 armed; /* the expiry timer is set (bpf_timer_init can fail: -ENOMEM) */
	__u32 dir;   /* UDPFLOW_DIR_*: who sent the first datagram */
	char comm[UDPFLOW_COMM_LEN];
};

/* Who sends from a socket, learned on egress (process context). */
struct udpflow_owner {
	__u64 netns;
	__u64 cgroup_id;
	__u32 tgid;
	__u32 pid;
	char comm[UDPFLOW_COMM_LEN];
};

/* Flat on purpose: the user-side mirror is a plain field table. */
struct udpflow_event {
	__u64 cookie;
	__u8 laddr[16];
	__u8 raddr[16];
	__u16 lport;
	__u16 rport;
	__u16 family;
	__u16 __pad1;
	__u64 bytes_sent;
	__u64 bytes_received;
	__u64 datagrams_sent;
	__u64 datagrams_received;
	__u64 start_ns;
	__u64 end_ns;
	__u64 netns;
	__u64 cgroup_id;
	__u32 tgid;
	__u32 pid;
	char comm[UDPFLOW_COMM_LEN];
	__u32 type;
	__u32 dir;
};

#endif /* MESHLENS_UDPFLOW_H */
