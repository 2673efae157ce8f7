"""LoRA adapters on a frozen encoder (``preset=align``): peft injects and merges them, the trainer trains them.

Aligning an encoder to another domain (a student on overlaid images matching the teachers on the clean
ones) should move few weights and leave the rest exactly as trained, so the adapted encoder is the old
one plus a small, separable change. Every tensor is frozen; peft wraps the chosen ``Linear`` layers of
the encoder's backbone (the student's ``backbone``, or the teacher model of a
:class:`~distill.train.teacher_source.TeacherEncoder`) with low-rank ``A``/``B`` pairs (``B`` starts at
zero: step 0 is the old encoder), and the modules named in ``train`` (a student's head, say) are trained
in full beside them.

Saved as an adapter folder (peft's ``adapter_config.json`` and ``adapter_model.safetensors``, plus
``trained_modules.safetensors`` for ``train``) and as a merged encoder folder, which loads strictly like
any other (``Student.from_pretrained``, or ``load_teacher`` for a teacher).
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

import torch
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraModel
from torch import nn

from distill.io import atomic_folder, atomic_write_text
from distill.tensorfile import load as load_tensors
from distill.tensorfile import save as save_tensors
from distill.train.typed import ConfigError, require_positive

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
CONFIG_NAME = "adapter_config.json"  # peft's names, so the folder reads as a peft adapter
WEIGHTS_NAME = "adapter_model.safetensors"
TRAINED_NAME = "trained_modules.safetensors"
ADAPTER_NAME = "default"
Encoder = Literal["student", "teacher"]
SCOPES: dict[str, str] = {"student": "backbone", "teacher": "teacher.model"}  # where adapters may go
ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class AdapterConfig:
    """``adapter`` in the run config: LoRA on the encoder's backbone, and what else trains in full."""

    rank: int  # LoRA rank r
    alpha: int  # LoRA scale is alpha / r
    target_modules: tuple[str, ...]  # backbone Linear names: q_proj, k_proj, v_proj, o_proj, fc1, fc2
    train: tuple[str, ...] = ()  # modules trained in full beside the adapters, e.g. heads.dinov2
    # what is adapted: the init_from student, or a copy of the run's one teacher (its architecture and weights)
    encoder: Encoder = "student"

    def __post_init__(self) -> None:
        require_positive("adapter.rank", self.rank)
        require_positive("adapter.alpha", self.alpha)
        if not self.target_modules:
            raise ConfigError(
                "adapter.target_modules: name at least one backbone layer, e.g. [q_proj, v_proj]"
            )

    def lora_config(self) -> LoraConfig:
        names = "|".join(re.escape(name) for name in self.target_modules)
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            target_modules=rf"{re.escape(SCOPES[self.encoder])}\..*\.({names})",
            lora_dropout=0.0,  # the frozen encoder runs in eval mode: dropout would be off anyway
            bias="none",
        )


