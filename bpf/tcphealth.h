/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Packet- and listener-level network health: structs and constants shared by
 * tcphealth.bpf.c and src/meshlens/probes/tcphealth.py. Per-connection health
 * (retransmits, resets, RTT) lives in tcpflow's per-socket entries. */
#ifndef MESHLENS_TCPHEALTH_H
#define MESHLENS_TCPHEALTH_H

/* accept-queue length at each handshake: slot 0 = empty, slot i = [2^(i-1), 2^i) */
#define TCPHEALTH_BACKLOG_SLOTS 16

enum tcphealth_kind {
	TCPHEALTH_DROP = 1,     /* skb:kfree_skb, reason = enum skb_drop_reason */
	TCPHEALTH_RST_NOSK = 2, /* reset sent with no socket, reason = enum sk_rst_reason */
};

enum tcphealth_stat {
	TCPHEALTH_STAT_EVENTS_FULL = 0, /* new (kind, reason, tuple) not tracked: map full */
	TCPHEALTH_STAT_LISTEN_FULL = 1,
	TCPHEALTH_STAT_UNPARSED = 2, /* drops with neither socket nor parsable headers */
	TCPHEALTH_STAT_MAX = 3,
};

/* What happened to which packets, counted. Local/remote from the socket when
 * the packet has one; else the packet's destination is taken as local. */
struct tcphealth_key {
	__u64 netns;
	__u8 laddr[16];
	__u8 raddr[16];
	__u16 lport;
	__u16 rport;
	__u16 family; /* 0: no addresses (attributed to the host) */
	__u8 proto;
	__u8 kind;
	__u32 reason;
	__u32 has_sock;
};

struct tcphealth_listen_key {
	__u64 netns;
	__u16 port;
	__u16 __pad0;
	__u32 __pad1;
};

struct tcphealth_listen_value {
	__u64 overflows;      /* the listeners' sk_drops: ListenDrops, mostly overflows */
	__u64 queued;         /* handshakes completed into the accept queue */
	__u64 synack_retrans; /* SYN-ACKs retransmitted */
	__u64 backlog_hist[TCPHEALTH_BACKLOG_SLOTS];
	__u32 max_backlog; /* the listen() backlog */
	__u32 __pad0;
};

#endif /* MESHLENS_TCPHEALTH_H */
