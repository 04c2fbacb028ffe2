"""The install's pins: every Ray requirement (the base, the dev and GPU extras) names one Ray version."""

from __future__ import annotations

import re
import tomllib

from tests.served import REPO


def test_every_ray_requirement_pins_the_same_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    ray = [r for r in requirements if re.match(r"ray(\[|[=<>~ ]|$)", r)]
    assert {r.split("[")[1].split("]")[0] for r in ray} >= {"serve", "llm", "data"}
    versions = {re.search(r"==\s*([\w.]+)", r).group(1) if "==" in r else None for r in ray}  # type: ignore[union-attr]
    assert len(versions) == 1 and None not in versions, f"Ray requirements disagree: {ray}"
    assert not any(r.startswith("vllm") for r in requirements), (
        "vLLM comes with ray[llm], at the version Ray supports"
    )
