// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* HTTP/1.x request metrics from socket data, without a proxy.
 *
 * Two raw_tp programs run behind the socket chain (sockchain.h) at the end of
 * every TCP send()/recv(): sock_send_length and sock_recv_length fire once a
 * call has moved `ret` bytes, in the calling process. The bytes themselves are
 * read from the caller's own buffers (the syscall's arguments, through the
 * task's saved registers): what the application wrote and read, in stream
 * order, each byte once, with no retransmits or reordering to undo. A
 * per-connection state machine follows each direction by TCP sequence number
 * (write_seq, copied_seq): it parses the start line and the few headers that
 * frame a message (Content-Length, Transfer-Encoding, the empty line), skips
 * bodies by length or by chunk without reading them, and matches responses to
 * a FIFO of outstanding requests (pipelining). Each completed exchange is
 * added to an aggregate (edge, route, status, method) -> counters and
 * histogram buckets, which user space reads in batches; nothing wakes user
 * space per request. A rate-limited ring buffer of samples feeds `meshlens
 * trace http`.
 *
 * inet_sock_set_state (raw_tp) records who owns client sockets and listeners,
 * and finishes a connection's exchanges at its close. See docs/http.md. */
#include "meshlens.bpf.h"
#include "http.h"
#include "sockcall.h"
#include "sockchain.h"

#define WIN 512                /* bytes of a call loaded at once */
#define BUF_SIZE 1024          /* scratch: carry + window, power of two */
#define BUF_SLACK 64           /* 8-byte reads past the end stay inside */
#define MAX_HEADER_BYTES 16384 /* a bigger header block is unparsed */
#define MAX_STEPS 4096         /* parser steps per call */
#define MAX_LINES 64           /* lines per scan call */
#define TAIL 16                /* bytes kept of a long start line */

/* Parser states (struct http_dir.state). */
enum http_pstate {
	PS_IDLE = 0,       /* before a start line */
	PS_HEADERS = 1,    /* in the header block */
	PS_BODY = 2,       /* Content-Length body: `remaining` bytes to come */
	PS_CHUNK_SIZE = 3, /* before a chunk-size line */
	PS_CHUNK_DATA = 4, /* in chunk data: `remaining` bytes to come */
	PS_CHUNK_END = 5,  /* the CRLF after chunk data */
	PS_TRAILERS = 6,   /* trailer fields after the last chunk */
	PS_EOF = 7,        /* response body delimited by the connection's end */
	PS_UNSYNCED = 8,   /* picked up mid-stream: wait for a message start */
	PS_OPAQUE = 9,     /* bytes that are not HTTP (after CONNECT) */
};

/* struct http_dir.flags */
enum http_dflag {
	DF_SKIPLINE = 1,  /* skip to the next LF (a long line we need nothing of) */
	DF_CHUNKED = 2,   /* Transfer-Encoding ends in chunked */
	DF_HAVE_CL = 4,   /* Content-Length seen; its value is in `remaining` */
	DF_TE_OTHER = 8,  /* Transfer-Encoding present, not chunked */
	DF_LONGSTART = 16, /* long request line: check its version at its LF */
	DF_CARRY = 32,    /* an http_carry entry holds the start of a split line */
	DF_INTERIM = 64,  /* the response being parsed is 1xx */
	DF_UNMATCHED = 128, /* the response being parsed has no request */
};

/* Set from user space before load. */
const volatile __u64 sample_interval_ns = 0; /* 0: no trace samples */
const volatile __u32 routes_on = 0;         /* aggregate by templated route */
const volatile __u64 wakeup_bytes = 0;

/* Per-connection parser state, keyed by the socket's address: created for
 * HTTP connections only, deleted when the socket closes (http_state). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct http_conn);
} http_conns SEC(".maps");

/* Ids of new connections (keys of their carry and trace entries). */
__u64 http_last_id = 0;

struct http_carry {
	__u32 len;
	__u32 __pad0;
	__u8 bytes[HTTP_CARRY_MAX];
};

/* The start of a line that a call boundary split; key = connection id * 2 + direction. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct http_carry);
} http_carry SEC(".maps");

/* Owner of each connecting socket (by its address), recorded in connect(),
 * deleted at its close. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct http_owner);
} http_owners SEC(".maps");

/* Owner of each listener, recorded in listen(). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct http_listen_key);
	__type(value, struct http_owner);
} http_listeners SEC(".maps");

/* Local end of each established connecting socket -> its owner, so the server
 * side of a connection between two local sockets can name its client. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct http_endpoint_key);
	__type(value, struct http_endpoint);
} http_endpoints SEC(".maps");

/* Edge identity hash -> what names it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct http_edge);
} http_edges SEC(".maps");

/* The metrics: user space reads them in batches and never writes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct http_agg_key);
	__type(value, struct http_agg);
} http_aggs SEC(".maps");

/* Route id -> templated route text (routes_on only). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct http_route);
} http_routes SEC(".maps");

/* Path and Host of sampled requests until their response; key = id * 16 + slot. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct http_pending);
} http_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} http_samples SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HTTP_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} http_stats SEC(".maps");

/* Rate limit state of the trace samples (take_sample). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} http_rate SEC(".maps");

/* One exchange, as http_record counts it. */
struct http_rec {
	__u64 dur;
	__u64 ttfb;
	__u64 req_bytes;
	__u64 resp_bytes;
	__u32 route;
	__u16 status;
	__u8 method;
	__u8 b_dur; /* bucket indexes, computed once for both reporters */
	__u8 b_ttfb;
	__u8 b_req;
	__u8 b_resp;
	__u8 __pad0;
};

/* Value of http_links (below). */
struct http_link {
	__u64 peer_edge;
	__u32 state; /* enum http_link_state */
	__u32 __pad0;
};

struct scratch {
	__u8 buf[BUF_SIZE + BUF_SLACK];
	/* 8-byte loads past a short read and the verifier's view of a read at the
	 * end of buf (see uio_read) stay inside the scratch */
	__u8 spill[WIN];
	struct call_segs uio; /* where the call's bytes are */
	__u64 key; /* of http_conns: off handle()'s stack, which is near the limit */
	struct http_conn conn; /* initial value of a new connection */
	struct http_agg agg;   /* zero: initial value of a new aggregate */
	struct http_route route;
	struct http_pending pending;
	struct http_endpoint_key ek; /* keys and values too big for the stack */
	struct http_link link;
};

/* One scratch per nesting level of http programs on a CPU: a softirq (a socket
 * closing on a reset) can run http_state while a send/recv program is mid-way
 * on the same CPU, in process context; each level gets its own, so neither
 * overwrites the other's bytes. */
#define SCRATCH_LEVELS 3

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SCRATCH_LEVELS);
	__type(key, __u32);
	__type(value, struct scratch);
} http_scratch SEC(".maps");

/* How many http programs are running on this CPU (enter/leave below). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} http_depth SEC(".maps");

/* Envoy's default histogram bounds, in ns. */
static const __u64 dur_bounds[HTTP_DUR_BUCKETS - 1] = {
	500000ULL,      1000000ULL,      5000000ULL,      10000000ULL,      25000000ULL,
	50000000ULL,    100000000ULL,    250000000ULL,    500000000ULL,     1000000000ULL,
	2500000000ULL,  5000000000ULL,   10000000000ULL,  30000000000ULL,   60000000000ULL,
	300000000000ULL, 600000000000ULL, 1800000000000ULL, 3600000000000ULL,
};

/* ---------------------------------------------------------------- helpers
 *
 * Everything that loops over bytes is a global (non-static, noinline)
 * subprogram: the verifier checks those once, with unknown arguments,
 * instead of once per path of their caller. They take plain scalars and
 * pointers to memory (the connection, the scratch buffer, struct pscal). */

#define GLOBAL __attribute__((noinline))

/* Histogram bucket of a duration: the first bound it does not exceed. */
GLOBAL __u32 http_dur_bucket(__u64 ns)
{
	__u32 i;

	for (i = 0; i < HTTP_DUR_BUCKETS - 1; i++)
		if (ns <= dur_bounds[i])
			return i;
	return HTTP_DUR_BUCKETS - 1;
}

GLOBAL __u32 http_size_bucket(__u64 n)
{
	__u64 bound = 1;
	__u32 i;

	for (i = 0; i < HTTP_SIZE_BUCKETS - 1; i++) {
		if (n <= bound)
			return i;
		bound *= 10;
	}
	return HTTP_SIZE_BUCKETS - 1;
}

static __always_inline __u64 ld64(const __u8 *buf, __u32 i)
{
	return *(const __u64 *)(buf + (i & (BUF_SIZE - 1)));
}

static __always_inline __u8 ld8(const __u8 *buf, __u32 i)
{
	return buf[i & (BUF_SIZE - 1)];
}

static __always_inline bool is_digit(__u8 ch)
{
	return ch >= '0' && ch <= '9';
}

static __always_inline bool is_hex(__u8 ch)
{
	return is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F') || ch == '-';
}

/* Lower-case ASCII letters of 8 bytes at once; ':' '-' and digits already
 * have bit 5 set, so header names compare after OR-ing it in. */
