"""Bad usage exits 2 with one line; an unusable port or missing privileges exit 1
with a message that says what is wrong."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest
from kernel_helpers import MESHLENS

from meshlens.loadgen import free_port

pytestmark = [pytest.mark.kernel]


def meshlens(*args: str, timeout: float = 30, prefix: tuple[str, ...] = ()) -> tuple[int, str]:
    p = subprocess.run(
        [*prefix, *MESHLENS, *args], capture_output=True, timeout=timeout, check=False, text=True
    )
    return p.returncode, p.stderr


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), stderr
    return lines[0]


@pytest.mark.parametrize(
    "argv",
    [
        ("run", "--bogus"),
        ("--bogus", "run"),
        ("run", "--listen"),
        ("top", "--frobnicate"),
        ("trace", "tcpsomething"),
        ("run", "--interval", "-1"),
        (),
    ],
    ids=["run-unknown", "global-unknown", "no-value", "top-unknown", "bad-tool", "neg", "none"],
)
def test_bad_usage_exits_2_with_one_line(argv: tuple[str, ...]) -> None:
    rc, err = meshlens(*argv)
    assert rc == 2, err
    assert one_line(err).startswith("meshlens: error: ")


@pytest.mark.parametrize("listen", ["nonsense", "1.2.3.4:99999", ":0", "1.2.3.4:", "[::1]:x"])
def test_bad_listen_exits_2_with_one_line(listen: str) -> None:
    rc, err = meshlens("run", "--listen", listen)
    assert rc == 2, err
    line = one_line(err)
    assert "--listen" in line, line


@pytest.mark.usefixtures("bpf_ready")
def test_port_in_use_exits_1_with_a_clear_message() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.Popen(
            [*MESHLENS, "run", "--listen", f"127.0.0.1:{port}", "--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, (out, err)
    # (a feature that fails to load may add its own line; the last one is the reason)
    line = err.splitlines()[-1]
    assert line.startswith("meshlens: ") and f"127.0.0.1:{port}" in line, err
    assert "in use" in line.lower(), err
    assert "serving" not in out


def test_non_root_is_refused_naming_cap_bpf(bpf_ready: None) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing")
    nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    for args in (("run",), ("top", "--json", "1", "1"), ("trace", "tcplife", "-d", "1")):
        rc, err = meshlens(*args, prefix=nobody)
        assert rc == 1, (args, err)
        line = one_line(err)
        assert "CAP_BPF" in line, line
