"""The one module that touches ctypes: a small binding to the system libbpf (libbpf1).

Everything else in meshlens works with the classes here: `BpfObject` (open, set
read-only globals, size maps, load, attach), `Map` (lookups, batch reads),
`RingBuffers` (poll ring buffers into Python lists) and `Link`.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .pacing import pace

_c = ctypes
_vp = _c.c_void_p


class LibbpfError(OSError):
    """A libbpf call failed; `log` holds the verifier's or libbpf's last lines."""

    errno: int  # always set: __init__ takes it (OSError's may be None)

    def __init__(self, err: int, what: str, log: str = "") -> None:
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.what = what
        self.log = log

    def __str__(self) -> str:
        text = f"{self.what}: {os.strerror(self.errno)}"
        if self.log:
            text += "\n" + self.log
        return text


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return ctypes.CDLL("libbpf.so.1", use_errno=True)


_lib = _load()
_libc = ctypes.CDLL(None, use_errno=True)
# The same library through PyDLL, whose calls keep the GIL: for calls that run
# Python callbacks many times and never block (draining a ring buffer). Through
# CDLL each record's callback must take the GIL back, and while another thread
# runs Python that waits for a switch interval (5 ms) per record.
_lib_gil = ctypes.PyDLL(_lib._name)

_PRINT_FN = _c.CFUNCTYPE(_c.c_int, _c.c_int, _c.c_char_p, _vp)
_SAMPLE_FN = _c.CFUNCTYPE(_c.c_int, _vp, _vp, _c.c_size_t)


def _fn(name: str, restype: Any, *argtypes: Any) -> Any:
    f = getattr(_lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_open_file = _fn("bpf_object__open_file", _vp, _c.c_char_p, _vp)
_obj_load = _fn("bpf_object__load", _c.c_int, _vp)
_obj_close = _fn("bpf_object__close", None, _vp)
_obj_name = _fn("bpf_object__name", _c.c_char_p, _vp)
_next_map = _fn("bpf_object__next_map", _vp, _vp, _vp)
_next_prog = _fn("bpf_object__next_program", _vp, _vp, _vp)
_map_name = _fn("bpf_map__name", _c.c_char_p, _vp)
_map_fd = _fn("bpf_map__fd", _c.c_int, _vp)
_map_type = _fn("bpf_map__type", _c.c_int, _vp)
_map_key_size = _fn("bpf_map__key_size", _c.c_uint32, _vp)
_map_value_size = _fn("bpf_map__value_size", _c.c_uint32, _vp)
_map_max_entries = _fn("bpf_map__max_entries", _c.c_uint32, _vp)
_map_set_max_entries = _fn("bpf_map__set_max_entries", _c.c_int, _vp, _c.c_uint32)
_map_initial_value = _fn("bpf_map__initial_value", _vp, _vp, _c.POINTER(_c.c_size_t))
_map_reuse_fd = _fn("bpf_map__reuse_fd", _c.c_int, _vp, _c.c_int)
_prog_name = _fn("bpf_program__name", _c.c_char_p, _vp)
_prog_section = _fn("bpf_program__section_name", _c.c_char_p, _vp)
_prog_fd = _fn("bpf_program__fd", _c.c_int, _vp)
_prog_set_autoload = _fn("bpf_program__set_autoload", _c.c_int, _vp, _c.c_bool)
_prog_attach = _fn("bpf_program__attach", _vp, _vp)
_prog_attach_cgroup = _fn("bpf_program__attach_cgroup", _vp, _vp, _c.c_int)
_link_destroy = _fn("bpf_link__destroy", _c.c_int, _vp)


class _TestRunOpts(_c.Structure):
    """struct bpf_test_run_opts (libbpf bpf.h)."""

    _fields_ = [
        ("sz", _c.c_size_t),
        ("data_in", _vp),
        ("data_out", _vp),
        ("data_size_in", _c.c_uint32),
        ("data_size_out", _c.c_uint32),
        ("ctx_in", _vp),
        ("ctx_out", _vp),
        ("ctx_size_in", _c.c_uint32),
        ("ctx_size_out", _c.c_uint32),
        ("retval", _c.c_uint32),
        ("repeat", _c.c_int),
        ("duration", _c.c_uint32),
        ("flags", _c.c_uint32),
        ("cpu", _c.c_uint32),
        ("batch_size", _c.c_uint32),
    ]


_test_run = _fn("bpf_prog_test_run_opts", _c.c_int, _c.c_int, _c.POINTER(_TestRunOpts))
_lookup_elem = _fn("bpf_map_lookup_elem", _c.c_int, _c.c_int, _vp, _vp)
_update_elem = _fn("bpf_map_update_elem", _c.c_int, _c.c_int, _vp, _vp, _c.c_uint64)
_delete_elem = _fn("bpf_map_delete_elem", _c.c_int, _c.c_int, _vp)
_next_key = _fn("bpf_map_get_next_key", _c.c_int, _c.c_int, _vp, _vp)
_lookup_batch = _fn(
    "bpf_map_lookup_batch", _c.c_int, _c.c_int, _vp, _vp, _vp, _vp, _c.POINTER(_c.c_uint32), _vp
)
_num_cpus = _fn("libbpf_num_possible_cpus", _c.c_int)
_enable_stats = _fn("bpf_enable_stats", _c.c_int, _c.c_int)
_prog_info = _fn("bpf_obj_get_info_by_fd", _c.c_int, _c.c_int, _vp, _c.POINTER(_c.c_uint32))
_rb_new = _fn("ring_buffer__new", _vp, _c.c_int, _SAMPLE_FN, _vp, _vp)
_rb_add = _fn("ring_buffer__add", _c.c_int, _vp, _c.c_int, _SAMPLE_FN, _vp)
_rb_poll = _fn("ring_buffer__poll", _c.c_int, _vp, _c.c_int)
_rb_consume = _lib_gil.ring_buffer__consume
_rb_consume.restype = _c.c_int
_rb_consume.argtypes = [_vp]
_rb_free = _fn("ring_buffer__free", None, _vp)
_rb_epoll_fd = _fn("ring_buffer__epoll_fd", _c.c_int, _vp)
_set_print = _fn("libbpf_set_print", _vp, _PRINT_FN)
_vsnprintf = _libc.vsnprintf
_vsnprintf.restype = _c.c_int
_vsnprintf.argtypes = [_c.c_char_p, _c.c_size_t, _c.c_char_p, _vp]

BPF_STATS_RUN_TIME = 0
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
MAP_TYPE_PERCPU_HASH, MAP_TYPE_PERCPU_ARRAY, MAP_TYPE_LRU_PERCPU_HASH = 5, 6, 10
_PERCPU_TYPES = {MAP_TYPE_PERCPU_HASH, MAP_TYPE_PERCPU_ARRAY, MAP_TYPE_LRU_PERCPU_HASH}
MAP_TYPE_HASH, MAP_TYPE_LRU_HASH = 1, 9
_HASH_TYPES = {MAP_TYPE_HASH, MAP_TYPE_PERCPU_HASH, MAP_TYPE_LRU_HASH, MAP_TYPE_LRU_PERCPU_HASH}
# Buckets of a hash map one batch read should walk, about: the walk holds the CPU
# (no preemption in the kernel here), ~30 us per 4,096 buckets on this machine.
BUCKETS_PER_READ = 4096

# libbpf's own messages (warnings, verifier logs of failed loads) go here
# rather than to stderr; callers show the tail when something fails.
_log: collections.deque[str] = collections.deque(maxlen=2000)
_log_lock = threading.Lock()


_LIBBPF_DEBUG = 2  # enum libbpf_print_level: WARN, INFO, DEBUG


def _on_print_impl(level: int, fmt: bytes, args: int) -> int:
    # Debug lines (every CO-RE relocation: thousands per start) are not kept;
    # failures, verifier logs included, come as warnings.
    if level >= _LIBBPF_DEBUG:
        return 0
    buf = _c.create_string_buffer(4096)
    _vsnprintf(buf, len(buf), fmt, args)
    with _log_lock:
        _log.append(buf.value.decode(errors="replace").rstrip("\n"))
    return 0


_on_print = _PRINT_FN(_on_print_impl)  # module-level: the C trampoline must stay alive
_set_print(_on_print)


def libbpf_log_tail(lines: int = 20) -> str:
    with _log_lock:
        return "\n".join(list(_log)[-lines:])


def num_possible_cpus() -> int:
    n = int(_num_cpus())
    if n <= 0:
        raise LibbpfError(-n, "libbpf_num_possible_cpus")
    return n


def _errno(ret: int | None = None) -> int:
    if ret is not None and ret < 0:
        return -ret
    return _c.get_errno() or errno.EINVAL


class Link:
    """An attachment; destroying it detaches the program."""

    def __init__(self, ptr: int, prog: str, target: str) -> None:
        self._ptr: int | None = ptr
        self.prog = prog
        self.target = target

    def destroy(self) -> None:
        if self._ptr:
            _link_destroy(self._ptr)
            self._ptr = None


@dataclass
class ProgStats:
    run_time_ns: int
    run_cnt: int


class _ProgInfo(_c.Structure):
    # Leading fields of the uapi struct bpf_prog_info (append-only ABI); a test
    # checks these offsets against the running kernel's BTF.
    _fields_ = [
        ("type", _c.c_uint32),
        ("id", _c.c_uint32),
        ("tag", _c.c_uint8 * 8),
        ("jited_prog_len", _c.c_uint32),
        ("xlated_prog_len", _c.c_uint32),
        ("jited_prog_insns", _c.c_uint64),
        ("xlated_prog_insns", _c.c_uint64),
        ("load_time", _c.c_uint64),
        ("created_by_uid", _c.c_uint32),
        ("nr_map_ids", _c.c_uint32),
        ("map_ids", _c.c_uint64),
        ("name", _c.c_char * 16),
        ("ifindex", _c.c_uint32),
        ("gpl_compatible_etc", _c.c_uint32),
        ("netns_dev", _c.c_uint64),
        ("netns_ino", _c.c_uint64),
        ("nr_jited_ksyms", _c.c_uint32),
        ("nr_jited_func_lens", _c.c_uint32),
        ("jited_ksyms", _c.c_uint64),
        ("jited_func_lens", _c.c_uint64),
        ("btf_id", _c.c_uint32),
        ("func_info_rec_size", _c.c_uint32),
        ("func_info", _c.c_uint64),
        ("nr_func_info", _c.c_uint32),
        ("nr_line_info", _c.c_uint32),
        ("line_info", _c.c_uint64),
        ("jited_line_info", _c.c_uint64),
        ("nr_jited_line_info", _c.c_uint32),
        ("line_info_rec_size", _c.c_uint32),
        ("jited_line_info_rec_size", _c.c_uint32),
        ("nr_prog_tags", _c.c_uint32),
        ("prog_tags", _c.c_uint64),
        ("run_time_ns", _c.c_uint64),
        ("run_cnt", _c.c_uint64),
    ]


PROG_INFO_OFFSETS = {
    name: getattr(_ProgInfo, name).offset for name in ("id", "name", "run_time_ns", "run_cnt")
}


class Program:
    def __init__(self, ptr: int) -> None:
        self._ptr = ptr
        self.name: str = _prog_name(ptr).decode()
        self.section: str = _prog_section(ptr).decode()
        self.autoload = True
        # No log buffer up front (1 MiB per program would be resident for
        # nothing): on a failed load libbpf reloads with logging and prints the
        # verifier's log through libbpf_set_print, which we keep.

    @property
    def fd(self) -> int:
        return int(_prog_fd(self._ptr))

    def set_autoload(self, on: bool) -> None:
        _prog_set_autoload(self._ptr, on)
        self.autoload = on

    def verifier_log(self, lines: int = 15) -> str:
        """The verifier's last lines for this program, from libbpf's messages."""
        with _log_lock:
            text = "\n".join(_log)
        begin = f"prog '{self.name}': -- BEGIN PROG LOAD LOG --"
        start = text.rfind(begin)
        if start < 0:
            return ""
        body = text[start + len(begin) :]
        body = body[: body.find("-- END PROG LOAD LOG --")] if "-- END" in body else body
        return "\n".join(body.strip().splitlines()[-lines:])

    def attach(self) -> Link:
        """Attach by section name (raw_tp/..., tracepoint/..., uprobe ...)."""
        ptr = _prog_attach(self._ptr)
        if not ptr:
            raise LibbpfError(_errno(), f"attach {self.name} ({self.section})", libbpf_log_tail(5))
        return Link(ptr, self.name, self.section)

    def run(self, ctx: bytes = b"") -> int:
        """Run a loaded program once (BPF_PROG_RUN; e.g. a "syscall" program
        that starts a timer), with ctx as its context; its return value, signed."""
        opts = _TestRunOpts(sz=_c.sizeof(_TestRunOpts))
        if ctx:
            buf = _c.create_string_buffer(ctx, len(ctx))
            opts.ctx_in, opts.ctx_size_in = _c.cast(buf, _vp), len(ctx)
        ret = _test_run(self.fd, _c.byref(opts))
        if ret:
            raise LibbpfError(_errno(ret), f"run {self.name}")
        return int(_c.c_int32(opts.retval).value)

    def attach_cgroup(self, cgroup_path: str) -> Link:
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            ptr = _prog_attach_cgroup(self._ptr, fd)
        finally:
            os.close(fd)  # the link holds its own reference to the cgroup
        if not ptr:
            raise LibbpfError(_errno(), f"attach {self.name} to cgroup {cgroup_path}")
        return Link(ptr, self.name, f"{self.section} {cgroup_path}")

    def stats(self) -> ProgStats:
        if not self.autoload:
            return ProgStats(0, 0)
        info = _ProgInfo()
        size = _c.c_uint32(_c.sizeof(info))
        ret = _prog_info(self.fd, _c.byref(info), _c.byref(size))
        if ret:
            raise LibbpfError(_errno(ret), f"bpf_obj_get_info_by_fd {self.name}")
        return ProgStats(run_time_ns=info.run_time_ns, run_cnt=info.run_cnt)


def _bucket(token: Any) -> int:
    return int.from_bytes(token.raw[:4], "little")


def _batch_buffers(ks: int, vs: int, n: int) -> tuple[Any, Any, memoryview, memoryview]:
    """Key and value buffers for a batch of n entries, with byte views of both."""
    keys = _c.create_string_buffer(ks * n)
    vals = _c.create_string_buffer(vs * n)
    return keys, vals, memoryview(keys).cast("B"), memoryview(vals).cast("B")


class Map:
    def __init__(self, ptr: int) -> None:
        self._ptr = ptr
        self.name: str = _map_name(ptr).decode()
        self._batch_hint = 64  # entries per batch read; follows what reads find

    @property
    def fd(self) -> int:
        return int(_map_fd(self._ptr))

    @property
    def type(self) -> int:
        return int(_map_type(self._ptr))

    @property
    def key_size(self) -> int:
        return int(_map_key_size(self._ptr))

    @property
    def value_size(self) -> int:
        return int(_map_value_size(self._ptr))

    @property
    def max_entries(self) -> int:
        return int(_map_max_entries(self._ptr))

    def set_max_entries(self, n: int) -> None:
        ret = _map_set_max_entries(self._ptr, n)
        if ret:
            raise LibbpfError(_errno(ret), f"set max_entries of {self.name}")

    def reuse_fd(self, fd: int) -> None:
        """Before load: use an existing map (another object's) instead of creating one."""
        ret = _map_reuse_fd(self._ptr, fd)
        if ret:
            raise LibbpfError(_errno(ret), f"reuse fd {fd} for map {self.name}")

    def _value_buf_size(self) -> int:
        if self.type in _PERCPU_TYPES:
            return ((self.value_size + 7) // 8) * 8 * num_possible_cpus()
        return self.value_size

    def lookup(self, key: bytes) -> bytes | None:
        out = _c.create_string_buffer(self._value_buf_size())
        if _lookup_elem(self.fd, _c.c_char_p(key), out) != 0:
            if _c.get_errno() == errno.ENOENT:
                return None
            raise LibbpfError(_errno(), f"lookup in {self.name}")
        return out.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        if _update_elem(self.fd, _c.c_char_p(key), _c.c_char_p(value), flags) != 0:
            raise LibbpfError(_errno(), f"update {self.name}")

    def delete(self, key: bytes) -> bool:
        if _delete_elem(self.fd, _c.c_char_p(key)) != 0:
            if _c.get_errno() == errno.ENOENT:
                return False
            raise LibbpfError(_errno(), f"delete from {self.name}")
        return True

    def keys(self) -> Iterator[bytes]:
        prev: bytes | None = None
        nxt = _c.create_string_buffer(self.key_size)
        while _next_key(self.fd, _c.c_char_p(prev) if prev else None, nxt) == 0:
            prev = nxt.raw
            yield prev

    def lookup_batch(
        self, chunk: int | None = None, values: bool = True
    ) -> tuple[bytearray, bytearray, int]:
        """Every entry in batches: (keys, values, count), packed back to back;
        values=False leaves the values out (empty) for a caller that reads
        them another way.

        One syscall per `chunk` entries, each batch copied once into the
        result (its size follows what was read, not the map's capacity); falls
        back to key iteration on kernels without batch support for this map type.
        By default a batch holds what the last read found, plus room to grow
        (zeroing a 4096-entry buffer per small map was most of an idle refresh);
        in a hash map, what the last read found in BUCKETS_PER_READ buckets: a
        call walks buckets until its batch is full, empty ones too, with the
        CPU held, so a big sparse map is read in several short calls."""
        ks, vs = self.key_size, self._value_buf_size()
        hashed = chunk is None and self.type in _HASH_TYPES
        chunk = chunk or self._batch_hint
        keys, vals, kview, vview = _batch_buffers(ks, vs, chunk)
        token_in = _c.create_string_buffer(max(ks, 8))
        token_out = _c.create_string_buffer(max(ks, 8))
        out_k = bytearray()
        out_v = bytearray()
        total = 0
        first = True
        while True:
            count = _c.c_uint32(chunk)
            ret = _lookup_batch(
                self.fd, None if first else token_in, token_out, keys, vals, _c.byref(count), None
            )
            err = _errno(ret) if ret else 0
            if err == errno.ENOSPC and count.value == 0 and chunk < 1 << 20:
                # one hash bucket holds more entries than a batch: a bigger one
                chunk *= 4
                keys, vals, kview, vview = _batch_buffers(ks, vs, chunk)
                continue
            if ret and err not in (errno.ENOENT,):
                if err == errno.EINVAL and first:
                    return self._lookup_iter()
                raise LibbpfError(err, f"batch lookup in {self.name}")
            n = count.value
            out_k += kview[: n * ks]
            if values:
                out_v += vview[: n * vs]
            total += n
            if err == errno.ENOENT:
                break
            pace()
            if hashed and n == chunk and chunk < 4096:
                # a hash map's token is the next bucket's index: denser than the
                # last read, so this batch walked few buckets; take more at once
                walked = _bucket(token_out) - (0 if first else _bucket(token_in))
                if walked < BUCKETS_PER_READ // 2:
                    chunk *= 2
                    keys, vals, kview, vview = _batch_buffers(ks, vs, chunk)
            _c.memmove(token_in, token_out, len(token_out))
            first = False
        self._batch_hint = self._next_hint(total)
        return out_k, out_v, total

    def _next_hint(self, found: int) -> int:
        if self.type in _HASH_TYPES:
            buckets = 1 << max(0, self.max_entries - 1).bit_length()
            if buckets > BUCKETS_PER_READ:
                return max(1, min(4096, found * BUCKETS_PER_READ // buckets))
        return min(4096, max(64, found + found // 4 + 16))

    def _lookup_iter(self) -> tuple[bytearray, bytearray, int]:
        ks = bytearray()
        vs = bytearray()
        n = 0
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                ks += k
                vs += v
                n += 1
        return ks, vs, n

    def percpu_sums(self) -> list[int]:
        """Sum each slot of a PERCPU_ARRAY of u64 over all CPUs (mod 2**64), read
        in one batch (one syscall, not one per slot)."""
        ncpu = num_possible_cpus()
        keys, vals, n = self.lookup_batch(chunk=self.max_entries)
        sums = [0] * self.max_entries
        for j in range(n):
            i = int.from_bytes(keys[j * 4 : j * 4 + 4], "little")
            row = memoryview(vals)[j * ncpu * 8 : (j + 1) * ncpu * 8].cast("Q")
            if i < len(sums):
                sums[i] = sum(row) % (1 << 64)
        return sums


class BpfObject:
    """A compiled CO-RE object: open, configure, load, attach, close."""

    def __init__(self, path: str) -> None:
        self.path = path
        ptr = _open_file(path.encode(), None)
        if not ptr:
            raise LibbpfError(_errno(), f"open {path}", libbpf_log_tail(5))
        self._ptr: int | None = ptr
        self.maps: dict[str, Map] = {}
        m = _next_map(ptr, None)
        while m:
            mp = Map(m)
            self.maps[mp.name] = mp
            m = _next_map(ptr, m)
        self.programs: dict[str, Program] = {}
        p = _next_prog(ptr, None)
        while p:
            pg = Program(p)
            self.programs[pg.name] = pg
            p = _next_prog(ptr, p)
        self.links: list[Link] = []

    def rodata(self) -> tuple[int, int]:
        """Address and size of the .rodata initial image, writable until load."""
        for name, m in self.maps.items():
            if name.endswith(".rodata"):
                size = _c.c_size_t()
                addr = _map_initial_value(m._ptr, _c.byref(size))
                return int(addr or 0), int(size.value)
        raise LibbpfError(errno.ENOENT, f"{self.path} has no .rodata")

    def write_rodata(self, offset: int, data: bytes) -> None:
        addr, size = self.rodata()
        if offset < 0 or offset + len(data) > size:
            raise ValueError(f"rodata write at {offset}+{len(data)} outside {size} bytes")
        _c.memmove(addr + offset, data, len(data))

    def load(self) -> None:
        assert self._ptr
        ret = _obj_load(self._ptr)
        if ret:
            logs = [
                f"[{p.name}]\n{p.verifier_log()}"
                for p in self.programs.values()
                if p.verifier_log()
            ]
            raise LibbpfError(
                _errno(ret),
                f"load {os.path.basename(self.path)}",
                "\n".join(logs) or libbpf_log_tail(),
            )

    def close(self) -> None:
        for link in self.links:
            link.destroy()
        self.links.clear()
        if self._ptr:
            _obj_close(self._ptr)
            self._ptr = None


class RingBuffers:
    """Several ring buffers behind one epoll; records are handed to callbacks."""

    def __init__(self) -> None:
        self._ptr: int | None = None
        self._cbs: list[Any] = []  # keep the C trampolines alive

    def add(self, m: Map, on_record: Callable[[bytes], None]) -> None:
        def _on_sample(_ctx: int, data: int, size: int) -> int:
            on_record(_c.string_at(data, size))
            return 0

        _cb = _SAMPLE_FN(_on_sample)
        self._cbs.append(_cb)
        if self._ptr is None:
            ptr = _rb_new(m.fd, _cb, None, None)
            if not ptr:
                raise LibbpfError(_errno(), f"ring_buffer__new {m.name}")
            self._ptr = ptr
        else:
            ret = _rb_add(self._ptr, m.fd, _cb, None)
            if ret:
                raise LibbpfError(_errno(ret), f"ring_buffer__add {m.name}")

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for data, then drain; returns records handled."""
        if self._ptr is None:
            return 0
        ret = int(_rb_poll(self._ptr, timeout_ms))
        if ret < 0 and -ret != errno.EINTR:
            raise LibbpfError(-ret, "ring_buffer__poll")
        return max(ret, 0)

    def consume(self) -> int:
        if self._ptr is None:
            return 0
        ret = int(_rb_consume(self._ptr))
        if ret < 0:
            raise LibbpfError(-ret, "ring_buffer__consume")
        return ret

    def epoll_fd(self) -> int:
        """Readable when any ring buffer has records (wait on it without a lock)."""
        return int(_rb_epoll_fd(self._ptr)) if self._ptr is not None else -1

    def free(self) -> None:
        if self._ptr is not None:
            _rb_free(self._ptr)
            self._ptr = None


# glibc's malloc: mallopt(3) parameters and malloc_trim(3).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_mallopt = getattr(_libc, "mallopt", None)
_malloc_trim = getattr(_libc, "malloc_trim", None)


def tune_malloc(threshold: int = 128 << 10, arenas: int = 2) -> bool:
    """Keep the C heap from holding on to freed memory. A refresh allocates
    buffers of megabytes (batch reads, arrays) and frees them; by default glibc
    then raises its mmap threshold, so the next such buffers come from the heap
    and their pages stay resident after free(), and every thread gets its own
    arena that keeps what it freed. A fixed threshold (buffers above it are
    mmapped and unmapped on free), heap trimming above it, and few arenas keep
    the agent's RSS near what it really uses. False where there is no glibc."""
    if _mallopt is None:
        return False
    ok = int(_mallopt(_M_MMAP_THRESHOLD, threshold)) == 1
    ok = int(_mallopt(_M_TRIM_THRESHOLD, threshold)) == 1 and ok
    return int(_mallopt(_M_ARENA_MAX, arenas)) == 1 and ok


def release_free_memory() -> None:
    """Give the pages of freed heap memory back to the kernel (malloc_trim(0)),
    e.g. after a refresh freed its buffers."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def enable_run_time_stats() -> int | None:
    """Turn on per-program run time/count accounting while the returned fd is
    open (the kernel turns it off when the last holder closes it)."""
    fd = int(_enable_stats(BPF_STATS_RUN_TIME))
    return fd if fd >= 0 else None