#define LC 0x2020202020202020ULL
#define STR8(a, b, c, d, e, f, g, h)                                                     \
	((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24 |             \
	 (__u64)(e) << 32 | (__u64)(f) << 40 | (__u64)(g) << 48 | (__u64)(h) << 56)
#define HTTP11 STR8('H', 'T', 'T', 'P', '/', '1', '.', '1')
#define HTTP10 STR8('H', 'T', 'T', 'P', '/', '1', '.', '0')

static __always_inline __u32 *depth_enter(void)
{
	__u32 zero = 0;
	__u32 *d = bpf_map_lookup_elem(&http_depth, &zero);

	if (d)
		*d += 1; /* a nested run restores it before we go on */
	return d;
}

static __always_inline void depth_leave(__u32 *d)
{
	if (d && *d)
		*d -= 1;
}

/* This run's scratch: the one of its nesting level. */
static __always_inline struct scratch *scratch(void)
{
	__u32 zero = 0, level = 0;
	__u32 *d = bpf_map_lookup_elem(&http_depth, &zero);

	if (d && *d)
		level = *d - 1;
	if (level >= SCRATCH_LEVELS)
		level = SCRATCH_LEVELS - 1;
	return bpf_map_lookup_elem(&http_scratch, &level);
}

/* Scalars of one call's parse. */
struct pscal {
	__u64 now;
	__u64 id;    /* the connection's id (http_last_id) */
	__u32 off;   /* next unparsed byte of the call */
	__u32 end;   /* end of the call's bytes */
	__u32 blen;  /* valid bytes in the scratch buffer; 0: nothing loaded */
	__u32 bpos;  /* next unparsed byte in the buffer */
	__u32 carry; /* buf[0, carry) were carried from an earlier call */
	__u32 bseg;  /* call offset of buf[carry] */
	__u32 di;    /* 0: requests, 1: responses */
	__u32 stop;  /* parsing of this call is over */
};

static __always_inline struct http_dir *dir_of(struct http_conn *c, struct pscal *sc)
{
	return &c->dir[sc->di & 1];
}

static __always_inline void dir_reset(struct http_dir *d, __u8 state)
{
	d->state = state;
	d->flags = 0;
	d->body = 0;
	d->remaining = 0;
	d->hdr_len = 0;
	d->msg_start_ns = 0;
}

/* Index of the first LF in buf[from, to), or -1. Eight bytes at a time. */
GLOBAL int http_find_lf(struct scratch *s, __u32 from, __u32 to)
{
	__u32 i = from;
	int k;

	if (!s)
		return -1;
	for (k = 0; k < BUF_SIZE / 8; k++) {
		__u64 x, t;
		__u32 n = 0;

		if (i >= to)
			return -1;
		x = ld64(s->buf, i) ^ 0x0a0a0a0a0a0a0a0aULL;
		t = (x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL;
		if (t) {
			if (!(t & 0xffffffffULL)) {
				n += 4;
				t >>= 32;
			}
			if (!(t & 0xffffULL)) {
				n += 2;
				t >>= 16;
			}
			if (!(t & 0xffULL))
				n += 1;
			i += n;
			return i < to ? (int)i : -1;
		}
		i += 8;
	}
	return -1;
}

/* ---------------------------------------------------------------- aggregates */

#define REC_RESPONSE 0 /* the oldest request's response just ended */
#define REC_DEFERRED 1 /* the request of an early response ended (or its connection) */

/* Both ends of a connection local (the client's socket and the server's):
 * the same bytes would be parsed twice, at the client's send and at the
 * server's recv (and the responses the other way round). Instead the
 * client's socket parses for both reporters. The client publishes its
 * connection (its id and first byte) in its http_endpoints entry and an
 * http_links entry; the server, at its first call, finds that entry through
 * the same endpoint lookup that names its client, and if both started at the
 * same byte it hands the parsing over (LINK_MIRROR) and keeps only a passive
 * state (dead == DEAD_PASSIVE). The client resolves the link once, at its
 * first exchange (after the server has decided: the response follows its
 * request), or earlier if it stops parsing (then LINK_DEAD: a server that has
 * not decided yet parses for itself). */
#define DEAD_PASSIVE 2 /* struct http_conn.dead: the peer's socket parses for this one */

enum http_peer_state {
	PEER_NONE = 0,   /* not published: the server (if local) parses for itself */
	PEER_OPEN = 1,   /* published, not resolved yet */
	PEER_LINKED = 2, /* this client parses for its server too (peer_edge) */
	PEER_ALONE = 3,  /* resolved: the server parses for itself */
};

enum http_link_state {
	LINK_OPEN = 0,
	LINK_MIRROR = 1, /* the server left the parsing to the client */
	LINK_DEAD = 2,   /* resolved without the server */
};

/* Client connection id -> link, from a client's first request to its resolution. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct http_link);
} http_links SEC(".maps");

/* Sockets whose calls http passes over (dead: a server whose client parses for
 * it, or a connection parsed no more), one slot per hash of the socket's
 * address: an inlined array access before the http_conns lookup, which a local
 * server's every call paid. A slot names its connection by where each
 * direction's byte counts start as well (first_bytes), so a socket freed and allocated
 * again at the same address never matches the slot of the one before; a
 * collision or a torn read only misses, and the lookup decides. */
#define QUIET_BITS 12

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << QUIET_BITS);
	__type(key, __u32);
	__type(value, struct http_quiet);
} http_quiet SEC(".maps");

static __always_inline struct http_quiet *quiet_slot(__u64 skp)
{
	__u32 i = (__u32)((skp * 0x9e3779b97f4a7c15ULL) >> (64 - QUIET_BITS));

	return bpf_map_lookup_elem(&http_quiet, &i);
}

/* Where TCP's counts of bytes acknowledged and received start, per direction
 * (the first data byte, or an active open's SYN: see http_conn_new): the
 * counts move with snd_una and rcv_nxt, so these stay the connection's own
 * for its whole life. */
static __always_inline void first_bytes(const struct tcp_sock *tp, __u32 *snd, __u32 *rcv)
{
	*snd = tp->snd_una - (__u32)tp->bytes_acked;
	*rcv = tp->rcv_nxt - (__u32)tp->bytes_received;
}

/* How many reporters a client's exchanges and unparsed counts stand for: 2
 * when its server's socket is local and left the parsing to it. Resolves a
 * published link on first use. */
GLOBAL __u32 http_reporters(struct http_conn *c)
{
	struct http_link *l;
	__u64 id;

	if (!c)
		return 1;
	if (c->peer == PEER_LINKED)
		return 2;
	if (c->peer != PEER_OPEN)
		return 1;
	id = c->id;
	c->peer = PEER_ALONE;
	l = bpf_map_lookup_elem(&http_links, &id);
	if (!l)
		return 1;
	if (__sync_val_compare_and_swap(&l->state, LINK_OPEN, LINK_DEAD) == LINK_MIRROR) {
		c->peer_edge = l->peer_edge;
		c->peer = PEER_LINKED;
	}
	bpf_map_delete_elem(&http_links, &id);
	return c->peer == PEER_LINKED ? 2 : 1;
}

/* Add one exchange to the aggregate of an edge (and of its linked server's). */
GLOBAL int http_agg_add(__u64 edge, __u64 peer_edge, struct http_rec *x)
{
	struct http_agg_key k = {};
	struct http_agg *v;
	struct scratch *s;

	if (!x)
		return 0;
	k.edge = edge;
	k.peer_edge = peer_edge;
	k.route = x->route;
	k.status = x->status;
	k.method = x->method;
	v = bpf_map_lookup_elem(&http_aggs, &k);
	if (!v) {
		s = scratch();
		if (!s)
			return 0;
		/* fails with EEXIST if another CPU was first: the lookup decides */
		bpf_map_update_elem(&http_aggs, &k, &s->agg, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&http_aggs, &k);
		if (!v) {
			stat_add(&http_stats, HTTP_STAT_AGGS_FULL, 1);
			return 0;
		}
	}
	__sync_fetch_and_add(&v->duration_ns_sum, x->dur);
	__sync_fetch_and_add(&v->ttfb_ns_sum, x->ttfb);
	__sync_fetch_and_add(&v->request_bytes_sum, x->req_bytes);
	__sync_fetch_and_add(&v->response_bytes_sum, x->resp_bytes);
	__sync_fetch_and_add(&v->duration_buckets[x->b_dur < HTTP_DUR_BUCKETS ? x->b_dur : 0], 1);
	__sync_fetch_and_add(&v->ttfb_buckets[x->b_ttfb < HTTP_DUR_BUCKETS ? x->b_ttfb : 0], 1);
	__sync_fetch_and_add(&v->request_buckets[x->b_req < HTTP_SIZE_BUCKETS ? x->b_req : 0], 1);
	__sync_fetch_and_add(&v->response_buckets[x->b_resp < HTTP_SIZE_BUCKETS ? x->b_resp : 0],
			     1);
	return 0;
}

/* One trace record of a sampled exchange; `peer`: the server's, by a linked client. */
GLOBAL int http_sample_out(struct http_conn *c, struct http_rec *x, struct http_pending *pd,
			   __u64 end_ns, __u32 peer)
{
	struct http_sample *smp;
	struct http_edge *e;
	__u64 edge;

	if (!c || !x || !pd)
		return 0;
	edge = peer ? c->peer_edge : c->edge;
	e = bpf_map_lookup_elem(&http_edges, &edge);
	smp = bpf_ringbuf_reserve(&http_samples, sizeof(*smp), 0);
	if (!smp) {
		stat_add(&http_stats, HTTP_STAT_SAMPLES_LOST, 1);
		return 0;
	}
	__builtin_memset(smp, 0, sizeof(*smp));
	smp->end_ns = end_ns;
	smp->duration_ns = x->dur;
	smp->ttfb_ns = x->ttfb;
	smp->request_bytes = x->req_bytes;
	smp->response_bytes = x->resp_bytes;
	smp->status = x->status;
	smp->method = x->method;
	smp->role = peer ? HTTP_ROLE_SERVER : c->role;
	if (e) {
		smp->netns = e->netns;
		smp->tgid = e->tgid;
		smp->family = e->family;
		__builtin_memcpy(smp->laddr, e->laddr, 16);
		__builtin_memcpy(smp->raddr, e->raddr, 16);
		__builtin_memcpy(smp->comm, e->comm, HTTP_COMM_LEN);
	}
	smp->lport = peer ? c->rport : c->lport;
	smp->rport = peer ? c->lport : c->rport;
	__builtin_memcpy(smp->path, pd->path, HTTP_PATH_LEN);
	__builtin_memcpy(smp->host, pd->host, HTTP_HOST_LEN);
	smp->path_len = pd->path_len;
	smp->host_len = pd->host_len;
	stat_add(&http_stats, HTTP_STAT_SAMPLES, 1);
	bpf_ringbuf_submit(smp, ringbuf_flags(&http_samples, wakeup_bytes));
	return 0;
}

/* Rate limit of the trace samples (GCRA): http_rate holds the theoretical
 * arrival time of the next sample; up to one second's worth of samples may
 * come at once, and no more than that on average. A lost race skips. */
static __always_inline bool take_sample(__u64 now)
{
	__u32 zero = 0;
	__u64 *tat = bpf_map_lookup_elem(&http_rate, &zero);
	__u64 old, base;

	if (!tat)
		return false;
	old = *tat;
	base = old > now ? old : now;
	if (base - now + sample_interval_ns > 1000000000ULL)
		return false;
	return __sync_val_compare_and_swap(tat, old, base + sample_interval_ns) == old;
}

/* Count one exchange. REC_RESPONSE pops the oldest request; if that request
 * is still arriving (the server answered early), the response waits in the
 * connection until it has, so the request's size is whole. A linked client
 * counts it for its server too. */
