"""Keys, rejected.txt, tar shards and the manifest: the small pieces everything else relies on."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from distill.data.keys import check_key, make_keys, safe_stem
from distill.data.manifest import (
    Manifest,
    ShardInfo,
    SplitInfo,
    TeacherRecord,
    load_manifest,
    save_manifest,
    update_manifest,
)
from distill.data.shards import ShardError, SplitWriter, iter_shard, list_keys, write_shard
from distill.features import TeacherSpec
from distill.preprocess.rejected import Rejection, read_rejections, write_rejections


def test_keys_are_safe_readable_and_unique() -> None:
    assert safe_stem("class a/img 1.JPEG") == "class_a__img_1"
    paths = ["a b.jpg", "a_b.jpg", "x.jpg", "x.png", "dir/y.jpg", "dir.v2/y.jpg", "ü.png"]
    keys = make_keys(paths)
    assert len(set(keys.values())) == len(paths)
    assert keys["dir/y.jpg"] == "dir__y" and keys["dir.v2/y.jpg"] == "dir_v2__y"
    assert (
        keys["a b.jpg"].startswith("a_b-")
        and keys["x.png"].startswith("x-")
        and keys["x.png"] != keys["x.jpg"]
    )
    assert make_keys(list(reversed(paths))) == keys  # independent of listing order
    for key in keys.values():
        check_key(key, "test")
    with pytest.raises(ValueError, match=r"shard\.tar"):
        check_key("a.b", "shard.tar")


def test_rejected_round_trip_with_awkward_characters(tmp_path: Path) -> None:
    records = [
        Rejection("organize", "we\tird\nname.jpg", "reason with \\ backslash"),
        Rejection("videos", "v.mp4", "no video stream"),
    ]
    write_rejections(tmp_path, records)
    assert len((tmp_path / "rejected.txt").read_text().splitlines()) == 2
    assert read_rejections(tmp_path) == records


def test_shards_round_trip_skip_and_list(tmp_path: Path) -> None:
    with SplitWriter(tmp_path, "train", per_shard=3) as writer:
        for i in range(7):
            writer.add(f"k{i}", {"jpg": bytes([i]) * 10, "json": b"{}"})
    assert writer.shards == [("train-000000.tar", 3), ("train-000001.tar", 3), ("train-000002.tar", 1)]
    assert list_keys(tmp_path / "train-000001.tar") == ["k3", "k4", "k5"]
    samples = list(iter_shard(tmp_path / "train-000001.tar", want=lambda ordinal, key: ordinal != 1))
    assert [(s.key, s.ordinal) for s in samples] == [("k3", 0), ("k5", 2)]
    assert samples[1].files == {"jpg": bytes([5]) * 10, "json": b"{}"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_failed_shard_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), write_shard(tmp_path / "x.tar") as sink:
        sink.write("a", {"jpg": b"1"})
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with write_shard(tmp_path / "y.tar") as sink:
        sink.write("a", {"jpg": b"1"})
        with pytest.raises(ShardError, match="written twice"):
            sink.write("a", {"jpg": b"2"})


def test_truncated_and_duplicate_tars_name_shard_and_key(tmp_path: Path) -> None:
    with SplitWriter(tmp_path, "t", per_shard=10) as writer:
        for i in range(4):
            writer.add(f"k{i}", {"jpg": b"x" * 3000})
    path = tmp_path / "t-000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: 2 * 3584 + 1000])  # 512 B header + 3072 B padded data per member: cut inside k2
    with pytest.raises(
        ShardError, match=r"t-000000\.tar: unreadable tar in or after key 'k2'.*unexpected end of data"
    ) as info:
        list(iter_shard(path))
    assert info.value.path == path and info.value.key == "k2"
    with pytest.raises(ShardError, match="truncated inside key 'k2'"):
        list_keys(path)
    dup = tmp_path / "dup.tar"
    with tarfile.open(dup, "w") as archive:
        for name in ("a.jpg", "b.jpg", "a.json"):
            src = tmp_path / "blob"
            src.write_bytes(b"1")
            archive.add(src, arcname=name)
    with pytest.raises(ShardError, match="'a' appears twice"):
        list(iter_shard(dup))


def test_manifest_round_trip_and_locked_update(tmp_path: Path) -> None:
    spec = TeacherSpec("sam", 64, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), (8, 8), 32, None)
    record = TeacherRecord(spec, "int8", (4, 4), "tiny", None, "bf16", ("train",))
    manifest = Manifest(
        "ds", "images", "/src", 64, 95, {"train": SplitInfo((ShardInfo("train-000000.tar", 5),))}
    )
    save_manifest(tmp_path, manifest)
    update_manifest(tmp_path, lambda m: Manifest(**{**m.__dict__, "teachers": {"sam": record}}))
    loaded = load_manifest(tmp_path)
    assert loaded.teachers["sam"] == record and loaded.splits == manifest.splits
    assert loaded.teachers["sam"].target_spec.grid == (4, 4)
    with pytest.raises(ValueError, match="not complete for split 'val'"):
        loaded.teacher("sam", "val")
    with pytest.raises(KeyError, match="feature_extraction"):
        loaded.teacher("clip", "train")
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["teachers"]["sam"]["precision"] = "fp8"
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"manifest\.json is unreadable.*'sam'.*bf16, fp32, got 'fp8'"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"manifest\.json is unreadable"):
        load_manifest(tmp_path)


def test_mapped_members_equal_read_members_and_truncation_is_named(tmp_path: Path) -> None:
    """iter_shard_buffers (the training loader's reader: writable views of the mapped shard) yields
    the bytes iter_shard reads, skips unwanted samples alike, and names a truncated shard the same way."""
    from distill.data.shards import iter_shard_buffers

    with SplitWriter(tmp_path, "t", per_shard=10) as writer:
        for i in range(4):
            writer.add(f"k{i}", {"jpg": bytes([i]) * (3000 + i), "json": b"{}"})
    path = tmp_path / "t-000000.tar"
    total: list[int] = []
    mapped = list(iter_shard_buffers(path, lambda ordinal, key: ordinal != 1, total))
    read = [s for s in iter_shard(path) if s.ordinal != 1]
    assert total == [4] and [(s.key, s.ordinal) for s in mapped] == [(s.key, s.ordinal) for s in read]
    for a, b in zip(mapped, read, strict=True):
        assert {ext: bytes(view) for ext, view in a.files.items()} == b.files
        assert not a.files["jpg"].readonly
    mapped[0].files["jpg"][0] = 9  # copy-on-write: the shard on disk is unchanged
    assert next(iter_shard(path)).files["jpg"][0] == 0
    path.write_bytes(path.read_bytes()[: 2 * 4608 + 1000])  # 4608 B per sample (jpg + json): inside k2's jpg
    with pytest.raises(
        ShardError, match=r"t-000000\.tar: unreadable tar in or after key 'k2'.*unexpected end of data"
    ) as info:
        list(iter_shard_buffers(path, None, []))
    assert info.value.key == "k2"


def _tar(members: Sequence[tuple[str, bytes | None]], **options: object) -> bytes:
    """A tar of regular files (bytes) and directories (None), written by tarfile with ``options``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", **options) as archive:  # type: ignore[call-overload]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.uid = 1 << 30 if name.startswith("big-uid") else 0  # base-256 in the GNU format
            if data is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            archive.addfile(info, None if data is None else io.BytesIO(data))
    return buffer.getvalue()


def _edited(data: bytes, member: int, start: int, field: bytes, checksum: bool = True) -> bytes:
    """``data`` with bytes ``start:`` of member ``member``'s header (each member here is one header and one
    data block) replaced by ``field``, and the checksum recomputed unless ``checksum`` is False."""
    at = member * 1024
    block = bytearray(data[at : at + 512])
    block[start : start + len(field)] = field
    if checksum:
        block[148:156] = b" " * 8
        block[148:155] = b"%06o\0" % sum(block)
    return data[:at] + bytes(block) + data[at + 512 :]


def _listed(path: Path, members: Any) -> tuple[list[tuple[str, int, int, bool]], str]:
    """(name, data offset, size, regular) of each member ``members(archive)`` yields, and the error
    that ended them ("" for none)."""
    out: list[tuple[str, int, int, bool]] = []
    try:
        with tarfile.open(path, "r:") as archive:
            for m in members(archive):
                regular = m.isreg() if isinstance(m, tarfile.TarInfo) else m.regular
                out.append((m.name, m.offset_data, m.size, regular))
    except tarfile.ReadError as exc:
        return out, str(exc)
    return out, ""


def test_fast_tar_headers_read_as_tarfile_reads_them(tmp_path: Path) -> None:
    """Shards' plain headers are parsed in distill.data.shards, the rest by tarfile itself: members,
    data offsets and ends are what iterating the TarFile gives, for ustar names split into a prefix,
    GNU long names, pax and global pax headers, directories, base-256 numbers, an old-style
    directory, headers tarfile refuses mid-archive (bad checksum, a number that is not octal), where
    it ends the archive, and a file cut inside a member's data that nobody reads, which it refuses."""
    from distill.data.shards import _members

    files = [(f"k{i}.jpg", bytes([i]) * 100) for i in range(4)]
    deep = "d" * 90 + "/" + "n" * 90 + ".jpg"  # > 100 characters: ustar splits it into prefix and name
    plain = _tar(files, format=tarfile.GNU_FORMAT)
    cases = {
        "ustar prefix": _tar([files[0], (deep, b"x"), files[1]], format=tarfile.USTAR_FORMAT),
        "gnu long name": _tar([files[0], (deep, b"x"), files[1]], format=tarfile.GNU_FORMAT),
        "pax header": _tar([files[0], ("ü.jpg", b"x"), files[1]], format=tarfile.PAX_FORMAT),
        "global pax": _tar(files, format=tarfile.PAX_FORMAT, pax_headers={"path": "g.jpg"}),
        "directory": _tar([files[0], ("dir", None), files[1]], format=tarfile.GNU_FORMAT),
        "base-256 uid": _tar([files[0], ("big-uid.jpg", b"x"), files[1]], format=tarfile.GNU_FORMAT),
        "old-style directory": _edited(_edited(plain, 2, 0, b"k2/\0"), 2, 156, b"\0"),
        "bad checksum": _edited(plain, 2, 0, b"z", checksum=False),
        "mode not octal": _edited(plain, 2, 100, b"0000999\0"),
        "size not octal": _edited(plain, 2, 124, b"0000000000x\0"),
        "data cut short": plain[: 4 * 1024 - 100],  # inside k3's data, which is not read here
    }
    for case, data in cases.items():
        path = tmp_path / "case.tar"
        path.write_bytes(data)
        expected, got = _listed(path, iter), _listed(path, _members)
        assert got == expected, case
        ends = ("bad checksum", "mode not octal", "size not octal", "data cut short")
        assert len(expected[0]) >= (2 if case in ends else 3), case
        assert ("unexpected end of data" in expected[1]) == (case == "data cut short"), case
    path.write_bytes(plain)  # and the plain shard's headers after the first are parsed here, not by tarfile
    with tarfile.open(path, "r:") as archive:
        parsed_here = [m.info is None for m in _members(archive)]
    assert parsed_here == [False, True, True, True]
