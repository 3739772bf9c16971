"""Policies in C from the command line: `nmrl export --format c` verifies the compiled C before it
writes it; `nmrl deploy build/eval --backend c` and `nmrl bench --backends c` run it; a missing
compiler is one line and rc 1."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from deploy_support import TINY_RUN_GROUP, exported_run

from nmrl.cli import main
from nmrl.deploy.c_backend import load_c_policy
from nmrl.deploy.ort_backend import OrtPolicy
from nmrl.export.observations import env_observations

pytestmark = pytest.mark.xdist_group(TINY_RUN_GROUP)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_run(tmp_path_factory)


def test_export_run_to_c_verifies_and_writes_a_compilable_policy(run_dir, tmp_path, capsys) -> None:
    out_c = tmp_path / "hop.c"
    assert main(["export", str(run_dir), "--format", "c", "--c-prefix", "hop", "--output", str(out_c)]) == 0
    printed = capsys.readouterr().out
    # The compiled C itself was compared with torch on the policy's states and closed-loop.
    assert "parity (C (actor.so, -O3 -march=native, 1 thread) vs PyTorch" in printed
    assert "closed loop" in printed and "C layer 1: 64 -> 64, kernel nm 2:4" in printed
    assert f"wrote {out_c} and {tmp_path / 'hop.h'}" in printed
    header = (tmp_path / "hop.h").read_text()
    assert "void hop_act(const float *obs, float *action);" in header and '"Hopper-v5"' in header
    # What was written is what was verified: it compiles clean on its own and acts as the ONNX export.
    so = tmp_path / "hop.so"
    subprocess.run(
        ["gcc", "-std=c99", "-Wall", "-Werror", "-O2", "-shared", "-fPIC", str(out_c), "-o", str(so), "-lm"], check=True
    )
    from nmrl.deploy.c_backend import CPolicy

    obs = env_observations("Hopper-v5", 64, seed=5)
    with CPolicy(so, 11, 3, "hop") as c_policy, OrtPolicy(run_dir / "actor.onnx") as onnx_policy:
        np.testing.assert_allclose(c_policy.act(obs), onnx_policy.act(obs), atol=1e-5)
    assert main(["export", str(run_dir), "--format", "c", "--dtype", "fp16"]) == 1
    assert "--format c writes fp32 and int8 C" in capsys.readouterr().err


def test_int8_export_to_c_from_the_run_and_from_its_int8_file(run_dir, tmp_path, capsys) -> None:
    """int8 C is verified as every int8 export is (against torch, int8 tolerance, closed loop), and the
    int8 ONNX file's C against that file under ONNX Runtime; both are the same C of the same graph."""
    from nmrl.export.verify import load_onnx

    int8_onnx, from_run = tmp_path / "actor.int8.onnx", tmp_path / "run.int8.c"
    common = ["--dtype", "int8", "--int8-first-layer", "int8", "--check-episodes", "1"]
    assert main(["export", str(run_dir), *common, "--output", str(int8_onnx)]) == 0
    assert main(["export", str(run_dir), *common, "--format", "c", "--output", str(from_run)]) == 0
    printed = capsys.readouterr().out
    assert "C layer 1: 64 -> 64, kernel nm 2:4, int8" in printed and "closed loop" in printed
    assert main(["export", str(int8_onnx), "--format", "c", "--check-episodes", "1"]) == 0
    assert "vs ONNX Runtime CPU, 1 thread)" in capsys.readouterr().out
    header = (tmp_path / "actor.int8.h").read_text()
    assert '#define NMRL_POLICY_DTYPE "int8"' in header and '"NM_2_4_INT8"' in header
    from nmrl.deploy.c_backend import CPolicy, compile_c

    obs = env_observations("Hopper-v5", 64, seed=7)
    with CPolicy(compile_c([tmp_path / "actor.int8.c"], tmp_path / "int8.so"), 11, 3) as c_policy:
        got = c_policy.act(obs)
    with OrtPolicy(load_onnx(int8_onnx).SerializeToString()) as onnx_policy:
        # ONNX Runtime's fused integer GEMMs round a few activations one level apart (tests/test_c_int8.py)
        assert (np.abs(got - onnx_policy.act(obs)) <= 1e-5).mean() >= 0.9