GLOBAL int http_record(struct pscal *sc, struct http_conn *c, __u32 mode)
{
	struct http_rec rec = {}, *x = &rec; /* on the stack: a nested run (softirq) may parse too */
	struct http_req *r;
	__u64 end_ns;
	__u64 resp_start, pkey;
	__u32 slot, peer;
	__u8 st0;

	if (!sc || !c)
		return 0;
	if (mode == REC_RESPONSE) {
		if (!c->count)
			return 0;
		slot = c->head & (HTTP_FIFO - 1);
		x->status = c->status;
		x->resp_bytes = c->dir[1].body;
		resp_start = c->dir[1].msg_start_ns;
		end_ns = sc->now;
		c->head = (slot + 1) & (HTTP_FIFO - 1);
		c->count--;
		st0 = c->dir[0].state;
		if (slot == (c->cur & (HTTP_FIFO - 1)) && st0 != PS_IDLE && st0 != PS_OPAQUE) {
			c->def_resp_bytes = x->resp_bytes;
			c->def_resp_start = resp_start;
			c->def_end = end_ns;
			c->def_status = x->status;
			c->def_slot = slot;
			c->def_pending = 1;
			return 0;
		}
	} else {
		if (!c->def_pending)
			return 0;
		c->def_pending = 0;
		slot = c->def_slot & (HTTP_FIFO - 1);
		x->status = c->def_status;
		x->resp_bytes = c->def_resp_bytes;
		resp_start = c->def_resp_start;
		end_ns = c->def_end;
	}
	r = &c->fifo[slot];
	x->route = r->route;
	x->method = r->method;
	x->req_bytes = r->body;
	x->dur = end_ns > r->start_ns ? end_ns - r->start_ns : 0;
	x->ttfb = resp_start > r->start_ns ? resp_start - r->start_ns : 0;
	if (x->ttfb > x->dur)
		x->ttfb = x->dur;
	x->b_dur = http_dur_bucket(x->dur);
	x->b_ttfb = http_dur_bucket(x->ttfb);
	x->b_req = http_size_bucket(x->req_bytes);
	x->b_resp = http_size_bucket(x->resp_bytes);
	peer = c->peer && http_reporters(c) == 2;
	http_agg_add(c->edge, peer ? c->peer_edge : 0, x);
	if (!sample_interval_ns || !r->sampled)
		return 0;
	/* a sampled request: its path and Host wait in http_pending */
	r->sampled = 0;
	pkey = c->id * HTTP_FIFO + slot;
	{
		struct http_pending *pd = bpf_map_lookup_elem(&http_pending, &pkey);

		if (!pd)
			return 0;
		http_sample_out(c, x, pd, end_ns, 0);
		if (peer && take_sample(sc->now)) /* the server's sample: a token of its own */
			http_sample_out(c, x, pd, end_ns, 1);
		bpf_map_delete_elem(&http_pending, &pkey);
	}
	return 0;
}

/* Drop the trace entries of outstanding requests (close, lost sync). */
static __always_inline void drop_pending(struct http_conn *c)
{
	__u32 i;

	if (!sample_interval_ns)
		return;
	for (i = 0; i < HTTP_FIFO; i++) {
		if (c->fifo[i].sampled) {
			__u64 pkey = c->id * HTTP_FIFO + i;

			c->fifo[i].sampled = 0;
			bpf_map_delete_elem(&http_pending, &pkey);
		}
	}
}

/* Parsing of this connection stops for good. */
static __always_inline void go_dead(struct pscal *sc, struct http_conn *c, __u32 reason)
{
	__u32 n = c->peer ? http_reporters(c) : 1;

	if (!c->tentative)
		stat_add(&http_stats, reason, n);
	drop_pending(c);
	c->dead = 1;
	c->count = 0;
	c->def_pending = 0;
	sc->stop = 1;
}

/* ---------------------------------------------------------------- buffer */

/* Packet offset of buffer index i (i >= carry). */
static __always_inline __u32 seg_off(struct pscal *sc, __u32 i)
{
	return sc->bseg + (i - sc->carry);
}

/* Consume the buffer up to (not including) index i. */
static __always_inline void consume_to(struct pscal *sc, __u32 i)
{
	sc->bpos = i;
	if (i >= sc->carry)
		sc->off = seg_off(sc, i);
}

static __always_inline void drop_buf(struct pscal *sc)
{
	sc->blen = 0;
	sc->bpos = 0;
	sc->carry = 0;
}

/* Does the buffer reach the end of the call? */
static __always_inline bool buf_at_end(struct pscal *sc)
{
	return sc->bseg + (sc->blen - sc->carry) >= sc->end;
}

/* Keep buf[from, blen) for the next call of this direction. */
GLOBAL int http_save_carry(struct pscal *sc, struct http_conn *c, struct scratch *s, __u32 from)
{
	struct http_carry *cv;
	__u64 key;
	__u32 len;

	if (!sc || !c || !s)
		return -1;
	key = c->id * 2 + (sc->di & 1);
	len = sc->blen - from;
	if (len > HTTP_CARRY_MAX || from >= BUF_SIZE)
		return -1;
	cv = bpf_map_lookup_elem(&http_carry, &key);
	if (!cv) {
		/* any bytes do as the initial value: len is set below */
		if (bpf_map_update_elem(&http_carry, &key, s->buf, BPF_ANY)) {
			stat_add(&http_stats, HTTP_STAT_CARRY_FULL, 1);
			return -1;
		}
		cv = bpf_map_lookup_elem(&http_carry, &key);
		if (!cv)
			return -1;
	}
	if (len && bpf_probe_read_kernel(cv->bytes, len, s->buf + (from & (BUF_SIZE - 1))))
		return -1;
	cv->len = len;
	c->dir[sc->di & 1].flags |= DF_CARRY;
	return 0;
}

/* ---------------------------------------------------------------- start lines */

static __always_inline __u8 method_of(__u64 w, __u32 *mlen)
{
	if ((w & 0xffffffffULL) == STR8('G', 'E', 'T', ' ', 0, 0, 0, 0)) {
		*mlen = 3;
		return HTTP_M_GET;
	}
	if ((w & 0xffffffffULL) == STR8('P', 'U', 'T', ' ', 0, 0, 0, 0)) {
		*mlen = 3;
		return HTTP_M_PUT;
	}
	if ((w & 0xffffffffffULL) == STR8('P', 'O', 'S', 'T', ' ', 0, 0, 0)) {
		*mlen = 4;
		return HTTP_M_POST;
	}
	if ((w & 0xffffffffffULL) == STR8('H', 'E', 'A', 'D', ' ', 0, 0, 0)) {
		*mlen = 4;
		return HTTP_M_HEAD;
	}
	if ((w & 0xffffffffffffULL) == STR8('P', 'A', 'T', 'C', 'H', ' ', 0, 0)) {
		*mlen = 5;
		return HTTP_M_PATCH;
	}
	if ((w & 0xffffffffffffULL) == STR8('T', 'R', 'A', 'C', 'E', ' ', 0, 0)) {
		*mlen = 5;
		return HTTP_M_TRACE;
	}
	if ((w & 0xffffffffffffffULL) == STR8('D', 'E', 'L', 'E', 'T', 'E', ' ', 0)) {
		*mlen = 6;
		return HTTP_M_DELETE;
	}
	if (w == STR8('O', 'P', 'T', 'I', 'O', 'N', 'S', ' ')) {
		*mlen = 7;
		return HTTP_M_OPTIONS;
	}
	if (w == STR8('C', 'O', 'N', 'N', 'E', 'C', 'T', ' ')) {
		*mlen = 7;
		return HTTP_M_CONNECT;
	}
	*mlen = 0;
	return HTTP_M_OTHER;
}

/* Methods and their space, and how many bytes that is. */
static const __u64 methods[9] = {
	STR8('G', 'E', 'T', ' ', 0, 0, 0, 0),       STR8('P', 'U', 'T', ' ', 0, 0, 0, 0),
	STR8('P', 'O', 'S', 'T', ' ', 0, 0, 0),     STR8('H', 'E', 'A', 'D', ' ', 0, 0, 0),
	STR8('P', 'A', 'T', 'C', 'H', ' ', 0, 0),   STR8('T', 'R', 'A', 'C', 'E', ' ', 0, 0),
	STR8('D', 'E', 'L', 'E', 'T', 'E', ' ', 0), STR8('O', 'P', 'T', 'I', 'O', 'N', 'S', ' '),
	STR8('C', 'O', 'N', 'N', 'E', 'C', 'T', ' '),
};
static const __u8 method_lens[9] = {4, 4, 5, 5, 6, 6, 7, 8, 8};

/* Whether the first n (1..8) bytes of w could start a request line. */
static __always_inline bool method_prefix(__u64 w, __u32 n)
{
	__u32 i;

	for (i = 0; i < 9; i++) {
		__u32 m = method_lens[i] < n ? method_lens[i] : n;
		__u64 mask = m >= 8 ? ~0ULL : (1ULL << (m * 8)) - 1;

		if ((w & mask) == (methods[i] & mask))
			return true;
	}
	return false;
}

/* An uppercase token method we do not know ("PROPFIND "): its length or 0. */
GLOBAL int http_other_method(struct scratch *s, __u32 i, __u32 lim)
{
	__u32 k;

	if (!s)
		return 0;
	for (k = 0; k < 16; k++) {
		__u8 ch = ld8(s->buf, i + k);

		if (i + k >= lim)
			return 0;
		if (ch == ' ')
			return k >= 3 ? (int)k : 0;
		if (ch < 'A' || ch > 'Z')
			return 0;
	}
	return 0;
}

/* Keep the path (the target up to '?', '#' or SP) of a sampled request. */
GLOBAL int http_capture_path(struct pscal *sc, struct http_conn *c, struct scratch *s,
			     __u32 from, __u32 to)
{
	struct http_pending *pd;
	__u32 k, n = 0, slot;
	__u64 pkey;

	if (!sc || !c || !s)
		return 0;
	slot = c->cur & (HTTP_FIFO - 1);
	pkey = c->id * HTTP_FIFO + slot;
	pd = &s->pending;
	__builtin_memset(pd, 0, sizeof(*pd));
	for (k = 0; k < HTTP_PATH_LEN; k++) {
		__u8 ch;

		if (from + k >= to)
			break;
		ch = ld8(s->buf, from + k);
		if (ch == '?' || ch == '#' || ch < 0x21 || ch > 0x7e)
			break;
		pd->path[k] = ch;
		n = k + 1;
	}
	pd->path_len = n;
	if (bpf_map_update_elem(&http_pending, &pkey, pd, BPF_ANY) == 0)
		c->fifo[slot].sampled = 1;
	return 0;
}

/* ---- templated routes (routes_on) */

struct route_ctx {
	struct scratch *s;
	__u32 to;
	__u32 i;   /* next path byte */
	__u32 n;   /* path bytes read */
	__u32 out; /* bytes of the route text written */
	__u32 seg; /* start of the current segment in the route text */
	__u32 seglen;
	__u32 digits;
	__u32 hexonly;
};

static __always_inline void route_put(struct route_ctx *r, __u8 ch)
{
	if (r->out < HTTP_ROUTE_LEN)
		r->s->route.text[r->out & (HTTP_ROUTE_LEN - 1)] = ch;
	r->out++;
}

/* Replace the segment just written by a placeholder when it is an id:
 * all digits -> {id}; hex (and '-') of 8+ bytes with a digit, or 16+ bytes
 * with a digit -> {hash}. The same rules as meshlens.httpmsg.template(). */
static __always_inline void route_close_segment(struct route_ctx *r)
{
	if (r->seglen && r->digits == r->seglen) {
		r->out = r->seg;
		route_put(r, '{');
		route_put(r, 'i');
		route_put(r, 'd');
		route_put(r, '}');
	} else if (r->digits && ((r->hexonly && r->seglen >= 8) || r->seglen >= 16)) {
		r->out = r->seg;
		route_put(r, '{');
		route_put(r, 'h');
		route_put(r, 'a');
		route_put(r, 's');
		route_put(r, 'h');
		route_put(r, '}');
	}
	r->seglen = 0;
	r->digits = 0;
	r->hexonly = 1;
}

