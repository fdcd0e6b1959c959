/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* The bytes of a socket call, read from the caller's own buffers.
 *
 * The sock_send_length / sock_recv_length tracepoints run at the end of a
 * sendmsg/recvmsg, in the caller's context: the caller's system call is still
 * under way, and its saved registers (bpf_task_pt_regs) name the buffers the
 * call moved. A received call's bytes are there already; a sent call's are
 * still there. Used by http and dns (docs/sockchain.md, "A call's bytes").
 * Kernel-only: include after meshlens.bpf.h. */
#ifndef MESHLENS_SOCKCALL_H
#define MESHLENS_SOCKCALL_H

/* The system calls whose buffers hold a socket call's bytes, and where their
 * arguments are in the saved registers. */
#if defined(__TARGET_ARCH_x86)
#define NR_READ 0
#define NR_WRITE 1
#define NR_READV 19
#define NR_WRITEV 20
#define NR_SENDTO 44
#define NR_RECVFROM 45
#define NR_SENDMSG 46
#define NR_RECVMSG 47
#define NR_RECVMMSG 299
#define NR_SENDMMSG 307
#define NR_PREADV2 327
#define NR_PWRITEV2 328
#define SYSCALL_NR(r) ((r)->orig_ax)
#define SYSCALL_ARG1(r) ((r)->di)
#define SYSCALL_ARG2(r) ((r)->si)
#define SYSCALL_ARG3(r) ((r)->dx)
#define SYSCALL_ARG5(r) ((r)->r8)
#elif defined(__TARGET_ARCH_arm64)
#define NR_READ 63
#define NR_WRITE 64
#define NR_READV 65
#define NR_WRITEV 66
#define NR_SENDTO 206
#define NR_RECVFROM 207
#define NR_SENDMSG 211
#define NR_RECVMSG 212
#define NR_RECVMMSG 243
#define NR_SENDMMSG 269
#define NR_PREADV2 286
#define NR_PWRITEV2 287
#define SYSCALL_NR(r) ((r)->syscallno)
#define SYSCALL_ARG1(r) ((r)->orig_x0)
#define SYSCALL_ARG2(r) ((r)->regs[1])
#define SYSCALL_ARG3(r) ((r)->regs[2])
#define SYSCALL_ARG5(r) ((r)->regs[4])
#else
#error "sockcall.h: syscall registers of this architecture are not described"
#endif

#define PF_KTHREAD_FLAG 0x00200000
#define MSG_OOB_FLAG 1
#define MSG_TRUNC_FLAG 0x20
#define MMSG_SIZE 64	  /* struct mmsghdr: a user_msghdr (56 bytes), msg_len, padding */
#define MMSG_LEN_OFF 56	  /* offsetof(struct mmsghdr, msg_len) */
#define MMSG_SCAN 8	  /* entries of a sendmmsg/recvmmsg vector looked at */

#define TCP_RO(sk) \
	((const struct tcp_sock *)bpf_rdonly_cast((sk), bpf_core_type_id_kernel(struct tcp_sock)))

static __always_inline struct pt_regs *syscall_regs(void)
{
	struct task_struct *t = bpf_get_current_task_btf();

	if (t->flags & PF_KTHREAD_FLAG)
		return 0;
	return (struct pt_regs *)bpf_task_pt_regs(t);
}

/* The buffers of the system call that moved this call's `ret` bytes, from the
 * caller's saved registers: read/write, readv/writev, recvfrom/sendto,
 * recvmsg/sendmsg, recvmmsg/sendmmsg, preadv2/pwritev2. Anything else
 * (sendfile and splice, io_uring, a kernel thread) has no buffers we can
 * read: CALL_NONE, and the call's bytes are skipped like bytes not seen. */
#define CALL_NONE 0 /* no user buffers */
#define CALL_BUF 1  /* one buffer: *a = address, *b = length */
#define CALL_IOV 2  /* an iovec array: *a = address, *b = count */

/* The message of a sendmmsg/recvmmsg that this call moves: the kernel writes
 * each entry's msg_len after moving it, so the call in progress is the first
 * entry still at 0 (callers zero the vector, as glibc's resolver does). 0 when
 * no entry qualifies. */
static __always_inline __u64 mmsg_entry(__u64 vec, __u64 vlen)
{
	for (__u32 i = 0; i < MMSG_SCAN; i++) {
		__u32 len = 1;

		if (i >= vlen)
			break;
		if (bpf_probe_read_user(&len, sizeof(len), (const void *)(vec + i * MMSG_SIZE +
									  MMSG_LEN_OFF)))
			return 0;
		if (len == 0)
			return vec + i * MMSG_SIZE;
	}
	return 0;
}

/* The address of the destination the caller gave a send (sendto, sendmsg,
 * sendmmsg) into *name, without reading its buffers; 0 if none. (An out
 * parameter: a returned value let the compiler merge a load from the registers
 * with one from the stack, which the verifier refuses.) */
static __always_inline void call_dest(struct pt_regs *r, __u64 *name)
{
	__u64 nr = SYSCALL_NR(r), hdr = SYSCALL_ARG2(r);

	*name = 0;
	if (nr == NR_SENDTO) {
		*name = SYSCALL_ARG5(r);
		return;
	}
	if (nr == NR_SENDMMSG)
		hdr = mmsg_entry(hdr, SYSCALL_ARG3(r));
	else if (nr != NR_SENDMSG)
		return;
	/* struct user_msghdr starts with msg_name */
	if (!hdr || bpf_probe_read_user(name, sizeof(*name), (const void *)hdr))
		*name = 0;
}

