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
	UDPFLOW_STAT_NO_PEER = 3,     /* read by recv() on an unconnected socket that never sent */
	UDPFLOW_STAT_LIVE = 4,        /* inserts minus deletes */
	UDPFLOW_STAT_PEER_ASSUMED = 5, /* read by recv() unconnected: the peer last sent to */
	UDPFLOW_STAT_MAX = 6,
};

/* One UDP socket talking to one peer. Ports in host order; IPv4 addresses in
 * the first 4 bytes. */
struct udpflow_key {
	__u64 ino; /* the socket's inode number (ss, /proc/net/udp): not reused like its address */
	__u8 laddr[16];
	__u8 raddr[16];
	__u16 lport;
	__u16 rport;
	__u16 family;
	__u16 __pad0;
};

struct udpflow_value {
	__u64 start_ns;
	__u64 quiet_ns; /* the sweep that last saw the counters move */
	__u64 seen;     /* datagrams both ways at that sweep */
	__u64 bytes_sent; /* UDP payload bytes, as the application wrote and read them */
	__u64 bytes_received;
	__u64 datagrams_sent;
	__u64 datagrams_received;
	__u64 netns; /* the socket's network namespace */
	__u64 cgroup_id;
	__u32 tgid;
	__u32 pid;
	__u32 closing; /* the sweeper took the counters: an adder reports what it adds */
	__u32 dir;     /* UDPFLOW_DIR_*: who sent the first datagram */
	char comm[UDPFLOW_COMM_LEN];
};

/* The timer that expires idle flows. Not in the flow itself: programs on
 * tracepoints may not touch a map that holds timers. */
struct udpflow_sweeper {
	struct bpf_timer timer;
};

/* The peer address a cgroup sendmsg/recvmsg hook saw, for the tracepoint that
 * ends the same system call on the same thread. */
struct udpflow_peer {
	__u64 cookie; /* the socket's cookie; 0 once taken */
	__u8 addr[16];
	__u16 port;
	__u16 family;
	__u32 __pad0;
};

/* Flat on purpose: the user-side mirror is a plain field table. */
struct udpflow_event {
	__u64 ino;
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
