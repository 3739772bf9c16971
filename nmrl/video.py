"""An episode as an MP4 file, also on a machine without a display (``--capture-video``).

MuJoCo's offscreen renderer draws each frame (``render_mode="rgb_array"``) through EGL or OSMesa,
which Mesa provides on a CPU-only machine; imageio's ffmpeg (the ``video`` extra:
``pip install 'nmrl[video]'``) encodes them as H.264. Frames stream to the encoder, so a long
episode never sits in memory, and the finished file is moved into place atomically: a crash or a
refused frame leaves no half-written video under the final name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from nmrl.errors import NmrlError
from nmrl.files import atomic_write_bytes

logger = logging.getLogger(__name__)

RENDER_BACKENDS = ("glfw", "egl", "osmesa")
"""MUJOCO_GL values MuJoCo can draw with (glfw needs a display; egl and osmesa do not)."""

HEADLESS_PACKAGES = (
    "Debian: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri (EGL) or libosmesa6 (MUJOCO_GL=osmesa)"
)


def choose_render_backend() -> str:
    """Set MUJOCO_GL before the first frame and return it: EGL when it is unset and there is no
    display (MuJoCo's first choice, a GLFW window, cannot open there); a backend the user chose is kept.
    Raises :class:`NmrlError` for a value that switches rendering off (``disable``)."""
    chosen = os.environ.get("MUJOCO_GL", "")
    if not chosen:
        chosen = "glfw" if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") else "egl"
        os.environ["MUJOCO_GL"] = chosen
    if chosen not in RENDER_BACKENDS:
        raise NmrlError(
            f"--capture-video: MUJOCO_GL={chosen} switches MuJoCo's renderer off; "
            f"unset it or set one of {', '.join(RENDER_BACKENDS)}"
        )
    return chosen


def _writer_module() -> Any:
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the encoder imageio's ffmpeg plugin runs)
    except ImportError:
        raise NmrlError("--capture-video needs imageio and imageio-ffmpeg: pip install 'nmrl[video]'") from None
    return imageio


class EpisodeVideo:
    """Frames of one episode, streamed to an MP4 at ``path`` (written when :meth:`close` is called
    with ``keep=True``). Use as a context manager: leaving the block by an exception keeps nothing."""

    def __init__(self, path: Path, fps: int, env_id: str) -> None:
        self.path, self.env_id, self.frames = Path(path), env_id, 0
        imageio = _writer_module()
        self._scratch = tempfile.TemporaryDirectory(prefix="nmrl-video-")
        self._tmp = Path(self._scratch.name) / "episode.mp4"
        # quality 8 of 10: a 480x480 MuJoCo frame costs ~1-3 KB; macro_block_size 16 keeps sizes H.264 takes
        self._writer = imageio.get_writer(self._tmp, fps=max(1, fps), codec="libx264", quality=8, macro_block_size=16)

    def add(self, env: Any) -> None:
        """Render ``env``'s current state and append it as the next frame."""
        try:
            frame = env.render()
        except Exception as error:  # EGL/OSMesa missing or refusing: MuJoCo and PyOpenGL raise many types
            detail = " ".join(str(error).split())[:300] or type(error).__name__
            raise NmrlError(
                f"cannot render {self.env_id} with MUJOCO_GL={os.environ.get('MUJOCO_GL', '')} "
                f"({type(error).__name__}: {detail}); {HEADLESS_PACKAGES}"
            ) from None
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] not in (3, 4):
            raise NmrlError(f"{self.env_id} renders no RGB frame (render_mode='rgb_array' gave {type(frame).__name__})")
        self._writer.append_data(np.ascontiguousarray(frame[:, :, :3], dtype=np.uint8))
        self.frames += 1

    def close(self, keep: bool) -> None:
        """Finish encoding; move the file into place when ``keep`` (and at least one frame was drawn)."""
        try:
            self._writer.close()
            if keep and self.frames:
                atomic_write_bytes(self.path, self._tmp.read_bytes())
                logger.info("video of %d frames written to %s", self.frames, self.path)
        finally:
            self._scratch.cleanup()

    def __enter__(self) -> EpisodeVideo:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.close(keep=True)
            return
        with contextlib.suppress(Exception):  # the episode's own error is the one to report
            self.close(keep=False)
