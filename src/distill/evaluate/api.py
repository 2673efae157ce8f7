"""What z carries: pixels, teacher fidelity and ground-truth state, beside baselines of the same width.

Baselines are fitted on the train split and scored on the same held-out frames as z: the mean image
(the best constant) and PCA of the pixels with ``d_z`` components (the best linear code of that width).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distill.data.manifest import load_manifest
from distill.evaluate.baselines import PixelPCA, mean_image
from distill.evaluate.frames import FrameBatch, iter_frames
from distill.evaluate.metrics import Summary, cosine_stats, norm_stats, psnr, ssim
from distill.evaluate.probe import ridge_probe
from distill.models.student import Student


@dataclass(frozen=True)
class EvalConfig:
    dataset: Path
    train_split: str = "train"
    eval_split: str = "val"
    max_train_frames: int = 20_000  # frames for the baselines and probe fits (kept in memory as uint8)
    max_eval_frames: int | None = None
    batch_size: int = 128
    grid_frames: int = 8  # held-out frames shown in the picture grid, evenly spaced


@dataclass
class Report:
    """Everything ``report.json`` holds (see docs/evaluation.md for each field)."""

    dataset: str
    train_split: str
    eval_split: str
    d_z: int
    pca_components: int  # d_z, unless the train split has fewer frames
    frames: dict[str, int]
    pixels: dict[str, dict[str, float]]  # "z", "mean_image", "pca" -> psnr/ssim mean and p5
    teachers: dict[str, dict[str, float]]  # teacher -> patch_cos (per token), cls_cos
    probe: dict[str, dict[str, Any]]  # array name -> {"z": [R^2 per dim], "pca": [...], alphas}
    video: dict[str, Any]  # consecutive vs random-pair cosine of z, z norm statistics

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GridFrames:
    """The few held-out frames drawn in the report picture: input, decoded from z, PCA, mean image."""

    images: torch.Tensor  # uint8 [G, 3, S, S]
    from_z: torch.Tensor  # float [G, 3, S, S] in [0, 1]
    pca: torch.Tensor
    mean: torch.Tensor


@torch.no_grad()
def evaluate_student(model: Student, cfg: EvalConfig) -> tuple[Report, GridFrames]:
    """Score ``model`` on ``cfg.eval_split`` of ``cfg.dataset``; baselines and probes fit on the train split."""
    if model.decoder is None or model.pixel_head is None:
        raise ValueError(
            "evaluation decodes pixels from z: the student needs bottleneck='cls' and a pixel head"
        )
    model.eval()
    manifest = load_manifest(cfg.dataset)
    train = _collect(model, cfg.dataset, cfg.train_split, cfg.batch_size, cfg.max_train_frames)
    d_z = model.config.d_z
    pca = PixelPCA.fit(train.images, min(d_z, train.images.shape[0]))  # fewer only on a tiny train split
    mean = mean_image(train.images)
    eval_count = manifest.split(cfg.eval_split, cfg.dataset).count
    if cfg.max_eval_frames is not None:
        eval_count = min(eval_count, cfg.max_eval_frames)
    shown = set(np.linspace(0, eval_count - 1, min(cfg.grid_frames, eval_count)).round().astype(int).tolist())
    teachers = [t for t in model.config.teachers if t in manifest.teachers]
    scores: dict[str, list[torch.Tensor]] = {}
    cosines: dict[str, list[torch.Tensor]] = {}
    z_rows, pca_rows, ids, arrays = [], [], [], []
    grid: list[tuple[torch.Tensor, ...]] = []
    offset = 0
    for batch in iter_frames(cfg.dataset, cfg.eval_split, teachers, cfg.batch_size, cfg.max_eval_frames):
        size = tuple(batch.images.shape[-2:])
        target = batch.images.float() / 255
        z = model.encode(batch.images)
        out = model.predict(z, image_size=size)  # type: ignore[arg-type]
        assert out.pixels is not None
        codes = pca.encode(batch.images)
        predictions = {
            "z": out.pixels.cpu(),
            "mean_image": mean.expand_as(target),
            "pca": pca.decode(codes),
        }
        for name, pred in predictions.items():
            scores.setdefault(f"{name}/psnr", []).append(psnr(pred, target))
            scores.setdefault(f"{name}/ssim", []).append(ssim(pred, target))
        for teacher in teachers:
            _teacher_cosines(model, teacher, out.features[teacher], batch, cosines)
        for i in range(len(batch.keys)):
            if offset + i in shown:
                grid.append(
                    (
                        batch.images[i],
                        predictions["z"][i],
                        predictions["pca"][i],
                        predictions["mean_image"][i],
                    )
                )
        offset += len(batch.keys)
        z_rows.append(z.cpu())
        pca_rows.append(codes)
        ids.extend(batch.video_ids)
        arrays.append(batch.arrays)
    z_eval, pca_eval = torch.cat(z_rows), torch.cat(pca_rows)
    pixels: dict[str, dict[str, float]] = {}
    for name in ("z", "mean_image", "pca"):
        for metric in ("psnr", "ssim"):
            summary = Summary.of(torch.cat(scores[f"{name}/{metric}"]))
            pixels.setdefault(name, {}).update({f"{metric}_mean": summary.mean, f"{metric}_p5": summary.p5})
    teacher_report: dict[str, dict[str, float]] = {key.split("/")[0]: {} for key in cosines}
    for key, values in cosines.items():
        teacher, metric = key.split("/")
        teacher_report[teacher][metric] = float(torch.cat(values).double().mean())
    probe = _probes(train, pca.encode(train.images), _cat_arrays(arrays), z_eval, pca_eval)
    video = {"z_norm": norm_stats(z_eval), **cosine_stats(z_eval, ids)}
    report = Report(
        str(cfg.dataset),
        cfg.train_split,
        cfg.eval_split,
        d_z,
        pca.k,
        {"train": len(train.ids), "eval": len(ids)},
        pixels,
        teacher_report,
        probe,
        video,
    )
    images, from_z, from_pca, mean_frames = (torch.stack(column) for column in zip(*grid, strict=True))
    return report, GridFrames(images=images, from_z=from_z, pca=from_pca, mean=mean_frames)


@dataclass
class _TrainSide:
    images: torch.Tensor
    z: torch.Tensor
    ids: list[str]
    arrays: dict[str, torch.Tensor]


def _collect(model: Student, dataset: Path, split: str, batch_size: int, limit: int) -> _TrainSide:
    images, z, ids, arrays = [], [], [], []
    for batch in iter_frames(dataset, split, (), batch_size, limit):
        images.append(batch.images)
        z.append(model.encode(batch.images).cpu())
        ids.extend(batch.video_ids)
        arrays.append(batch.arrays)
    if not images:
        raise ValueError(f"{dataset}: split {split!r} has no frames to fit the baselines on")
    return _TrainSide(torch.cat(images), torch.cat(z), ids, _cat_arrays(arrays))


def _cat_arrays(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    names = set(parts[0])
    if any(set(p) != names for p in parts):
        raise ValueError("frames carry different metadata arrays in different parts of the split")
    return {name: torch.cat([p[name] for p in parts]) for name in sorted(names)}


def _teacher_cosines(
    model: Student, teacher: str, predicted: Any, batch: FrameBatch, out: dict[str, list[torch.Tensor]]
) -> None:
    """Per-token and CLS cosine of the prediction from z against the stored features, in the trained space."""
    assert model.stats is not None
    target = model.stats[teacher].normalize(batch.targets[teacher])
    if predicted.patch.shape != target.patch.shape:
        raise ValueError(
            f"teacher {teacher!r}: the student predicts {tuple(predicted.patch.shape[1:])} but the dataset stores "
            f"{tuple(target.patch.shape[1:])}; evaluate on features extracted like its training set"
        )
    out.setdefault(f"{teacher}/patch_cos", []).append(
        F.cosine_similarity(predicted.patch.float().cpu(), target.patch.float(), dim=-1).flatten(1).mean(1)
    )
    if predicted.cls is not None and target.cls is not None:
        out.setdefault(f"{teacher}/cls_cos", []).append(
            F.cosine_similarity(predicted.cls.float().cpu(), target.cls.float(), dim=-1)
        )


def _probes(
    train: _TrainSide,
    train_pca: torch.Tensor,
    eval_arrays: dict[str, torch.Tensor],
    z_eval: torch.Tensor,
    pca_eval: torch.Tensor,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, target in eval_arrays.items():
        if name not in train.arrays:
            continue
        from_z = ridge_probe(train.z, train.arrays[name], z_eval, target, train.ids)
        from_pca = ridge_probe(train_pca, train.arrays[name], pca_eval, target, train.ids)
        out[name] = {"z": from_z.r2, "pca": from_pca.r2, "alpha_z": from_z.alpha, "alpha_pca": from_pca.alpha}
    return out
