"""The data pipeline: images and videos to shards, teacher features, stats, and the training loader.

Commands (each also ``python -m distill.data.<module>``, wrapped by scripts/preprocessing/):
``organize`` (image folder -> image shards), ``subsample_videos`` (videos -> frame shards),
``extract`` (teacher features, torchrun-aware), ``calc_stats`` (feature stats), ``check``.
Library: ``loader`` (``LoaderConfig``, ``train_batches``, ``eval_batches``), ``clips`` (``video_clips``),
``stats`` (``FeatureStats``), ``manifest``, ``shards``, ``codec`` (the per-sample feature blob).
Format: docs/dataset_format.md.
"""
