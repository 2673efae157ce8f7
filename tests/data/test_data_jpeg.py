"""Stored views decode to Pillow's pixels, whichever decoder takes them, and bad ones are named."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image, ImageFile

from distill.data.jpeg import _decoded_direct, decode_view, decode_view_hwc
from distill.synthetic import render_scene


def _pillow(jpeg: bytes) -> np.ndarray:
    """The loader's pixels before simplejpeg: Pillow's decode, converted to RGB."""
    with Image.open(io.BytesIO(jpeg)) as image:
        return np.array(image if image.mode == "RGB" else image.convert("RGB"))


def _jpeg(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def _sources(size: int) -> list[Image.Image]:
    rng = np.random.default_rng(size)
    scene = render_scene(size, (size, size))
    noisy = np.clip(np.asarray(scene) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    ramps = np.clip(np.cumsum(rng.normal(0, 6, (size, size, 3)), axis=0) + 128, 0, 255).astype(np.uint8)
    return [scene, Image.fromarray(noisy), Image.fromarray(ramps)]


@pytest.mark.parametrize("size", [64, 225])
def test_views_decode_to_pillows_pixels(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Colour and grey JPEGs as organize and other writers make them: every chroma subsampling,
    baseline and progressive, low to top quality, a size that is not a multiple of the MCU."""
    monkeypatch.setattr(ImageFile, "MAXBLOCK", 2**22)  # Pillow's buffer for progressive noise at q100
    for image, quality, subsampling, progressive, mode in itertools.product(
        _sources(size), (75, 95, 100), (0, 1, 2), (False, True), ("RGB", "L")
    ):
        jpeg = _jpeg(image.convert(mode), quality=quality, subsampling=subsampling, progressive=progressive)
        assert _decoded_direct(jpeg, size) is not None  # the fast path, not Pillow's
        decoded = decode_view_hwc(jpeg, size, "x").numpy()
        assert decoded.dtype == np.uint8 and decoded.flags.c_contiguous
        np.testing.assert_array_equal(decoded, _pillow(jpeg), err_msg=f"{mode} q{quality} s{subsampling}")
    jpeg = _jpeg(_sources(size)[0])
    assert np.array_equal(decode_view(jpeg, size, "x").numpy(), _pillow(jpeg).transpose(2, 0, 1))


def test_other_colour_spaces_and_damaged_views_go_to_pillow() -> None:
    """CMYK (which simplejpeg does not turn into RGB) decodes as Pillow converts it; a view cut
    short is refused as Pillow refuses it (libjpeg, left lenient, fills the rest with grey), and
    a view of the wrong size is named."""
    scene = render_scene(7, (64, 64))
    cmyk = _jpeg(scene.convert("CMYK"))
    np.testing.assert_array_equal(decode_view_hwc(cmyk, 64, "x").numpy(), _pillow(cmyk))
    whole = _jpeg(scene)
    for cut in (len(whole) // 2, 10):
        with pytest.raises(
            ValueError, match=r"shard\.tar key 'a': the stored JPEG does not decode \(.*(T|t)runcated"
        ):
            decode_view_hwc(whole[:-cut], 64, "shard.tar key 'a'")
    with pytest.raises(ValueError, match=r"image is \(64, 64\), the manifest's canonical size is 32"):
        decode_view_hwc(whole, 32, "x")
    with pytest.raises(ValueError, match="does not decode"):
        decode_view_hwc(b"not a jpeg", 64, "x")