static long route_step(__u32 idx, struct route_ctx *r)
{
	__u8 ch;

	if (r->i >= r->to || r->n >= HTTP_PATH_LEN) {
		route_close_segment(r);
		return 1;
	}
	ch = ld8(r->s->buf, r->i);
	if (ch == '?' || ch == '#' || ch < 0x21 || ch > 0x7e) {
		route_close_segment(r);
		return 1;
	}
	r->i++;
	r->n++;
	if (ch == '/') {
		route_close_segment(r);
		route_put(r, '/');
		r->seg = r->out;
		return 0;
	}
	route_put(r, ch);
	r->seglen++;
	if (is_digit(ch))
		r->digits++;
	if (!is_hex(ch))
		r->hexonly = 0;
	return 0;
}

/* Template the path at buf[from, to), intern it, return its route id. */
GLOBAL __u32 http_route_of(struct scratch *s, __u32 from, __u32 to)
{
	struct route_ctx r = {};
	__u64 h = 0xcbf29ce484222325ULL;
	__u32 id, k;

	if (!s)
		return HTTP_ROUTE_OTHER;
	__builtin_memset(&s->route, 0, sizeof(s->route));
	r.s = s;
	r.to = to;
	r.i = from;
	r.hexonly = 1;
	/* absolute-form (a proxy request): drop the scheme and the authority */
	if (((ld64(s->buf, from) | LC) & 0xffffffffffffffULL) ==
	    STR8('h', 't', 't', 'p', ':', '/', '/', 0)) {
		r.i = from + 7;
		for (k = 0; k < 255; k++) {
			__u8 ch = ld8(s->buf, r.i);

			if (r.i >= to || ch == '/' || ch < 0x21 || ch > 0x7e)
				break;
			r.i++;
		}
	}
	bpf_loop(HTTP_PATH_LEN + 1, route_step, &r, 0);
	if (r.out > HTTP_ROUTE_LEN)
		r.out = HTTP_ROUTE_LEN;
	if (r.out == 0) {
		s->route.text[0] = ld8(s->buf, from) == '*' ? '*' : '/';
		r.out = 1;
	}
	s->route.len = r.out;
	for (k = 0; k < HTTP_ROUTE_LEN; k++) {
		if (k >= r.out)
			break;
		h ^= s->route.text[k];
		h *= 0x100000001b3ULL;
	}
	id = (__u32)(h ^ (h >> 32));
	if (id <= HTTP_ROUTE_OTHER)
		id += 2;
	if (bpf_map_lookup_elem(&http_routes, &id))
		return id;
	if (bpf_map_update_elem(&http_routes, &id, &s->route, BPF_NOEXIST) &&
	    !bpf_map_lookup_elem(&http_routes, &id)) {
		stat_add(&http_stats, HTTP_STAT_ROUTES_FULL, 1);
		return HTTP_ROUTE_OTHER;
	}
	return id;
}

#define LONGLINE (1U << 31)

/* A request line at buf[i, i + vlen) (without CR LF). With LONGLINE in vlen,
 * the buffer holds only its start: the version is checked at its end later. */
GLOBAL int http_request_line(struct pscal *sc, struct http_conn *c, struct scratch *s, __u32 i,
			     __u32 vlen)
{
	bool longline = vlen & LONGLINE;
	struct http_dir *d;
	struct http_req *r;
	__u32 mlen = 0, t, pend, slot;
	__u64 w;
	__u8 m, t0;

	if (!sc || !c || !s)
		return 0;
	d = &c->dir[0];
	vlen &= ~LONGLINE;
	w = ld64(s->buf, i);
	m = method_of(w, &mlen);
	if (!mlen) {
		mlen = http_other_method(s, i, i + vlen);
		if (!mlen || c->tentative) { /* unknown methods only on known HTTP */
			go_dead(sc, c, HTTP_STAT_BAD_REQUEST);
			return 0;
		}
	}
	t = i + mlen + 1; /* the request target */
	if (vlen < mlen + 1 + 1 + 9) {
		go_dead(sc, c, HTTP_STAT_BAD_REQUEST);
		return 0;
	}
	t0 = ld8(s->buf, t);
	if (!(t0 == '/' || t0 == '*' || (t0 >= 'a' && t0 <= 'z') || (t0 >= 'A' && t0 <= 'Z'))) {
		go_dead(sc, c, HTTP_STAT_BAD_REQUEST);
		return 0;
	}
	pend = i + vlen;
	if (!longline) {
		/* " HTTP/1.1" or " HTTP/1.0" ends the line */
		__u64 ver = ld64(s->buf, pend - 8);

		if (ld8(s->buf, pend - 9) != ' ' || (ver != HTTP11 && ver != HTTP10)) {
			go_dead(sc, c, HTTP_STAT_BAD_REQUEST);
			return 0;
		}
		pend -= 9;
	}
	if (c->count >= HTTP_FIFO) {
		go_dead(sc, c, HTTP_STAT_PIPELINE_FULL);
		return 0;
	}
	c->tentative = 0;
	slot = (c->head + c->count) & (HTTP_FIFO - 1);
	r = &c->fifo[slot];
	r->start_ns = d->msg_start_ns ? d->msg_start_ns : sc->now;
	r->body = 0;
	r->method = m;
	r->sampled = 0;
	r->route = HTTP_ROUTE_NONE;
	c->count++;
	c->cur = slot;
	if (routes_on)
		r->route = http_route_of(s, t, pend);
	if (sample_interval_ns && take_sample(sc->now))
		http_capture_path(sc, c, s, t, pend);
	d->state = PS_HEADERS;
	d->flags = longline ? DF_LONGSTART | DF_SKIPLINE : 0;
	d->remaining = 0;
	return 0;
}

/* A status line at buf[i, i + vlen). */
static __always_inline void status_line(struct pscal *sc, struct http_conn *c,
					struct scratch *s, __u32 i, __u32 vlen)
{
	struct http_dir *d = &c->dir[1];
	__u64 ver = ld64(s->buf, i);
	__u8 sp = ld8(s->buf, i + 8), d0 = ld8(s->buf, i + 9), d1 = ld8(s->buf, i + 10),
	     d2 = ld8(s->buf, i + 11), after = ld8(s->buf, i + 12);
	__u16 code;

	if (vlen < 12 || (ver != HTTP11 && ver != HTTP10) || sp != ' ' || d0 < '1' || d0 > '5' ||
	    !is_digit(d1) || !is_digit(d2) || (vlen > 12 && after != ' ')) {
		go_dead(sc, c, HTTP_STAT_BAD_RESPONSE);
		return;
	}
	code = (d0 - '0') * 100 + (d1 - '0') * 10 + (d2 - '0');
	c->status = code;
	d->state = PS_HEADERS;
	d->flags = 0;
	d->remaining = 0;
	if (code < 200 && code != 101)
		d->flags |= DF_INTERIM;
	if (!c->count) {
		d->flags |= DF_UNMATCHED;
		stat_add(&http_stats, HTTP_STAT_UNMATCHED, c->peer ? http_reporters(c) : 1);
	}
}

/* ---------------------------------------------------------------- message ends */

static __always_inline void response_done(struct pscal *sc, struct http_conn *c)
{
	struct http_dir *d = &c->dir[1];

	if (!(d->flags & DF_UNMATCHED))
		http_record(sc, c, REC_RESPONSE);
	dir_reset(d, PS_IDLE);
}

static __always_inline void request_done(struct pscal *sc, struct http_conn *c)
{
	dir_reset(&c->dir[0], PS_IDLE);
	if (c->def_pending && c->def_slot == (c->cur & (HTTP_FIFO - 1)))
		http_record(sc, c, REC_DEFERRED);
}

static __always_inline void message_done(struct pscal *sc, struct http_conn *c)
{
	if (sc->di & 1)
		response_done(sc, c);
	else
		request_done(sc, c);
}

static __always_inline void add_body(struct pscal *sc, struct http_conn *c, __u64 n)
{
	c->dir[sc->di & 1].body += n;
	if (!(sc->di & 1))
		c->fifo[c->cur & (HTTP_FIFO - 1)].body += n;
}

/* The empty line after the header block: how is the body framed? */
static __always_inline void headers_done(struct pscal *sc, struct http_conn *c)
{
	struct http_dir *d = dir_of(c, sc);
	__u8 f = d->flags;
	__u16 code;
	__u8 m;

	if (!(sc->di & 1)) {
		m = c->fifo[c->cur & (HTTP_FIFO - 1)].method;
		if (f & DF_TE_OTHER) {
			go_dead(sc, c, HTTP_STAT_BAD_FRAMING);
			return;
		}
		if (m == HTTP_M_CONNECT) {
			/* what follows is the tunnel's, whatever the answer */
			d->state = PS_OPAQUE;
			return;
		}
		if (f & DF_CHUNKED)
			d->state = PS_CHUNK_SIZE;
		else if ((f & DF_HAVE_CL) && d->remaining)
			d->state = PS_BODY;
		else
			request_done(sc, c);
		return;
	}
	/* responses (RFC 9112 section 6.3) */
	if (f & DF_INTERIM) {
		/* 1xx: the final response follows */
		dir_reset(d, PS_IDLE);
		return;
	}
	code = c->status;
	m = c->count ? c->fifo[c->head & (HTTP_FIFO - 1)].method : HTTP_M_OTHER;
	if (code == 101 || (m == HTTP_M_CONNECT && code >= 200 && code < 300)) {
		/* the connection now carries something else */
		response_done(sc, c);
		drop_pending(c);
		c->dead = 1;
		c->count = 0;
		sc->stop = 1;
		return;
	}
	if (m == HTTP_M_HEAD || code == 204 || code == 304) {
		response_done(sc, c);
		return;
	}
	if (f & DF_CHUNKED) {
		d->state = PS_CHUNK_SIZE;
	} else if (f & DF_TE_OTHER) {
		d->state = PS_EOF;
	} else if (f & DF_HAVE_CL) {
		if (d->remaining)
			d->state = PS_BODY;
		else
			response_done(sc, c);
	} else {
		d->state = PS_EOF;
	}
}

/* ---------------------------------------------------------------- header lines */

/* Decimal Content-Length value in buf[i, i + n) (optional whitespace around
 * it); -1 if invalid. No branch depends on what the loop carries, so the
 * verifier sees one state per position. */
GLOBAL __s64 http_parse_cl(struct scratch *s, __u32 i, __u32 n)
{
	__u64 v = 0, bad = 0, digits = 0, gap = 0;
	__u32 k;

	if (!s || n > 40)
		return -1;
	for (k = 0; k < 40; k++) {
		__u8 ch;

		if (k >= n)
			break;
		ch = ld8(s->buf, i + k);
		if (is_digit(ch)) {
			bad |= gap | (v >> 58); /* "1 2", or more than 17 digits */
			v = v * 10 + (ch - '0');
			digits = 1;
		} else if (ch == ' ' || ch == '\t') {
			gap = digits;
		} else {
			return -1;
		}
	}
	return (digits && !bad) ? (__s64)v : -1;
}

