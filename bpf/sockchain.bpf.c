// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* The socket send/recv chain's dispatchers (see sockchain.h). */
#include "meshlens.bpf.h"
#include "sockchain.h"

/* Constant indexes, each at a call of its own (bpf_tail_call_static): the
 * verifier turns each into a direct jump. A plain bpf_tail_call() let clang
 * merge the TCP and UDP paths' last calls into one with a variable index,
 * which the JIT emits as an indirect jump (a retpoline here). An empty slot
 * falls through. */
static __always_inline int dispatch(void *ctx, void *progs, const struct sock *sk, int ret)
{
	const struct sock *s = SOCK_RO(sk);
	__u16 proto;

	if (!s)
		return 0;
	proto = s->sk_protocol;
	if (proto == IPPROTO_TCP) {
		/* a failed call (EAGAIN ends every read loop of an event-driven
		 * server) is nothing to any TCP member; udpflow does want its UDP
		 * ones, to drop the peer a failed send left behind */
		if (ret < 0)
			return 0;
		bpf_tail_call_static(ctx, progs, SOCKCHAIN_TCP_APP);
		bpf_tail_call_static(ctx, progs, SOCKCHAIN_TCP_DNS);
	} else if (proto == IPPROTO_UDP) {
		bpf_tail_call_static(ctx, progs, SOCKCHAIN_UDP_DNS);
		bpf_tail_call_static(ctx, progs, SOCKCHAIN_UDP);
	}
	return 0;
}

SEC("raw_tp/sock_send_length")
int BPF_PROG(sockchain_send, struct sock *sk, int ret)
{
	return dispatch(ctx, &sockchain_send_progs, sk, ret);
}

SEC("raw_tp/sock_recv_length")
int BPF_PROG(sockchain_recv, struct sock *sk, int ret)
{
	return dispatch(ctx, &sockchain_recv_progs, sk, ret);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
