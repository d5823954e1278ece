"""docker/ and deploy/k8s/ validated statically: linters, structure, cross-file consistency.

Every validator has a negative case (a broken copy is flagged), so a check that silently stopped
checking would fail here too. No Docker engine, cluster or network is needed.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml

_spec = importlib.util.spec_from_file_location("_deploy_checks", Path(__file__).with_name("_checks.py"))
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)
ROOT = checks.ROOT


def _pyproject(pattern: str) -> str:
    """A value of pyproject.toml by regex (tomllib is not in Python 3.10, which vptsearch supports)."""
    return re.search(pattern, (ROOT / "pyproject.toml").read_text(), re.M).group(1)


def _compose() -> tuple[dict, str]:
    text = checks.COMPOSE.read_text()
    return yaml.safe_load(text), text


def _k8s(kind: str) -> dict:
    return next(d for docs in checks.k8s_docs().values() for d in docs if d["kind"] == kind)


# ------------------------------------------------------------------------------------ Dockerfiles
@pytest.mark.parametrize("name", sorted(checks.DOCKERFILES))
def test_hadolint_passes(name):
    assert checks.hadolint(checks.DOCKERFILES[name]) == []


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    codes = {f["code"] for f in checks.hadolint(bad)}
    # unpinned base, unpinned pip + cache dir, root user, the labels .hadolint.yaml requires
    assert {"DL3007", "DL3013", "DL3042", "DL3002", "DL3049"} <= codes


def test_hadolint_config_explains_every_ignored_rule():
    text = (ROOT / ".hadolint.yaml").read_text()
    conf = yaml.safe_load(text)
    assert conf["failure-threshold"] == "warning"
    comments = "\n".join(ln for ln in text.splitlines() if ln.lstrip().startswith("#"))
    for rule in conf.get("ignored") or []:
        assert rule in comments, f"{rule} is ignored without a comment saying why"


@pytest.mark.parametrize("name", sorted(checks.DOCKERFILES))
def test_dockerfile_constraints_nonroot_and_copy_sources(name):
    assert checks.dockerfile_problems(checks.DOCKERFILES[name].read_text()) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("USER 10001:10001", "USER root", "non-root USER"),
        ("USER 10001:10001", "USER vpt", "not numeric"),
        ("-c constraints-cpu.txt .", "--no-cache-dir .", "not under constraints.txt"),
        ("pip install --no-cache-dir -c", "pip install -c", "without --no-cache-dir"),
        ("COPY search_spaces ", "COPY search_spaces_typo ", "does not exist"),
        ("COPY search_spaces ", "COPY tests ", "excluded by .dockerignore"),
        ("ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm", "ARG PYTHON_IMAGE=python", "not pinned"),
    ],
)
def test_dockerfile_checks_catch_breakage(old, new, expected):
    text = checks.DOCKERFILES["cpu"].read_text()
    assert old in text
    problems = checks.dockerfile_problems(text.replace(old, new))
    assert any(expected in p for p in problems), problems


def test_cpu_image_takes_torch_from_the_cpu_index_and_the_rest_from_constraints():
    """Run the Dockerfile's own grep filters over constraints.txt: torch pins vs the rest."""
    text = checks.DOCKERFILES["cpu"].read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"--no-deps --index-url \"\$\{TORCH_INDEX_URL\}\" -r torch-cpu\.txt", text)
    keep = re.search(r"grep -E '([^']+)' constraints\.txt > torch-cpu\.txt", text).group(1)
    drop = re.search(r"grep -vE '([^']+)' constraints\.txt > constraints-cpu\.txt", text).group(1)
    lines = [ln for ln in (ROOT / "constraints.txt").read_text().splitlines() if ln.strip()]
    torch_pins = [ln for ln in lines if re.search(keep, ln)]
    rest = [ln for ln in lines if not re.search(drop, ln)]
    assert sorted(p.split("==")[0] for p in torch_pins) == ["torch", "torchvision"]
    cuda_only = re.compile(r"^(torch|torchvision|triton|nvidia-|cuda-)")
    assert not [ln for ln in rest if cuda_only.match(ln)]
    assert len(rest) == len([ln for ln in lines if not cuda_only.match(ln)])  # nothing else dropped


