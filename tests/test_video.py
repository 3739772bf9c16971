"""--capture-video: the first evaluation episode as an MP4, drawn headless by MuJoCo (EGL from Mesa on
this CPU-only machine; .ci/run installs it) and encoded by imageio's ffmpeg."""

import json
import shutil
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from test_reliability import one_line_error

from nmrl.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "cheetah_fp16_run"
SHORT = json.dumps({"max_episode_steps": 30})  # gymnasium.make's own setting: a 30-step episode


@pytest.fixture
def run_copy(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "run")
    # the fixture's step-3000 checkpoint is also its last (README.md there): deploy eval loads last.pt
    shutil.copy(tmp_path / "run" / "checkpoints" / "best.pt", tmp_path / "run" / "checkpoints" / "last.pt")
    return tmp_path / "run"


def _capture_one_episode(run: Path) -> list[str]:
    return ["eval", str(run), "--checkpoint", "best", "--episodes", "1", "--env-kwargs", SHORT, "--capture-video"]


def _frames(path: Path) -> np.ndarray:
    return np.stack(list(imageio.get_reader(path, format="FFMPEG").iter_data()))  # its len() is inf


def _assert_episode_video(path: Path, steps: int) -> None:
    frames = _frames(path)
    assert frames.shape[0] == steps + 1  # the reset state, then one frame per step
    assert frames.shape[-1] == 3 and frames.std() > 10  # not all one colour
    assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean() > 0.5  # the cheetah moved


@pytest.mark.parametrize("verb", ["eval", "deploy eval"])
def test_capture_video_writes_the_first_episode_as_an_mp4(run_copy, capsys, monkeypatch, verb):
    monkeypatch.setenv("MUJOCO_GL", "egl")  # conftest switches rendering off for every other test
    args = (
        ["eval", str(run_copy), "--checkpoint", "best"]
        if verb == "eval"
        else ["deploy", "eval", str(run_copy), "--backend", "torch"]
    )
    assert main([*args, "--episodes", "2", "--seed", "3", "--env-kwargs", SHORT, "--capture-video"]) == 0
    out = capsys.readouterr().out
    expected = run_copy / "videos" / ("best-seed3.mp4" if verb == "eval" else "torch-seed3.mp4")
    assert f"video of episode 1 (seed 3, 31 frames): {expected}" in out
    assert [p.name for p in (run_copy / "videos").iterdir()] == [expected.name]  # episode 1 only, no temp file
    _assert_episode_video(expected, 30)


def test_a_renderer_switched_off_is_one_line_and_writes_nothing(run_copy, capsys, monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "disable")
    err = one_line_error(capsys, *_capture_one_episode(run_copy))
    assert "MUJOCO_GL=disable switches MuJoCo's renderer off" in err
    assert not (run_copy / "videos").exists()


def test_without_the_video_extra_capture_is_one_line_naming_it(run_copy, capsys, monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if not installed
    err = one_line_error(capsys, *_capture_one_episode(run_copy))
    assert "pip install 'nmrl[video]'" in err
    assert not (run_copy / "videos").exists()


def test_an_episode_that_fails_midway_leaves_no_video(run_copy, capsys, monkeypatch):
    """A crash while recording (here: a frame the renderer cannot draw) keeps nothing under the name."""
    monkeypatch.setenv("MUJOCO_GL", "egl")
    calls = {"n": 0}
    from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

    real_render = MujocoEnv.render

    def render_then_fail(self):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("the GL context was lost")
        return real_render(self)

    monkeypatch.setattr(MujocoEnv, "render", render_then_fail)
    err = one_line_error(capsys, *_capture_one_episode(run_copy))
    assert "cannot render HalfCheetah-v5 with MUJOCO_GL=egl (RuntimeError: the GL context was lost)" in err
    assert not list((run_copy / "videos").glob("*"))
