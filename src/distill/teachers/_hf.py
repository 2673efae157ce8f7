"""Shared plumbing for teachers built on transformers (and the seeded tiny builders of every family).

What it gives a teacher module:

- :func:`seeded`: run a tiny builder under a fixed torch seed and restore the caller's RNG state after,
  so building a tiny teacher is deterministic and does not disturb anyone else's random stream.
- :func:`load_pretrained`: ``from_pretrained`` for a hub id or a local ``save_pretrained`` directory that
  (1) checks the checkpoint's ``model_type`` before loading, so a checkpoint of another family fails with
  a message naming both, (2) loads strictly: a missing key, a shape mismatch or an unexpected key (outside
  an explicit allow-list, e.g. CLIP's text tower) is an error instead of transformers' random re-init,
  (3) turns "not found" into an error naming the teacher, the path or id, and that no hub may be reachable,
  (4) honours ``HF_HUB_OFFLINE`` read at call time (``local_files_only``), so an offline machine fails at
  once instead of retrying the network.
- :func:`read_preprocessor`: the checkpoint's ``preprocessor_config.json`` (``{}`` when it has none), and
  :func:`normalization` / :func:`processor_input_size` to read mean/std and input size from it.
- :func:`vit_spec` and :func:`tokens_to_grid`: the :class:`TeacherSpec` of a ViT-like config at a given
  input size, and the reshape of patch tokens ``[B, h*w, C]`` (raster order) into ``[B, h, w, C]``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils import cached_file

from distill.features import TeacherSpec

Triple = tuple[float, float, float]
ModelT = TypeVar("ModelT", bound=PreTrainedModel)

OFFLINE_HINT = (
    "no model hub may be reachable from this machine (offline, or HF_HUB_OFFLINE=1): pass a local "
    "directory written by save_pretrained, or make sure the id is right and already in the HF cache"
)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block under ``torch.manual_seed(seed)``; the caller's CPU RNG state is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it only once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return env or bool(constants.HF_HUB_OFFLINE)


def looks_like_path(weights: str) -> bool:
    """True for strings that can only be filesystem paths (a hub id is ``name`` or ``namespace/name``)."""
    return os.path.isabs(weights) or weights.startswith((".", "~")) or weights.count("/") > 1


def _resolve_local(teacher: str, weights: str) -> str | None:
    """The local directory ``weights`` names, None for a hub id; errors for a missing path or a file."""
    path = Path(weights).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ValueError(
            f"teacher {teacher!r}: {weights!r} is a file, but transformers checkpoints are directories "
            "(config.json + model.safetensors, as written by save_pretrained); pass the directory"
        )
    if looks_like_path(weights):
        raise FileNotFoundError(
            f"teacher {teacher!r}: no checkpoint directory at {weights!r}; pass a directory written by "
            "save_pretrained or a hub model id"
        )
    return None


def read_model_type(teacher: str, weights: str) -> str:
    """``model_type`` from the checkpoint's config.json, with an error naming the teacher when absent."""
    local = _resolve_local(teacher, weights)
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(local or weights, local_files_only=hub_offline())
    except OSError as err:
        where = (
            f"directory {local!r}" if local else f"hub model id {weights!r} (not a local directory either)"
        )
        raise OSError(
            f"teacher {teacher!r}: could not read config.json from {where}; {OFFLINE_HINT}. ({err})"
        ) from err
    model_type = config_dict.get("model_type")
    if not isinstance(model_type, str):
        raise ValueError(
            f"teacher {teacher!r}: config.json of {weights!r} has no model_type; is it a transformers checkpoint?"
        )
    return model_type


def load_pretrained(
    teacher: str,
    weights: str,
    classes: Mapping[str, type[ModelT]],
    config_overrides: Mapping[str, Any] | None = None,
    ignore_unexpected: Sequence[str] = (),
) -> ModelT:
    """Load ``weights`` strictly into the class registered for its ``model_type``, in float32, eval mode.

    ``classes`` maps each accepted ``model_type`` to the model class to build; any other type is an
    architecture mismatch. ``config_overrides`` are set on the config before the model is built (e.g.
    MAE's mask ratio). Unexpected checkpoint keys are errors unless they start with a prefix in
    ``ignore_unexpected`` (parts of a larger checkpoint the teacher does not use, like a text tower).
    """
    model_type = read_model_type(teacher, weights)
    if model_type not in classes:
        raise ValueError(
            f"teacher {teacher!r}: {weights!r} is a {model_type!r} checkpoint, but this teacher loads "
            f"{' / '.join(repr(t) for t in classes)}; pick the teacher that matches the checkpoint"
        )
    model_class = classes[model_type]
    config_class = model_class.config_class
    if config_class is None:
        raise TypeError(
            f"{model_class.__name__} declares no config_class; it cannot be loaded from a checkpoint"
        )
    source = _resolve_local(teacher, weights) or weights
    offline = hub_offline()
    try:
        config = config_class.from_pretrained(source, local_files_only=offline)
        for key, value in (config_overrides or {}).items():
            setattr(config, key, value)
        loaded: Any = model_class.from_pretrained(
            source, config=config, dtype=torch.float32, output_loading_info=True, local_files_only=offline
        )
        model: ModelT = loaded[0]
        info: dict[str, Any] = loaded[1]
    except OSError as err:
        raise OSError(
            f"teacher {teacher!r}: could not load weights from {weights!r}; {OFFLINE_HINT}. ({err})"
        ) from err
    except RuntimeError as err:  # transformers raises this for shape mismatches
        raise ValueError(
            f"teacher {teacher!r}: checkpoint {weights!r} does not fit {model_class.__name__}: {err}"
        ) from err
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.startswith(tuple(ignore_unexpected)))
    problems = {
        "missing keys": sorted(info["missing_keys"]),
        "unexpected keys": unexpected,
        "shape mismatches": sorted(str(k) for k in info["mismatched_keys"]),
        "load errors": list(info["error_msgs"]),
    }
    found = {what: keys for what, keys in problems.items() if keys}
    if found:
        detail = "; ".join(
            f"{what}: {', '.join(map(str, keys[:8]))}{' ...' if len(keys) > 8 else ''}"
            for what, keys in found.items()
        )
        raise ValueError(
            f"teacher {teacher!r}: checkpoint {weights!r} does not match {model_class.__name__} "
            f"(strict loading): {detail}; the checkpoint belongs to another architecture or is incomplete"
        )
    return model.eval()


