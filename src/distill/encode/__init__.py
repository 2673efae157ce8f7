"""Video frames -> latent datasets: a student checkpoint encodes every frame of a frames dataset.

Python API::

    from distill.encode import EncodeConfig, encode_latents
    encode_latents(EncodeConfig(checkpoint=Path("runs/x/student"), dataset=Path("data/pusht"), output=Path("latents")))

The format is ``distill.data.latents`` (docs/latents.md); ``distill.data.latent_clips.LatentClips`` reads it.
"""

from distill.encode.export import EncodeConfig, EncodeReport, encode_latents, run_encoding

__all__ = ["EncodeConfig", "EncodeReport", "encode_latents", "run_encoding"]
