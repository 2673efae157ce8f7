"""Which of the student's parameters the loss can reach with the configured weights.

A loss term weighted 0 is left out of the graph (``distill.losses``): its head gets no gradient.
In one process the optimiser simply skips such parameters; under DDP every parameter that
requires a gradient must get one each step, and ``find_unused_parameters`` does not help
either: it searches from the *forward outputs*, which still include the zero-weight head's
prediction, so the reducer waits for gradients that never come ("Expected to have finished
reduction in the prior iteration"). So the trainer asks autograd once, on a two-image probe,
which parameters the loss reaches, and freezes the others before wrapping the model: DDP then
holds exactly the parameters that get gradients, in any combination of zero weights.

The probe is structural (which parameters are connected to the loss, not the gradients' values).
It runs in eval mode, so z batch norm reads its running statistics instead of updating them (a
finetune's init statistics stay as loaded) and takes part in no collective, and it draws its
images inside ``fork_rng``: no random number of the run's generators is used.
"""

from __future__ import annotations

import torch

from distill.features import TeacherOutput
from distill.losses import LossConfig, distillation_loss
from distill.models import Student
from distill.train.teacher_source import TeacherEncoder


def unreachable_parameters(student: Student | TeacherEncoder, loss: LossConfig) -> list[str]:
    """Names of the trainable parameters that get no gradient from ``loss`` (in module order)."""
    size = student.config.image_size
    named = [(name, p) for name, p in student.named_parameters() if p.requires_grad]
    devices = [student.device] if student.device.type == "cuda" else []
    was_training = student.training
    student.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, device=student.device)
            output = student(images)
            targets = {
                name: TeacherOutput(
                    torch.zeros_like(out.patch).detach(),
                    None if out.cls is None else torch.zeros_like(out.cls),
                )
                for name, out in output.features.items()
            }
            total = distillation_loss(output, targets, images, loss).total
            grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    finally:
        student.train(was_training)
    return [name for (name, _), grad in zip(named, grads, strict=True) if grad is None]


def freeze_unreachable(student: Student | TeacherEncoder, loss: LossConfig) -> list[str]:
    """Set ``requires_grad=False`` on every parameter the loss cannot reach; returns their names."""
    frozen = unreachable_parameters(student, loss)
    params = dict(student.named_parameters())
    for name in frozen:
        params[name].requires_grad_(False)
    return frozen