def test_images_prebuild_the_quickstart_tasks_and_ship_the_backbones():
    from vptsearch.cli import build_parser
    from vptsearch.spec import load_spec

    suite = load_spec(ROOT / "search_spaces" / "mini_deep.yaml").suite  # ("mini/digits", ...)
    wanted = sorted(t.split("/", 1)[1] for t in suite)
    for name in ("cpu", "cuda"):
        run = next(a for w, a in checks.instructions(checks.DOCKERFILES[name].read_text())
                   if w == "RUN" and "build-mini" in a)  # fmt: skip
        ns = build_parser().parse_args(shlex.split(run)[1:])
        assert sorted(ns.tasks) == wanted and ns.root == "/data/shards"
    # `pip install .` (not editable) must carry the shipped backbones as package data.
    data = _pyproject(r"^\[tool\.setuptools\.package-data\]\nvptsearch = (\[.*\])$")
    assert {"assets/*.safetensors", "assets/*.json"} <= set(yaml.safe_load(data))
    assert list((ROOT / "vptsearch" / "assets").glob("*.safetensors"))


def test_dockerignore_matching():
    pats = checks.read_dockerignore()
    assert not checks.dockerignore_excludes("vptsearch/assets/x.safetensors", pats)
    assert not checks.dockerignore_excludes("constraints.txt", pats)
    for path in (".venv", ".git/config", "runs/x", "vptsearch/__pycache__/a.pyc", "mlflow.db", "tests"):
        assert checks.dockerignore_excludes(path, pats), path


# ---------------------------------------------------------------------------------------- YAML
@pytest.mark.parametrize(
    "path", ["docker/compose.yaml", *[f"deploy/k8s/{p.name}" for p in sorted(checks.K8S.glob("*.yaml"))]]
)
def test_yamllint_passes(path):
    assert checks.yamllint_problems((ROOT / path).read_text()) == []


def test_yamllint_flags_bad_yaml():
    problems = checks.yamllint_problems("a:\n   b: 1  \nc: yes\na: 2\n")
    for rule in ("indentation", "trailing-spaces", "truthy", "key-duplicates"):
        assert any(rule in p for p in problems), (rule, problems)


# ---------------------------------------------------------------------------------------- compose
def test_compose_structure():
    doc, text = _compose()
    assert checks.compose_problems(doc, text) == []


def _drop(d: dict, *keys: str) -> None:
    for k in keys[:-1]:
        d = d[k]
    del d[keys[-1]]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: s["ray-head"]["ports"].__setitem__(0, "8265:8265"), "127.0.0.1 only"),
        (
            lambda s: (
                s["postgres"]["ports"].__setitem__(0, "127.0.0.1:5432:5432")
                if "ports" in s["postgres"]
                else s["postgres"].__setitem__("ports", ["127.0.0.1:5432:5432"])
            ),
            "should not be published",
        ),
        (lambda s: s["ray-worker"].__setitem__("container_name", "w"), "--scale"),
        (
            lambda s: s["ray-worker"]["depends_on"].__setitem__("ray-hed", {"condition": "service_started"}),
            "unknown service",
        ),
        (lambda s: (s["mlflow"].pop("image"), s["mlflow"].pop("build")), "neither image nor build"),
        (lambda s: _drop(s, "postgres", "healthcheck"), "postgres: no healthcheck"),
        (lambda s: s["minio"]["healthcheck"].__setitem__("disable", True), "minio: no healthcheck"),
        (lambda s: s["postgres"]["environment"].__setitem__("POSTGRES_PASSWORD", "hunter2"), "secret"),
        (lambda s: _drop(s, "ray-worker", "environment", "VPTSEARCH_STORAGE"), "lacks"),
        (lambda s: s["launch"]["command"].__setitem__(-1, "127.0.0.1:6379"), "not 'auto'"),
        (lambda s: s["launch"]["command"].__setitem__(-3, "search_spaces/nope.yaml"), "does not exist"),
        (
            lambda s: s["mlflow"]["environment"].__setitem__("MLFLOW_BACKEND_STORE_URI", "sqlite:///m.db"),
            "postgresql",
        ),
    ],
)
def test_compose_checks_catch_breakage(mutate, expected):
    doc, text = _compose()
    doc = copy.deepcopy(doc)
    for svc in doc["services"].values():  # YAML anchors share objects: un-share them first
        for k in list(svc):
            svc[k] = copy.deepcopy(svc[k])
    mutate(doc["services"])
    problems = checks.compose_problems(doc, text)
    assert any(expected in p for p in problems), problems


