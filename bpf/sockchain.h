/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* The socket send/recv chain: one raw_tp program per tracepoint
 * (sock_send_length, sock_recv_length) for the whole agent, which jumps by tail
 * call to the probe that accounts the socket's protocol.
 *
 * Why: every program on a tracepoint is reached by an indirect call (a
 * retpoline here); tcpflow and udpflow on the same two tracepoints made every
 * send() and recv() of every socket pay two, and run the other protocol's
 * early return. The dispatcher pays one and reads the protocol once.
 *
 * Members are ordinary raw_tp programs (they still return early for a
 * protocol not theirs, so a probe that finds its slot taken attaches them on
 * its own); the loader (src/meshlens/probes/sockchain.py) puts them in the
 * slot of their protocol. */
#ifndef MESHLENS_SOCKCHAIN_H
#define MESHLENS_SOCKCHAIN_H

enum sockchain_slot {
	SOCKCHAIN_TCP = 0,
	SOCKCHAIN_UDP = 1,
	SOCKCHAIN_SLOTS = 2,
};

#endif /* MESHLENS_SOCKCHAIN_H */
