/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* HTTP/1.x request metrics: structs and constants shared by http.bpf.c and
 * src/meshlens/probes/http.py (which checks its mirror against this BTF). */
#ifndef MESHLENS_HTTP_H
#define MESHLENS_HTTP_H

#define HTTP_COMM_LEN 16
#define HTTP_FIFO 16         /* outstanding (pipelined) requests per connection */
#define HTTP_DUR_BUCKETS 20  /* Envoy's 19 default bounds (ms) + +Inf */
#define HTTP_SIZE_BUCKETS 11 /* 1, 10, ..., 1e9 bytes + +Inf */
#define HTTP_CARRY_MAX 256   /* bytes of a line split across segments */
#define HTTP_PATH_LEN 128    /* path bytes kept for the route and the trace */
#define HTTP_HOST_LEN 64     /* Host value bytes kept for the trace */
#define HTTP_ROUTE_LEN 128   /* templated route text */

enum http_method {
	HTTP_M_OTHER = 0, /* a token that is none of the below */
	HTTP_M_GET = 1,
	HTTP_M_HEAD = 2,
	HTTP_M_POST = 3,
	HTTP_M_PUT = 4,
	HTTP_M_DELETE = 5,
	HTTP_M_CONNECT = 6,
	HTTP_M_OPTIONS = 7,
	HTTP_M_TRACE = 8,
	HTTP_M_PATCH = 9,
};

/* Which side of the connection the socket is: the one that sent the first
 * request is the client (reporter="source"). */
enum http_role {
	HTTP_ROLE_CLIENT = 1,
	HTTP_ROLE_SERVER = 2,
};

/* Route ids with a fixed meaning; every other id is a hash of the route text. */
enum http_route_id {
	HTTP_ROUTE_NONE = 0,  /* routes are off */
	HTTP_ROUTE_OTHER = 1, /* the route table is full */
};

/* Self-metrics, indexes into the per-CPU http_stats array. The *_UNPARSED_*
 * ones are meshlens_http_unparsed_total{reason}. */
enum http_stat {
	HTTP_STAT_CONNS_FULL = 0,      /* connection not tracked: map full */
	HTTP_STAT_EDGES_FULL = 1,      /* connection not tracked: edge map full */
	HTTP_STAT_AGGS_FULL = 2,       /* request not counted: aggregate map full */
	HTTP_STAT_SAMPLES_LOST = 3,    /* trace sample dropped: ring buffer full */
	HTTP_STAT_LIVE = 4,            /* inserts minus deletes of http_conns */
	HTTP_STAT_CARRY_FULL = 5,      /* split line not kept: carry map full */
	HTTP_STAT_BAD_REQUEST = 6,     /* unparsed: not a valid HTTP/1.x request line */
	HTTP_STAT_BAD_RESPONSE = 7,    /* unparsed: not a valid HTTP/1.x status line */
	HTTP_STAT_BAD_FRAMING = 8,     /* unparsed: bad Content-Length/Transfer-Encoding/chunk */
	HTTP_STAT_HEADERS_TOO_BIG = 9, /* unparsed: header block or a needed line too long */
	HTTP_STAT_GAP = 10,            /* unparsed: missing bytes (reordering/loss on ingress) */
	HTTP_STAT_PIPELINE_FULL = 11,  /* unparsed: more than HTTP_FIFO outstanding requests */
	HTTP_STAT_UNMATCHED = 12,      /* unparsed: a response without a request */
	HTTP_STAT_NO_RESPONSE = 13,    /* unparsed: connection closed with requests pending */
	HTTP_STAT_TOO_COMPLEX = 14,    /* unparsed: step budget of one packet exhausted */
	HTTP_STAT_SAMPLES = 15,        /* trace samples sent */
	HTTP_STAT_ROUTES_FULL = 16,    /* requests counted under route "other" */
	HTTP_STAT_MAX = 17,
};

/* Who owns a socket: filled in process context (connect(), listen()); the
 * socket-local storage of connecting sockets, the value of http_listeners. */
struct http_owner {
	__u32 tgid;
	__u32 __pad0;
	char comm[HTTP_COMM_LEN];
};

/* Key of http_listeners. */
struct http_listen_key {
	__u64 netns;
	__u16 port;
	__u16 __pad0;
	__u32 __pad1;
};

/* Key of http_endpoints: the local end of a connecting socket; netns is 0
 * unless the address is loopback (the same scoping as accounting.Namer). */
struct http_endpoint_key {
	__u64 netns;
	__u8 addr[16];
	__u16 port;
	__u16 __pad0;
	__u32 __pad1;
};

struct http_endpoint {
	__u64 netns;
	__u64 cgroup_id;
	__u32 tgid;
	__u32 http_seq; /* sequence number of its HTTP connection's first request byte */
	char comm[HTTP_COMM_LEN];
	__u64 http_id; /* id of the HTTP connection followed from this end; 0: none */
};

/* What names one side of the requests: the reporting socket's owner and
 * addresses, the service port, and the peer's owner when it is a local
 * socket. Keyed in http_edges by a hash of everything but the tgids. */
