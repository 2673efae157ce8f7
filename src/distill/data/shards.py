"""Tar shards: atomic writing with webdataset's TarWriter, strict streaming reads by key.

Every sample is a run of consecutive members ``<key>.<ext>`` (webdataset's naming: the key is
the member name up to the first dot). Reading is strict where webdataset is lenient: a key that
reappears later in the shard, a member whose name has no extension, or a truncated archive is an
error naming the shard and the key. Samples a caller does not want are skipped without reading
their bytes into memory (the resume path of the loader relies on this).
"""

from __future__ import annotations

import functools
import io
import mmap
import os
import tarfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from webdataset.tariterators import base_plus_ext
from webdataset.writer import TarWriter

from distill.data.keys import check_key
from distill.io import atomic_path

T = TypeVar("T", bytes, memoryview)
Want = Callable[[int, str], bool]  # (ordinal in shard, key) -> read this sample's bytes?


def shard_name(split: str, index: int) -> str:
    """``train-000003.tar``: the same name in images/ and in every teacher folder."""
    return f"{split}-{index:06d}.tar"


class ShardError(ValueError):
    """A shard that cannot be used as it is: the message names the shard, the key and the fix.

    ``path`` and ``key`` say the same for programs (the check command reports them).
    """

    def __init__(self, message: str, path: Path | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.path, self.key = path, key


@dataclass
class ShardSample:
    key: str
    ordinal: int  # position in the shard, 0-based
    files: dict[str, bytes] = field(default_factory=dict)  # ext -> bytes; empty when skipped


@dataclass
class BufferSample:
    """A :class:`ShardSample` whose members are writable views of the shard mapped into memory."""

    key: str
    ordinal: int
    files: dict[str, memoryview] = field(default_factory=dict)


class ShardSink:
    """Appends samples to one open shard; refuses duplicate or unsafe keys."""

    def __init__(self, writer: TarWriter, path: Path) -> None:
        self._writer = writer
        self.path = path
        self.keys: list[str] = []
        self._seen: set[str] = set()

    def write(self, key: str, files: dict[str, bytes]) -> None:
        check_key(key, str(self.path))
        if key in self._seen:
            raise ShardError(f"{self.path}: key {key!r} written twice", self.path, key)
        self._seen.add(key)
        self.keys.append(key)
        self._writer.write({"__key__": key, **files})


@contextmanager
def write_shard(path: Path) -> Iterator[ShardSink]:
    """Write a shard under a temporary name; it appears at ``path`` (fsynced) only when complete."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        writer = TarWriter(
            handle, encoder=False, mtime=0
        )  # an int: a float mtime costs a 1 KiB PAX header per member
        try:
            yield ShardSink(writer, path)
        except BaseException:
            with suppress(Exception):  # the temporary file is discarded anyway; keep the first error
                writer.close()
            raise
        writer.close()


def split_member(name: str, path: Path) -> tuple[str, str]:
    key, ext = base_plus_ext(name)
    if key is None or ext is None:
        raise ShardError(
            f"{path}: member {name!r} is not named <key>.<ext>; this is not a distill shard", path
        )
    return key, ext


@dataclass(frozen=True, slots=True)
class _Member:
    """A tar member as the readers need it; ``info`` is tarfile's own where tarfile parsed the header."""

    name: str
    offset_data: int
    size: int
    regular: bool
    info: tarfile.TarInfo | None = None

    @classmethod
    def of(cls, info: tarfile.TarInfo) -> _Member:
        return cls(info.name, info.offset_data, info.size, info.isreg(), info)

    @property
    def sparse(self) -> bool:
        return self.info is not None and self.info.issparse()


_BLOCK = tarfile.BLOCKSIZE


def _octal(field: bytes) -> int:
    """A tar number field as tarfile's ``nti`` reads it; ValueError where it would refuse it or where
    it is base-256 (left to tarfile)."""
    if field[0] in (0o200, 0o377):
        raise ValueError("base-256 number")
    return int(field.split(b"\0", 1)[0].decode("ascii").strip() or "0", 8)


@functools.lru_cache(maxsize=64)
def _other_numbers_valid(fields: bytes) -> bool:
    """Whether tarfile reads the number fields it checks besides size and checksum (mode, uid, gid,
    mtime; devmajor, devminor), given as ``block[100:124] + block[136:148] + block[329:345]``: a
    header it would refuse must not pass here. A shard's headers mostly repeat them, hence the cache."""
    try:
        for start, stop in ((0, 8), (8, 16), (16, 24), (24, 36), (36, 44), (44, 52)):
            _octal(fields[start:stop])
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _plain_member(block: bytes, offset: int, encoding: str, errors: str) -> _Member | None:
    """The regular file whose 512-byte header is ``block`` (read at ``offset``), parsed as tarfile
    parses it, or None for any other block (end of archive, bad checksum, extended, sparse or
    non-file headers): tarfile then reads that one itself, with its own errors and ends.

    TarInfo.frombuf and TarFile.next in Python were most of a loader worker's reading time.
    """
    if len(block) != _BLOCK or block[156:157] not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        return None
    if not _other_numbers_valid(block[100:124] + block[136:148] + block[329:345]):
        return None
    try:
        size = _octal(block[124:136])
        checksum = _octal(block[148:156])
        name = block[:100].split(b"\0", 1)[0].decode(encoding, errors)
        prefix = block[345:500].split(b"\0", 1)[0].decode(encoding, errors)
    except (ValueError, UnicodeDecodeError):
        return None
    if size < 0 or checksum != 256 + sum(block) - sum(block[148:156]):  # tarfile also tries signed bytes
        return None
    if block[156:157] == tarfile.AREGTYPE and name.endswith("/"):  # an old-style directory
        return None
    return _Member(f"{prefix}/{name}" if prefix else name, offset + _BLOCK, size, True)


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _members(archive: tarfile.TarFile) -> Iterator[_Member]:
    """The archive's members in order, as iterating the TarFile gives them.

    Headers are read with ``os.pread``: the file position stays where tarfile and the member
    readers left it, so ``TarFile.next`` still finds a header offset past the end of a cut file.
    """
    handle = archive.fileobj
    if not isinstance(handle, io.BufferedReader):  # the shard readers open archives from their paths
        raise TypeError(
            f"{archive.name!r}: headers are read from an archive opened from its path, got {handle!r}"
        )
    fd = handle.fileno()
    info = archive.next()
    while info is not None:
        yield _Member.of(info)
        while not archive.pax_headers:  # global extended headers apply to what follows: tarfile reads on
            block = os.pread(fd, _BLOCK, archive.offset)
            member = _plain_member(block, archive.offset, archive.encoding, archive.errors)
            if member is None:
                break
            archive.offset = member.offset_data + _padded(member.size)
            yield member
        info = archive.next()


def _extracted(archive: tarfile.TarFile, member: _Member) -> bytes:
    handle = None if member.info is None else archive.extractfile(member.info)
    if handle is None:  # only for members that are not regular files, which are skipped before
        raise tarfile.ReadError(f"member {member.name!r} has no data")
    return handle.read()


def _read_member(archive: tarfile.TarFile, member: _Member) -> bytes:
    """A regular member's bytes in one read from its data offset."""
    handle = archive.fileobj
    if member.sparse or handle is None:
        return _extracted(archive, member)
    handle.seek(member.offset_data)
    data: bytes = handle.read(member.size)
    if len(data) != member.size:
        raise tarfile.ReadError("unexpected end of data")
    return data


class _MappedReader:
    """Members as views of the shard file mapped copy-on-write (``mmap.ACCESS_COPY``).

    No read copy and no fresh anonymous pages: a view maps the page cache's pages (the kernel maps
    several per fault), and writing through it would copy only the page written, never the file.
    The views keep the mapping alive; shards are replaced by rename, never rewritten in place.
    """

    def __init__(self) -> None:
        self.mapped: mmap.mmap | None = None

    def __call__(self, archive: tarfile.TarFile, member: _Member) -> memoryview:
        handle = archive.fileobj
        if member.sparse or handle is None or not hasattr(handle, "fileno"):
            return memoryview(bytearray(_extracted(archive, member)))
        if self.mapped is None:
            self.mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        end = member.offset_data + member.size
        if end > len(self.mapped):
            raise tarfile.ReadError("unexpected end of data")
        return memoryview(self.mapped)[member.offset_data : end]


class _Tracker:
    """Called with every member's key: counts samples, checks keys, decides reads."""

    def __init__(self, path: Path, want: Want | None) -> None:
        self.path, self.want = path, want
        self.ordinal, self.key = -1, ""
        self.wanted = True
        self.seen: set[str] = set()

    def __call__(self, key: str) -> bool:
        if key != self.key:
            if key in self.seen:
                raise ShardError(
                    f"{self.path}: key {key!r} appears twice (again at sample {self.ordinal + 1}); rebuild this shard",
                    self.path,
                    key,
                )
            check_key(key, str(self.path))
            self.seen.add(key)
            self.ordinal, self.key = self.ordinal + 1, key
            self.wanted = self.want is None or self.want(self.ordinal, key)
        return self.wanted


def iter_shard(path: Path, want: Want | None = None) -> Iterator[ShardSample]:
    """Samples of one shard in order. Samples ``want`` rejects are not yielded and not read."""
    yield from iter_shard_counted(path, want, [])


def iter_shard_counted(path: Path, want: Want | None, total: list[int]) -> Iterator[ShardSample]:
    """Like :func:`iter_shard`; on exhaustion appends the shard's full sample count to ``total``."""
    for key, ordinal, files in _iter_members(path, want, total, _read_member):
        yield ShardSample(key, ordinal, files)


def iter_shard_buffers(path: Path, want: Want | None, total: list[int]) -> Iterator[BufferSample]:
    """Like :func:`iter_shard_counted`, each member a writable view of the mapped shard (no copy)."""
    for key, ordinal, files in _iter_members(path, want, total, _MappedReader()):
        yield BufferSample(key, ordinal, files)


def _iter_members(
    path: Path, want: Want | None, total: list[int], read: Callable[[tarfile.TarFile, _Member], T]
) -> Iterator[tuple[str, int, dict[str, T]]]:
    if not path.is_file():
        raise ShardError(
            f"{path}: shard is missing; rerun the step that writes it (organize or feature_extraction)", path
        )
    tracker = _Tracker(path, want)
    current: tuple[str, int, dict[str, T]] | None = None
    try:
        # Seekable mode: a member's bytes come in one read (stream mode reads 10 KiB records and
        # joins them, which was half a loader worker's time with real-size features), and the
        # members of unwanted samples are seeked over.
        with tarfile.open(path, "r:") as archive:
            for member in _members(archive):
                if not member.regular:
                    continue
                key, ext = split_member(member.name, path)
                if not tracker(key):
                    continue
                if current is None or current[0] != key:
                    if current is not None:
                        yield current
                    current = (key, tracker.ordinal, {})
                if ext in current[2]:
                    raise ShardError(f"{path}: key {key!r} has two {ext!r} members", path, key)
                current[2][ext] = read(archive, member)
    except ShardError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        where = (
            f"in or after key {tracker.key!r} (sample {tracker.ordinal})" if tracker.key else "at the start"
        )
        detail = str(exc.args[0] if exc.args else exc).split(" @ <")[0]  # webdataset appends the file object
        raise ShardError(
            f"{path}: unreadable tar {where}: {detail}; "
            "the shard is truncated or corrupt, delete it and rerun the step that writes it",
            path,
            tracker.key or None,
        ) from exc
    if current is not None:
        yield current
    total.append(tracker.ordinal + 1)


def list_keys(path: Path) -> list[str]:
    """Keys of a shard in order, from the tar headers only (seeks over the data)."""
    keys: list[str] = []
    try:
        size = path.stat().st_size
        with tarfile.open(path, "r:") as archive:
            for member in archive:
                key, _ = split_member(member.name, path)
                if member.offset_data + member.size > size:
                    raise ShardError(
                        f"{path}: truncated inside key {key!r}; delete it and rerun the step that writes it",
                        path,
                        key,
                    )
                if not keys or keys[-1] != key:
                    keys.append(key)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardError(
            f"{path}: unreadable tar ({exc}); delete it and rerun the step that writes it", path
        ) from exc
    if len(set(keys)) != len(keys):
        raise ShardError(f"{path}: a key appears in two separate runs of members; rebuild this shard", path)
    return keys


class SplitWriter:
    """Writes one split as consecutive shards ``<split>-000000.tar``, ... of ``per_shard`` samples.

    Use as a context manager; each shard appears atomically when it is full or on exit. On an
    exception the open shard's temporary file is removed and the exception propagates.
    """

    def __init__(self, directory: Path, split: str, per_shard: int) -> None:
        if per_shard < 1:
            raise ValueError(f"samples per shard must be >= 1, got {per_shard}")
        self.directory, self.split, self.per_shard = directory, split, per_shard
        self.shards: list[tuple[str, int]] = []
        self._stack = ExitStack()
        self._sink: ShardSink | None = None

    def __enter__(self) -> SplitWriter:
        return self

    def add(self, key: str, files: dict[str, bytes]) -> None:
        if self._sink is None:
            name = shard_name(self.split, len(self.shards))
            self._sink = self._stack.enter_context(write_shard(self.directory / name))
        self._sink.write(key, files)
        if len(self._sink.keys) == self.per_shard:
            self._finish_shard()

    def _finish_shard(self) -> None:
        assert self._sink is not None
        name, count = self._sink.path.name, len(self._sink.keys)
        self._stack.close()
        self.shards.append((name, count))
        self._sink = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            if self._sink is not None:
                self._finish_shard()
        else:
            self._stack.__exit__(exc_type, exc, tb)
