"""Static checks of docker/ and deploy/k8s/ (no Docker engine, no cluster, no network).

Each ``*_problems`` function returns a list of one-line problems (empty: fine), so the tests can
both assert that the committed files pass and that a broken copy is caught.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {name: ROOT / "docker" / f"Dockerfile.{name}" for name in ("cpu", "cuda", "mlflow")}
COMPOSE = ROOT / "docker" / "compose.yaml"
ENV_EXAMPLE = ROOT / "docker" / ".env.example"
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.37.0"  # newest schema set bundled with kubernetes-validate here (offline)

# The names every vptsearch Ray node gets (compose anchor x-vptsearch-env, k8s ConfigMap + Secret).
NODE_ENV = {
    "MLFLOW_TRACKING_URI", "VPTSEARCH_STORAGE", "VPTSEARCH_DATA",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3",
}  # fmt: skip
# Published on the host, and only on 127.0.0.1: Ray dashboard, Ray client, MLflow, MinIO console,
# Prometheus, Grafana.
PUBLISHED = {8265, 10001, 5000, 9001, 9090, 3000}
NEEDS_HEALTHCHECK = {"postgres", "minio", "mlflow", "ray-head", "ray-worker", "prometheus", "grafana"}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN")
VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# ---------------------------------------------------------------------------------------- linters
def hadolint(path: Path) -> list[dict[str, Any]]:
    """hadolint findings (JSON) under the repository's .hadolint.yaml; [] when it passes."""
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    proc = subprocess.run(
        [exe, "--config", str(ROOT / ".hadolint.yaml"), "--format", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    findings = json.loads(proc.stdout or "[]")
    failing = [f for f in findings if f["level"] in ("warning", "error")]
    if (proc.returncode != 0) != bool(failing):  # exit code and findings must agree
        raise RuntimeError(f"hadolint exit {proc.returncode} with findings {findings}: {proc.stderr}")
    return failing


def yamllint_problems(text: str) -> list[str]:
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig(file=str(ROOT / ".yamllint.yaml"))
    return [f"{p.line}:{p.column} {p.rule}: {p.desc}" for p in linter.run(text, conf)]


# ------------------------------------------------------------------------------------ Dockerfiles
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def _glob_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regex (Go filepath.Match plus Docker's ``**``)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return out


def dockerignore_excludes(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = Path(rel).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        neg = raw.startswith("!")
        regex = _glob_regex((raw[1:] if neg else raw).strip("/"))
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not neg
    return excluded


def read_dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def dockerfile_problems(text: str) -> list[str]:
    """Non-root final user, pinned bases, pip only under constraints, COPY sources that exist."""
    problems: list[str] = []
    ins = instructions(text)
    args = dict(a.partition("=")[::2] for w, a in ins if w == "ARG" and "=" in a)
    ignore = read_dockerignore()
    stages = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    if not stages:
        return ["no FROM"]
    for w, a in ins:
        if w == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), a.split()[0])
            if ":" not in image or image.endswith(":latest"):
                problems.append(f"base image {image!r} is not pinned to a version tag")
    final_users = [a for w, a in ins[stages[-1] :] if w == "USER"]
    if not final_users or final_users[-1].split(":")[0] in ("root", "0"):
        problems.append("the final stage does not switch to a non-root USER")
    elif not final_users[-1].split(":")[0].isdigit():
        problems.append("the final USER is not numeric (Kubernetes runAsNonRoot cannot verify it)")
    derived = set(re.findall(r"constraints\.txt\s*>\s*(\S+)", text))  # files cut from constraints.txt
    pips = [seg for w, a in ins if w == "RUN" for seg in re.split(r"&&|;", a) if "pip install" in seg]
    if not pips:
        problems.append("no pip install")
    for seg in pips:
        toks = shlex.split(seg)
        files = [toks[i + 1] for i, t in enumerate(toks[:-1]) if t in ("-c", "-r", "--constraint")]
        constrained = any(f == "constraints.txt" or f in derived for f in files)
        if not constrained:
            problems.append(f"pip install not under constraints.txt: {seg.strip()!r}")
        if "--no-cache-dir" not in toks:
            problems.append(f"pip install without --no-cache-dir: {seg.strip()!r}")
    if "constraints.txt" not in {s for w, a in ins if w == "COPY" for s in a.split()[:-1]}:
        problems.append("constraints.txt is never copied into the build")
    for w, a in ins:
        if w != "COPY" or "--from=" in a:
            continue
        for src in [t for t in a.split()[:-1] if not t.startswith("--")]:
            if not (ROOT / src).exists():
                problems.append(f"COPY source {src!r} does not exist in the repository")
            elif dockerignore_excludes(src, ignore):
                problems.append(f"COPY source {src!r} is excluded by .dockerignore")
    return problems


# ---------------------------------------------------------------------------------------- compose
def env_example_names() -> set[str]:
    lines = ENV_EXAMPLE.read_text().splitlines()
    return {ln.split("=", 1)[0].strip() for ln in lines if "=" in ln and not ln.lstrip().startswith("#")}


def compose_variables(text: str) -> dict[str, str | None]:
    """Every ${VAR...} compose interpolates (``$$`` escapes excluded): name -> operator or None."""
    return {m.group(1): m.group(2) for m in VAR.finditer(text)}


def launch_argv_problems(argv: list[str], where: str) -> list[str]:
    """`vptsearch launch --space FILE --address auto`, parsed by vptsearch's own CLI, FILE valid."""
    from vptsearch.cli import build_parser
    from vptsearch.spec import load_spec

    if argv[:2] != ["vptsearch", "launch"]:
        return [f"{where}: {shlex.join(argv)!r} is not a `vptsearch launch` command"]
    try:
        ns = build_parser().parse_args(argv[1:])
    except SystemExit:
        return [f"{where}: vptsearch's CLI rejects {shlex.join(argv)!r}"]
    problems = [] if ns.address == "auto" else [f"{where}: --address is {ns.address!r}, not 'auto'"]
    space = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", ns.space)  # compose default of ${VPTSEARCH_SPACE:-...}
    if not (ROOT / space).is_file():
        return [*problems, f"{where}: --space {space!r} does not exist in the repository"]
    load_spec(ROOT / space)  # raises on an invalid space
    return problems


def compose_problems(doc: dict[str, Any], text: str) -> list[str]:
    problems: list[str] = []
    services: dict[str, Any] = doc.get("services") or {}
    known = env_example_names()
    for name, op in compose_variables(text).items():
        if op in (None, "?", ":?") and name not in known:
            problems.append(f"${{{name}}} has no default and is not in docker/.env.example")
    for name in sorted(known - set(compose_variables(text))):
        problems.append(f"docker/.env.example lists {name}, which compose.yaml never uses")
    for name, svc in services.items():
        if "image" not in svc and "build" not in svc:
            problems.append(f"service {name}: neither image nor build")
        deps = svc.get("depends_on") or {}
        for dep, cond in deps.items() if isinstance(deps, dict) else ((d, None) for d in deps):
            if dep not in services:
                problems.append(f"service {name}: depends_on unknown service {dep!r}")
            elif (cond or {}).get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
                problems.append(f"service {name}: waits for {dep} to be healthy, which has no healthcheck")
        for port in svc.get("ports") or []:
            spec = str(port.get("host_ip", "") + ":" + str(port.get("published"))) if isinstance(port, dict) \
                else str(port)  # fmt: skip
            if not spec.startswith("127.0.0.1:"):
                problems.append(f"service {name}: port {spec!r} is not published on 127.0.0.1 only")
            elif int(spec.rsplit(":", 1)[-1]) not in PUBLISHED:
                problems.append(f"service {name}: container port {spec!r} should not be published")
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_KEY.search(key) and not re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)):
                problems.append(f"service {name}: secret {key} is not a required ${{VAR:?}} from docker/.env")
    for name in sorted(NEEDS_HEALTHCHECK):
        hc = services.get(name, {}).get("healthcheck")
        if not hc or hc.get("disable") or not hc.get("test"):
            problems.append(f"service {name}: no healthcheck")
    worker = services.get("ray-worker", {})
    for key in ("container_name", "ports"):
        if key in worker:
            problems.append(f"service ray-worker: {key} prevents `--scale ray-worker=N`")
    for name in ("ray-head", "ray-worker"):
        missing = NODE_ENV - set(services.get(name, {}).get("environment") or {})
        if missing:
            problems.append(f"service {name}: environment lacks {sorted(missing)}")
    head_cmd = " ".join(services.get("ray-head", {}).get("command") or [])
    if "--dashboard-host=0.0.0.0" not in head_cmd:
        problems.append("service ray-head: the dashboard is not bound to 0.0.0.0 inside the container")
    mlflow = services.get("mlflow", {})
    mlflow_text = json.dumps([mlflow.get("command"), mlflow.get("environment")])
    for needle in ("postgresql", "--artifacts-destination=s3://", "MLFLOW_S3_ENDPOINT_URL"):
        if needle not in mlflow_text:
            problems.append(f"service mlflow: {needle!r} missing (PostgreSQL backend, MinIO artifacts)")
    cmd = [str(c) for c in services.get("launch", {}).get("command") or []]
    if "--" not in cmd:
        problems.append("service launch: no `ray job submit ... -- vptsearch launch ...` command")
    else:
        problems += launch_argv_problems(cmd[cmd.index("--") + 1 :], "service launch")
    return problems


