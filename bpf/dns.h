/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* DNS queries and responses: structs and constants shared by dns.bpf.c and
 * src/meshlens/probes/dns.py (which checks its mirrors against this BTF).
 * Padding is explicit so the user-side field tables match byte for byte. */
#ifndef MESHLENS_DNS_H
#define MESHLENS_DNS_H

#define DNS_COMM_LEN 16
#define DNS_QUESTION_MAX 260 /* encoded name (<= 255) + qtype + qclass, rounded up */
#define DNS_DATA_MAX 512     /* bytes of each response copied for user space */
#define DNS_PORTS_MAX 8	     /* 53 and up to 7 more, from `--dns-port` */
#define DNS_BUCKETS 16	     /* finite latency buckets; upper bounds set by user space */
#define DNS_RCODE_TIMEOUT 0xffff /* rcode of a query that got no answer in time */

enum dns_event_type {
	DNS_EV_RESPONSE = 1, /* a response matched its query */
	DNS_EV_TIMEOUT = 2,  /* no response within timeout_ns */
};

enum dns_event_flags {
	DNS_EVF_QUESTION = 1, /* data[] holds the query's question, not a response */
};

/* Records come in three sizes: the header and 128, 256 or 512 bytes of data. */
#define DNS_EVENT_SIZE_CLASSES 3

enum dns_stat {
	DNS_STAT_QUERIES = 0,	    /* queries tracked */
	DNS_STAT_RESPONSES = 1,	    /* responses matched to a tracked query */
	DNS_STAT_TIMEOUTS = 2,	    /* tracked queries that timed out */
	DNS_STAT_PENDING_FULL = 3,  /* query not tracked: pending map full */
	DNS_STAT_AGG_FULL = 4,	    /* completed query not counted: aggregate map full */
	DNS_STAT_EVENTS_LOST = 5,   /* ring buffer full: record dropped (counts are kept) */
	DNS_STAT_UNMATCHED = 6,	    /* response with no pending query (late, foreign, spoofed) */
	DNS_STAT_MISMATCH = 7,	    /* response whose question is not the query's: ignored */
	DNS_STAT_DUPLICATE = 8,	    /* query while one with the same key is pending (retry) */
	DNS_STAT_TCP_CONTINUED = 9, /* TCP call inside a message that began earlier */
	DNS_STAT_TCP_EXTRA = 10,    /* more messages in one TCP call than are parsed */
	DNS_STAT_MAL_SHORT = 11,    /* malformed: shorter than a DNS header */
	DNS_STAT_MAL_OPCODE = 12,   /* malformed or not a standard query: opcode != QUERY */
	DNS_STAT_MAL_QDCOUNT = 13,  /* malformed query: question count != 1 */
	DNS_STAT_MAL_LABEL = 14,    /* malformed: label longer than 63 (reserved label type) */
	DNS_STAT_MAL_POINTER = 15,  /* malformed query: compression pointer in its question */
	DNS_STAT_MAL_NAME_LONG = 16, /* malformed: name longer than 255 bytes */
	DNS_STAT_MAL_TRUNCATED = 17, /* malformed: message ends inside the question */
	DNS_STAT_MAL_TCP = 18,	     /* TCP call too short for the length prefix and header */
	DNS_STAT_LIVE = 19,	     /* pending inserts minus deletes */
	DNS_STAT_SWEEPER_RETRY = 20, /* the sweeper timer could not be armed yet (retried) */
	DNS_STAT_SWEEPS = 21,	     /* passes of the sweeper over the pending map */
	DNS_STAT_UNREADABLE = 22,    /* a DNS-port call not read: no user buffers, or scratch in use */
	DNS_STAT_MAX = 23,
};

/* One outstanding query: the client's socket (its kernel address) and the DNS
 * id. Not the server: an unconnected socket's answer reaches the tracepoint
 * before its source address is copied out. The question is compared instead. */
struct dns_key {
	__u64 sock;
	__u16 id;
	__u16 __pad0;
	__u32 __pad1;
};

/* Ports in host order; IPv4 addresses in the first 4 bytes. */
struct dns_pending {
	__u64 start_ns; /* 0 while the entry is being filled */
	__u64 netns;
	__u64 cgroup_id;
	__u32 tgid;
	__u32 pid;
	char comm[DNS_COMM_LEN];
	__u8 client[16];
	__u8 server[16];
	__u16 client_port;
	__u16 server_port;
	__u16 family;
	__u16 qtype;
	__u16 qlen; /* bytes of question[] that hold the question */
	__u8 proto; /* IPPROTO_UDP or IPPROTO_TCP */
	__u8 __pad0;
	__u8 question[DNS_QUESTION_MAX]; /* name as on the wire, qtype, qclass */
	__u8 __pad1[4];
};

/* The one timer that times queries out: it walks the pending map every
 * sweep_ns (a timer per query would allocate per query, and that allocation
 * fails under load). */
struct dns_sweeper {
	struct bpf_timer timer;
	__u64 armed;
};

/* Counts and latency per owner, server, type and rcode; never deleted. */
struct dns_agg_key {
	__u64 netns;
	__u64 cgroup_id;
	char comm[DNS_COMM_LEN];
	__u8 client[16];
	__u8 server[16];
	__u16 server_port;
	__u16 family;
	__u16 qtype;
	__u16 rcode; /* 0..15, or DNS_RCODE_TIMEOUT */
	__u8 proto;
	__u8 __pad0[7];
};

struct dns_agg_value {
	__u64 count;
	__u64 sum_ns;		     /* responses only; timeouts add to count alone */
	__u64 buckets[DNS_BUCKETS]; /* responses with latency <= bucket_ns[i] (first fit) */
	__u32 tgid;		     /* last sender, for naming */
	__u32 __pad0;
};

/* TCP: where the next message starts when one continues past a call. */
struct dns_tcp_key {
	__u64 sock;
	__u32 egress;
	__u32 __pad0;
};

struct dns_tcp_next {
	__u32 seq;  /* stream position of the next unparsed byte */
	__u32 body; /* a length prefix ended the last call: the message's length; else 0 */
};

/* One completed query (response or timeout). data[] holds the first bytes of
 * the response (whose question the kernel checked equals the query's), or the
 * query's question (DNS_EVF_QUESTION: timeouts, answers without a question).
 * Only the header and data_cap bytes of data[] are submitted. */
struct dns_event {
	__u64 sock;
	__u64 start_ns;
	__u64 end_ns;
	__u64 netns;
	__u64 cgroup_id;
	__u32 tgid;
	__u32 pid;
	char comm[DNS_COMM_LEN];
	__u8 client[16];
	__u8 server[16];
	__u16 client_port;
	__u16 server_port;
	__u16 family;
	__u16 id;
	__u16 qtype;
	__u16 rcode;
	__u16 qlen;	 /* bytes of the question */
	__u16 data_len;	 /* bytes of data[] filled */
	__u16 msg_total; /* length of the whole response message; 0 for a timeout */
	__u16 data_cap;	 /* bytes of data[] in this record: 128, 256 or 512 */
	__u8 proto;
	__u8 type;  /* enum dns_event_type */
	__u8 flags; /* enum dns_event_flags */
	__u8 __pad0;
	__u8 data[DNS_DATA_MAX];
};

#endif /* MESHLENS_DNS_H */
