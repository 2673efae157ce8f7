"""Decoding student outputs (and teacher features) into PCA maps, SAM masks, depth and pixels.

Python API::

    from distill.decode import decode_images, decode_z, load_decoder_teachers, render
    teachers = load_decoder_teachers(model.config.teachers, ["sam", "depth_anything", "mae"], source="tiny")
    decoded = decode_z(model, z, targets="pca,masks,depth,pixels", teachers=teachers)  # z: [T, d_z]
    grids = render(decoded)  # one PIL image per frame; no input images needed

The command line (``python -m distill.decode --help``) wraps the same functions; see docs/decoding.md.
"""

from distill.decode.api import decode_images, decode_teacher_frames, decode_z, resolve_targets
from distill.decode.colour import ValueRange
from distill.decode.decoders import TARGETS, Target, load_decoder_teachers, teachers_for
from distill.decode.frames import PIXEL_HEAD, DecodedFrames, FrameDecoder, decode_features
from distill.decode.masks import MaskSettings, Prompts
from distill.decode.media import Clip, MediaError, iter_clips, write_mp4, write_png
from distill.decode.pca import PcaBasis, fit_pca
from distill.decode.render import render

__all__ = [
    "PIXEL_HEAD",
    "TARGETS",
    "Clip",
    "DecodedFrames",
    "FrameDecoder",
    "MaskSettings",
    "MediaError",
    "PcaBasis",
    "Prompts",
    "Target",
    "ValueRange",
    "decode_features",
    "decode_images",
    "decode_teacher_frames",
    "decode_z",
    "fit_pca",
    "iter_clips",
    "load_decoder_teachers",
    "render",
    "resolve_targets",
    "teachers_for",
    "write_mp4",
    "write_png",
]