/* Hexadecimal chunk size at buf[i, i + n), up to ';' or whitespace; -1 if invalid. */
GLOBAL __s64 http_parse_hex(struct scratch *s, __u32 i, __u32 n)
{
	__u64 v = 0;
	__u32 k, digits = 0;

	if (!s)
		return -1;
	for (k = 0; k < 17; k++) {
		__u8 ch, x;

		if (k >= n)
			break;
		ch = ld8(s->buf, i + k);
		if (is_digit(ch))
			x = ch - '0';
		else if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f')
			x = (ch | 0x20) - 'a' + 10;
		else if (ch == ';' || ch == ' ' || ch == '\t')
			break;
		else
			return -1;
		if (digits >= 15)
			return -1;
		v = v << 4 | x;
		digits++;
	}
	return digits ? (__s64)v : -1;
}

/* Does the Transfer-Encoding value at buf[i, i + n) end in "chunked"? */
GLOBAL int http_te_chunked(struct scratch *s, __u32 i, __u32 n)
{
	__u32 k, e = n;
	__u8 before;

	if (!s)
		return 0;
	for (k = 0; k < 16; k++) { /* trailing whitespace */
		__u8 ch;

		if (e == 0)
			break;
		ch = ld8(s->buf, i + e - 1);
		if (ch != ' ' && ch != '\t')
			break;
		e--;
	}
	if (e < 7)
		return 0;
	if (((ld64(s->buf, i + e - 7) | LC) & 0xffffffffffffffULL) !=
	    STR8('c', 'h', 'u', 'n', 'k', 'e', 'd', 0))
		return 0;
	if (e == 7)
		return 1;
	before = ld8(s->buf, i + e - 8);
	return before == ' ' || before == '\t' || before == ',';
}

/* Keep the Host value of a sampled request. */
GLOBAL int http_capture_host(struct pscal *sc, struct http_conn *c, struct scratch *s, __u32 i,
			     __u32 n)
{
	struct http_pending *pd;
	__u32 k, out = 0, slot;
	__u64 pkey;

	if (!sc || !c || !s)
		return 0;
	slot = c->cur & (HTTP_FIFO - 1);
	if (!c->fifo[slot].sampled)
		return 0;
	pkey = c->id * HTTP_FIFO + slot;
	pd = bpf_map_lookup_elem(&http_pending, &pkey);
	if (!pd)
		return 0;
	for (k = 0; k < 8; k++) { /* leading whitespace */
		__u8 ch = ld8(s->buf, i);

		if (n == 0 || (ch != ' ' && ch != '\t'))
			break;
		i++;
		n--;
	}
	for (k = 0; k < HTTP_HOST_LEN; k++) {
		__u8 ch;

		if (k >= n)
			break;
		ch = ld8(s->buf, i + k);
		if (ch < 0x21 || ch > 0x7e)
			break;
		pd->host[k] = ch;
		out = k + 1;
	}
	pd->host_len = out;
	return 0;
}

/* One header field line at buf[i, i + vlen) (without CR LF). */
static __always_inline void header_line(struct pscal *sc, struct http_conn *c,
					struct scratch *s, __u32 i, __u32 vlen)
{
	struct http_dir *d = dir_of(c, sc);
	__u64 w0 = ld64(s->buf, i) | LC;
	__u8 c0 = w0 & 0xff;

	if (c0 == 'c' && vlen >= 15 && w0 == STR8('c', 'o', 'n', 't', 'e', 'n', 't', '-') &&
	    ((ld64(s->buf, i + 8) | LC) & 0xffffffffffffffULL) ==
		    STR8('l', 'e', 'n', 'g', 't', 'h', ':', 0)) {
		__s64 v = http_parse_cl(s, i + 15, vlen - 15);

		if (v < 0 || ((d->flags & DF_HAVE_CL) && d->remaining != (__u64)v)) {
			go_dead(sc, c, HTTP_STAT_BAD_FRAMING);
			return;
		}
		d->flags |= DF_HAVE_CL;
		d->remaining = v;
		return;
	}
	if (c0 == 't' && vlen >= 18 && w0 == STR8('t', 'r', 'a', 'n', 's', 'f', 'e', 'r') &&
	    (ld64(s->buf, i + 8) | LC) == STR8('-', 'e', 'n', 'c', 'o', 'd', 'i', 'n') &&
	    ((ld64(s->buf, i + 16) | LC) & 0xffffULL) == STR8('g', ':', 0, 0, 0, 0, 0, 0)) {
		if (http_te_chunked(s, i + 18, vlen - 18)) {
			d->flags |= DF_CHUNKED;
			d->flags &= ~DF_TE_OTHER;
		} else {
			d->flags |= DF_TE_OTHER;
			d->flags &= ~DF_CHUNKED;
		}
		return;
	}
	if (sample_interval_ns && !(sc->di & 1) && c0 == 'h' && vlen >= 5 &&
	    (w0 & 0xffffffffffULL) == STR8('h', 'o', 's', 't', ':', 0, 0, 0))
		http_capture_host(sc, c, s, i + 5, vlen - 5);
}

/* One complete line at buf[i, lf). */
GLOBAL int http_one_line(struct pscal *sc, struct http_conn *c, struct scratch *s, __u32 i,
			 __u32 lf)
{
	struct http_dir *d;
	__u32 len, vlen;
	__s64 v;

	if (!sc || !c || !s || lf < i)
		return 0;
	d = dir_of(c, sc);
	len = lf - i;
	vlen = len;
	if (vlen && ld8(s->buf, lf - 1) == '\r')
		vlen--;
	switch (d->state) {
	case PS_IDLE:
		if (vlen == 0) /* a stray CRLF between messages */
			break;
		if (sc->di & 1)
			status_line(sc, c, s, i, vlen);
		else
			http_request_line(sc, c, s, i, vlen);
		d->hdr_len = len + 1;
		break;
	case PS_HEADERS:
		d->hdr_len += len + 1;
		if (d->hdr_len > MAX_HEADER_BYTES) {
			go_dead(sc, c, HTTP_STAT_HEADERS_TOO_BIG);
			break;
		}
		if (vlen == 0)
			headers_done(sc, c);
		else
			header_line(sc, c, s, i, vlen);
		break;
	case PS_CHUNK_SIZE:
		v = http_parse_hex(s, i, vlen);
		if (v < 0) {
			go_dead(sc, c, HTTP_STAT_BAD_FRAMING);
			break;
		}
		if (v == 0) {
			d->state = PS_TRAILERS;
			break;
		}
		d->remaining = v;
		d->state = PS_CHUNK_DATA;
		break;
	case PS_CHUNK_END:
		if (vlen) {
			go_dead(sc, c, HTTP_STAT_BAD_FRAMING);
			break;
		}
		d->state = PS_CHUNK_SIZE;
		break;
	case PS_TRAILERS:
		if (vlen == 0)
			message_done(sc, c);
		break;
	}
	return 0;
}

/* A line longer than the buffer starts at bpos. */
GLOBAL int http_long_line(struct pscal *sc, struct http_conn *c, struct scratch *s)
{
	struct http_dir *d;
	__u32 i;
	__u64 w0;

	if (!sc || !c || !s)
		return 0;
	d = dir_of(c, sc);
	i = sc->bpos;
	switch (d->state) {
	case PS_IDLE:
		if (sc->di & 1) {
			status_line(sc, c, s, i, 13);
			if (!sc->stop)
				d->flags |= DF_SKIPLINE;
		} else {
			http_request_line(sc, c, s, i, (sc->blen - i) | LONGLINE);
		}
		return 0;
	case PS_HEADERS:
		w0 = ld64(s->buf, i) | LC;
		if (w0 == STR8('c', 'o', 'n', 't', 'e', 'n', 't', '-') ||
		    w0 == STR8('t', 'r', 'a', 'n', 's', 'f', 'e', 'r')) {
			go_dead(sc, c, HTTP_STAT_HEADERS_TOO_BIG);
			return 0;
		}
		d->flags |= DF_SKIPLINE;
		return 0;
	case PS_TRAILERS:
		d->flags |= DF_SKIPLINE;
		return 0;
	default:
		go_dead(sc, c, HTTP_STAT_BAD_FRAMING);
		return 0;
	}
}

/* Inside a long line: look for its end. A long request line's version is
 * checked there, so its last TAIL bytes are kept in view. */
GLOBAL int http_skip_line(struct pscal *sc, struct http_conn *c, struct scratch *s)
{
	struct http_dir *d;
	__u32 keep, from, e;
	__u64 ver;
	int lf;

	if (!sc || !c || !s)
		return 0;
	d = dir_of(c, sc);
	lf = http_find_lf(s, sc->bpos, sc->blen);
	if (lf < 0) {
		keep = (d->flags & DF_LONGSTART) ? TAIL : 0;
		from = sc->blen > keep ? sc->blen - keep : 0;
		if (from < sc->bpos)
			from = sc->bpos;
		d->hdr_len += from - sc->bpos;
		if (d->hdr_len > MAX_HEADER_BYTES) {
			go_dead(sc, c, HTTP_STAT_HEADERS_TOO_BIG);
			return 0;
		}
		if (buf_at_end(sc)) {
			/* the call ends inside the line */
			if (keep && http_save_carry(sc, c, s, from)) {
				go_dead(sc, c, HTTP_STAT_HEADERS_TOO_BIG);
				return 0;
			}
			sc->stop = 1;
			return 0;
		}
		/* reload, with the tail in view */
		consume_to(sc, from > sc->carry ? from : sc->carry);
		drop_buf(sc);
		return 0;
	}
	d->hdr_len += lf + 1 - sc->bpos;
	if (d->hdr_len > MAX_HEADER_BYTES) {
		go_dead(sc, c, HTTP_STAT_HEADERS_TOO_BIG);
		return 0;
	}
	if (d->flags & DF_LONGSTART) {
		e = (lf > 0 && ld8(s->buf, lf - 1) == '\r') ? lf - 1 : lf;
		ver = e >= 9 ? ld64(s->buf, e - 8) : 0;
		if (e < 9 || ld8(s->buf, e - 9) != ' ' || (ver != HTTP11 && ver != HTTP10)) {
			go_dead(sc, c, HTTP_STAT_BAD_REQUEST);
			return 0;
		}
	}
	d->flags &= ~(DF_SKIPLINE | DF_LONGSTART);
	consume_to(sc, lf + 1);
	return 0;
}

/* ---------------------------------------------------------------- the step loop */

struct pctx {
	struct http_conn *c;
	struct scratch *s;
	struct pscal sc;
};

/* Copy bytes [off, off + n) of the call (n <= WIN) from the caller's buffers
 * to buf[dst...]; 0 when all of them were read. */
static __always_inline int uio_read(struct scratch *s, __u32 dst, __u64 off, __u32 n)
{
	/* dst + done masked below BUF_SIZE, pieces of at most WIN: inside buf + spill */
	return call_segs_read(&s->uio, s->buf, BUF_SIZE - 1, WIN, dst, off, n);
}

/* Load up to WIN bytes of the call from off, after `carried` bytes that
 * are already at the start of the buffer. */