def read_preprocessor(weights: str) -> dict[str, Any]:
    """The checkpoint's ``preprocessor_config.json`` as a dict; ``{}`` when it has none."""
    path = Path(weights).expanduser()
    if path.is_dir():
        candidate = path / "preprocessor_config.json"
        resolved = str(candidate) if candidate.is_file() else None
    else:
        resolved = cached_file(
            weights,
            "preprocessor_config.json",
            local_files_only=hub_offline(),
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    if resolved is None:
        return {}
    with open(resolved, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{resolved} is not a JSON object; it cannot be an image processor config")
    return data


def _triple(value: Any, what: str) -> Triple:
    values = [float(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"{what} must have 3 values (RGB), got {values}")
    return values[0], values[1], values[2]


def normalization(
    preprocessor: Mapping[str, Any], mean: Sequence[float], std: Sequence[float]
) -> tuple[Triple, Triple]:
    """Mean/std from the image processor config, or the family's defaults when it has none."""
    return (
        _triple(preprocessor.get("image_mean", mean), "image_mean"),
        _triple(preprocessor.get("image_std", std), "image_std"),
    )


def square_size(value: Any, what: str) -> int:
    """An int, or an equal (h, w) pair / {"height", "width"} dict, as one int; non-square is an error."""
    if isinstance(value, Mapping):
        value = (value["height"], value["width"])
    if isinstance(value, int):
        return value
    height, width = (int(v) for v in value)
    if height != width:
        raise ValueError(f"{what} is {height}x{width}; teachers take the square canonical view")
    return height


def processor_input_size(preprocessor: Mapping[str, Any]) -> int | None:
    """The square size the checkpoint's own image processor feeds the model, if it says so."""
    if preprocessor.get("do_center_crop", True) and preprocessor.get("crop_size") is not None:
        return square_size(preprocessor["crop_size"], "preprocessor crop_size")
    size = preprocessor.get("size")
    if isinstance(size, int) or (isinstance(size, Mapping) and {"height", "width"} <= set(size)):
        return square_size(size, "preprocessor size")
    return None


def vit_spec(
    name: str,
    config: PreTrainedConfig,
    preprocessor: Mapping[str, Any],
    default_mean: Sequence[float],
    default_std: Sequence[float],
    cls_channels: int | None,
    input_size: int | None = None,
) -> TeacherSpec:
    """Spec of a ViT-like config (``patch_size``, ``hidden_size``, ``num_channels``).

    Mean/std come from the checkpoint's image processor, else the family's defaults; the input size is
    ``input_size`` when given, else ``config.image_size`` (the size its position embeddings were made for).
    """
    mean, std = normalization(preprocessor, default_mean, default_std)
    if input_size is None:
        input_size = square_size(config.image_size, "config.image_size")
    patch = square_size(config.patch_size, f"{name} patch_size")
    if config.num_channels != 3:
        raise ValueError(
            f"teacher {name!r}: the checkpoint expects {config.num_channels} input channels, not RGB"
        )
    if input_size % patch:
        raise ValueError(
            f"teacher {name!r}: input size {input_size} is not a multiple of the patch size {patch}"
        )
    side = input_size // patch
    return TeacherSpec(
        name=name,
        input_size=input_size,
        mean=mean,
        std=std,
        grid=(side, side),
        channels=int(config.hidden_size),
        cls_channels=cls_channels,
    )


def tokens_to_grid(tokens: torch.Tensor, spec: TeacherSpec) -> torch.Tensor:
    """Patch tokens ``[B, h*w, C]`` in raster order -> ``[B, h, w, C]``; a wrong count is an error."""
    height, width = spec.grid
    if tokens.ndim != 3 or tokens.shape[1] != height * width:
        raise RuntimeError(
            f"teacher {spec.name!r}: got patch tokens {tuple(tokens.shape)}, expected [B, {height * width}, C] "
            f"for its {height}x{width} grid"
        )
    return tokens.reshape(tokens.shape[0], height, width, tokens.shape[2])
