"""docker/: what can be checked without a Docker engine.

No engine runs on these machines, so the compose file is checked for what breaks a deployment
silently: a JOKKO_* variable the app does not read (a typo is ignored by pydantic-settings at
top level, so the process would start on a default), a router that cannot scale, a service
that starts before what it needs, a floating image tag, an entrypoint that does not exist.
Where the docker client has the compose plugin, ``docker compose config`` validates the file
against the Compose specification too (decided once, at collection).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from services.cli import app
from services.reconcile_runs import reconcile_dir
from services.settings import InvalidSettings, Settings, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

OUTSIDE_SETTINGS = {"JOKKO_RECONCILE_DIR"}
"""Read with os.environ by services.reconcile_runs.reconcile_dir (checked below by calling it)."""

SCALABLE = ("router", "relay")


def _compose_cli() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False
    )
    return probe.returncode == 0


COMPOSE_CLI = _compose_cli()

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation for the forms used in compose.yaml: $$, $NAME, ${NAME},
    ${NAME:-default}, ${NAME-default}."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        expr = m.group("braced") if m.group("braced") is not None else m.group("plain")
        name, op, default = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:-|-)?(.*)", expr).groups()  # type: ignore[union-attr]
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        assert not default, f"unsupported interpolation ${{{expr}}}"
        return env.get(name, "")

    return _VAR.sub(one, value)


def _resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_resolve(n, env) for n in node]
    if isinstance(node, dict):
        return {k: _resolve(v, env) for k, v in node.items()}
    return node


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    resolved: dict[str, Any] = _resolve(raw, env or {})
    return resolved


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def jokko_services() -> dict[str, dict[str, Any]]:
    return {
        name: s for name, s in services().items() if str(s.get("image", "")).startswith("jokko:")
    }


def dockerfile_env() -> dict[str, str]:
    """The ENV of the final stage (``ENV A=1 \\`` continuation lines joined)."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    final = text.split("\nFROM ")[-1]
    env: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def entrypoint_env(service: dict[str, Any]) -> dict[str, str]:
    """Variables a ``sh -c 'NAME=... exec jokko ...'`` entrypoint sets, with a sample value."""
    entrypoint = service.get("entrypoint") or []
    if entrypoint[:2] != ["sh", "-c"]:
        return {}
    return {name: "sample-hostname" for name in re.findall(r"\b(JOKKO_[A-Z0-9_]+)=", entrypoint[2])}