static __always_inline int load(struct pctx *p, __u32 carried)
{
	struct pscal *sc = &p->sc;
	__u32 n = sc->end - sc->off;

	if (n > WIN)
		n = WIN;
	if (carried > HTTP_CARRY_MAX)
		carried = HTTP_CARRY_MAX;
	if (n == 0 || n > WIN)
		return -1;
	if (uio_read(p->s, carried, sc->off, n))
		return -1;
	sc->carry = carried;
	sc->bseg = sc->off;
	sc->blen = carried + n;
	sc->bpos = 0;
	return 0;
}

/* The exact mask of LF bytes in w: 0x80 in each byte that is '\n'. */
static __always_inline __u64 lf_mask(__u64 w)
{
	__u64 x = w ^ 0x0a0a0a0a0a0a0a0aULL;

	return ~(((x & 0x7f7f7f7f7f7f7f7fULL) + 0x7f7f7f7f7f7f7f7fULL) | x | 0x7f7f7f7f7f7f7f7fULL);
}

/* Index of the lowest marked byte of a nonzero lf_mask() value, without a
 * branch (the verifier then sees one path, not eight): isolate the lowest
 * mark, shift it to bit 8 * index, and let a multiply put 7 - (7 - index)
 * in the top byte. */
static __always_inline __u32 low_byte(__u64 m)
{
	return (__u32)((((m & -m) >> 7) * 0x0001020304050607ULL) >> 56) & 7;
}

#define FAST_MORE 0 /* no line end left in the buffer */
#define FAST_SLOW 1 /* bpos is at a line that http_one_line must see */

struct fh_ctx {
	struct scratch *s;
	__u32 i;    /* the next word to look at */
	__u32 ls;   /* where the current line starts */
	__u32 blen;
	__u32 slow; /* stopped at a line that matters */
};

/* Is the header line at buf[ls, lf) one the parser needs: Content-Length,
 * Transfer-Encoding, or (sampling) Host? Its first nine bytes decide (the
 * other Content-* and Connection lines, the commonest, are skipped). */
static __always_inline bool needed_line(struct scratch *s, __u32 ls, __u32 lf)
{
	__u64 w = ld64(s->buf, ls) | LC;
	__u8 c8 = ld8(s->buf, ls + 8) | 0x20;

	if (lf > ls + 15 && w == STR8('c', 'o', 'n', 't', 'e', 'n', 't', '-') && c8 == 'l')
		return true;
	if (lf > ls + 18 && w == STR8('t', 'r', 'a', 'n', 's', 'f', 'e', 'r') && c8 == '-')
		return true;
	return sample_interval_ns && lf > ls + 5 &&
	       (w & 0xffffffffffULL) == STR8('h', 'o', 's', 't', ':', 0, 0, 0);
}

/* One word of fast header skipping (a bpf_loop callback: the verifier checks
 * it once, not once per word). Eight bytes hold at most eight line ends. */
static __always_inline long fh_one_word(struct fh_ctx *x)
{
	__u32 i = x->i & (BUF_SIZE - 1), ls = x->ls & (BUF_SIZE - 1), blen = x->blen;
	__u64 m;

	if (i >= blen || blen > BUF_SIZE - 8)
		return 1;
	m = lf_mask(ld64(x->s->buf, i));
	if (i + 8 > blen) /* bytes past the buffer's end are not data */
		m &= (1ULL << ((blen - i) * 8 & 63)) - 1;
	/* eight times, unrolled by hand: a loop would be verified per path */
#define FH_ONE                                                                           \
	do {                                                                             \
		__u32 p;                                                                 \
                                                                                         \
		if (!m)                                                                  \
			goto out;                                                        \
		p = (i + low_byte(m)) & (BUF_SIZE - 1);                                  \
		m &= m - 1;                                                              \
		if (p <= ls + 1 || needed_line(x->s, ls, p)) {                           \
			x->ls = ls; /* the empty line, or one that matters */            \
			x->slow = 1;                                                     \
			return 1;                                                        \
		}                                                                        \
		ls = (p + 1) & (BUF_SIZE - 1);                                           \
	} while (0)
	FH_ONE;
	FH_ONE;
	FH_ONE;
	FH_ONE;
	FH_ONE;
	FH_ONE;
	FH_ONE;
	FH_ONE;
#undef FH_ONE
out:
	x->ls = ls;
	x->i = i + 8;
	return 0;
}

/* Four words per call: a quarter of the calls. */
static long fh_word(__u32 idx, struct fh_ctx *x)
{
	if (fh_one_word(x) || fh_one_word(x) || fh_one_word(x))
		return 1;
	return fh_one_word(x);
}

/* The header lines nobody needs (all but Content-Length, Transfer-Encoding,
 * Host and the empty line), skipped eight bytes at a time. Stops at the
 * first line that matters, or where the buffer's complete lines end. */
GLOBAL int http_fast_headers(struct pscal *sc, struct http_conn *c, struct scratch *s)
{
	struct fh_ctx x = {};
	struct http_dir *d;
	__u32 start;

	if (!sc || !c || !s)
		return FAST_SLOW;
	d = dir_of(c, sc);
	start = sc->bpos & (BUF_SIZE - 1);
	x.s = s;
	x.i = start;
	x.ls = start;
	x.blen = sc->blen;
	bpf_loop(BUF_SIZE / 32 + 1, fh_word, &x, 0);
	if (x.ls > start) {
		d->hdr_len += x.ls - start;
		if (d->hdr_len > MAX_HEADER_BYTES) {
			go_dead(sc, c, HTTP_STAT_HEADERS_TOO_BIG);
			return FAST_SLOW;
		}
	}
	consume_to(sc, x.ls);
	return x.slow ? FAST_SLOW : FAST_MORE;
}

#define SCAN_STOP 0   /* parsing of this call is over */
#define SCAN_BODY 1   /* a body goes on past the buffer: skip it in the call */
#define SCAN_NEED 2   /* no complete line left in the buffer */
#define SCAN_AGAIN 3  /* the line budget ran out: call again */
#define SCAN_SKIP 4   /* in a long line */

/* Every complete line in the buffer, and body bytes that lie inside it. */
GLOBAL int http_scan(struct pscal *sc, struct http_conn *c, struct scratch *s)
{
	struct http_dir *d;
	__u32 k, have;
	int lf;

	if (!sc || !c || !s)
		return SCAN_STOP;
	d = dir_of(c, sc);
	for (k = 0; k < MAX_LINES; k++) {
		__u8 st = d->state;

		if (sc->stop || c->dead)
			return SCAN_STOP;
		if (st == PS_BODY || st == PS_CHUNK_DATA) {
			have = sc->blen > sc->bpos ? sc->blen - sc->bpos : 0;
			if (d->remaining > have || sc->bpos < sc->carry)
				return SCAN_BODY;
			add_body(sc, c, d->remaining);
			consume_to(sc, sc->bpos + (__u32)d->remaining);
			d->remaining = 0;
			if (st == PS_CHUNK_DATA)
				d->state = PS_CHUNK_END;
			else
				message_done(sc, c);
			continue;
		}
		if (st == PS_EOF || st == PS_OPAQUE || st == PS_UNSYNCED)
			return SCAN_BODY;
		if (d->flags & DF_SKIPLINE)
			return SCAN_SKIP;
		if (sc->bpos >= sc->blen)
			return SCAN_NEED;
		if (st == PS_IDLE && sc->bpos >= sc->carry && !d->msg_start_ns)
			d->msg_start_ns = sc->now;
		if (st == PS_HEADERS && http_fast_headers(sc, c, s) == FAST_MORE)
			return SCAN_NEED;
		if (sc->stop || c->dead)
			return SCAN_STOP;
		lf = http_find_lf(s, sc->bpos, sc->blen);
		if (lf < 0)
			return SCAN_NEED;
		http_one_line(sc, c, s, sc->bpos, (__u32)lf);
		if (!sc->stop)
			consume_to(sc, (__u32)lf + 1);
	}
	return SCAN_AGAIN;
}

/* One parser step: lines from the buffer, body bytes of the call, or a
 * (re)load of the buffer. 1 stops. */
static long step(__u32 idx, struct pctx *p)
{
	struct pscal *sc = &p->sc;
	struct http_conn *c = p->c;
	struct http_dir *d = &c->dir[sc->di & 1];
	__u32 avail, n;
	bool at_end;
	int r;

	if (sc->stop || c->dead)
		return 1;
	if (sc->off >= sc->end && (sc->blen == 0 || sc->bpos >= sc->blen))
		return 1;
	avail = sc->end - sc->off;
	switch (d->state) {
	case PS_BODY:
	case PS_CHUNK_DATA: {
		__u64 take = d->remaining < avail ? d->remaining : avail;

		drop_buf(sc);
		d->remaining -= take;
		add_body(sc, c, take);
		sc->off += take;
		if (d->remaining == 0) {
			if (d->state == PS_CHUNK_DATA)
				d->state = PS_CHUNK_END;
			else
				message_done(sc, c);
		}
		return 0;
	}
	case PS_EOF:
		drop_buf(sc);
		add_body(sc, c, avail);
		sc->off = sc->end;
		return 1;
	case PS_OPAQUE:
	case PS_UNSYNCED:
		sc->off = sc->end;
		return 1;
	}
	/* line states need the bytes in the buffer */
	if (sc->blen == 0 || sc->bpos >= sc->blen) {
		drop_buf(sc);
		if (load(p, 0))
			return 1;
	}
	r = http_scan(sc, c, p->s);
	if (r == SCAN_STOP)
		return 1;
	if (r == SCAN_AGAIN)
		return 0;
	if (r == SCAN_BODY) {
		drop_buf(sc);
		return 0;
	}
	if (r == SCAN_SKIP) {
		http_skip_line(sc, c, p->s);
		return 0;
	}
	/* SCAN_NEED: no line end in the rest of the buffer */
	if (sc->bpos >= sc->blen) {
		drop_buf(sc);
		return 0;
	}
	n = sc->blen - sc->bpos;
	at_end = buf_at_end(sc);
	if (at_end && n <= HTTP_CARRY_MAX) {
		/* the line continues in the next call */
		if (http_save_carry(sc, c, p->s, sc->bpos))
			go_dead(sc, c, HTTP_STAT_HEADERS_TOO_BIG);
		sc->stop = 1;
		return 1;
	}
	if (sc->bpos > 0 && sc->bpos >= sc->carry && !at_end) {
		/* a partial line at the end of the buffer: reload from it */
		drop_buf(sc);
		return 0;
	}
	if (d->state == PS_IDLE && !d->msg_start_ns)
		d->msg_start_ns = sc->now;
	http_long_line(sc, c, p->s);
	if (sc->stop || !(d->flags & DF_SKIPLINE))
		return 0;
	if (!(d->flags & DF_LONGSTART)) {
		http_skip_line(sc, c, p->s);
		return 0;
	}
	/* a long request line: keep its tail in view for its version */
	{
		__u32 from = sc->blen > TAIL ? sc->blen - TAIL : 0;

		d->hdr_len = from - sc->bpos;
		if (at_end) {
			if (http_save_carry(sc, c, p->s, from))
				go_dead(sc, c, HTTP_STAT_HEADERS_TOO_BIG);
			sc->stop = 1;
			return 1;
		}
		consume_to(sc, from > sc->carry ? from : sc->carry);
		drop_buf(sc);
	}
	return 0;
}

