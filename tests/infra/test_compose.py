"""docker-compose.yml, the Dockerfile and docker/nginx.conf, held to the code.

Docker does not run on our machines, so this is what keeps the compose stack honest: every
image is pinned, every command is a real entry point whose flags parse, every MODELPLANE_*
variable is a field of the settings class of the process it is given to and its value
validates, ports, hosts, credentials, buckets and volumes agree across services, the proxy
forwards /serve/ to the gateway service and the rest to the control-plane service on their
ports, depends_on conditions can be met, and the Dockerfile installs HAProxy, copies paths
that exist and ends in a real command.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
from fastapi.testclient import TestClient
from pydantic import AliasChoices
from pydantic_settings import BaseSettings, CliSettingsSource, SettingsError

from cli.app import app as cli_app
from contract.paths import SERVE_PREFIX
from deployer.settings import WorkerSettings
from gateway.app import Gateway
from gateway.server import GatewayApp
from gateway.settings import GatewaySettings
from registry.app import create_app
from registry.migrate import upgrade_to_head
from registry.settings import Settings
from serving.settings import ServingSettings
from tests.gateway.harness import ControlPlane, wait_until
from tests.infra.compose import (
    REPO,
    command,
    dockerfile,
    environment,
    exec_form,
    load_compose,
    nginx,
)

COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
OUR_IMAGE = re.compile(r"^modelplane:[a-z0-9][a-z0-9._-]*$")
# [registry[:port]/]path[:tag]: lowercase path components, a tag that is neither empty nor
# `latest` (a stack that changes under you on the next pull is not reproducible).
IMAGE = re.compile(
    r"^(?:[a-z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r":(?!latest$)[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
)


def ours(service: dict[str, Any]) -> bool:
    return bool(OUR_IMAGE.match(str(service.get("image", ""))))


OUR_SERVICES = {name: s for name, s in SERVICES.items() if ours(s)}


def env_fields(cls: type[BaseSettings]) -> dict[str, str]:
    """MODELPLANE_* variable → field name, for one settings class: the prefixed name, or
    the field's validation aliases where it has them (pydantic-settings reads those)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: dict[str, str] = {}
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update({str(choice).upper(): name for choice in alias.choices})
        elif isinstance(alias, str):
            names[alias.upper()] = name
        else:
            names[f"{prefix}{name}".upper()] = name
    return names


def parse_flags(cls: type[BaseSettings], args: list[str]) -> dict[str, Any]:
    """The values the process's own CLI (pydantic-settings' parser for its settings class)
    reads from `args`; an unknown flag or a bad value fails the test instead of exiting."""
    try:
        return CliSettingsSource(cls, cli_parse_args=args, cli_exit_on_error=False)()
    except SettingsError as exc:
        pytest.fail(f"{cls.model_config.get('cli_prog_name')} {' '.join(args)}: {exc}")


# `python -m X`: the settings class whose CLI parses X's flags.
FLAGS_OF: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "deployer": WorkerSettings,
    "serving": ServingSettings,
}


