"""Media in and out: image modes, folders, videos with PyAV, and clear errors for bad input."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from distill.decode.media import MediaError, iter_clips, read_image, write_mp4
from distill.geometry import canonical_view
from distill.synthetic import render_scene, write_video

SIZE = 32


def _only(path: Path) -> torch.Tensor:
    clips = list(iter_clips(path, SIZE))
    assert len(clips) == 1 and clips[0].fps is None
    return clips[0].frames


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "YCbCr", "1"])
def test_convertible_modes_become_rgb_canonical_views(tmp_path: Path, mode: str) -> None:
    rgb = render_scene(3, (48, 40))
    path = tmp_path / "image.tiff"  # TIFF stores every one of these modes as is
    rgb.convert(mode).save(path)
    frames = _only(path)
    assert frames.shape == (1, 3, SIZE, SIZE) and frames.dtype == torch.uint8
    expected = canonical_view(Image.open(path).convert("RGB"), SIZE)
    assert torch.equal(frames[0].permute(1, 2, 0), torch.from_numpy(np.array(expected)))


def test_transparent_pixels_become_white_as_in_the_dataset(tmp_path: Path) -> None:
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:20, :, 3] = 255  # top half opaque red-ish, bottom half fully transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = np.array(read_image(path))
    assert tuple(image[5, 5]) == (200, 0, 0) and tuple(image[35, 5]) == (255, 255, 255)


def test_sixteen_bit_grey_is_rescaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]] * 4, dtype=np.uint16)
    path = tmp_path / "depth16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = np.array(read_image(path))
    assert image.shape == (4, 4, 3)
    assert image[0, :, 0].tolist() == [0, 1, 128, 255]


def test_float_image_is_rejected_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "float.tiff"
    Image.fromarray(np.random.default_rng(0).random((8, 8), dtype=np.float32)).save(path)
    with pytest.raises(MediaError, match=r"float\.tiff: 32-bit float image.*save it as 8- or 16-bit"):
        read_image(path)


def test_missing_unreadable_and_unsupported_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothere\.png: no such file"):
        list(iter_clips(tmp_path / "nothere.png", SIZE))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(MediaError, match=r"broken\.jpg: not an image Pillow can identify"):
        list(iter_clips(broken, SIZE))
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(MediaError, match=r"notes\.txt: unsupported file type '\.txt'"):
        list(iter_clips(notes, SIZE))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MediaError, match="holds no images"):
        list(iter_clips(empty, SIZE))


def test_truncated_image_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    render_scene(0, (64, 64)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(MediaError, match=r"cut\.png: .*truncated or corrupt"):
        read_image(path)


def test_folder_is_sorted_recursive_and_named_by_relative_path(tmp_path: Path) -> None:
    for name in ("b/2.png", "a.png", "b/1.jpg", "c.txt", "d.png", "d.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".txt"):
            (tmp_path / name).write_text("ignored: not an image")
        else:
            render_scene(len(name), (40, 40)).save(tmp_path / name)
    clips = list(iter_clips(tmp_path, SIZE))
    assert [c.name for c in clips] == ["a", "b__1", "b__2", "d_jpg", "d_png"]
    assert [c.source.name for c in clips] == ["a.png", "1.jpg", "2.png", "d.jpg", "d.png"]


def test_video_frames_and_fps(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4", frames=7, size=(48, 40), fps=12)
    (clip,) = list(iter_clips(path, SIZE))
    assert clip.frames.shape == (7, 3, SIZE, SIZE) and clip.fps == Fraction(12)
    assert not torch.equal(clip.frames[0], clip.frames[6])  # the shapes move


def test_bad_videos(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 50)
    with pytest.raises(MediaError, match=r"garbage\.mp4: unreadable video"):
        list(iter_clips(garbage, SIZE))
    empty = tmp_path / "empty.avi"  # a valid container whose video stream has zero frames
    with av.open(str(empty), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
    with pytest.raises(MediaError, match=r"empty\.avi: the video has zero frames"):
        list(iter_clips(empty, SIZE))
    no_stream = tmp_path / "nostream.mp4"  # the header never lists the stream: no frame was muxed
    with av.open(str(no_stream), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
    with pytest.raises(MediaError, match=r"nostream\.mp4: the file has no video stream"):
        list(iter_clips(no_stream, SIZE))
    truncated = write_video(tmp_path / "truncated.mp4", frames=6, size=(32, 32))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with pytest.raises(MediaError, match=r"truncated\.mp4: unreadable video"):
        list(iter_clips(truncated, SIZE))


@pytest.mark.parametrize(("size", "fps"), [((64, 48), Fraction(30000, 1001)), ((33, 21), Fraction(5))])
def test_write_mp4_round_trip(tmp_path: Path, size: tuple[int, int], fps: Fraction) -> None:
    frames = [render_scene(i, size) for i in range(5)]
    path = write_mp4(frames, tmp_path / "out.mp4", fps)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.average_rate == fps
    even = (size[0] + size[0] % 2, size[1] + size[1] % 2)
    assert len(decoded) == 5 and all(d.shape == (even[1], even[0], 3) for d in decoded)
    error = np.abs(decoded[2][: size[1], : size[0]].astype(int) - np.array(frames[2]).astype(int)).mean()
    assert error < 12  # lossy H.264 + chroma subsampling, but the same picture
    assert not list(tmp_path.glob(".*.tmp"))