def environment_of(name: str, service: dict[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in dockerfile_env().items() if k.startswith("JOKKO_")}
    env.update({k: str(v) for k, v in (service.get("environment") or {}).items()})
    env.update(entrypoint_env(service))
    return env


def settings_kwargs(env: Mapping[str, str]) -> dict[str, Any]:
    """JOKKO_CSS__MODE=http -> {"css": {"mode": "http"}}, as pydantic-settings nests them."""
    kwargs: dict[str, Any] = {}
    for name, value in env.items():
        if name in OUTSIDE_SETTINGS:
            continue
        assert name.startswith("JOKKO_"), name
        key = name.removeprefix("JOKKO_").lower()
        outer, sep, inner = key.partition("__")
        if sep:
            kwargs.setdefault(outer, {})[inner] = value
        else:
            kwargs[key] = value
    return kwargs


def validate(env: Mapping[str, str]) -> Settings:
    """As init arguments, so extra="forbid" refuses a name no field has (from the environment a
    top-level unknown JOKKO_* would be ignored)."""
    return Settings(**settings_kwargs(env))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("JOKKO_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_jokko_services_are_api_router_relay_and_init() -> None:
    assert set(jokko_services()) == {"init", "api", "router", "relay"}


@pytest.mark.parametrize("name", ["init", "api", "router", "relay"])
def test_every_jokko_variable_is_a_setting_the_app_reads(
    name: str, clean_env: pytest.MonkeyPatch
) -> None:
    env = environment_of(name, jokko_services()[name])
    assert env["JOKKO_KAFKA_BOOTSTRAP"] == "kafka:9092"
    from_kwargs = validate(env)
    # The way the process really reads them: from its environment.
    for key, value in env.items():
        clean_env.setenv(key, value)
    from_env = load_settings()
    assert from_env == from_kwargs
    assert from_env.database_url.startswith("postgresql+psycopg://jokko:jokko@postgres:5432/")
    if "JOKKO_RECONCILE_DIR" in env:
        assert reconcile_dir() == Path(env["JOKKO_RECONCILE_DIR"])


def test_a_misspelt_variable_would_be_caught(clean_env: pytest.MonkeyPatch) -> None:
    env = environment_of("relay", jokko_services()["relay"])
    for typo in ({"JOKKO_RELAY_BATCHSIZE": "10"}, {"JOKKO_CSS__MODEE": "http"}):
        with pytest.raises(ValueError, match="Extra inputs are not permitted"):
            validate({**env, **typo})
    with pytest.raises(ValueError, match="mode http needs url"):
        validate({**env, "JOKKO_CSS__MODE": "http"})


def test_site_values_come_from_the_shell_and_are_validated(clean_env: pytest.MonkeyPatch) -> None:
    env = compose({"JOKKO_CANONICAL_PARTITIONS": "24", "POSTGRES_PASSWORD": "s3cret"})
    relay = env["services"]["relay"]
    settings = validate(environment_of("relay", relay))
    assert settings.canonical_partitions == 24
    assert "jokko:s3cret@postgres" in settings.database_url
    assert env["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    bad = compose({"JOKKO_CSS__MODE": "carrier-pigeon"})["services"]["relay"]
    with pytest.raises(InvalidSettings, match="JOKKO_CSS_MODE"):
        load_settings(**settings_kwargs(environment_of("relay", bad)))


@pytest.mark.parametrize("name", SCALABLE)
def test_scalable_services_have_no_fixed_name_or_port(name: str) -> None:
    service = services()[name]
    for key in ("container_name", "ports", "hostname"):
        assert key not in service, f"{name}.{key} prevents --scale {name}=3"


def test_router_static_membership_uses_the_container_hostname() -> None:
    entrypoint = services()["router"]["entrypoint"]
    assert entrypoint[:2] == ["sh", "-c"]
    # After compose's interpolation ($$ -> $) the shell sees $HOSTNAME, which Docker sets per
    # container (/etc/hostname holds the same name).
    assert (
        'JOKKO_ROUTER_INSTANCE_ID="${JOKKO_ROUTER_INSTANCE_ID:-${HOSTNAME:-$(cat /etc/hostname)}}"'
        in entrypoint[2]
    )
    assert entrypoint[2].endswith("exec jokko router")


def test_every_service_is_health_checked_or_waits_on_a_condition() -> None:
    for name, service in services().items():
        check = service.get("healthcheck") or {}
        checked = bool(check.get("test")) and not check.get("disable", False)
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on as a list has no conditions"
        conditions = [d.get("condition") for d in depends.values()]
        waits = bool(conditions) and all(
            c in ("service_healthy", "service_completed_successfully") for c in conditions
        )
        assert checked or waits, name
        for dependency in depends:
            target = services()[dependency]
            if depends[dependency]["condition"] == "service_healthy":
                assert target.get("healthcheck", {}).get("test"), f"{name} waits on {dependency}"


def test_jokko_processes_wait_for_the_one_shot_init() -> None:
    for name in ("api", "router", "relay"):
        depends = jokko_services()[name]["depends_on"]
        assert depends["init"]["condition"] == "service_completed_successfully"
    init = jokko_services()["init"]
    assert init["restart"] == "no"
    assert set(init["depends_on"]) == {"kafka", "postgres"}


def test_init_runs_the_real_bootstrap() -> None:
    entrypoint = jokko_services()["init"]["entrypoint"]
    assert entrypoint[:2] == ["python", "-c"]
    code = entrypoint[2]
    compile(code, "init", "exec")
    for module, name in re.findall(r"from ([\w.]+) import (\w+)", code):
        assert callable(getattr(__import__(module, fromlist=[name]), name)), (module, name)
    assert "bootstrap(load_settings())" in code


def test_image_tags_are_pinned() -> None:
    images = {name: s["image"] for name, s in services().items()}
    for name, image in images.items():
        repo, sep, tag = image.rpartition(":")
        assert sep, f"{name}: {image} has no tag"
        assert repo, f"{name}: {image}"
        assert tag != "latest", f"{name}: {image}"
        assert re.match(r"^\d+\.\d+(\.\d+)?", tag), f"{name}: {image} is not a version"
    assert images["postgres"].startswith("postgres:15.")
    kafka_sh = (ROOT / "scripts" / "kafka.sh").read_text(encoding="utf-8")
    version = re.search(r"^KAFKA_VERSION=(\S+)$", kafka_sh, re.M).group(1)  # type: ignore[union-attr]
    assert images["kafka"] == f"apache/kafka:{version}"
    for name in jokko_services():
        assert images[name] == f"jokko:{PYPROJECT['project']['version']}"


def _kafka_sh_properties() -> dict[str, str]:
    text = (ROOT / "scripts" / "kafka.sh").read_text(encoding="utf-8")
    block = text.split('cat >"$DIR/server.properties" <<EOF\n', 1)[1].split("\nEOF", 1)[0]
    return dict(line.split("=", 1) for line in block.splitlines())


def _kafka_env_name(prop: str) -> str:
    """The apache/kafka image's mapping: . -> _, _ -> __, - -> ___, upper case."""
    return "KAFKA_" + prop.replace("-", "___").replace("_", "__").replace(".", "_").upper()


def test_kafka_has_the_single_node_properties_of_kafka_sh() -> None:
    env = {k: str(v) for k, v in services()["kafka"]["environment"].items()}
    host_specific = {
        "listeners": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "advertised.listeners": "PLAINTEXT://kafka:9092",
        "log.dirs": "/var/lib/kafka/data",
    }
    props = _kafka_sh_properties()
    # The image formats storage without --standalone: static voters instead of bootstrap.
    del props["controller.quorum.bootstrap.servers"]
    props["controller.quorum.voters"] = "1@kafka:9093"
    props.update(host_specific)
    for prop, value in props.items():
        assert env.get(_kafka_env_name(prop)) == value, prop
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])


def test_the_image_runs_jokko_as_a_non_root_user() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert len(bases) == 1
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", bases[0])
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert entrypoint == ["jokko"]
    assert PYPROJECT["project"]["scripts"]["jokko"] == "services.cli:app"
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*/healthz", text, re.M | re.S)


def test_commands_the_containers_run_exist() -> None:
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for name in ("api", "relay"):
        assert jokko_services()[name]["command"][0] in commands
    assert "router" in commands
    assert "api" in commands  # the image's default CMD
    from services.api.routes import health

    paths = {getattr(r, "path", None) for r in health.router.routes}
    assert {"/healthz", "/readyz"} <= paths
    assert "/readyz" in " ".join(jokko_services()["api"]["healthcheck"]["test"])


def test_constraints_pin_the_direct_dependencies_as_pyproject_does() -> None:
    lines = (DOCKER / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pins = {canonical(k): v for k, v in pins.items()}
    for requirement in PYPROJECT["project"]["dependencies"]:
        name, version = re.fullmatch(r"([\w.\-]+)(?:\[[\w,]+\])?==(\S+)", requirement).groups()  # type: ignore[union-attr]
        assert pins.get(canonical(name)) == version, f"{requirement}: rerun docker/constraints.py"


def test_compose_file_is_valid() -> None:
    if COMPOSE_CLI:
        result = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        rendered = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE), "config", "--format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        theirs = json.loads(rendered.stdout)["services"]
        for name in jokko_services():
            ours = {k: str(v) for k, v in (jokko_services()[name].get("environment") or {}).items()}
            assert theirs[name]["environment"] == ours, name
    # Without the compose plugin: the shape the Compose specification requires of what we use.
    document = compose()
    assert set(document) <= {"name", "services", "volumes"} | {
        k for k in document if k.startswith("x-")
    }
    known = {
        "image", "build", "environment", "env_file", "restart", "stop_grace_period",
        "depends_on", "entrypoint", "command", "healthcheck", "volumes", "ports", "hostname",
    }  # fmt: skip
    declared = set(document.get("volumes") or {})
    for name, service in document["services"].items():
        assert set(service) <= known, (name, set(service) - known)
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith(("./", "/")):  # a host file (the keyring): read-only
                assert volume.endswith(":ro"), (name, volume)
            else:
                assert source in declared, (name, volume)
        for file in service.get("env_file") or []:
            assert file["required"] is False, "a site file must stay optional"
        if "build" in service:
            assert (
                COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]
            ).is_file()
