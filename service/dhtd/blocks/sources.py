"""Block sources: where a recursive Provide reads the DAG under a root.

``--block-source`` names them, in the order they are tried:

- ``file:///path/to/dir``: a directory of CAR files (v1 or v2). The files whose
  header lists the root are read first, then the others, each from start to
  end, until the DAG is complete.
- ``http://host:port`` or ``https://...``: an IPFS trustless gateway (the
  Trustless Gateway spec, IPIP-402), asked ``GET /ipfs/{root}?format=car&dag-scope=all``
  for the whole DAG as one CAR.

Each source yields blocks unverified (:mod:`dhtd.blocks.walk` checks them).
A source without the root says so with :class:`RootNotFound`; one that is down,
slow or answers wrongly raises :class:`SourceUnavailable`, naming itself.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import trio

from dhtd.blocks.car import READ_CHUNK, CarError, CarReader
from dhtd.ids import Cid

# Ours: how long a gateway may take to connect, or to send the next bytes; past
# it the source is unavailable (--block-source-timeout).
DEFAULT_SOURCE_TIMEOUT = 30.0

# Ours: the most CAR files a directory source looks at (each is opened to read
# its header at every recursive Provide).
MAX_CAR_FILES = 10_000

# What dhtd asks a trustless gateway for: a CARv1 of the whole DAG, depth first,
# each block once (the spec's defaults but for dups, spelled out).
CAR_ACCEPT = "application/vnd.ipld.car; version=1; order=dfs; dups=n"


class RootNotFound(Exception):
    """This source does not have the root block."""


class SourceUnavailable(Exception):
    """A source that is down, slow, or answers what is not a CAR."""


class BlockSource(Protocol):
    name: str

    def blocks(self, root: Cid) -> AsyncGenerator[tuple[Cid, bytes], None]:
        """Blocks that may hold the DAG under ``root``, unverified. Raises
        RootNotFound or SourceUnavailable. Closing it closes what it reads."""
        ...


def parse_source(text: str, timeout: float = DEFAULT_SOURCE_TIMEOUT) -> BlockSource:
    """A source from its ``--block-source`` text; ValueError says what is wrong."""
    parts = urlsplit(text)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError("a file:// source names a local directory (file:///path)")
        path = Path(parts.path)
        if not path.is_dir():
            raise ValueError(f"{path} is not a directory")
        return CarDirectory(path)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError("an http(s) source needs a host")
        if parts.query or parts.fragment:
            raise ValueError("an http(s) source is a gateway's base URL, without ?query or #")
        return TrustlessGateway(text.rstrip("/"), timeout)
    raise ValueError("a block source is file:///dir (CAR files) or http(s)://host[:port] "
                     "(a trustless gateway)")


class CarDirectory:
    """A directory of CAR files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"file://{path}"

    def _files(self) -> list[Path]:
        try:
            with os.scandir(self.path) as entries:
                names = sorted(e.name for e in entries
                               if e.name.endswith(".car") and e.is_file())
        except OSError as exc:
            raise SourceUnavailable(f"{self.name} cannot be read: {exc.strerror}") from None
        return [self.path / name for name in names[:MAX_CAR_FILES]]

    async def blocks(self, root: Cid) -> AsyncGenerator[tuple[Cid, bytes], None]:
        files = await trio.to_thread.run_sync(self._files)
        # Files that name the root first: usually one of them holds the whole DAG.
        first: list[Path] = []
        rest: list[Path] = []
        for path in files:
            async with await _open(path, self.name) as f:
                try:
                    header = await CarReader(f).header()
                except CarError:
                    continue  # told when read in full below, if it is ever reached
            (first if root in header.roots else rest).append(path)
        for path in first + rest:
            async with await _open(path, self.name) as f, aclosing(CarReader(f).blocks()) as car:
                try:
                    async for block in car:
                        yield block
                except CarError as exc:
                    raise SourceUnavailable(f"{self.name}: {path.name}: {exc}") from None


async def _open(path: Path, name: str) -> Any:  # (trio's async file wrapper)
    try:
        return await trio.open_file(path, "rb", buffering=0)
    except OSError as exc:
        raise SourceUnavailable(f"{name}: {path.name} cannot be read: {exc.strerror}") from None


class TrustlessGateway:
    """An IPFS trustless gateway, asked for the whole DAG as one CAR."""

    def __init__(self, base: str, timeout: float) -> None:
        self.base = base
        self.name = base
        self.timeout = timeout

    async def blocks(self, root: Cid) -> AsyncGenerator[tuple[Cid, bytes], None]:
        import httpx  # (loaded only by nodes with a gateway source)

        url = f"{self.base}/ipfs/{root}"
        try:
            async with (
                httpx.AsyncClient(timeout=self.timeout, trust_env=False,
                                  follow_redirects=False) as client,
                client.stream("GET", url, params={"format": "car", "dag-scope": "all"},
                              headers={"Accept": CAR_ACCEPT}) as response,
            ):
                if response.status_code in (404, 410):
                    raise RootNotFound(f"{self.name} does not have {root}")
                if response.status_code != 200:
                    raise SourceUnavailable(
                        f"{self.name} answered HTTP {response.status_code} for {root}")
                kind = response.headers.get("content-type", "").split(";")[0].strip()
                if kind != "application/vnd.ipld.car":
                    raise SourceUnavailable(
                        f"{self.name} answered {kind or 'no content type'}, not a CAR")
                # (typed as an iterator by httpx; an async generator, to be closed)
                body = cast(AsyncGenerator[bytes, None], response.aiter_raw(READ_CHUNK))
                async with aclosing(body), aclosing(CarReader(_Body(body)).blocks()) as car:
                    try:
                        async for block in car:
                            yield block
                    except CarError as exc:
                        raise SourceUnavailable(f"{self.name}: {exc}") from None
        except httpx.TimeoutException:
            raise SourceUnavailable(
                f"{self.name} did not answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise SourceUnavailable(f"{self.name}: {exc or type(exc).__name__}") from None


class _Body:
    """An HTTP body's chunks as a ByteSource."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def read(self, max_bytes: int) -> bytes:
        # CarReader keeps what it gets beyond max_bytes, so any chunk size will do
        # (httpx yields no empty chunks).
        async for chunk in self._chunks:
            return chunk
        return b""


def describe(sources: Sequence[BlockSource]) -> str:
    return ", ".join(s.name for s in sources)
