"""distill: multi-teacher distillation of vision foundation models into a compact ViT with a CLS bottleneck."""

from distill.lifeline import die_with_launcher

# First thing any entry point does (before torch is imported): a worker torchrun started must not
# outlive its launcher (see distill.lifeline).
die_with_launcher()
