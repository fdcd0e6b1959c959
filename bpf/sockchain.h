/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* The socket send/recv chain: one raw_tp program per tracepoint
 * (sock_send_length, sock_recv_length) for the whole agent, which jumps by tail
 * call to the probes that account the socket's protocol.
 *
 * Why: every program on a tracepoint is reached by an indirect call (a
 * retpoline here); tcpflow and udpflow on the same two tracepoints made every
 * send() and recv() of every socket pay two, and run the other protocol's
 * early return. The dispatcher pays one and reads the protocol once.
 *
 * A TCP socket's call runs the TCP_APP member first (http), which ends with
 * SOCKCHAIN_NEXT_TCP() into the TCP_DNS member (dns), which ends with
 * SOCKCHAIN_NEXT_PROTO() into the TCP member (tcpflow); an empty slot falls
 * through to the next one. A UDP socket's call runs UDP_DNS (dns), then UDP
 * (udpflow). dns holds both of its slots with the same programs. Members are
 * ordinary raw_tp programs (they still return early for a protocol not
 * theirs, so a probe that finds its slot taken attaches them on its own); the
 * loader (src/meshlens/probes/sockchain.py) puts them in the slot of their
 * protocol and shares the chain's arrays with a member that continues the
 * chain. */
#ifndef MESHLENS_SOCKCHAIN_H
#define MESHLENS_SOCKCHAIN_H

enum sockchain_slot {
	SOCKCHAIN_TCP = 0,
	SOCKCHAIN_UDP = 1,
	SOCKCHAIN_TCP_APP = 2, /* runs first on TCP */
	SOCKCHAIN_TCP_DNS = 3, /* after TCP_APP, before TCP */
	SOCKCHAIN_UDP_DNS = 4, /* before UDP */
	SOCKCHAIN_SLOTS = 5,
};

struct sockchain_array {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, SOCKCHAIN_SLOTS);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
};

struct sockchain_array sockchain_send_progs SEC(".maps");
struct sockchain_array sockchain_recv_progs SEC(".maps");

/* A TCP_APP member's last step: the members after it, if any (constant
 * indexes at calls of their own: the verifier makes each a direct jump; an
 * empty slot falls through). */
#define SOCKCHAIN_NEXT_TCP(ctx, array)                                  \
	do {                                                            \
		bpf_tail_call_static(ctx, &array, SOCKCHAIN_TCP_DNS);   \
		bpf_tail_call_static(ctx, &array, SOCKCHAIN_TCP);       \
	} while (0)

/* A *_DNS member's last step: the protocol's accounting member. Each index at
 * a call of its own, so both stay direct jumps (see sockchain.bpf.c). */
#define SOCKCHAIN_NEXT_PROTO(ctx, array, is_tcp)                        \
	do {                                                            \
		if (is_tcp)                                             \
			bpf_tail_call_static(ctx, &array, SOCKCHAIN_TCP); \
		else                                                    \
			bpf_tail_call_static(ctx, &array, SOCKCHAIN_UDP); \
	} while (0)

#endif /* MESHLENS_SOCKCHAIN_H */
