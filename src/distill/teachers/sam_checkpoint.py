"""segment-anything checkpoints: reading one strictly, and inferring its model type from its shapes.

Weights strings are ``[MODEL_TYPE:]PATH`` with MODEL_TYPE one of :data:`SAM_ARCHS` (``vit_b``,
``vit_l``, ``vit_h``, ``tiny``) and PATH an official pickled ``.pth`` state dict (read with
``torch.load(weights_only=True)``) or a ``.safetensors`` file. Without a type, the type is inferred
by matching the state dict's key names and shapes against every known type: every shape a
checkpoint holds (embed dim, depth, windowed vs global blocks through the relative-position
tables, output channels) is fixed per type, so exactly one type matches a valid checkpoint.
Loading is strict: a missing, unexpected or wrong-shaped key is an error.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import torch
from segment_anything.modeling import Sam

from distill.teachers.sam_arch import SAM_ARCHS, build_sam_model

SAM_CHECKPOINT_URLS = {
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
}


@functools.cache
def _arch_shapes(model_type: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a model type's state dict, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = build_sam_model(SAM_ARCHS[model_type])
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def state_dict_mismatch(
    expected: Mapping[str, tuple[int, ...]], state: Mapping[str, torch.Tensor]
) -> list[str]:
    """Human-readable differences between a model's expected key shapes and a state dict."""

    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")

    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{key} {tuple(state[key].shape)} (model {expected[key]})"
        for key in sorted(set(expected) & set(state))
        if tuple(state[key].shape) != expected[key]
    ]
    if missing:
        problems.append(f"missing keys: {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {listed(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {listed(wrong)}")
    return problems


def read_state_dict(path: Path, teacher: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a plain pickled state dict (``weights_only=True``)."""
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            loaded: object = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused, or not a torch / safetensors file at all
        raise ValueError(
            f"teacher {teacher!r}: cannot read {path} as a state dict ({type(exc).__name__}: {exc}); pass the "
            "official .pth checkpoint (read with torch.load(weights_only=True)) or a .safetensors file"
        ) from exc
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ValueError(
            f"teacher {teacher!r}: {path} holds a {type(loaded).__name__}, not a state dict of tensors; "
            "pass the official segment-anything checkpoint (a plain state dict) or a .safetensors file"
        )
    return dict(loaded)


def parse_sam_weights(weights: str) -> tuple[str | None, Path]:
    """``"vit_h:/path/ckpt.pth"`` -> ("vit_h", path); ``"/path/ckpt.pth"`` -> (None, path)."""
    model_type, sep, rest = weights.partition(":")
    if sep and model_type in SAM_ARCHS:
        return model_type, Path(rest).expanduser()
    return None, Path(weights).expanduser()


def infer_sam_type(state: Mapping[str, torch.Tensor], source: str) -> str:
    """The one model type whose key names and shapes equal the state dict's, or a ValueError."""
    mismatches = {name: state_dict_mismatch(_arch_shapes(name), state) for name in SAM_ARCHS}
    for name, problems in mismatches.items():
        if not problems:
            return name

    def fitting(name: str) -> int:
        return sum(
            key in state and tuple(state[key].shape) == shape for key, shape in _arch_shapes(name).items()
        )

    closest = max(SAM_ARCHS, key=fitting)
    raise ValueError(
        f"teacher 'sam': {source} matches no segment-anything model type ({', '.join(SAM_ARCHS)}); "
        f"closest is {closest}: {'; '.join(mismatches[closest])}. Pass an official SAM checkpoint "
        "(a state dict of segment_anything.modeling.Sam)"
    )


def load_sam_model(weights: str) -> Sam:
    """Build a segment-anything ``Sam`` from ``[MODEL_TYPE:]PATH`` (``.pth`` or ``.safetensors``), strictly."""
    model_type, path = parse_sam_weights(weights)
    if path.is_dir():
        raise ValueError(
            f"teacher 'sam': {path} is a directory, but segment-anything checkpoints are single files "
            "(.pth or .safetensors); a transformers SamModel directory loads with teacher 'sam_hf'"
        )
    if not path.is_file():
        url = SAM_CHECKPOINT_URLS[model_type or "vit_h"] if model_type != "tiny" else None
        fix = (
            f"download the official checkpoint ({url}) and pass its path" if url else "pass a checkpoint file"
        )
        raise FileNotFoundError(
            f"teacher 'sam': no checkpoint file at {str(path)!r} (resolved to {path.resolve()}; weights={weights!r}); "
            f"{fix} as weights='[vit_b|vit_l|vit_h|tiny:]/path/to/checkpoint.pth' (or .safetensors). "
            "Checkpoints are never downloaded automatically."
        )
    state = read_state_dict(path, "sam")
    if model_type is None:
        model_type = infer_sam_type(state, str(path))
    else:
        problems = state_dict_mismatch(_arch_shapes(model_type), state)
        if problems:
            raise ValueError(
                f"teacher 'sam': {path} is not a {model_type} checkpoint: {'; '.join(problems)}. "
                f"Name the right model type ({', '.join(SAM_ARCHS)}) or drop the prefix to infer it"
            )
    model = build_sam_model(SAM_ARCHS[model_type])
    model.load_state_dict(state, strict=True)
    return model
