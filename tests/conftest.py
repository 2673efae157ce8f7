"""Suite-wide settings: nothing may reach a model hub or a wandb server from a test.

These are set before any test module imports huggingface_hub or wandb, which read them once.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
