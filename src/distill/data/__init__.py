"""The dataset format and its readers.

Format: ``manifest`` (splits, shards, teacher records), ``shards`` (tar shards, keys in order),
``keys`` (sample keys), ``codec`` (the per-sample feature blob). Readers: ``join`` (image and
feature shards joined by key), ``jpeg`` (stored views -> tensors), ``dataset`` (one split as
served: dequantised, normalised targets), ``streams`` (deterministic shard streams), ``loader``
(``LoaderConfig``, ``train_batches``, ``eval_batches``) and ``clips`` (``video_clips``).
The commands that write a dataset live in :mod:`distill.preprocess`. Format: docs/dataset_format.md.
"""