def test_export_refuses_c_that_does_not_act_as_the_policy_and_writes_nothing(run_dir, tmp_path, monkeypatch, capsys):
    from nmrl.export import pipeline

    real = pipeline.generate_c

    def off_by_half(*args, **kwargs):
        """The real generator, with the action head's first bias moved by 0.5 in the C text."""
        source = real(*args, **kwargs)
        text = re.sub(r"(static const float L2_b\[\d+\] = \{\n)([^,]+)", r"\g<1>0.5f", source.source, count=1)
        assert text != source.source
        return dataclasses.replace(source, source=text)

    monkeypatch.setattr(pipeline, "generate_c", off_by_half)
    assert main(["export", str(run_dir), "--format", "c", "--output", str(tmp_path / "bad.c")]) == 1
    err = capsys.readouterr().err
    assert "refusing to export: the file does not act as the torch policy" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_c_of_an_onnx_file_deploy_build_eval_and_bench(run_dir, tmp_path, capsys) -> None:
    onnx_path = tmp_path / "actor.onnx"
    shutil.copyfile(run_dir / "actor.onnx", onnx_path)
    assert main(["export", str(onnx_path), "--format", "c", "--check-episodes", "1"]) == 0
    printed = capsys.readouterr().out
    assert "vs ONNX Runtime CPU, 1 thread)" in printed and f"wrote {tmp_path / 'actor.c'}" in printed
    assert main(["export", str(onnx_path), "--format", "onnx"]) == 1
    assert "exports only to --format c" in capsys.readouterr().err

    assert main(["deploy", "build", str(onnx_path), "--backend", "c"]) == 0
    assert f"built {tmp_path / 'actor.so'} with -O3 -march=native" in capsys.readouterr().out
    assert main(["deploy", "eval", str(onnx_path), "--backend", "c", "--episodes", "1"]) == 0
    assert "on C (actor.so, 1 thread)" in capsys.readouterr().out
    with load_c_policy(onnx_path) as policy, OrtPolicy(onnx_path) as reference:
        obs = env_observations("Hopper-v5", 32, seed=6)
        np.testing.assert_allclose(policy.act(obs), reference.act(obs), atol=1e-5)

    out = tmp_path / "bench"
    args = ["bench", str(onnx_path), "--backends", "c,ort", "--batch", "1", "--calls", "5", "--warmup", "1"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if re.search(r"│ c +│", line)]
    assert len(rows) == 1, printed  # the actor (its library built above) and its dense twin (built by bench)
    assert "skip the pruned weights" in " ".join(printed.split())


def test_user_c_files_are_never_overwritten(run_dir, tmp_path, capsys) -> None:
    mine = tmp_path / "actor.c"
    mine.write_text("int main(void) { return 0; }\n")
    assert main(["export", str(run_dir), "--format", "c", "--output", str(mine)]) == 1
    assert "was not generated by nmrl" in capsys.readouterr().err
    assert mine.read_text() == "int main(void) { return 0; }\n"


def test_no_compiler_is_one_line_and_rc_1(run_dir, tmp_path, monkeypatch, capsys) -> None:
    onnx_path = tmp_path / "actor.onnx"
    shutil.copyfile(run_dir / "actor.onnx", onnx_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CC", raising=False)
    for args in (
        ["export", str(onnx_path), "--format", "c"],
        ["export", str(run_dir), "--format", "c", "--output", str(tmp_path / "run.c")],
        ["deploy", "build", str(onnx_path), "--backend", "c"],
    ):
        assert main(args) == 1, args
        err = capsys.readouterr().err.strip()
        assert "no C compiler 'cc' found: install one" in err and len(err.splitlines()) == 1, (args, err)
    assert main(["bench", str(onnx_path), "--backends", "c", "--batch", "1", "--out", str(tmp_path / "bench")]) == 1
    captured = capsys.readouterr()
    assert "skipping backend c: no C compiler 'cc' found" in captured.out
    assert captured.err.strip().endswith("none of the requested backends can run here")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["actor.onnx"]