def test_compose_variables_are_defaulted_or_in_env_example():
    _, text = _compose()
    names = checks.env_example_names()
    assert {"RAY_AUTH_TOKEN", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"} <= names
    broken = text.replace("${MLFLOW_WORKERS:-2}", "${MLFLOW_WORKERZ}")
    problems = checks.compose_problems(yaml.safe_load(broken), broken)
    assert any("MLFLOW_WORKERZ" in p for p in problems) and any("MLFLOW_WORKERS" in p for p in problems)
    # `$$` is the container shell's variable, not compose's
    assert "MLFLOW_BUCKET" in checks.compose_variables("a ${MLFLOW_BUCKET:-x}")
    assert checks.compose_variables("mc mb local/$${MLFLOW_BUCKET}") == {}


# ------------------------------------------------------------------------------------- Kubernetes
def test_k8s_objects_validate_against_the_kubernetes_schemas():
    docs = [d for ds in checks.k8s_docs().values() for d in ds]
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "Secret", "PersistentVolumeClaim", "RayCluster", "RayJob"} <= kinds
    for doc in docs:
        assert checks.core_problems(doc) == [], doc["kind"]


def test_k8s_schema_validation_catches_breakage():
    cm = copy.deepcopy(_k8s("ConfigMap"))
    cm["data"]["VPTSEARCH_DATA"] = 3
    assert checks.core_problems(cm)
    rc = copy.deepcopy(_k8s("RayCluster"))
    rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    assert any("containerPort" in p for p in checks.core_problems(rc))


def test_kuberay_manifests_match_the_schema_and_the_rules():
    for kind in ("RayCluster", "RayJob"):
        assert checks.kuberay_problems(_k8s(kind)) == [], kind


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [
        (
            "RayCluster",
            lambda d: d["spec"]["workerGroupSpecs"][0]["rayStartParams"].__setitem__("num-cpus", 2),
            "not of type 'string'",
        ),
        ("RayCluster", lambda d: d["spec"].__setitem__("workerGroupSpec", []), "Additional properties"),
        ("RayCluster", lambda d: d["spec"]["workerGroupSpecs"][0].__setitem__("replicas", 99), "maxReplicas"),
        (
            "RayCluster",
            lambda d: d["spec"]["headGroupSpec"]["template"]["spec"].pop("securityContext"),
            "runAsNonRoot",
        ),
        ("RayJob", lambda d: d["spec"].pop("entrypoint"), "'entrypoint' is a required property"),
        ("RayJob", lambda d: d["spec"].__setitem__("shutdownAfterJobFinishes", False), "ttlSeconds"),
        (
            "RayJob",
            lambda d: d["spec"].__setitem__("entrypoint", "python train.py"),
            "not a `vptsearch launch`",
        ),
        (
            "RayJob",
            lambda d: d["spec"].__setitem__("entrypoint", "vptsearch launch --space x.yaml --address auto"),
            "does not exist",
        ),
    ],
)
def test_kuberay_checks_catch_breakage(kind, mutate, expected):
    doc = copy.deepcopy(_k8s(kind))
    mutate(doc)
    problems = checks.kuberay_problems(doc)
    assert any(expected in p for p in problems), problems


