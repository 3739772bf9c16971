"""Every `nmrl train` / `eval` / `compare` command line in the README and docs/ still parses, and
means what it says (flags of option groups land in their group)."""

import functools
import json
import re
import shlex
from pathlib import Path

import pytest
import tyro

import nmrl.train.commands as commands
import nmrl.train.compare as compare_module
import nmrl.train.loop as loop
import nmrl.train.run as run
from nmrl.cli import DEFAULTS_FROM_ARGS
from nmrl.train.commands import evaluate, train
from nmrl.train.compare import compare
from nmrl.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
VERBS = {"train": train, "eval": evaluate, "compare": compare}


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, verb, args) of each nmrl train/eval/compare line in fenced code blocks."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                for match in re.finditer(r"nmrl (train|eval|compare)(?=\s|$)(.*)", line):  # not "nmrl train: error"
                    verb, rest = match.groups()
                    rest = re.split(r"\s#|->|&&", rest)[0].replace("<run>", "some_run")
                    if "..." in rest or "--help" in rest:
                        continue
                    found.append((f"{doc.name}: {match.group(0).strip()}", verb, shlex.split(rest)))
    return found


COMMANDS = documented_commands()


def test_the_docs_hold_commands_of_each_verb():
    assert {verb for _, verb, _ in COMMANDS} == set(VERBS)
    assert len(COMMANDS) >= 15


class Parsed(Exception):
    """Raised by the stubs in place of the work: the command line parsed."""


@pytest.mark.parametrize(("where", "verb", "args"), COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_documented_command_parses(where, verb, args, monkeypatch, tmp_path):
    seen = {}
    function = VERBS[verb]
    saved = None
    if "--config" in args:  # a saved run to repeat: read first, as nmrl.cli does
        monkeypatch.chdir(tmp_path)
        saved = TrainConfig(env="InvertedPendulum-v5", hidden=(8, 8), seed=5)
        path = Path(args[args.index("--config") + 1])
        path.parent.mkdir(parents=True)
        saved.save(path)
        function = functools.partial(function, **getattr(commands, DEFAULTS_FROM_ARGS[verb])(args))

    def stop(name):
        def stub(*a, **kw):
            seen[name] = (a, kw)
            raise Parsed

        return stub

    monkeypatch.setattr(loop, "train", stop("train"))
    monkeypatch.setattr(loop, "resume", stop("resume"))
    monkeypatch.setattr(run, "load_trained_actor", stop("eval"))
    monkeypatch.setattr(compare_module, "run_comparison", stop("compare"))
    with pytest.raises(Parsed):
        tyro.cli(function, args=args)
    assert seen, where
    if "train" in seen:  # every flag's value is in the config
        config = seen["train"][0][0]
        flags: dict[str, list[str]] = {}
        for token in args:
            if token.startswith("--"):
                values = flags.setdefault(token[2:].replace("-", "_"), [])
            else:
                values.append(token)
        if saved is not None:  # the file's settings, those of the flags given beside it aside
            assert config.hidden == saved.hidden and config.env == saved.env, where
            flags.pop("config")
        tracking = seen["train"][0][1] if len(seen["train"][0]) > 1 else None
        for name, values in flags.items():
            # --track and the W&B flags are not settings of the run but of where it is watched
            value = getattr(tracking, name) if hasattr(tracking, name) else config.setting(name)
            if isinstance(value, dict):  # --env-kwargs: a JSON object
                assert value == json.loads(" ".join(values)), (where, name)
                continue
            shown = " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
            assert shown == (" ".join(values) if values else "True"), (where, name)


def test_group_flags_land_in_their_groups(monkeypatch):
    seen = []
    monkeypatch.setattr(loop, "train", lambda config, tracking=None: seen.append(config) or Path("runs/x"))
    args = "--algo sac --sparsity 0.9 --topology set --optimizer masked-adam --policy-delay 3 --alpha 0.5"
    tyro.cli(train, args=[*args.split(), "--no-autotune-alpha", "--mask-interval", "4", "--semi-structured"])
    config = seen[0]
    assert config.unstructured.topology == "set" and config.unstructured.optimizer == "masked-adam"
    assert config.td3.policy_delay == 3 and config.sac.alpha == 0.5 and not config.sac.autotune_alpha
    assert config.nm.mask_interval == 4 and config.fast_path.semi_structured
    assert config == TrainConfig.from_settings(
        algo="sac",
        sparsity="0.9",
        topology="set",
        optimizer="masked-adam",
        policy_delay=3,
        alpha=0.5,
        autotune_alpha=False,
        mask_interval=4,
        semi_structured=True,
    )
