"""The preprocessing stages: images and videos to shards, teacher features, stats, and a check.

Each stage is a command (``distill-<stage>``, ``python -m distill.preprocess.<module>``, and a thin
wrapper in scripts/preprocessing/): ``organize`` (image folder -> image shards), ``subsample_videos``
(videos -> frame shards), ``extract`` (teacher features, torchrun-aware), ``calc_stats`` (feature
stats) and ``check`` (validate a dataset). Their helpers: ``cli`` (logging, configs from flags),
``rejected`` (rejected.txt), ``dataset_dir`` (creating a dataset folder). They write the format that :mod:`distill.data` defines and reads.
"""
