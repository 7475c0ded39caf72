"""The deployment files: Dockerfile, deploy/docker-compose.yml and deploy/docker-compose.cluster.yml.

This machine has a Docker client but no engine (and no compose plugin), so the stacks are checked
without running them: against the Compose Specification's JSON schema, and for consistency with the
repository (mounted files exist, commands are labtel's, the labtel configuration is valid and names
the cluster the ClickHouse configuration defines). `docker compose config` runs where it exists."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from labtel.cli import app
from labtel.collector.config import load_config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "dashboards"))
from macros import provisioning_value  # noqa: E402

DEPLOY = ROOT / "deploy"
SINGLE = DEPLOY / "docker-compose.yml"
CLUSTER = DEPLOY / "docker-compose.cluster.yml"
COMPOSE_SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
"""compose-spec/compose-spec `schema/compose-spec.json` (commit 170098ba07d9), Apache-2.0."""
IMAGE_CONFIG = "/etc/labtel/otel-config.yaml"
"""Where the image holds the repository's otel-config.yaml (the Dockerfile COPYs it there)."""
LABTEL_COMMANDS = {"serve", "collector", "api", "migrate"}


def _compose(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def _labtel_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if s.get("image", "").startswith("labtel")}


def _clickhouse_services(compose: dict[str, Any]) -> set[str]:
    return {name for name, s in compose["services"].items() if "clickhouse-server" in s.get("image", "")}


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def _service_env(service: dict[str, Any]) -> dict[str, str]:
    """The environment a service's process sees, with compose's own ${VAR:-default} resolved."""
    env = {key: str(value) for key, value in (service.get("environment") or {}).items()}
    return {key: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value) for key, value in env.items()}


def _image_env() -> dict[str, str]:
    """The environment the Dockerfile's ENV instructions give the labtel image."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in shlex.split(line.removeprefix("ENV ")))
    return env


def _config_of(service: dict[str, Any]) -> tuple[Path, dict[str, str]]:
    """The repository file a labtel service's --config is, and its environment (image and service)."""
    command = service["command"]
    inside = command[command.index("--config") + 1]
    mounted = {target: source for source, target in _bind_mounts(service)}
    env = {**_image_env(), **_service_env(service)}
    if inside in mounted:
        return (DEPLOY / mounted[inside]).resolve(), env
    assert inside == IMAGE_CONFIG, f"--config {inside} is neither mounted nor in the image"
    return ROOT / "otel-config.yaml", env