# ------------------------------------------------------------------------------------- Kubernetes
def k8s_docs() -> dict[str, list[dict[str, Any]]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(K8S.glob("*.yaml"))}


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def pod_templates(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pod templates a KubeRay object carries, by group name."""
    spec = cluster_spec(doc)
    out = {"head": spec["headGroupSpec"]["template"]}
    out |= {g["groupName"]: g["template"] for g in spec.get("workerGroupSpecs", [])}
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        out["submitter"] = doc["spec"]["submitterPodTemplate"]
    return out


def core_problems(doc: dict[str, Any]) -> list[str]:
    """A core object, or each pod template of a KubeRay object, against the Kubernetes API schema."""
    import kubernetes_validate as kv

    if doc.get("apiVersion", "").startswith("ray.io/"):
        items = [(f"{doc['kind']} {g} pod template",
                  {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": g}, "template": t})
                 for g, t in pod_templates(doc).items()]  # fmt: skip
    else:
        items = [(f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}", doc)]
    problems = []
    for where, obj in items:
        try:
            kv.validate(obj, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            problems.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
    return problems


def kuberay_problems(doc: dict[str, Any]) -> list[str]:
    """RayCluster/RayJob against tests/deploy/kuberay.schema.yaml plus the rules a schema can't say."""
    import jsonschema

    schema = yaml.safe_load((Path(__file__).with_name("kuberay.schema.yaml")).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = [f"{doc.get('kind')}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in validator.iter_errors(doc)]  # fmt: skip
    if problems:
        return problems
    for g in cluster_spec(doc).get("workerGroupSpecs", []):
        if not g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]:
            problems.append(f"worker group {g['groupName']}: needs minReplicas <= replicas <= maxReplicas")
    for group, tpl in pod_templates(doc).items():
        sc = tpl["spec"].get("securityContext", {})
        if not sc.get("runAsNonRoot") or not sc.get("runAsUser"):
            problems.append(f"{group}: pod securityContext lacks runAsNonRoot/runAsUser")
        for c in tpl["spec"]["containers"]:
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits"):
                problems.append(f"{group}/{c['name']}: resources need requests and limits")
    if doc["kind"] == "RayJob":
        spec = doc["spec"]
        if spec.get("ttlSecondsAfterFinished") and not spec.get("shutdownAfterJobFinishes"):
            problems.append("RayJob: ttlSecondsAfterFinished only works with shutdownAfterJobFinishes")
        problems += launch_argv_problems(shlex.split(spec["entrypoint"]), "RayJob entrypoint")
    return problems


# ------------------------------------------------------------------------------------- monitoring
GRAFANA = ROOT / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "vptsearch.json"
PROMETHEUS_YML = ROOT / "docker" / "prometheus.yml"
METRIC = re.compile(r"\bray_vptsearch_[a-z_]+\b")


def exported_metrics() -> set[str]:
    """The Prometheus names of the metrics vptsearch exports (Ray prefixes ``ray_``)."""
    from vptsearch.search._metrics import NAMES

    return {f"ray_{n}" for n in NAMES.values()}


def dashboard_problems(dash: dict[str, Any]) -> list[str]:
    """Every panel queries Prometheus through ${datasource} and names only exported metrics."""
    exported = exported_metrics()
    problems: list[str] = []
    variables = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    if "datasource" not in variables:
        problems.append("dashboard: no ${datasource} variable")
    panels = dash.get("panels") or []
    if not panels:
        problems.append("dashboard: no panels")
    for p in panels:
        title = p.get("title", p.get("id"))
        if not p.get("targets"):
            problems.append(f"panel {title!r}: no query")
        for t in p.get("targets") or []:
            names = set(METRIC.findall(t.get("expr", "")))
            if not names:
                problems.append(f"panel {title!r}: query {t.get('expr')!r} names no vptsearch metric")
            for n in sorted(names - exported):
                problems.append(f"panel {title!r}: {n} is not a metric vptsearch exports")
            if (t.get("datasource") or p.get("datasource") or {}).get("uid") != "${datasource}":
                problems.append(f"panel {title!r}: query not on the ${{datasource}} variable")
    return problems


def monitoring_problems(services: dict[str, Any]) -> list[str]:
    """Ray head wired to Prometheus + Grafana; both read the head's /tmp/ray as Ray documents."""
    problems: list[str] = []
    env = services.get("ray-head", {}).get("environment") or {}
    for key, svc in (("RAY_PROMETHEUS_HOST", "prometheus"), ("RAY_GRAFANA_HOST", "grafana")):
        if not str(env.get(key, "")).startswith(f"http://{svc}:"):
            problems.append(f"service ray-head: {key} does not point at the {svc} service")
    if not str(env.get("RAY_GRAFANA_IFRAME_HOST", "")).startswith("http://127.0.0.1:"):
        problems.append("service ray-head: RAY_GRAFANA_IFRAME_HOST is not the published 127.0.0.1 port")
    head_vols = services.get("ray-head", {}).get("volumes") or []
    tmp = next((v.split(":")[0] for v in head_vols if str(v).split(":")[1:2] == ["/tmp/ray"]), None)
    if tmp is None:
        problems.append("service ray-head: /tmp/ray is not a shared volume")
    for name in ("prometheus", "grafana"):
        vols = services.get(name, {}).get("volumes") or []
        if f"{tmp}:/tmp/ray:ro" not in vols:
            problems.append(f"service {name}: does not mount the head's /tmp/ray read-only")
    return problems