/* ---------------------------------------------------------------- identity */

static __always_inline __u64 mix(__u64 h, __u64 v)
{
	h ^= v;
	h *= 0x9e3779b97f4a7c15ULL;
	return h ^ (h >> 29);
}

/* Hash of the identity part (everything before the tgids). */
static __always_inline __u64 edge_hash(const struct http_edge *e)
{
	const __u64 *w = (const __u64 *)e;
	__u64 h = 0x243f6a8885a308d3ULL;
	__u32 i;

	for (i = 0; i < offsetof(struct http_edge, tgid) / 8; i++)
		h = mix(h, w[i]);
	return h ? h : 1;
}

static __always_inline bool edge_same(const struct http_edge *a, const struct http_edge *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	__u32 i;

	for (i = 0; i < offsetof(struct http_edge, tgid) / 8; i++)
		if (x[i] != y[i])
			return false;
	return true;
}

static __always_inline bool is_loopback(__u16 family, const __u8 *a)
{
	if (family == AF_INET)
		return a[0] == 127;
	{
		const __u64 *w = (const __u64 *)a;

		return w[0] == 0 && w[1] == bpf_cpu_to_be64(1);
	}
}

/* The edge id of a new connection; 0 when it cannot be tracked. */
static __always_inline __u64 edge_of(const struct sock *sk, const struct http_owner *o, __u8 role,
				     __u16 *lp, __u16 *rp, __u64 *peer_id, __u32 *peer_seq)
{
	struct http_edge e = {};
	struct http_edge *known;
	__u16 lport = 0, rport = 0;
	__u64 h;
	__u32 tries;

	e.netns = sock_netns(sk);
	e.cgroup_id = sock_cgroup_id(sk);
	e.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	read_sock_tuple(sk, e.family, e.laddr, e.raddr, &lport, &rport);
	e.role = role;
	*lp = lport;
	*rp = rport;
	if (role == HTTP_ROLE_CLIENT) {
		e.port = rport;
		if (o) {
			e.tgid = o->tgid;
			__builtin_memcpy(e.comm, o->comm, HTTP_COMM_LEN);
		}
	} else {
		struct http_listen_key lk = {.netns = e.netns, .port = lport};
		/* named after the listener's owner, or else the caller (recv()) */
		const struct http_owner *lo = bpf_map_lookup_elem(&http_listeners, &lk);
		struct http_endpoint_key ek = {};
		struct http_endpoint *peer;

		if (lo)
			o = lo;

		e.port = lport;
		if (o) {
			e.tgid = o->tgid;
			__builtin_memcpy(e.comm, o->comm, HTTP_COMM_LEN);
		}
		ek.netns = is_loopback(e.family, e.raddr) ? e.netns : 0;
		__builtin_memcpy(ek.addr, e.raddr, 16);
		ek.port = rport;
		peer = bpf_map_lookup_elem(&http_endpoints, &ek);
		if (peer) {
			*peer_id = peer->http_id;
			*peer_seq = peer->http_seq;
			e.peer_known = 1;
			e.peer_netns = peer->netns;
			e.peer_cgroup_id = peer->cgroup_id;
			e.peer_tgid = peer->tgid;
			__builtin_memcpy(e.peer_comm, peer->comm, HTTP_COMM_LEN);
		}
	}
	h = edge_hash(&e);
	for (tries = 0; tries < 4; tries++) {
		known = bpf_map_lookup_elem(&http_edges, &h);
		if (known) {
			if (edge_same(known, &e))
				return h;
			h = h * 0x9e3779b97f4a7c15ULL + 1; /* a hash collision: probe on */
			if (!h)
				h = 1;
			continue;
		}
		if (bpf_map_update_elem(&http_edges, &h, &e, BPF_NOEXIST) == 0)
			return h;
		if (!bpf_map_lookup_elem(&http_edges, &h)) {
			stat_add(&http_stats, HTTP_STAT_EDGES_FULL, 1);
			return 0;
		}
		/* another CPU inserted it: check it on the next round */
	}
	return 0;
}

/* ---------------------------------------------------------------- endpoints */

static __always_inline void endpoint_key(const struct sock *sk, struct http_endpoint_key *ek)
{
	__u8 raddr[16] = {};
	__u16 lport = 0, rport = 0;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	read_sock_tuple(sk, family, ek->addr, raddr, &lport, &rport);
	ek->netns = is_loopback(family, ek->addr) ? sock_netns(sk) : 0;
	ek->port = lport;
}

/* ---------------------------------------------------------------- the caller's buffers */

GLOBAL int http_uio_fill(struct scratch *s, __u32 ret)
{
	return s ? call_segs_fill(&s->uio, ret) : -1;
}

/* ---------------------------------------------------------------- calls */

/* Does the call's data start like a request line? Its first (up to) 8 bytes in *w. */
static __always_inline bool method_start(struct scratch *s, __u32 plen, __u64 *w)
{
	__u32 n = plen < 8 ? plen : 8;

	*(__u64 *)s->buf = 0;
	if (n == 0 || uio_read(s, 0, 0, n))
		return false;
	*w = *(__u64 *)s->buf;
	return method_prefix(*w, n);
}

static __always_inline void owner_from_current(struct http_owner *o)
{
	o->tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(o->comm, HTTP_COMM_LEN);
}

/* First bytes of a call on an untracked connection (s->uio is filled): a
 * request start? Creates the connection's state; 1 if it did. */
GLOBAL int http_conn_new(__u64 skp, __u32 plen, __u32 sending, struct scratch *s)
{
	const struct sock *sk = SOCK_RO((void *)skp);
	const struct tcp_sock *tp = TCP_RO((void *)skp);
	struct http_owner o = {};
	struct http_conn *c;
	__u64 w = 0, key = skp;
	__u32 seq, base_resp, mlen = 0, snd_base, rcv_first;
	__u8 role = sending ? HTTP_ROLE_CLIENT : HTTP_ROLE_SERVER;
	struct http_endpoint *ep = 0;
	__u64 peer_id = 0;
	__u32 peer_seq = 0;
	bool first, resp_known;
	long err;

	if (!s || !sk || !tp || !method_start(s, plen, &w))
		return 0;
	if (sk->__sk_common.skc_state == TCP_CLOSE || !fd_is_sock(sk))
		return 0;
	/* The first data byte of each direction: TCP counts the bytes acknowledged
	 * and received since the handshake. bytes_acked includes the SYN of an
	 * active open (its first data byte is snd_base + 1), not of a passive one
	 * (snd_base). (An ACK processed on another CPU between the two loads can
	 * make a first call look like a later one: it is then picked up as a
	 * connection older than us, which costs nothing but the parse-once link.) */
	first_bytes(tp, &snd_base, &rcv_first);
	if (sending) {
		seq = tp->write_seq - plen;
		first = seq - snd_base <= 1;
		base_resp = tp->copied_seq;
		resp_known = base_resp == rcv_first;
	} else {
		seq = read_end(sk, tp) - plen;
		first = seq == rcv_first;
		base_resp = tp->write_seq;
		resp_known = base_resp - snd_base <= 1;
	}
	method_of(w, &mlen);
	/* mid-stream (a connection older than us): a whole method token */
	if (!first && (!mlen || plen < 16))
		return 0;
	c = &s->conn;
	__builtin_memset(c, 0, sizeof(*c));
	c->role = role;
	/* a whole method and its space: HTTP from here on, and anything wrong is
	 * counted; only a prefix ("GE"): quietly dropped if it is not HTTP */
	c->tentative = !mlen;
	owner_from_current(&o);
	c->edge = edge_of(sk, &o, role, &c->lport, &c->rport, &peer_id, &peer_seq);
	if (!c->edge)
		return 0;
	c->id = __sync_fetch_and_add(&http_last_id, 1) + 1;
	c->dir[0].next_seq = seq;
	c->dir[0].state = PS_IDLE;
	c->dir[1].next_seq = base_resp;
	c->dir[1].state = first && resp_known ? PS_IDLE : PS_UNSYNCED;
	if (sending && first) {
		/* a connect()ed socket from its first byte: publish it, its server
		 * (if local) may leave the parsing to it */
		__builtin_memset(&s->ek, 0, sizeof(s->ek));
		__builtin_memset(&s->link, 0, sizeof(s->link));
		endpoint_key(sk, &s->ek);
		ep = bpf_map_lookup_elem(&http_endpoints, &s->ek);
		if (ep && !bpf_map_update_elem(&http_links, &c->id, &s->link, BPF_ANY))
			c->peer = PEER_OPEN;
	}
	err = bpf_map_update_elem(&http_conns, &key, c, BPF_NOEXIST);
	c = bpf_map_lookup_elem(&http_conns, &key);
	if (err || !c) {
		/* full, or another thread of the process was first (it counts) */
		if (!c)
			stat_add(&http_stats, HTTP_STAT_CONNS_FULL, 1);
		if (s->conn.peer)
			bpf_map_delete_elem(&http_links, &s->conn.id);
		return err ? 0 : 1;
	}
	if (!sending && first && resp_known && peer_id && peer_seq == seq) {
		/* our client is a local socket that parses these same bytes */
		struct http_link *l = bpf_map_lookup_elem(&http_links, &peer_id);

		if (l) {
			l->peer_edge = c->edge;
			if (__sync_val_compare_and_swap(&l->state, LINK_OPEN, LINK_MIRROR) ==
			    LINK_OPEN)
				c->dead = DEAD_PASSIVE;
		}
	}
	if (c->peer && ep) {
		ep->http_seq = seq;
		ep->http_id = c->id; /* last: the server reads it first */
	}
	stat_add(&http_stats, HTTP_STAT_LIVE, 1);
	return 1;
}

/* One send() (`sending`) or recv() of `ret` bytes on a TCP socket whose
 * connection is followed (c), or whose bytes start like a request (!c). Not
 * inlined: the chain's tail call after it must not add to the deepest call
 * chain's stack, which is near the verifier's 512-byte limit. */