/* The call's buffers. (Where a send goes is call_dest()'s; a receive's source
 * is copied out only after the tracepoint.) */
static __always_inline int call_buffers(struct pt_regs *r, __u64 *a, __u64 *b)
{
	__u64 m[4]; /* struct user_msghdr: name, namelen, iov, iovlen */
	__u64 nr = SYSCALL_NR(r);

	*a = SYSCALL_ARG2(r);
	*b = SYSCALL_ARG3(r);
	switch (nr) {
	case NR_READ:
	case NR_WRITE:
	case NR_RECVFROM:
	case NR_SENDTO:
		return CALL_BUF;
	case NR_READV:
	case NR_WRITEV:
	case NR_PREADV2:
	case NR_PWRITEV2:
		return CALL_IOV;
	case NR_RECVMMSG:
	case NR_SENDMMSG:
		*a = mmsg_entry(*a, *b);
		if (!*a)
			return CALL_NONE;
		/* fall through: the entry starts with its msghdr */
	case NR_RECVMSG:
	case NR_SENDMSG:
		if (bpf_probe_read_user(m, sizeof(m), (const void *)*a))
			return CALL_NONE;
		*a = m[2];
		*b = m[3];
		return CALL_IOV;
	}
	return CALL_NONE;
}

#define CALL_SEGS 8 /* buffers of a call that are read (iovecs) */

/* Where the bytes of one call are: the caller's buffers, as iovecs. */
struct call_seg {
	__u64 base;
	__u64 len;
};

struct call_segs {
	struct call_seg seg[CALL_SEGS];
	__u32 n; /* segments; 0: the call's bytes cannot be read (sendfile, io_uring, ...) */
	__u32 __pad0;
};

/* The call's buffers into *u: 0 when the call's `ret` bytes can be read from them. */
static __always_inline int call_segs_fill(struct call_segs *u, __u32 ret)
{
	struct pt_regs *r = syscall_regs();
	__u64 a = 0, b = 0, total = 0;

	u->n = 0;
	if (!r)
		return -1;
	switch (call_buffers(r, &a, &b)) {
	case CALL_BUF:
		u->seg[0].base = a;
		u->seg[0].len = b;
		u->n = 1;
		break;
	case CALL_IOV:
		if (b > CALL_SEGS)
			b = CALL_SEGS;
		if (!b || bpf_probe_read_user(u->seg, b * sizeof(struct call_seg), (const void *)a))
			return -1;
		u->n = b;
		break;
	default:
		return -1;
	}
	for (__u32 i = 0; i < CALL_SEGS; i++) {
		if (i >= u->n)
			break;
		total += u->seg[i].len;
	}
	/* buffers smaller than what the call moved: the kernel's own call on this
	 * socket, inside the caller's system call on something else */
	if (total < ret && u->n < CALL_SEGS) {
		u->n = 0;
		return -1;
	}
	return 0;
}

/* Copy bytes [off, off + n) of the call to buf from `dst` on. Each piece lands at
 * buf + ((dst + done) & mask) and is at most `max` bytes, so a buffer of
 * mask + 1 + max bytes holds any of them (what the verifier checks). 0 when all
 * n bytes were read. */
static __always_inline int call_segs_read(const struct call_segs *u, __u8 *buf, __u32 mask,
					  __u32 max, __u32 dst, __u64 off, __u32 n)
{
	__u32 done = 0;

	for (__u32 i = 0; i < CALL_SEGS; i++) {
		__u64 len, take;

		if (i >= u->n || done >= n)
			break;
		len = u->seg[i].len;
		if (off >= len) {
			off -= len;
			continue;
		}
		take = len - off;
		if (take > n - done)
			take = n - done;
		if (take > max)
			return -1;
		if (bpf_probe_read_user(buf + ((dst + done) & mask), take,
					(const void *)(u->seg[i].base + off)))
			return -1;
		done += take;
		off = 0;
	}
	return done == n ? 0 : -1;
}

/* Is the system call's file descriptor this socket? A socket the kernel
 * writes to inside another call (NFS under write()) is not the caller's. */
static __always_inline bool fd_is_sock(const struct sock *sk)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct pt_regs *r = syscall_regs();
	struct file **fds;
	struct file *f = 0;
	__u64 fd;

	if (!r)
		return false;
	fd = SYSCALL_ARG1(r);
	if (fd >= BPF_CORE_READ(t, files, fdt, max_fds))
		return false;
	fds = BPF_CORE_READ(t, files, fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), fds + fd) || !f)
		return false;
	return BPF_CORE_READ(f, private_data) == (void *)BPF_CORE_READ(sk, sk_socket);
}

/* Sequence number just past the bytes the application has read. A recv() that
 * reads up to a FIN consumes the FIN too (copied_seq moves one further):
 * the FIN arrived (SOCK_DONE) and nothing is left unread, FIN included. */
static __always_inline __u32 read_end(const struct sock *sk, const struct tcp_sock *tp)
{
	__u32 end = tp->copied_seq;

	if ((sk->__sk_common.skc_flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE))) &&
	    end == tp->rcv_nxt)
		end -= 1;
	return end;
}

#endif /* MESHLENS_SOCKCALL_H */