def entry_point(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Which of our processes `argv` runs ("registry", "gateway", "deployer", "serving") and
    the options it gives on the command line; fails unless the command and its flags exist."""
    if argv[0] == "modelplane":
        assert "modelplane" in PYPROJECT["project"]["scripts"], "no `modelplane` script"
        # Typer vendors its own click: reach the commands through the groups' mappings,
        # down to the command itself (`modelplane keys create ...`).
        node: Any = typer.main.get_command(cli_app)
        rest = argv[1:]
        while hasattr(node, "commands"):
            assert rest, f"`{' '.join(argv)}` names a group, not a command"
            sub = node.commands.get(rest[0])
            assert sub is not None, f"`{' '.join(argv)}`: no command {rest[0]!r} in client/"
            name, node, rest = rest[0], sub, rest[1:]
        try:
            node.make_context(name, rest)
        except Exception as exc:  # click's UsageError family: unknown option, bad value
            pytest.fail(f"`{' '.join(argv)}`: {getattr(exc, 'format_message', exc.__str__)()}")
        return "registry", {}
    if argv[:2] == ["python", "-m"] and argv[2] in FLAGS_OF:
        return argv[2], parse_flags(FLAGS_OF[argv[2]], argv[3:])
    pytest.fail(f"{argv} is not an entry point of ours")


SETTINGS_FOR: dict[str, tuple[type[BaseSettings], ...]] = {
    "registry": (Settings,),
    "gateway": (GatewaySettings,),
    # Serving processes are the worker's children and inherit its environment.
    "deployer": (WorkerSettings, ServingSettings),
    "serving": (ServingSettings,),
}


def build_settings(cls: type[BaseSettings], values: dict[str, Any]) -> BaseSettings:
    if cls is Settings:
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]
    return cls(**values)


def service_settings(name: str) -> dict[type[BaseSettings], BaseSettings]:
    """The settings objects a service's process builds from its command and environment."""
    service = SERVICES[name]
    kind, flags = entry_point(command(service))
    env = environment(service)
    built: dict[type[BaseSettings], BaseSettings] = {}
    for cls in SETTINGS_FOR[kind]:
        fields = env_fields(cls)
        values = {fields[k]: v for k, v in env.items() if k in fields}
        if cls in (WorkerSettings, GatewaySettings):
            values.update(flags)  # flags win over the environment
        if cls is ServingSettings:
            continue  # the worker gives serving processes their required flags itself
        built[cls] = build_settings(cls, values)
    return built


def url_of(service: str, variable: str) -> Any:
    return urlsplit(environment(SERVICES[service])[variable])


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


# -- images and builds -------------------------------------------------------------------


def test_every_image_is_a_well_formed_pinned_reference() -> None:
    for name, service in SERVICES.items():
        image = str(service.get("image", ""))
        assert IMAGE.match(image) or OUR_IMAGE.match(image), f"{name}: image {image!r}"


def test_services_on_our_image_build_it_from_the_dockerfile_with_declared_args() -> None:
    declared = {i.args.split("=", 1)[0] for i in dockerfile() if i.keyword == "ARG"}
    built: dict[str, Any] = {}
    for name, service in OUR_SERVICES.items():
        build = service.get("build")
        assert build is not None, f"{name}: our image but no build section"
        assert (REPO / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()
        assert set(build.get("args", {})) <= declared, f"{name}: undeclared build args"
        previous = built.setdefault(service["image"], build)
        assert previous == build, f"{name}: one tag {service['image']} built two ways"
    assert {"controlplane", "migrate", "gateway", "worker-cpu", "worker-gpu"} <= set(OUR_SERVICES)


def test_gpu_worker_is_only_under_the_gpu_profile_with_an_nvidia_reservation() -> None:
    gpu = SERVICES["worker-gpu"]
    assert gpu.get("profiles") == ["gpu"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["build"]["args"]["TORCH_VARIANT"].startswith("cu"), "GPU worker on CPU torch"
    settings = service_settings("worker-gpu")[WorkerSettings]
    assert isinstance(settings, WorkerSettings) and settings.gpus == "auto"
    assert settings.cpu_slots == 0
    for name, service in SERVICES.items():
        if name != "worker-gpu":
            assert "profiles" not in service, f"{name} should start without a profile"
            assert "worker-gpu" not in depends_on(service)
            assert "devices" not in str(service.get("deploy", {}))
    cpu = service_settings("worker-cpu")[WorkerSettings]
    assert isinstance(cpu, WorkerSettings) and cpu.gpu_ids() == [] and cpu.cpu_slots >= 1


# -- commands and settings ----------------------------------------------------------------


def test_every_command_of_our_services_is_a_real_entry_point_with_real_flags() -> None:
    kinds = {name: entry_point(command(s))[0] for name, s in OUR_SERVICES.items()}
    assert kinds == {
        "migrate": "registry",
        "controlplane": "registry",
        "gateway": "gateway",
        "worker-cpu": "deployer",
        "worker-gpu": "deployer",
    }
    assert command(SERVICES["migrate"])[:2] == ["modelplane", "migrate"]
    assert command(SERVICES["controlplane"])[:2] == ["modelplane", "server"]
    for service in OUR_SERVICES.values():
        assert "entrypoint" not in service  # the Dockerfile has none: command is argv


def test_every_modelplane_variable_is_a_field_of_the_process_settings() -> None:
    for name, service in SERVICES.items():
        env = environment(service)
        ours_vars = {k for k in env if k.startswith("MODELPLANE_")}
        if not ours(service):
            assert not ours_vars, f"{name} is not ours but sets {ours_vars}"
            continue
        kind, _ = entry_point(command(service))
        known: set[str] = set()
        for cls in SETTINGS_FOR[kind]:
            known |= set(env_fields(cls))
        unknown = ours_vars - known
        assert not unknown, f"{name}: {sorted(unknown)} are no settings of `{kind}`"


def test_every_modelplane_value_validates_in_its_settings_class() -> None:
    for name in OUR_SERVICES:
        service_settings(name)  # raises pydantic's ValidationError naming the field


def test_auth_is_on_and_workers_take_their_key_from_the_environment() -> None:
    """Production keeps auth on; each worker sends the key (worker scope) the operator puts
    in MODELPLANE_WORKER_TOKEN (.env), and hands it to its serving processes."""
    cp = service_settings("controlplane")[Settings]
    assert isinstance(cp, Settings) and cp.auth_enabled
    given = load_compose(environ={"MODELPLANE_WORKER_TOKEN": "mp_from_the_env"})
    for name in ("worker-cpu", "worker-gpu"):
        env = environment(given["services"][name])
        assert env["MODELPLANE_WORKER_TOKEN"] == "mp_from_the_env", name
        fields = env_fields(WorkerSettings)
        worker = WorkerSettings.model_validate(
            {fields[k]: v for k, v in env.items() if k in fields}
        )
        assert worker.token == "mp_from_the_env"
        assert "--token" not in command(SERVICES[name]), "flags show in ps: use the env"


def test_migrate_and_control_planes_share_one_database_and_store() -> None:
    keys = ("MODELPLANE_DATABASE_URL", "MODELPLANE_STORAGE_URL", "MODELPLANE_S3_ENDPOINT_URL",
            "MODELPLANE_S3_ACCESS_KEY_ID", "MODELPLANE_S3_SECRET_ACCESS_KEY")  # fmt: skip
    migrate, cp = environment(SERVICES["migrate"]), environment(SERVICES["controlplane"])
    for key in keys:
        assert cp[key], key
        assert migrate[key] == cp[key], key


# -- addresses, ports, credentials --------------------------------------------------------


def test_database_url_names_the_postgres_service_and_its_credentials() -> None:
    url = url_of("controlplane", "MODELPLANE_DATABASE_URL")
    pg = environment(SERVICES["postgres"])
    assert url.scheme == "postgresql+asyncpg"
    assert url.hostname == "postgres" and (url.port or 5432) == 5432
    assert url.username == pg["POSTGRES_USER"] and url.password == pg["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == pg["POSTGRES_DB"]
    assert "/var/lib/postgresql/data" in mount_targets("postgres")  # PGDATA's default


def test_store_is_the_minio_service_with_its_keys_and_the_bucket_init_creates() -> None:
    cp = service_settings("controlplane")[Settings]
    assert isinstance(cp, Settings)
    endpoint = urlsplit(cp.s3_endpoint_url or "")
    minio, init = SERVICES["minio"], SERVICES["minio-init"]
    minio_cmd = command(minio)
    address = minio_cmd[minio_cmd.index("--address") + 1]
    assert endpoint.hostname == "minio" and endpoint.port == int(address.rsplit(":", 1)[1])
    root = environment(minio)
    assert cp.s3_access_key_id == root["MINIO_ROOT_USER"]
    assert cp.s3_secret_access_key == root["MINIO_ROOT_PASSWORD"]
    assert environment(init) == root, "minio-init logs in with other credentials"
    storage = urlsplit(cp.storage_url)
    assert storage.scheme == "s3" and cp.s3_path_style
    script = " ".join(command(init))
    [alias_url] = re.findall(r"mc alias set store (\S+)", script)
    assert alias_url == cp.s3_endpoint_url
    assert re.search(rf"mc mb --ignore-existing store/{re.escape(storage.netloc)}\b", script)
    assert minio_cmd[minio_cmd.index("server") + 1] in mount_targets("minio")


def test_control_plane_listens_on_all_interfaces_on_the_default_port() -> None:
    settings = service_settings("controlplane")[Settings]
    assert isinstance(settings, Settings)
    assert settings.host == "0.0.0.0", "127.0.0.1 in a container is unreachable from others"
    assert settings.port == Settings.model_fields["port"].default
    assert str(settings.port) in [str(p) for p in SERVICES["controlplane"]["expose"]]
    assert "ports" not in SERVICES["controlplane"], "replicas would fight over a host port"
    assert SERVICES["controlplane"]["deploy"]["replicas"] >= 2
    check = " ".join(SERVICES["controlplane"]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{settings.port}/readyz" in check


def proxy_config_path() -> Path:
    """The nginx config the proxy service mounts, in the repository."""
    proxy = SERVICES["proxy"]
    [mount] = [v for v in proxy["volumes"] if str(v).endswith("/etc/nginx/nginx.conf:ro")]
    source = REPO / str(mount).split(":", 1)[0]
    assert source.is_file(), source
    return source


def nginx_locations(path: Path) -> dict[str, dict[str, list[str]]]:
    """Each `location PREFIX { ... }` of an nginx config: its directives (key → values)."""
    text = re.sub(r"#[^\n]*", "", path.read_text())
    found: dict[str, dict[str, list[str]]] = {}
    for prefix, body in re.findall(r"location\s+([^{]+?)\s*\{([^}]*)\}", text):
        assert prefix.startswith("/"), f"location {prefix}: only plain prefixes are modelled"
        directives: dict[str, list[str]] = {}
        for key, value in re.findall(r"^\s*([a-z_]+)\s+([^;{]*);", body, re.MULTILINE):
            directives.setdefault(key, []).append(value.strip())
        found[prefix] = directives
    return found


def proxied_to(path: str) -> tuple[str, int]:
    """The service and port nginx sends a request for `path` to: the longest matching
    prefix location (nginx's rule when every location is a plain prefix), its upstream's
    one server."""
    locations = nginx_locations(proxy_config_path())
    prefix = max((p for p in locations if path.startswith(p)), key=len)
    [target] = locations[prefix]["proxy_pass"]
    assert target.startswith("http://"), target
    [server] = nginx(proxy_config_path()).upstreams[target.removeprefix("http://")]
    return server


def test_proxy_forwards_to_the_control_plane_service_on_its_port() -> None:
    proxy = SERVICES["proxy"]
    config = nginx(proxy_config_path())
    settings = service_settings("controlplane")[Settings]
    assert isinstance(settings, Settings)
    assert config.upstreams["controlplane"] == [("controlplane", settings.port)]
    assert "http://controlplane" in config.proxy_pass
    assert set(config.proxy_pass) <= {f"http://{name}" for name in config.upstreams}
    [published] = proxy["ports"]
    assert int(str(published).rsplit(":", 1)[1]) in config.listen
    # Uploads up to max_upload_bytes stream through: no limit, no buffering.
    assert config.directives["client_max_body_size"] == ["0"]
    assert set(config.directives["proxy_request_buffering"]) == {"off"}
    assert "Host $http_host" in config.directives["proxy_set_header"]


def test_proxy_sends_the_stable_url_to_the_gateways_and_the_rest_to_the_control_planes(
    tmp_path: Path,
) -> None:
    gateway = service_settings("gateway")[GatewaySettings]
    cp = service_settings("controlplane")[Settings]
    assert isinstance(gateway, GatewaySettings) and isinstance(cp, Settings)
    to_gateway, to_cp = ("gateway", gateway.port), ("controlplane", cp.port)
    for path in ("/serve/d/v2/models/m/infer", "/serve/d/v1/chat/completions",
                 "/serve/d/v1/models/m/versions/3:predict", "/serve/d/predictions/m"):  # fmt: skip
        assert path.startswith(SERVE_PREFIX)
        assert proxied_to(path) == to_gateway, path
    app = create_app(Settings(home=tmp_path, _env_file=None))  # type: ignore[call-arg]
    api = list(app.openapi()["paths"])
    assert api, "the control plane has no routes?"
    for path in [*api, "/", "/docs", "/redoc", "/openapi.json", "/healthz", "/readyz",
                 "/metrics", "/serve"]:  # fmt: skip
        assert not path.startswith(SERVE_PREFIX), f"{path} of the control plane is hidden"
        assert proxied_to(path) == to_cp, path
    # Calls stream both ways (server-sent events as written), long generations get time,
    # connections to the gateways are kept alive, and only a gateway that cannot be reached
    # is skipped: its answers (a 503 with no ready endpoint) pass through.
    config = nginx(proxy_config_path())
    serve = nginx_locations(proxy_config_path())[SERVE_PREFIX]
    for key in ("proxy_buffering", "proxy_request_buffering"):
        assert serve.get(key, config.directives[key]) == ["off"], key
    [read_timeout] = serve.get("proxy_read_timeout", config.directives["proxy_read_timeout"])
    assert int(read_timeout.removesuffix("s")) >= 600
    assert serve["proxy_http_version"] == ["1.1"]
    assert 'Connection ""' in serve["proxy_set_header"]
    assert "Host $http_host" in serve["proxy_set_header"]
    assert serve["proxy_next_upstream"] == ["error timeout"]
    [target] = serve["proxy_pass"]
    body = re.search(rf"upstream\s+{target.removeprefix('http://')}\s*\{{([^}}]*)\}}",
                     proxy_config_path().read_text())  # fmt: skip
    assert body is not None and re.search(r"^\s*keepalive\s+\d+;", body[1], re.MULTILINE)


def test_gateways_are_replicas_on_haproxy_following_the_control_planes() -> None:
    """The gateways ask the control-plane service itself (the proxy starts after them:
    through the proxy would be a cycle), listen on all interfaces on the port nginx and the
    healthcheck use, and take their key (scope gateway) from the environment. The proxy
    waits for them to start, not to be ready: the API stays reachable without their key."""
    service = SERVICES["gateway"]
    settings = service_settings("gateway")[GatewaySettings]
    cp = service_settings("controlplane")[Settings]
    assert isinstance(settings, GatewaySettings) and isinstance(cp, Settings)
    assert settings.engine == "haproxy", "the data plane of the production topology"
    assert service["deploy"]["replicas"] >= 2
    assert settings.host == "0.0.0.0", "127.0.0.1 in a container is unreachable from others"
    assert str(settings.port) in [str(p) for p in service["expose"]]
    assert "ports" not in service, "replicas would fight over a host port"
    check = " ".join(service["healthcheck"]["test"])
    assert f"http://127.0.0.1:{settings.port}/readyz" in check, "healthy = has the routes"
    registry = urlsplit(settings.registry_url)
    assert (registry.hostname, registry.port) == ("controlplane", cp.port)
    assert depends_on(service) == {"controlplane": "service_healthy"}
    assert depends_on(SERVICES["proxy"])["gateway"] == "service_started"
    given = load_compose(environ={"MODELPLANE_GATEWAY_TOKEN": "mp_from_the_env"})
    env = environment(given["services"]["gateway"])
    fields = env_fields(GatewaySettings)
    values = {fields[k]: v for k, v in env.items() if k in fields}
    values["registry_url"] = settings.registry_url
    assert GatewaySettings.model_validate(values).token == "mp_from_the_env"
    assert "--token" not in command(service), "flags show in ps: use the env"


def test_workers_reach_the_proxy_and_advertise_their_own_hostname() -> None:
    listen = nginx(REPO / "docker" / "nginx.conf").listen
    ranges = []
    for name in ("worker-cpu", "worker-gpu"):
        settings = service_settings(name)[WorkerSettings]
        assert isinstance(settings, WorkerSettings)
        target = urlsplit(settings.control_plane)
        assert target.hostname == "proxy" and target.port in listen
        assert settings.address == SERVICES[name]["hostname"] == name
        assert settings.name == name
        ranges.append(settings.ports)
        assert "ports" not in SERVICES[name], "serving ports stay inside the network"
        assert Path(settings.cache_dir).is_absolute()
        assert str(settings.cache_dir) in mount_targets(name), f"{name}: cache not on a volume"
    # The image runs as a non-root user: serving processes can only bind unprivileged ports.
    for ports in ranges:
        assert ports.start >= 1024, f"serving ports {ports} include privileged ones"


# -- volumes, dependencies, healthchecks --------------------------------------------------


def mount_targets(name: str) -> list[str]:
    return [str(v).split(":")[1] for v in SERVICES[name].get("volumes", [])]


def test_volumes_are_declared_and_bind_mounts_exist_in_the_repository() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    used = set()
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: {source} is not in the repository"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"


def test_depends_on_conditions_can_be_met_and_form_no_cycle() -> None:
    for name, service in SERVICES.items():
        for target, condition in depends_on(service).items():
            assert target in SERVICES, f"{name} depends on unknown {target}"
            other = SERVICES[target]
            if condition == "service_healthy":
                assert "healthcheck" in other, f"{name} waits for {target} to be healthy"
            elif condition == "service_completed_successfully":
                assert other.get("restart", "no") == "no" and "ports" not in other, target
            else:
                assert condition == "service_started", condition
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for target in depends_on(SERVICES[name]):
                visit(target, (*path, name))
            done.add(name)

    for name in SERVICES:
        visit(name, ())
    chain = depends_on(SERVICES["controlplane"])
    assert chain["migrate"] == chain["minio-init"] == "service_completed_successfully"
    assert depends_on(SERVICES["migrate"]) == {"postgres": "service_healthy"}


def test_healthchecks_are_exec_form_and_hit_real_routes(tmp_path: Path) -> None:
    """Each check's URL answers 200 from the app that serves it: the control plane's, a
    gateway's once it has its first route table, the control plane's again behind nginx."""
    settings = Settings(home=tmp_path, _env_file=None)  # type: ignore[call-arg]
    upgrade_to_head(settings.database_url)
    plane = ControlPlane(wait_s=0.2)
    plane.publish(auth=True)
    gateway = Gateway(fetch=plane.fetch, verifier=plane.verify, reporter=plane.report)
    with TestClient(GatewayApp(gateway)) as gateway_client:
        wait_until("the gateway's first route table", lambda: gateway.ready, timeout=10)
        clients = {"registry": TestClient(create_app(settings)), "gateway": gateway_client}
        for name, service in SERVICES.items():
            check = service.get("healthcheck")
            if check is None:
                continue
            test = check["test"]
            assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), name
            for url in re.findall(r"http://127\.0\.0\.1:\d+(/[a-z]+)", " ".join(test)):
                target = name if ours(service) else proxied_to(url)[0]
                answer = clients[entry_point(command(SERVICES[target]))[0]].get(url)
                assert answer.status_code == 200, f"{name}: healthcheck {url}: {answer.text}"
            if test[1:3] == ["python", "-c"]:
                compile(test[3], f"{name} healthcheck", "exec")


# -- Dockerfile ---------------------------------------------------------------------------


def test_dockerfile_is_slim_non_root_and_pins_the_torch_variant_by_build_arg() -> None:
    steps = dockerfile()
    # Bookworm pinned: its HAProxy (2.6) is the one the gateway's engine is tested with;
    # python:3.11-slim follows Debian's newest release.
    assert steps[0].keyword == "FROM" and steps[0].args == "python:3.11-slim-bookworm"
    args = dict(i.args.split("=", 1) for i in steps if i.keyword == "ARG")
    assert args["TORCH_VARIANT"] == "cpu"
    assert "${TORCH_VARIANT}" in args["TORCH_INDEX_URL"]
    assert any('--index-url "${TORCH_INDEX_URL}"' in i.args for i in steps if i.keyword == "RUN")
    users = [i for i in steps if i.keyword == "USER"]
    assert users and users[-1].args not in ("root", "0")
    last_run = max(n for n, i in enumerate(steps) if i.keyword == "RUN")
    assert steps.index(users[-1]) > last_run, "USER must come after the last RUN"


def test_dockerfile_installs_debian_haproxy_for_the_gateway_engine() -> None:
    """`python -m gateway --engine haproxy` runs HAProxy >= 2.6 from the image: Debian's
    package, without recommends, the apt lists removed in the same layer, as root."""
    steps = dockerfile()
    [install] = [i for i in steps if i.keyword == "RUN" and re.search(r"\bhaproxy\b", i.args)]
    assert re.search(r"apt-get install -y --no-install-recommends haproxy\b", install.args)
    assert "apt-get update" in install.args
    assert "rm -rf /var/lib/apt/lists/*" in install.args
    users = [n for n, i in enumerate(steps) if i.keyword == "USER"]
    assert steps.index(install) < users[0]


def test_dockerfile_copies_existing_paths_and_every_package() -> None:
    copied: list[str] = []
    for step in dockerfile():
        if step.keyword != "COPY":
            continue
        parts = [p for p in step.args.split() if not p.startswith("--")]
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"line {step.line}: COPY {source} does not exist"
            copied.append(source.rstrip("/"))
    packages = [
        p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    assert set(packages) <= set(copied), f"not copied: {set(packages) - set(copied)}"
    assert {"pyproject.toml", "alembic.ini", "README.md"} <= set(copied)


def test_dockerfile_installs_dependencies_before_copying_code() -> None:
    steps = dockerfile()
    first_code = min(
        n for n, i in enumerate(steps) if i.keyword == "COPY" and "pyproject.toml" not in i.args
    )
    deps = [
        n
        for n, i in enumerate(steps)
        if i.keyword == "RUN" and "-r /tmp/requirements.txt" in i.args
    ]
    assert deps and deps[0] < first_code
    copies_before = [i.args for i in steps[:first_code] if i.keyword == "COPY"]
    assert copies_before == ["pyproject.toml ./"], copies_before


def test_dockerfile_command_and_environment_are_real() -> None:
    steps = dockerfile()
    [cmd] = [i for i in steps if i.keyword == "CMD"]
    assert not [i for i in steps if i.keyword == "ENTRYPOINT"]
    kind, _ = entry_point(exec_form(cmd.args))
    assert kind == "registry"
    fields = (
        env_fields(Settings)
        | env_fields(GatewaySettings)
        | env_fields(WorkerSettings)
        | env_fields(ServingSettings)
    )
    for step in (i for i in steps if i.keyword == "ENV"):
        for key in re.findall(r"(MODELPLANE_[A-Z_]+)=", step.args):
            assert key in fields, f"ENV {key} is no setting"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".modelplane"} <= set(ignored)


# -- the entry points run -----------------------------------------------------------------


def compose_entry_points() -> list[list[str]]:
    """`--help` of every distinct entry point compose and the Dockerfile use."""
    seen: list[list[str]] = []
    argvs = [command(s) for s in OUR_SERVICES.values()]
    argvs.append(exec_form(next(i.args for i in dockerfile() if i.keyword == "CMD")))
    for argv in argvs:
        head = argv[:3] if argv[0] == "python" else argv[:2]
        if head not in seen:
            seen.append(head)
    return seen


@pytest.mark.parametrize("argv", compose_entry_points(), ids=" ".join)
def test_entry_point_used_by_compose_runs(argv: list[str]) -> None:
    if argv[0] == "modelplane":
        executable = [str(Path(sys.executable).parent / "modelplane")]
        assert Path(executable[0]).exists(), "the modelplane console script is not installed"
    else:
        executable = [sys.executable]
    done = subprocess.run(
        [*executable, *argv[1:], "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower(), done.stdout


def test_serving_binds_to_a_hostname_worker_address() -> None:
    """Compose workers give their container's hostname as MODELPLANE_WORKER_ADDRESS: the
    serving processes bind to it (and advertise it), so a name must bind like an IP."""
    from serving.server import bind

    fields = {"name": "m", "format": "torchscript", "path": "m.pt", "host": "localhost", "port": 0}
    settings = ServingSettings.model_validate(fields)
    sock = bind(settings, reuse_port=False)
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()


def documented_runs() -> list[tuple[str, list[str]]]:
    """`docker compose run ... SERVICE modelplane ...` lines of the README, docs/ and the
    compose file's header: (service, argv)."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "docker-compose.yml"]
    text = "".join(page.read_text() for page in pages)
    found = re.findall(r"docker compose run --rm (?:-T )?(\S+) (modelplane [^)\n]*)", text)
    return [(service, shlex.split(argv)) for service, argv in found]


def test_documented_compose_runs_name_real_services_and_commands() -> None:
    runs = documented_runs()
    assert len(runs) >= 4, runs  # the admin and worker keys, in the docs and the compose file
    for service, argv in runs:
        assert service in OUR_SERVICES, f"`docker compose run {service}`: not our service"
        entry_point(argv)
        assert "--offline" in argv, "before `up` there is no server to call"
