"""The latent dataset format: per video ``z [T, d_z]`` (and, from a student with a quantiser, its integer
``codes [T, n]``) with frame indices, timestamps and per-frame arrays.

``distill.encode`` writes it, :class:`distill.data.latent_clips.LatentClips` and the world model read it::

    <latents>/latents.json                       manifest: the student checkpoint, splits, videos in order
    <latents>/<split>/<video_id>.safetensors     z, frame_index, timestamp, arrays.<name> (, codes) of one video
    <latents>/code_table.safetensors             with codes: every code's z values [codes, vocabulary, width]

A video file is complete when it exists under its final name (written atomically) and names the
checkpoint fingerprint it was encoded with in its metadata; readers refuse files of another checkpoint,
so latents of two students are never mixed. docs/latents.md describes the format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from distill.codes import CodeLayout
from distill.io import atomic_path, atomic_write_text

FORMAT = "distill-latents"
VERSION = 1
MANIFEST_NAME = "latents.json"
TABLE_NAME = "code_table.safetensors"
ARRAY_PREFIX = "arrays."
FIXED_TENSORS = ("z", "frame_index", "timestamp")
CODES = "codes"  # int64 [T, codes], present exactly when the checkpoint has a quantiser


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CheckpointRef:
    """Which student checkpoint the z's came from: its folder, the hashes of its config and weights,
    and with a quantiser the layout of its codes (each code's vocabulary and width; None for continuous z)."""

    path: str
    config_sha256: str
    weights_sha256: str
    d_z: int
    image_size: int
    layout: CodeLayout | None = None

    @property
    def codes(self) -> int:
        """Codes per frame (0: continuous z)."""
        return 0 if self.layout is None else self.layout.codes

    @property
    def vocabulary(self) -> int:
        """The largest code vocabulary (0: continuous z)."""
        return 0 if self.layout is None else self.layout.vocabulary

    @property
    def fingerprint(self) -> str:
        """Short id stored in every video file: equal fingerprints mean the same config and weights."""
        return f"{self.config_sha256[:16]}-{self.weights_sha256[:16]}"

    @classmethod
    def of(
        cls, checkpoint: Path | str, d_z: int, image_size: int, layout: CodeLayout | None = None
    ) -> CheckpointRef:
        """Hash ``config.json`` and ``model.safetensors`` of a student checkpoint folder."""
        folder = Path(checkpoint)
        files = [folder / "config.json", folder / "model.safetensors"]
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: {folder} is not a student checkpoint folder")
        return cls(str(folder.resolve()), _sha256(files[0]), _sha256(files[1]), d_z, image_size, layout)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "config_sha256": self.config_sha256,
            "weights_sha256": self.weights_sha256,
            "d_z": self.d_z,
            "image_size": self.image_size,
            "codes": self.codes,
            "vocabulary": self.vocabulary,
            **({} if self.layout is None else self.layout.to_dict()),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointRef:
        d_z, codes = int(data["d_z"]), int(data.get("codes", 0))  # no codes: written before quantisers
        if "vocabularies" in data:
            layout: CodeLayout | None = CodeLayout(tuple(data["vocabularies"]), tuple(data["widths"]))
        else:  # written before per-code vocabularies: one vocabulary, z cut evenly
            layout = CodeLayout.uniform(codes, int(data["vocabulary"]), d_z // codes) if codes else None
        return cls(
            str(data["path"]),
            str(data["config_sha256"]),
            str(data["weights_sha256"]),
            d_z,
            int(data["image_size"]),
            layout,
        )


@dataclass
class VideoLatents:
    """One video's latents; row t of every tensor belongs to the video's t-th kept frame."""

    video_id: str
    z: torch.Tensor  # float32 [T, d_z]
    frame_indices: torch.Tensor  # int64 [T], decode-order indices in the source video, increasing
    timestamps: torch.Tensor  # float64 [T], seconds
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> float64 [T, K]
    codes: torch.Tensor | None = None  # int64 [T, codes] from a student with a quantiser

    def __post_init__(self) -> None:
        frames = self.z.shape[0]
        lengths = {
            "frame_index": self.frame_indices.shape[0],
            "timestamp": self.timestamps.shape[0],
            **{f"{ARRAY_PREFIX}{n}": a.shape[0] for n, a in self.arrays.items()},
            **({} if self.codes is None else {CODES: self.codes.shape[0]}),
        }
        if self.z.ndim != 2 or frames == 0 or any(n != frames for n in lengths.values()):
            raise ValueError(
                f"video {self.video_id!r}: z {tuple(self.z.shape)} and {lengths} must share T >= 1 rows"
            )
        if any(a.ndim != 2 for a in self.arrays.values()):
            raise ValueError(f"video {self.video_id!r}: arrays must be [T, K]")
        if self.codes is not None and (self.codes.ndim != 2 or self.codes.is_floating_point()):
            raise ValueError(f"video {self.video_id!r}: codes must be integers [T, codes]")

    @property
    def frames(self) -> int:
        return self.z.shape[0]


def video_path(root: Path | str, split: str, video_id: str) -> Path:
    return Path(root) / split / f"{video_id}.safetensors"


def write_video_latents(path: Path, video: VideoLatents, split: str, fingerprint: str) -> None:
    """Save one video's latents atomically, naming the checkpoint fingerprint in the metadata."""
    tensors = {
        "z": video.z.float().contiguous(),
        "frame_index": video.frame_indices.long().contiguous(),
        "timestamp": video.timestamps.double().contiguous(),
        **{f"{ARRAY_PREFIX}{n}": a.double().contiguous() for n, a in video.arrays.items()},
        **({} if video.codes is None else {CODES: video.codes.long().contiguous()}),
    }
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "video_id": video.video_id,
        "split": split,
        "checkpoint": fingerprint,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def write_code_table(root: Path | str, table: torch.Tensor, fingerprint: str) -> None:
    """The z values of every code (``Quantizer.table()``, [codes, vocabulary, width] zero-padded), so a model
    over codes can turn them back into z (``CodeLayout.lookup``)."""
    with atomic_path(Path(root) / TABLE_NAME) as tmp:
        save_file(
            {"table": table.float().contiguous()},
            str(tmp),
            metadata={"format": FORMAT, "version": str(VERSION), "checkpoint": fingerprint},
        )


def read_code_table(root: Path | str, ref: CheckpointRef) -> torch.Tensor:
    """[codes, vocabulary, width] of the latents' checkpoint; refused when it is another's or not of its layout."""
    path = Path(root) / TABLE_NAME
    if ref.layout is None:
        raise ValueError(
            f"{root} holds continuous z only: encode it with a student trained with model.quantizer=fsq|vq"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: rerun distill-encode --overwrite on {root}")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        table = handle.get_tensor("table")
    if meta.get("checkpoint") != ref.fingerprint:
        raise ValueError(
            f"{path}: a table of checkpoint {meta.get('checkpoint')}, the manifest says {ref.fingerprint}; "
            "rerun distill-encode --overwrite"
        )
    try:
        ref.layout.check_table(table)
    except ValueError as error:
        raise ValueError(f"{path}: {error}; rerun distill-encode --overwrite") from error
    return table


@dataclass(frozen=True)
class VideoHeader:
    video_id: str
    split: str
    checkpoint: str
    frames: int
    arrays: dict[str, int]  # name -> K
    codes: int = 0  # codes per frame (0: no codes tensor)


def read_header(path: Path) -> VideoHeader:
    """The metadata and shapes of a video file, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            shapes = {name: handle.get_slice(name).get_shape() for name in handle.keys()}  # noqa: SIM118
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: unreadable latent file ({exc}); rerun distill-encode, it resumes") from exc
    if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
        raise ValueError(f"{path}: not a {FORMAT} v{VERSION} file (metadata {meta})")
    unknown = [n for n in shapes if n not in (*FIXED_TENSORS, CODES) and not n.startswith(ARRAY_PREFIX)]
    missing = [n for n in FIXED_TENSORS if n not in shapes]
    if unknown or missing:
        raise ValueError(f"{path}: unexpected tensors {unknown}, missing {missing}; re-encode it")
    arrays = {n[len(ARRAY_PREFIX) :]: int(s[1]) for n, s in shapes.items() if n.startswith(ARRAY_PREFIX)}
    codes = int(shapes[CODES][1]) if CODES in shapes else 0
    return VideoHeader(
        meta["video_id"], meta["split"], meta["checkpoint"], int(shapes["z"][0]), arrays, codes
    )


def read_video_latents(path: Path, fingerprint: str) -> VideoLatents:
    """Read a video file strictly: its format, and that it was encoded with checkpoint ``fingerprint``."""
    header = read_header(path)
    if header.checkpoint != fingerprint:
        raise ValueError(
            f"{path} was encoded with checkpoint {header.checkpoint}, the manifest says {fingerprint}; "
            "re-encode the dataset with distill-encode --overwrite"
        )
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    arrays = {n[len(ARRAY_PREFIX) :]: t for n, t in tensors.items() if n.startswith(ARRAY_PREFIX)}
    return VideoLatents(
        header.video_id,
        tensors["z"],
        tensors["frame_index"],
        tensors["timestamp"],
        arrays,
        tensors.get(CODES),
    )


@dataclass(frozen=True)
class LatentManifest:
    checkpoint: CheckpointRef
    source: str  # the frames dataset the latents were encoded from
    splits: dict[str, tuple[tuple[str, int], ...]]  # split -> (video_id, frames) in dataset order
    arrays: dict[str, int]  # per-frame array name -> K, the same for every video

    def videos(self, split: str, root: Path | str = MANIFEST_NAME) -> tuple[tuple[str, int], ...]:
        if split not in self.splits:
            raise KeyError(f"{root}: no split {split!r} in the latent dataset (have {sorted(self.splits)})")
        return self.splits[split]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "checkpoint": self.checkpoint.to_dict(),
            "source": self.source,
            "arrays": self.arrays,
            "splits": {
                split: [{"video_id": v, "frames": n} for v, n in videos]
                for split, videos in self.splits.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatentManifest:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} v{VERSION} manifest")
        splits = {
            split: tuple((str(v["video_id"]), int(v["frames"])) for v in videos)
            for split, videos in data["splits"].items()
        }
        arrays = {str(k): int(v) for k, v in data["arrays"].items()}
        return cls(CheckpointRef.from_dict(data["checkpoint"]), str(data["source"]), splits, arrays)


def save_latent_manifest(root: Path | str, manifest: LatentManifest) -> None:
    atomic_write_text(Path(root) / MANIFEST_NAME, json.dumps(manifest.to_dict(), indent=2) + "\n")


def load_latent_manifest(root: Path | str) -> LatentManifest:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} in {root}: not a latent dataset, or distill-encode did not finish (rerun it)"
        )
    try:
        return LatentManifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is unreadable ({type(exc).__name__}: {exc}); rerun distill-encode") from exc
