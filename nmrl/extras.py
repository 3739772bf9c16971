"""Which optional part of nmrl (a pip extra) brings a module, read from nmrl's own package metadata.

The extras are defined once, in ``pyproject.toml`` (``[project.optional-dependencies]``: ``deploy``,
``plots``, ``train``, ...); an installed nmrl carries them as lines such as
``Requires-Dist: torch>=2.4; extra == "train"``. A verb that imports a module its install left out
is answered with the extra to install (:func:`install_hint`), not an ImportError traceback.
"""

from __future__ import annotations

import re
from importlib import metadata

# Import names whose distribution has another name, or that come with another distribution's extra
# (``gymnasium[mujoco]`` brings ``mujoco``).
_DISTRIBUTION_OF = {"mujoco": "gymnasium", "stable_baselines3": "stable-baselines3"}
# Where a distribution needs more than ``pip install 'nmrl[extra]'`` to be the right build.
_NOTES = {
    "torch": " (the CPU build anywhere: first pip install torch --index-url https://download.pytorch.org/whl/cpu;"
    " README, Install)",
}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def extra_of(distribution: str) -> str | None:
    """The first extra of the installed nmrl that requires ``distribution`` by name, or None (nmrl
    not installed, e.g. run from a source tree, or no extra lists it)."""
    try:
        requirements = metadata.requires("nmrl") or []
    except metadata.PackageNotFoundError:
        return None
    wanted = _canonical(distribution)
    for requirement in requirements:
        name = _canonical(re.split(r"[\s\[<>=!~;(@]", requirement.strip(), maxsplit=1)[0])
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        if name == wanted and extra:
            return extra.group(1)
    return None


def install_hint(module: str | None) -> str | None:
    """One line saying which extra brings ``module`` (``torch``, ``matplotlib.pyplot``), or None when
    no extra of nmrl lists it: then its absence is not a matter of which extras were installed, and
    the caller lets the ImportError through."""
    if not module:
        return None
    top = module.partition(".")[0]
    distribution = _DISTRIBUTION_OF.get(top, top)
    extra = extra_of(distribution)
    if extra is None:
        return None
    note = _NOTES.get(distribution, "")
    return f"the Python module {top!r} is not installed: pip install 'nmrl[{extra}]'{note}"
