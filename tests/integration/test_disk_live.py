"""Disk trouble that starts while dhtd runs: its data dir turns read-only, or fills up.

Writes must fail with a clear status naming the data dir, reads must go on, and
the node must stay up (and, once there is room again, write again).

The data dir is a real ext4 file system in a loop device, mounted inside a mount
namespace of dhtd's own (so the mount ends with dhtd). "Read-only" is what ext4
does on an I/O error when mounted errors=remount-ro, triggered through its sysfs
knob; "full" is a file that takes every free block, written through
/proc/<dhtd>/root. (A bind mount cannot be made read-only while dhtd holds files
open for writing, and RLIMIT_FSIZE is not a full disk; see test_durable.py for
the cases at start.) Without loop devices (an unprivileged container) these
tests are skipped, saying why.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from dht.v1 import dht_pb2 as pb
from dhtd.kadmsg import MessageType, new_message
from tests.hostile.peer import Peer, provider_key, run
from tests.integration.test_durable import nodes
from tests.integration.test_swarm import cid_for
from tests.swarm import Node, start_node, wait_until

pytestmark = pytest.mark.integration

TOOLS = ("losetup", "mkfs.ext4", "blockdev", "unshare", "mount")


@contextmanager
def ext4(tmp_path: Path, mib: int) -> Iterator[str]:
    """A fresh ext4 file system of ``mib`` MiB in a loop device; yields the device."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing or not Path("/dev/loop-control").exists():
        pytest.skip(f"needs loop devices and {', '.join(missing) or 'e2fsprogs'}")
    image = tmp_path / "fs.img"
    with image.open("wb") as f:
        f.truncate(mib << 20)
    # -m 0: no blocks reserved for root (dhtd runs as root here, and would use them)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    made = subprocess.run(["losetup", "--find", "--show", str(image)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"no loop device to be had: {made.stderr.strip()}")
    loop = made.stdout.strip()
    try:
        subprocess.run(["blockdev", "--setrw", loop], check=True)
        yield loop
    finally:
        # Detached now, or (autoclear) once dhtd's namespace, the last user, is gone.
        subprocess.run(["losetup", "-d", loop], check=False)


def mounted(loop: str, data: Path) -> list[str]:
    """The command prefix that runs dhtd with ``loop`` mounted on ``data``."""
    script = f'mount -o errors=remount-ro {loop} {data} && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


def provide(node: Node, *cids: str) -> None:
    list(node.dht.Provide(pb.ProvideRequest(cids=list(cids)), timeout=30))


def refused_provide(node: Node, cids: list[str]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        provide(node, *cids)
    return err.value


def reads_go_on(node: Node, kept: str, gone: str, held: bytes) -> None:
    """What was committed is listed and found; a peer still gets answers, about
    the provider record it left here before the trouble too."""
    listed = {c.cid for c in node.node.ListProvides(pb.ListProvidesRequest(page_size=1000),
                                                   timeout=10).cids}
    assert kept in listed and gone not in listed
    found = list(node.dht.FindProvs(pb.FindProvsRequest(cid=kept, num_providers=1), timeout=10))
    assert [f.provider.id for f in found] == [node.peer_id]

    async def ask(peer: Peer) -> list[bytes]:
        await peer.add_provider(provider_key(2, b"during"), ())  # lost, or refused: no answer
        answer = await peer.request(new_message(MessageType.GET_PROVIDERS, held))
        return [p.id for p in answer.providerPeers]

    assert len(run(node.p2p_addr, ask, timeout=30)) == 1
    assert node.proc.poll() is None


def leave_a_record(node: Node) -> bytes:
    """A peer's provider record, held by ``node`` (committed within 50 ms)."""
    key = provider_key(1, b"before")

    async def add(peer: Peer) -> int:
        await peer.add_provider(key, ())
        answer = await peer.request(new_message(MessageType.GET_PROVIDERS, key))
        return len(answer.providerPeers)

    assert run(node.p2p_addr, add, timeout=30) == 1
    return key


def stopped_cleanly(node: Node) -> None:
    """SIGTERM still ends dhtd in order: no traceback, whatever the disk says."""
    node.stop()
    assert node.proc.returncode is not None and node.proc.returncode >= 0, node.log_text()
    assert not any("Traceback" in str(line) for line in node.lines), node.log_text()


@contextmanager
def dhtd_on(loop: str, data: Path) -> Iterator[tuple[Node, str, bytes]]:
    """dhtd with ``loop`` as its data dir, among 4 dev peers, once it has committed a
    Provide and holds a peer's provider record: yields it, the CID and the key."""
    data.mkdir()
    node = start_node(data.parent.name, data, ["--dev-peers", "4"], wrap=mounted(loop, data))
    with nodes(node):
        wait_until(lambda: node.node_info().routing_table_size >= 1, 20, "the dev peers")
        kept = cid_for("before-the-trouble")
        provide(node, kept)
        yield node, kept, leave_a_record(node)


def fill(path: Path) -> None:
    """Writes ``path`` until the file system has no block left (1 MiB at a time, then
    4 KiB at a time: a write fails whole when it does not fit)."""
    with path.open("wb", buffering=0) as f:
        for chunk in (1 << 20, 4096):
            with pytest.raises(OSError) as full:
                for _ in range((64 << 20) // chunk):  # more than any file system here holds
                    f.write(bytes(chunk))
            assert full.value.errno == errno.ENOSPC


def test_a_data_dir_that_turns_read_only_fails_writes_with_unavailable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ext4(tmp_path, 32) as loop, dhtd_on(loop, data) as (node, kept, held):
        gone = cid_for("after-ro")
        # ext4 meets an "error" and remounts itself read-only under dhtd's open files.
        Path(f"/sys/fs/ext4/{Path(loop).name}/trigger_fs_error").write_text("dhtd test\n")
        err = refused_provide(node, [gone])
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        assert f"the data dir {data} cannot be written" in err.details(), err.details()
        reads_go_on(node, kept, gone, held)
        # A failing disk is reported, not repeated on every batch of writes.
        failed = [line for line in node.lines if "write failed" in str(line.get("msg"))]
        assert 1 <= len(failed) <= 2, node.log_text()
        stopped_cleanly(node)


def test_a_disk_that_fills_up_fails_writes_with_resource_exhausted_until_there_is_room(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ext4(tmp_path, 16) as loop, dhtd_on(loop, data) as (node, kept, held):
        # Another tenant of the disk takes every free block.
        filler = Path(f"/proc/{node.proc.pid}/root") / data.relative_to("/") / "filler"
        fill(filler)
        # 1000 CIDs need about 60 KiB of write-ahead log: more than is left.
        many = [cid_for(f"full-{i}") for i in range(1000)]
        err = refused_provide(node, many)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert f"the disk under the data dir {data} is full" in err.details(), err.details()
        reads_go_on(node, kept, many[0], held)
        # Room again: the same call now commits, without a restart.
        filler.unlink()
        provide(node, *many)
        listed = node.node.ListProvides(pb.ListProvidesRequest(page_size=1000), timeout=10)
        assert len(listed.cids) == 1000 and listed.next_page_token
        stopped_cleanly(node)
