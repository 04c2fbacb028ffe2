"""cluster/kuberay/rayservice.yaml: a valid RayService whose Serve config is serve_config.gpu.yaml (less
the secrets, which the pods take from a Secret), on the Ray version Rapport pins."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import yaml
from ray.serve.schema import ServeDeploySchema

from tests.served import REPO

MANIFEST = REPO / "cluster" / "kuberay" / "rayservice.yaml"
SECRETS = ("DB_CONNECTION_URI", "AUTH_JWT_SECRET")


def pinned_ray() -> str:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = [d for d in dependencies if d.startswith("ray[")]
    return re.split("==", ray)[1].strip()


def containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return list(group["template"]["spec"]["containers"])


def test_the_rayservice_runs_the_gpu_serve_config_on_the_pinned_ray() -> None:
    service = yaml.safe_load(MANIFEST.read_text())
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert re.fullmatch(r"\d+[smh]", service["metadata"]["annotations"]["ray.io/initializing-timeout"])
    spec = service["spec"]
    assert spec["upgradeStrategy"]["type"] == "NewCluster"

    serve = yaml.safe_load(spec["serveConfigV2"])
    ServeDeploySchema.model_validate(serve)
    expected = yaml.safe_load((REPO / "serve_config.gpu.yaml").read_text())
    for name in SECRETS:
        del expected["applications"][0]["runtime_env"]["env_vars"][name]
    assert serve == expected, "serveConfigV2 is serve_config.gpu.yaml without its secrets"

    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == pinned_ray()
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "the head schedules no work"
    gpu_groups = [
        g
        for g in cluster["workerGroupSpecs"]
        if any("nvidia.com/gpu" in c["resources"]["limits"] for c in containers(g))
    ]
    assert gpu_groups and all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in gpu_groups)
    everyone = containers(head) + [c for g in cluster["workerGroupSpecs"] for c in containers(g)]
    assert len({c["image"] for c in everyone}) == 1, "one image, so every node runs the same Ray and Rapport"
    assert all({"secretRef": {"name": "rapport"}} in c["envFrom"] for c in everyone)
    assert any(
        m["mountPath"] == "/models" for g in gpu_groups for c in containers(g) for m in c["volumeMounts"]
    )
    groups = [head, *cluster["workerGroupSpecs"]]
    assert all(g["rayStartParams"]["metrics-export-port"] == "8080" for g in groups), "every node exports"
    assert all({"containerPort": 8080, "name": "metrics"} in c["ports"] for c in everyone), "and exposes it"
    assert all(g["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "rapport" for g in groups)


def test_the_image_recipe_builds_on_the_pinned_ray_with_the_gpu_extra() -> None:
    dockerfile = (REPO / "cluster" / "kuberay" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{pinned_ray()}-" in dockerfile
    assert '".[gpu]"' in dockerfile