def test_rayjob_runs_the_raycluster_spec():
    assert _k8s("RayJob")["spec"]["rayClusterSpec"] == _k8s("RayCluster")["spec"]


def test_gpu_worker_group_requests_gpus_on_the_cuda_image():
    gpu = next(g for g in _k8s("RayCluster")["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpu["rayStartParams"]["num-gpus"]
    assert container["image"].endswith("-cuda")


def test_k8s_and_compose_agree_on_images_env_and_version():
    doc, _ = _compose()
    services = doc["services"]
    version = _pyproject(r'^version = "([^"]+)"$')
    default = {k: re.fullmatch(r"\$\{\w+:-([^}]+)\}", services[s]["image"]).group(1)
               for k, s in (("cpu", "ray-head"), ("cuda", "ray-worker-gpu"))}  # fmt: skip
    assert default == {"cpu": f"vptsearch:{version}-cpu", "cuda": f"vptsearch:{version}-cuda"}
    templates = [t for kind in ("RayCluster", "RayJob") for t in checks.pod_templates(_k8s(kind)).values()]
    images = {c["image"] for t in templates for c in t["spec"]["containers"]}
    assert images == set(default.values())
    cm, secret = _k8s("ConfigMap"), _k8s("Secret")
    k8s_env = set(cm["data"]) | set(secret["stringData"])
    compose_env = set(services["ray-worker"]["environment"])
    assert k8s_env >= checks.NODE_ENV and compose_env >= checks.NODE_ENV
    assert k8s_env - compose_env == set(), "k8s sets a variable compose does not know"
    for kind in ("RayCluster", "RayJob"):
        for group, tpl in checks.pod_templates(_k8s(kind)).items():
            if group == "submitter":
                continue
            refs = {next(iter(r.values()))["name"] for r in tpl["spec"]["containers"][0]["envFrom"]}
            assert refs == {cm["metadata"]["name"], secret["metadata"]["name"]}, (kind, group)


# ------------------------------------------------------------------------------------- monitoring
def _dashboard() -> dict:
    import json

    return json.loads(checks.DASHBOARD.read_text())


def test_vptsearch_dashboard_queries_exported_metrics():
    dash = _dashboard()
    assert checks.dashboard_problems(dash) == []
    queried = {n for p in dash["panels"] for t in p["targets"] for n in checks.METRIC.findall(t["expr"])}
    assert queried == checks.exported_metrics()  # every metric is on a chart
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for what in ("status", "best val accuracy", "throughput"):
        assert what in titles


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["panels"][0]["targets"][0].__setitem__("expr", "ray_vptsearch_x"), "not a metric"),
        (lambda d: d["panels"][0]["targets"][0].__setitem__("expr", "up"), "names no vptsearch metric"),
        (lambda d: d["panels"][1].__setitem__("targets", []), "no query"),
        (lambda d: d["panels"][2]["targets"][0].__setitem__("datasource", {"uid": "x"}), "${datasource}"),
        (lambda d: d["templating"].__setitem__("list", []), "no ${datasource} variable"),
    ],
)
def test_dashboard_checks_catch_breakage(mutate, expected):
    dash = copy.deepcopy(_dashboard())
    mutate(dash)
    assert any(expected in p for p in checks.dashboard_problems(dash))