static __noinline int handle(__u64 skp, int ret, bool sending, struct http_conn *c)
{
	const struct tcp_sock *tp;
	struct http_dir *d;
	struct pctx p = {};
	struct pscal *sc = &p.sc;
	__u32 plen = ret, seq, di;
	__s32 delta;
	bool data;

	p.s = scratch();
	if (!p.s)
		return 0;
	if (!c) {
		if (!plen || http_uio_fill(p.s, plen) || !http_conn_new(skp, plen, sending, p.s))
			return 0;
		p.s->key = skp; /* off this frame's stack, which is near the limit */
		c = bpf_map_lookup_elem(&http_conns, &p.s->key);
		if (!c)
			return 0;
		data = true;
	} else {
		data = plen && !http_uio_fill(p.s, plen);
	}
	if (c->dead)
		return 0;
	tp = TCP_RO((void *)skp);
	if (!tp)
		return 0;
	/* the call's first byte: TCP has moved its counter past all of them */
	seq = (sending ? tp->write_seq : read_end(SOCK_RO((void *)skp), tp)) - plen;
	di = (c->role == HTTP_ROLE_CLIENT) == sending ? 0 : 1;
	d = &c->dir[di];
	p.c = c;
	sc->now = bpf_ktime_get_ns();
	sc->id = c->id;
	sc->di = di;
	sc->off = 0;
	sc->end = plen;
	if (d->state == PS_UNSYNCED) {
		/* a response can only be trusted from a call that starts one */
		__u64 w;

		if (!data || plen < 8 || uio_read(p.s, 0, 0, 8))
			return 0;
		w = ld64(p.s->buf, 0);
		if ((w & 0xffffffffffffffULL) != STR8('H', 'T', 'T', 'P', '/', '1', '.', 0) ||
		    !c->count)
			return 0;
		d->next_seq = seq;
		d->state = PS_IDLE;
	}
	if (!data) {
		/* bytes we cannot read (sendfile, io_uring): like bytes not seen */
		seq += plen;
		sc->off = sc->end;
		if ((__s32)(seq - d->next_seq) <= 0)
			return 0;
	}
	delta = (__s32)(seq - d->next_seq);
	if (delta < 0) {
		/* already parsed (a call racing another thread's): only the new bytes */
		__u32 old = (__u32)(-delta);

		if (old >= plen)
			return 0;
		sc->off += old;
		seq += old;
		delta = 0;
	}
	if (delta > 0) {
		/* bytes we did not see: fine inside a body of known length */
		if ((d->state == PS_BODY || d->state == PS_CHUNK_DATA) &&
		    d->remaining >= (__u64)delta) {
			d->remaining -= delta;
			add_body(sc, c, delta);
			if (d->remaining == 0 && !data) {
				if (d->state == PS_CHUNK_DATA)
					d->state = PS_CHUNK_END;
				else
					message_done(sc, c);
			}
		} else if (d->state == PS_EOF) {
			add_body(sc, c, delta);
		} else if (d->state != PS_OPAQUE) {
			go_dead(sc, c, HTTP_STAT_GAP);
			return 0;
		}
	}
	d->next_seq = seq + (sc->end - sc->off);
	if (plen)
		d->last_ns = sc->now;
	if (d->flags & DF_CARRY) {
		/* the start of a split line waits in http_carry */
		__u64 ck = c->id * 2 + di;
		struct http_carry *cv = bpf_map_lookup_elem(&http_carry, &ck);
		__u32 clen;

		d->flags &= ~DF_CARRY;
		if (!cv) {
			go_dead(sc, c, HTTP_STAT_HEADERS_TOO_BIG);
			return 0;
		}
		clen = cv->len;
		if (clen > HTTP_CARRY_MAX)
			clen = HTTP_CARRY_MAX;
		__builtin_memcpy(p.s->buf, cv->bytes, HTTP_CARRY_MAX);
		if (sc->end > sc->off) {
			bpf_map_delete_elem(&http_carry, &ck);
			if (load(&p, clen)) {
				go_dead(sc, c, HTTP_STAT_HEADERS_TOO_BIG);
				return 0;
			}
		} else {
			d->flags |= DF_CARRY; /* nothing new: keep it */
		}
	}
	if (sc->end > sc->off || sc->blen)
		bpf_loop(MAX_STEPS, step, &p, 0);
	if (!c->dead && !sc->stop && (sc->off < sc->end || (sc->blen && sc->bpos < sc->blen)))
		go_dead(sc, c, HTTP_STAT_TOO_COMPLEX);
	/* a response delimited by the connection's end: recv() returned 0 */
	if (!sending && !plen && !c->dead && di == 1 && d->state == PS_EOF) {
		sc->now = d->last_ns ? d->last_ns : sc->now;
		response_done(sc, c);
	}
	return 0;
}

/* Do the call's first bytes start like a request method? Read straight from
 * the first buffer, without the scratch: most calls of a socket that is not
 * HTTP end here. Not inlined: its stack is not on the parser's deepest call
 * chain. */
static __noinline bool starts_like_request(int ret)
{
	struct pt_regs *r = syscall_regs();
	__u64 a = 0, b = 0, w = 0, seg[2];
	__u32 n;

	if (!r || ret <= 0)
		return false;
	switch (call_buffers(r, &a, &b)) {
	case CALL_BUF:
		break;
	case CALL_IOV:
		if (!b || bpf_probe_read_user(seg, sizeof(seg), (const void *)a))
			return false;
		a = seg[0];
		b = seg[1];
		break;
	default:
		return false;
	}
	n = ret < 8 ? ret : 8;
	if (b < n)
		n = b; /* a first buffer this short: the prefix decides, handle() the rest */
	if (n == 0 || n > 8 || bpf_probe_read_user(&w, n, (const void *)a))
		return false;
	return method_prefix(w, n);
}

/* Most calls need no parse and return after one hash lookup: a call that failed
 * or peeked, one on the server side of a connection whose client parses for
 * it (dead), one on a TCP socket that is not HTTP. */
static __always_inline void on_call(__u64 skp, int ret, int flags, bool sending)
{
	const struct sock *sk = SOCK_RO((void *)skp);
	const struct tcp_sock *tp;
	struct http_quiet *q;
	struct http_conn *c;
	__u64 key = skp;
	__u32 snd, rcv, *d;

	if (ret < 0 || (!sending && (flags & (MSG_PEEK_FLAG | MSG_OOB_FLAG | MSG_TRUNC_FLAG))))
		return; /* bytes TCP reads again later, or never copies */
	if (!sk || sk->sk_protocol != IPPROTO_TCP)
		return;
	tp = TCP_RO((void *)skp);
	if (!tp)
		return;
	q = quiet_slot(skp);
	if (q && q->sk == skp) {
		first_bytes(tp, &snd, &rcv);
		if (q->snd_first == snd && q->rcv_first == rcv)
			return;
	}
	c = bpf_map_lookup_elem(&http_conns, &key);
	if (c && c->dead && q) {
		first_bytes(tp, &q->snd_first, &q->rcv_first);
		q->sk = skp;
	}
	if (c ? c->dead : !starts_like_request(ret))
		return;
	d = depth_enter();
	handle(skp, ret, sending, c);
	depth_leave(d);
}

SEC("raw_tp/sock_send_length")
int BPF_PROG(http_send, struct sock *sk, int ret, int flags)
{
	on_call((__u64)sk, ret, flags, true);
	SOCKCHAIN_NEXT_TCP(ctx, sockchain_send_progs);
	return 0;
}

SEC("raw_tp/sock_recv_length")
int BPF_PROG(http_recv, struct sock *sk, int ret, int flags)
{
	on_call((__u64)sk, ret, flags, false);
	SOCKCHAIN_NEXT_TCP(ctx, sockchain_recv_progs);
	return 0;
}

/* ---------------------------------------------------------------- lifecycle */

/* The connection ends: a response delimited by it ends too; requests still
 * waiting for an answer are counted as such. */
static __always_inline void conn_close(__u64 key)
{
	struct http_conn *c = bpf_map_lookup_elem(&http_conns, &key);
	struct http_quiet *q;
	struct pscal sc = {};
	__u64 ck;

	if (!c)
		return;
	if (!c->dead) {
		struct http_dir *d = &c->dir[1];

		sc.id = c->id;
		sc.di = 1;
		if (d->state == PS_EOF && c->count && !(d->flags & DF_UNMATCHED)) {
			/* a response delimited by the connection's end, not read to its end */
			sc.now = d->last_ns ? d->last_ns : bpf_ktime_get_ns();
			http_record(&sc, c, REC_RESPONSE);
		}
		/* an early response whose request never ended */
		sc.now = bpf_ktime_get_ns();
		http_record(&sc, c, REC_DEFERRED);
		if (c->count)
			stat_add(&http_stats, HTTP_STAT_NO_RESPONSE,
				 c->count * (c->peer ? http_reporters(c) : 1));
		drop_pending(c);
	}
	if (c->peer == PEER_OPEN)
		http_reporters(c); /* frees its link */
	q = quiet_slot(key);
	if (q && q->sk == key)
		q->sk = 0;
	ck = c->id * 2;
	bpf_map_delete_elem(&http_carry, &ck);
	ck = c->id * 2 + 1;
	bpf_map_delete_elem(&http_carry, &ck);
	if (!bpf_map_delete_elem(&http_conns, &key))
		stat_add(&http_stats, HTTP_STAT_LIVE, -1);
}

static __always_inline void state_change(__u64 key, const struct sock *sk, int oldstate,
					 int newstate)
{
	if (newstate == TCP_LISTEN) {
		struct http_listen_key k = {.netns = sock_netns(sk),
					    .port = sk->__sk_common.skc_num};
		struct http_owner o = {};

		owner_from_current(&o);
		bpf_map_update_elem(&http_listeners, &k, &o, BPF_ANY);
	} else if (oldstate == TCP_LISTEN) {
		if (newstate == TCP_CLOSE) {
			struct http_listen_key k = {.netns = sock_netns(sk),
						    .port = sk->__sk_common.skc_num};

			bpf_map_delete_elem(&http_listeners, &k);
		}
	} else if (newstate == TCP_SYN_SENT) {
		/* connect(): the caller owns the socket */
		struct http_owner o = {};

		owner_from_current(&o);
		bpf_map_update_elem(&http_owners, &key, &o, BPF_ANY);
	} else if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_SENT) {
		/* the local end is bound now: the server side looks its client up here */
		struct http_owner *o = bpf_map_lookup_elem(&http_owners, &key);
		struct http_endpoint_key ek = {};
		struct http_endpoint ep = {};

		endpoint_key(sk, &ek);
		ep.netns = sock_netns(sk);
		ep.cgroup_id = sock_cgroup_id(sk);
		if (o) {
			ep.tgid = o->tgid;
			__builtin_memcpy(ep.comm, o->comm, HTTP_COMM_LEN);
		}
		bpf_map_update_elem(&http_endpoints, &ek, &ep, BPF_ANY);
	} else if (newstate == TCP_CLOSE) {
		conn_close(key);
		if (bpf_map_lookup_elem(&http_owners, &key)) {
			if (oldstate != TCP_SYN_SENT) {
				struct http_endpoint_key ek = {};

				endpoint_key(sk, &ek);
				if (ek.port)
					bpf_map_delete_elem(&http_endpoints, &ek);
			}
			bpf_map_delete_elem(&http_owners, &key);
		}
	}
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(http_state, struct sock *skp, int oldstate, int newstate)
{
	const struct sock *sk = SOCK_RO(skp);
	__u32 *d;

	if (!sk || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	d = depth_enter();
	state_change((__u64)skp, sk, oldstate, newstate);
	depth_leave(d);
	return 0;
}

/* Ring buffer records and values only used through pointers: name the types
 * once so they are in the object's BTF for the user-side layout check. */
const struct http_sample *unused_http_sample __attribute__((unused));
const struct http_carry *unused_http_carry __attribute__((unused));
/* ...and the enums whose values user space mirrors (probes/http.py). */
const enum http_stat *unused_http_stat __attribute__((unused));
const enum http_method *unused_http_method __attribute__((unused));
const enum http_role *unused_http_role __attribute__((unused));

char LICENSE[] SEC("license") = "Dual BSD/GPL";
