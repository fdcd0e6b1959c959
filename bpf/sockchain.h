/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* The socket send/recv chain: one raw_tp program per tracepoint
 * (sock_send_length, sock_recv_length) for the whole agent, which jumps by tail
 * call to the probes that look at the socket's protocol's calls.
 *
 * Why: every program on a tracepoint is reached by an indirect call (a
 * retpoline here); tcpflow and udpflow on the same two tracepoints made every
 * send() and recv() of every socket pay two, and run the other protocol's
 * early return. The dispatcher pays one and reads the protocol once.
 *
 * A TCP socket's call runs the TCP_APP member first (http), which ends with
 * SOCKCHAIN_NEXT_TCP() into the TCP_DNS member (dns); an empty slot falls
 * through to the next one. (tcpflow has no member: it reads each socket's own
 * counters instead.) A UDP socket's call runs UDP_DNS (dns), which ends with
 * SOCKCHAIN_NEXT_PROTO() into UDP (udpflow). dns holds both of its slots with the same programs. Members are
 * ordinary raw_tp programs (they still return early for a protocol not
 * theirs, so a probe that finds its slot taken attaches them on its own); the
 * loader (src/meshlens/probes/sockchain.py) puts them in the slot of their
 * protocol and shares the chain's arrays with a member that continues the
 * chain. */
#ifndef MESHLENS_SOCKCHAIN_H
#define MESHLENS_SOCKCHAIN_H

enum sockchain_slot {
	SOCKCHAIN_UDP = 0,
	SOCKCHAIN_TCP_APP = 1, /* runs first on TCP */
	SOCKCHAIN_TCP_DNS = 2, /* after TCP_APP */
	SOCKCHAIN_UDP_DNS = 3, /* before UDP */
	SOCKCHAIN_SLOTS = 4,
};

struct sockchain_array {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, SOCKCHAIN_SLOTS);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
};

struct sockchain_array sockchain_send_progs SEC(".maps");
struct sockchain_array sockchain_recv_progs SEC(".maps");

/* A TCP_APP member's last step: the member after it, if any (a constant
 * index: the verifier makes it a direct jump; an empty slot falls through). */
#define SOCKCHAIN_NEXT_TCP(ctx, array) bpf_tail_call_static(ctx, &array, SOCKCHAIN_TCP_DNS)

/* A *_DNS member's last step: on UDP, the accounting member; TCP ends here. */
#define SOCKCHAIN_NEXT_PROTO(ctx, array, is_tcp)                        \
	do {                                                            \
		if (!(is_tcp))                                          \
			bpf_tail_call_static(ctx, &array, SOCKCHAIN_UDP); \
	} while (0)

#endif /* MESHLENS_SOCKCHAIN_H */