@pytest.mark.parametrize("path", [SINGLE, CLUSTER], ids=["single", "cluster"])
def test_compose_files_follow_the_compose_specification(path: Path) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(_compose(path))
    bad = {"services": {"x": {"image": "a", "ports": {"not": "a list"}}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(bad)


@pytest.mark.parametrize("path", [SINGLE, CLUSTER], ids=["single", "cluster"])
def test_compose_services_refer_to_what_exists(path: Path) -> None:
    compose = _compose(path)
    services = compose["services"]
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for source, _target in _bind_mounts(service):
            assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is not in the repository"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health, it has none"
    assert _clickhouse_services(compose)
    assert all("healthcheck" in services[name] for name in _clickhouse_services(compose))


@pytest.mark.parametrize("path", [SINGLE, CLUSTER], ids=["single", "cluster"])
def test_labtel_services_run_labtel_commands_with_a_valid_config_and_a_wal_each(path: Path) -> None:
    compose = _compose(path)
    labtel = _labtel_services(compose)
    commands = {
        command.name or (command.callback.__name__ if command.callback else "") for command in app.registered_commands
    }
    assert commands >= LABTEL_COMMANDS
    kinds = sorted(service["command"][0] for service in labtel.values())
    assert kinds == ["api", "collector", "collector"]
    wal_volumes = []
    for name, service in labtel.items():
        assert service["command"][0] in LABTEL_COMMANDS, name
        config_path, env = _config_of(service)
        config = load_config(config_path, environ=env)
        exporter = config.storage_exporter()
        order = exporter.failover_order()
        hosts = [urlparse(endpoint).hostname for endpoint in order]
        assert hosts[0] == urlparse(env["LABTEL_CLICKHOUSE_ENDPOINT"]).hostname, name
        assert sorted(hosts) == sorted(_clickhouse_services(compose)), (
            f"{name}: fails over to {hosts}"
        )  # each node once
        assert (
            exporter.username
            == compose["services"][next(iter(_clickhouse_services(compose)))]["environment"]["CLICKHOUSE_USER"]
        )
        if service["command"][0] == "collector":
            wal = env["LABTEL_WAL_DIR"]
            assert config.file_storage("file_storage").directory == wal
            volume = next(v.split(":")[0] for v in service["volumes"] if v.split(":")[1] == wal)
            wal_volumes.append(volume)
            receivers = config.receivers["otlp"].protocols
            assert receivers.grpc is not None
            assert receivers.grpc.endpoint.startswith("0.0.0.0:")
    assert len(set(wal_volumes)) == 2  # each collector its own write-ahead log


def test_the_cluster_stack_configures_the_cluster_labtel_names() -> None:
    compose = _compose(CLUSTER)
    services = compose["services"]
    tree = ET.parse(DEPLOY / "clickhouse" / "cluster" / "cluster.xml").getroot()
    clusters = list(tree.find("remote_servers") or [])
    assert [c.tag for c in clusters] == ["labtel"]
    shards = clusters[0].findall("shard")
    assert len(shards) == 2
    nodes = set()
    for number, shard in enumerate(shards, start=1):
        assert shard.findtext("internal_replication") == "true"  # Replicated tables replicate themselves
        replicas = shard.findall("replica")
        assert len(replicas) == 2
        for replica in replicas:
            host = replica.findtext("host") or ""
            env = _service_env(services[host])
            assert int(env["CLICKHOUSE_SHARD"]) == number, host
            assert env["CLICKHOUSE_REPLICA"] == host
            assert replica.find("password").get("from_env") == "CLICKHOUSE_PASSWORD"  # type: ignore[union-attr]
            assert (
                "./clickhouse/cluster/cluster.xml:/etc/clickhouse-server/config.d/cluster.xml:ro"
                in services[host]["volumes"]
            )
            nodes.add(host)
    assert nodes == _clickhouse_services(compose)
    macros = tree.find("macros")
    assert macros is not None
    assert {m.tag: m.get("from_env") for m in macros} == {"shard": "CLICKHOUSE_SHARD", "replica": "CLICKHOUSE_REPLICA"}
    keeper_node = tree.find("zookeeper/node")
    assert keeper_node is not None
    keeper = ET.parse(DEPLOY / "clickhouse" / "keeper" / "keeper.xml").getroot()
    assert keeper_node.findtext("host") == "keeper" and "keeper" in services  # noqa: PT018
    assert keeper_node.findtext("port") == keeper.findtext("keeper_server/tcp_port")
    assert keeper.findtext("keeper_server/raft_configuration/server/hostname") == "keeper"
    assert tree.findtext("distributed_ddl/path")
    for service in _labtel_services(compose).values():
        config_path, env = _config_of(service)
        exporter = load_config(config_path, environ=env).storage_exporter()
        topology = exporter.topology()
        assert topology.cluster == clusters[0].tag
        assert topology.replicated
        assert topology.distributed
        assert "{shard}" in topology.engine_params
        assert "{replica}" in topology.engine_params


@pytest.mark.parametrize("path", [SINGLE, CLUSTER], ids=["single", "cluster"])
def test_grafana_gets_labtels_provisioning_pointing_at_the_stacks_clickhouse(path: Path) -> None:
    compose = _compose(path)
    grafana = compose["services"]["grafana"]
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]
    mounts = {target: (DEPLOY / source).resolve() for source, target in _bind_mounts(grafana)}
    provisioning = ROOT / "dashboards" / "provisioning"
    assert mounts["/etc/grafana/provisioning/datasources"] == provisioning / "datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == provisioning / "dashboards"
    datasources = yaml.safe_load((provisioning / "datasources" / "labtel.yaml").read_text())["datasources"]
    env = _service_env(grafana)
    for datasource in datasources:
        # as Grafana reads it: $VAR / ${VAR} from Grafana's environment, no defaults
        data = {k: provisioning_value(v, env) for k, v in datasource["jsonData"].items() if isinstance(v, str)}
        assert data["host"] in _clickhouse_services(compose)
        assert int(data["port"]) == 8123
        clickhouse_env = compose["services"][data["host"]]["environment"]
        assert data["username"] == clickhouse_env["CLICKHOUSE_USER"]
        password = provisioning_value(datasource["secureJsonData"]["password"], env)
        assert password == _service_env(compose["services"][data["host"]])["CLICKHOUSE_PASSWORD"]
        assert password
    providers = yaml.safe_load((provisioning / "dashboards" / "labtel.yaml").read_text())["providers"]
    boards = mounts[providers[0]["options"]["path"]]
    assert boards == ROOT / "dashboards" / "json"
    assert list(boards.glob("*.json"))


def test_the_dockerfile_builds_one_labtel_image_run_as_a_user() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    joined = "\n".join(instructions).replace("\\\n", " ")
    assert instructions[0].startswith("FROM python:3.1")
    assert re.search(r"RUN pip install \"\.\[server\]\"", joined)
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users
    assert users[-1] not in ("root", "0")
    assert re.search(r"useradd .*--uid 10001 .*labtel", joined)
    exposed = {port for line in instructions if line.startswith("EXPOSE ") for port in line.split()[1:]}
    assert exposed == {"4317", "4318", "8000"}
    entrypoint = next(line for line in instructions if line.startswith("ENTRYPOINT "))
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["labtel"]
    cmd = next(line for line in instructions if line.startswith("CMD "))
    assert json.loads(cmd.removeprefix("CMD "))[0] in LABTEL_COMMANDS
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for line in instructions:
        if line.startswith("COPY "):
            *sources, _target = shlex.split(line)[1:]
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source not in ignored, f"{source} is copied but .dockerignore leaves it out"
    packages = re.findall(r'"labtel\.\w+" = "(\w+)"', (ROOT / "pyproject.toml").read_text())
    copied = {shlex.split(line)[1] for line in instructions if line.startswith("COPY ")}
    assert set(packages) <= copied  # every folder the package is built from
    assert f"COPY otel-config.yaml {IMAGE_CONFIG}" in instructions
    env = _image_env()
    assert env["LABTEL_CONFIG"] == IMAGE_CONFIG
    assert env["LABTEL_GRPC_ENDPOINT"] == "0.0.0.0:4317"
    assert env["LABTEL_HTTP_ENDPOINT"] == "0.0.0.0:4318"
    assert env["LABTEL_API_ENDPOINT"] == "0.0.0.0:8000"


def test_the_image_installs_every_package_data_file_as_a_regular_file() -> None:
    """The image is built from the folders the Dockerfile COPYs (not the repository): a symlink in
    them to a file outside them (collector/default-config.yaml was one, to ../otel-config.yaml)
    dangles there, so `pip install` left the file out of the package; a Windows checkout makes
    such a link a text file holding the target's name."""
    instructions = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    copied = [ROOT / source for line in instructions if line.startswith("COPY ") for source in shlex.split(line)[1:-1]]
    for tree in copied:
        for path in [tree, *tree.rglob("*")] if tree.is_dir() else [tree]:
            assert not path.is_symlink(), f"{path.relative_to(ROOT)} is a symlink: make it a file"
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, patterns in setuptools["package-data"].items():
        parent, _, tail = package.rpartition(".")
        dirs = setuptools["package-dir"]
        folder = ROOT / (dirs[package] if package in dirs else f"{dirs[parent]}/{tail}")
        assert any(folder == tree or tree in folder.parents for tree in copied), f"{package} is not copied"
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"{package}: no file matches {pattern}"
    default = ROOT / "collector" / "default-config.yaml"
    assert default.read_bytes() == (ROOT / "otel-config.yaml").read_bytes(), (
        "cp otel-config.yaml collector/default-config.yaml"
    )


def _docker_compose() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.parametrize("path", [SINGLE, CLUSTER], ids=["single", "cluster"])
def test_docker_compose_accepts_the_files(path: Path) -> None:
    compose = _docker_compose()
    if compose is None:
        pytest.skip("no `docker compose` here (the Docker client has no compose plugin): checked by schema above")
    done = subprocess.run([*compose, "-f", str(path), "config", "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