class LoraAdapter(Generic[ModuleT]):
    """An encoder (student or teacher copy) with LoRA adapters injected in place: train, save, merge them."""

    def __init__(self, module: ModuleT, config: AdapterConfig) -> None:
        known = dict(module.named_modules())
        unknown = [name for name in config.train if not name or name not in known]
        if unknown:
            tops = sorted(name for name in known if name and name.count(".") <= 1)
            raise ConfigError(
                f"adapter.train: the {config.encoder} has no module {unknown[0]!r} (e.g. {', '.join(tops)})"
            )
        module.requires_grad_(False)
        self.config = config
        self.module = module
        try:
            self.tuner = LoraModel(module, config.lora_config(), ADAPTER_NAME)  # B = 0: outputs unchanged
        except ValueError as err:  # peft: no layer matched
            raise ConfigError(
                f"adapter.target_modules: {list(config.target_modules)} match no layer of the {config.encoder}'s "
                f"{SCOPES[config.encoder]} (its Linear layers: {', '.join(linear_names(module, config.encoder))})"
            ) from err
        for name in config.train:
            module.get_submodule(name).requires_grad_(True)
        self.trained = {
            f"{name}.{tensor}": param
            for name in config.train
            for tensor, param in module.get_submodule(name).named_parameters()
        }

    def trainable(self) -> list[str]:
        return [name for name, param in self.module.named_parameters() if param.requires_grad]

    def lora_state(self) -> dict[str, torch.Tensor]:
        return {
            k: v.detach() for k, v in get_peft_model_state_dict(self.tuner, adapter_name=ADAPTER_NAME).items()
        }

    def merged(self) -> ModuleT:
        """A plain encoder with ``W + (alpha / r) B A`` folded into each adapted layer (this one is untouched)."""
        merged = copy.deepcopy(self.tuner).merge_and_unload(safe_merge=True)
        if not isinstance(merged, type(self.module)):
            raise TypeError(
                f"peft returned a {type(merged).__name__}, not the {type(self.module).__name__} it wrapped"
            )
        return merged.requires_grad_(False).eval()

    def save(self, folder: Path) -> None:
        """Write the adapter folder atomically (a reader sees the old folder or the new one)."""
        record = self.config_record()
        with atomic_folder(folder) as staging:
            save_tensors(staging / WEIGHTS_NAME, self.lora_state(), metadata={"format": "peft"})
            if self.trained:
                save_tensors(staging / TRAINED_NAME, {k: v.detach() for k, v in self.trained.items()})
            atomic_write_text(staging / CONFIG_NAME, json.dumps(record, indent=2, sort_keys=True) + "\n")

    def config_record(self) -> dict[str, object]:
        lora = self.tuner.peft_config[ADAPTER_NAME].to_dict()
        lora = {k: sorted(v) if isinstance(v, set) else v for k, v in lora.items()}
        return lora | {"distill_train": list(self.config.train)}

    def load(self, folder: Path) -> None:
        """Strictly load an adapter folder written by :meth:`save` for the same adapter config."""
        fix = "resume from another checkpoint, or start a new run"
        path = folder / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}: not an adapter folder; {fix}")
        saved = json.loads(path.read_text(encoding="utf-8"))
        expected = json.loads(json.dumps(self.config_record()))
        differ = sorted(k for k in expected.keys() | saved.keys() if saved.get(k) != expected.get(k))
        if differ:
            raise ConfigError(
                f"{path} was saved with another adapter config ({', '.join(differ)}); "
                "use the adapter.* settings of the run that wrote it"
            )
        lora, _ = load_tensors(folder / WEIGHTS_NAME, "adapter weights file", fix)
        _check_names(folder / WEIGHTS_NAME, lora, self.lora_state())
        set_peft_model_state_dict(self.tuner, lora, adapter_name=ADAPTER_NAME)
        if self.trained:
            trained, _ = load_tensors(folder / TRAINED_NAME, "trained modules file", fix)
            _check_names(folder / TRAINED_NAME, trained, self.trained)
            with torch.no_grad():
                for name, param in self.trained.items():
                    param.copy_(trained[name])
        if any(not torch.equal(v.cpu(), lora[k]) for k, v in self.lora_state().items()):
            raise RuntimeError(f"{folder / WEIGHTS_NAME}: peft did not load every adapter tensor")


def linear_names(module: nn.Module, encoder: Encoder) -> list[str]:
    """The distinct names of the Linear layers adapters can go on (``q_proj``, ``fc1``, ...)."""
    scope = SCOPES[encoder] + "."
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, m in module.named_modules()
            if name.startswith(scope) and isinstance(m, nn.Linear)
        }
    )


def _check_names(path: Path, found: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = [n for n in sorted(set(found) & set(expected)) if found[n].shape != expected[n].shape]
    if missing or extra or wrong:
        raise ValueError(
            f"{path} does not fit this adapter: missing {missing[:4]}, unexpected {extra[:4]}, "
            f"wrong shapes {wrong[:4]}; it was written for another encoder or adapter config"
        )