struct http_edge {
	__u64 netns;
	__u64 cgroup_id;
	__u64 peer_netns;
	__u64 peer_cgroup_id;
	__u8 laddr[16];
	__u8 raddr[16];
	char comm[HTTP_COMM_LEN];
	char peer_comm[HTTP_COMM_LEN];
	__u16 port; /* the server's port: remote for a client, local for a server */
	__u16 family;
	__u8 role; /* enum http_role */
	__u8 peer_known;
	__u16 __pad0;
	__u32 tgid; /* naming hints, not part of the identity: first process seen */
	__u32 peer_tgid;
};

/* Key of http_aggs: one series per edge, route, status and method. A client
 * whose server is a local socket that leaves it the parsing counts the
 * server's exchange in the same entry (one lookup, one set of adds): user
 * space adds it to both edges. */
struct http_agg_key {
	__u64 edge;
	__u64 peer_edge; /* the linked server's edge; 0: none */
	__u32 route;
	__u16 status;
	__u8 method;
	__u8 __pad0;
};

/* Value of http_aggs: monotonic counters; user space only reads. The count is
 * the sum of the duration buckets. */
struct http_agg {
	__u64 duration_ns_sum; /* request's first byte -> response's last byte */
	__u64 ttfb_ns_sum;     /* request's first byte -> response's first byte */
	__u64 request_bytes_sum;
	__u64 response_bytes_sum;
	__u64 duration_buckets[HTTP_DUR_BUCKETS];
	__u64 ttfb_buckets[HTTP_DUR_BUCKETS];
	__u64 request_buckets[HTTP_SIZE_BUCKETS];
	__u64 response_buckets[HTTP_SIZE_BUCKETS];
};

/* Parser state of one direction of a connection. */
struct http_dir {
	__u64 remaining;    /* body or chunk bytes still to come */
	__u64 body;         /* body bytes of the current message (decoded for chunked) */
	__u64 msg_start_ns; /* when the current message's first byte was seen; 0: none */
	__u64 last_ns;      /* when the last byte was seen */
	__u32 next_seq;     /* TCP sequence number of the next byte to parse */
	__u16 hdr_len;      /* header bytes of the current message so far */
	__u8 state;         /* enum http_pstate (http.bpf.c) */
	__u8 flags;         /* enum http_dflag (http.bpf.c) */
};

/* One outstanding request. */
struct http_req {
	__u64 start_ns; /* its first byte */
	__u64 body;     /* its body bytes so far */
	__u32 route;
	__u8 method;
	__u8 sampled; /* has an http_pending entry for the trace */
	__u16 __pad0;
};

/* Value of http_conns: socket-local storage of each HTTP connection. */
struct http_conn {
	__u64 id;   /* the connection's id: keys of its carry, link and trace entries */
	__u64 edge; /* key of its http_edges entry */
	/* first, next to the map element's key: most calls read only `dead` */
	__u16 status; /* of the response being parsed */
	__u8 head;    /* fifo index of the oldest outstanding request */
	__u8 count;   /* outstanding requests */
	__u8 cur;     /* fifo index of the request whose bytes are being parsed */
	__u8 role;
	__u8 dead; /* parsing stopped for good (tunnel, upgrade, or lost sync) */
	__u8 tentative; /* created on a method prefix: drop silently if not HTTP */
	__u16 lport;
	__u16 rport;
	__u8 peer; /* a client: is its server a local socket that leaves it the parsing? */
	__u8 __pad2[3];
	__u64 peer_edge; /* that server's edge (peer == linked) */
	struct http_dir dir[2]; /* [0] requests, [1] responses */
	struct http_req fifo[HTTP_FIFO];
	/* A response that ended before its request did (an early answer): it is
	 * counted when the request ends, or at the connection's end. */
	__u64 def_resp_bytes;
	__u64 def_resp_start;
	__u64 def_end;
	__u16 def_status;
	__u8 def_slot;
	__u8 def_pending;
	__u32 __pad1;
};

/* Trace record (`meshlens trace http`), rate-limited in the kernel. */
struct http_sample {
	__u64 end_ns;
	__u64 duration_ns;
	__u64 ttfb_ns;
	__u64 request_bytes;
	__u64 response_bytes;
	__u64 netns;
	__u32 tgid;
	__u16 status;
	__u8 method;
	__u8 role;
	__u8 laddr[16];
	__u8 raddr[16];
	__u16 lport;
	__u16 rport;
	__u16 family;
	__u8 path_len;
	__u8 host_len;
	char comm[HTTP_COMM_LEN];
	char path[HTTP_PATH_LEN];
	char host[HTTP_HOST_LEN];
};

/* Path and Host of a sampled request, kept until its response. */
struct http_pending {
	char path[HTTP_PATH_LEN];
	char host[HTTP_HOST_LEN];
	__u8 path_len;
	__u8 host_len;
	__u16 __pad0;
	__u32 __pad1;
};

/* Value of http_routes: the templated route text of a route id. */
struct http_route {
	char text[HTTP_ROUTE_LEN];
	__u32 len;
	__u32 __pad0;
};

/* Value of http_quiet: a socket http passes over, and where each direction's
 * byte counts start (first_bytes in http.bpf.c); sk 0 is a free slot. */
struct http_quiet {
	__u64 sk;
	__u32 snd_first;
	__u32 rcv_first;
};

#endif /* MESHLENS_HTTP_H */