def test_grafana_provisioning_finds_the_dashboards_and_prometheus():
    doc, _ = _compose()
    grafana = doc["services"]["grafana"]
    ds = yaml.safe_load((checks.GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = ds["datasources"]
    # "Prometheus": the name Ray's dashboards default their ${datasource} variable to
    assert source["name"] == "Prometheus" and source["url"] == "http://prometheus:9090"
    prov = checks.GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml"
    providers = yaml.safe_load(prov.read_text())
    paths = {p["name"]: p["options"]["path"] for p in providers["providers"]}
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts[paths["vptsearch"]] == "./grafana/dashboards"
    assert checks.DASHBOARD.parent.name == "dashboards"
    assert paths["Ray"] == "/tmp/ray/session_latest/metrics/grafana/dashboards"  # where Ray writes them
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"


def test_compose_prometheus_uses_rays_generated_scrape_config():
    from vptsearch.search._monitor import prometheus_config

    assert yaml.safe_load(checks.PROMETHEUS_YML.read_text()) == prometheus_config("/tmp/ray")
    doc, _ = _compose()
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in doc["services"]["prometheus"]["volumes"]


def test_compose_monitoring_wiring_and_checks_catch_breakage():
    doc, _ = _compose()
    assert checks.monitoring_problems(doc["services"]) == []
    broken = copy.deepcopy(doc["services"])
    broken["ray-head"]["environment"] = {**broken["ray-head"]["environment"], "RAY_GRAFANA_HOST": "http://x:3000"}
    broken["prometheus"]["volumes"] = broken["prometheus"]["volumes"][:1]
    problems = checks.monitoring_problems(broken)
    assert any("RAY_GRAFANA_HOST" in p for p in problems)
    assert any("prometheus: does not mount" in p for p in problems)
    assert "GRAFANA_ADMIN_PASSWORD" in checks.env_example_names()


def test_monitoring_yaml_lints():
    for path in (checks.PROMETHEUS_YML, *sorted((checks.GRAFANA / "provisioning").rglob("*.yaml"))):
        assert checks.yamllint_problems(path.read_text()) == [], path


def test_k8s_monitoring_is_wired_to_the_ray_pods_and_the_head():
    docs = checks.k8s_docs()["monitoring.yaml"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    urls = {f"http://{n}:{s['spec']['ports'][0]['port']}" for n, s in services.items()}
    prom = yaml.safe_load(next(d for d in docs if d["metadata"]["name"] == "vptsearch-prometheus"
                               and d["kind"] == "ConfigMap")["data"]["prometheus.yml"])  # fmt: skip
    keep = {r["source_labels"][0]: r["regex"] for r in prom["scrape_configs"][0]["relabel_configs"]
            if r.get("action") == "keep"}  # fmt: skip
    for kind in ("RayCluster", "RayJob"):
        templates = {g: t for g, t in checks.pod_templates(_k8s(kind)).items() if g != "submitter"}
        for group, tpl in templates.items():  # every Ray pod is a scrape target on its metrics port
            label = tpl["metadata"]["labels"]["app.kubernetes.io/name"]
            assert re.fullmatch(keep["__meta_kubernetes_pod_label_app_kubernetes_io_name"], label), group
            ports = {p["name"] for p in tpl["spec"]["containers"][0]["ports"]}
            assert keep["__meta_kubernetes_pod_container_port_name"] in ports, (kind, group)
        env = {e["name"]: e["value"] for e in templates["head"]["spec"]["containers"][0]["env"]}
        assert {env["RAY_PROMETHEUS_HOST"], env["RAY_GRAFANA_HOST"]} <= urls
        assert env["RAY_GRAFANA_IFRAME_HOST"].startswith("http://127.0.0.1:")
    prov = next(d for d in docs if d["metadata"]["name"] == "vptsearch-grafana-provisioning")
    assert yaml.safe_load(prov["data"]["datasources.yaml"])["datasources"][0]["url"] in urls
    grafana = next(d for d in docs if d["kind"] == "Deployment"
                   and d["metadata"]["name"] == "vptsearch-grafana")  # fmt: skip
    cm = next(v["configMap"]["name"] for v in grafana["spec"]["template"]["spec"]["volumes"]
              if v["name"] == "vptsearch-dashboard")  # fmt: skip
    header = (checks.K8S / "monitoring.yaml").read_text()
    made = re.search(rf"kubectl create configmap {cm} --from-file=(\S+)", header)
    assert made and (ROOT / made.group(1)) == checks.DASHBOARD
    (init,) = grafana["spec"]["template"]["spec"]["initContainers"]
    from vptsearch.cli import build_parser

    ns = build_parser().parse_args(init["command"][1:])
    assert ns.grafana_dashboards == init["volumeMounts"][0]["mountPath"]
