# distill on a CUDA machine. Build: docker build -t distill .   Run the suite: docker run --gpus all distill
# Real teachers: mount a weights folder and point the configs at it (see README, "Real teachers").
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    WANDB_MODE=disabled

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential make git ffmpeg \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/distill
# Dependencies first, so editing the source does not reinstall torch.
COPY pyproject.toml README.md Makefile constraints.txt ./
COPY src/distill/__init__.py src/distill/__init__.py
RUN make setup
COPY . .
RUN .venv/bin/python -m pip install -q --no-deps -e . && touch .venv/.installed

CMD ["make", "test"]
