"""Policy checks on the rendered deployment files (see scripts/check-deploy)."""
import re
import sys

import yaml

OFFICIAL = re.compile(r"^(postgres|rabbitmq):[\w.-]+$")
BUILT_HERE = {"terrapod-vcs:local", "terrapod-vcs-sim:local"}

failures = []


def check_compose(path):
    compose = yaml.safe_load(open(path))
    services = compose["services"]
    for name, service in services.items():
        image = service.get("image")
        if image not in BUILT_HERE and not (image and OFFICIAL.match(image)):
            failures.append(f"compose service {name}: image {image!r} is neither built here nor official")
        if image in BUILT_HERE and "build" not in service and not any(
            s.get("image") == image and "build" in s for s in services.values()
        ):
            failures.append(f"compose service {name}: {image} is never built")
    for required in ["postgres", "rabbitmq", "migrate", "api", "poller", "vcs-sim"]:
        if required not in services:
            failures.append(f"compose lacks service {required}")
    if services.get("poller", {}).get("deploy", {}).get("replicas") != 2:
        failures.append("compose runs the poller with two replicas")
    for name in ["api", "poller"]:
        env = services[name]["environment"]
        if not all(key.startswith("TERRAPOD_") for key in env):
            failures.append(f"compose service {name} has a variable outside TERRAPOD_*")
        for dependency, condition in [("migrate", "service_completed_successfully"), ("rabbitmq", "service_healthy")]:
            if services[name]["depends_on"].get(dependency, {}).get("condition") != condition:
                failures.append(f"compose service {name} must wait for {dependency} ({condition})")


def check_kubernetes(path):
    documents = [d for d in yaml.safe_load_all(open(path)) if d]
    kinds = {d["kind"] for d in documents}
    for kind in ["Deployment", "Service", "Job", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"]:
        if kind not in kinds:
            failures.append(f"{path}: no {kind}")
    for document in documents:
        spec = document.get("spec", {})
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
        if not template:
            continue
        name = document["metadata"]["name"]
        pod = template["spec"]
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            failures.append(f"{name}: pod must run as non-root")
        for container in pod["containers"]:
            security = container.get("securityContext", {})
            if not security.get("readOnlyRootFilesystem") or security.get("allowPrivilegeEscalation", True):
                failures.append(f"{name}/{container['name']}: must be read-only without privilege escalation")
            if "requests" not in container.get("resources", {}):
                failures.append(f"{name}/{container['name']}: needs resource requests")
            if name == "terrapod-poller":
                # Archives stream through temporary files: a read-only root needs a
                # bounded writable /tmp.
                mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
                volumes = {v["name"]: v for v in pod.get("volumes", [])}
                tmp = [n for n, p in mounts.items() if p == "/tmp"]
                if not tmp or "sizeLimit" not in volumes.get(tmp[0], {}).get("emptyDir", {}):
                    failures.append(f"{name}/{container['name']}: needs an emptyDir with a sizeLimit at /tmp")
            if document["kind"] == "Deployment":
                for probe, path_ in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
                    if container.get(probe, {}).get("httpGet", {}).get("path") != path_:
                        failures.append(f"{name}/{container['name']}: {probe} must ask {path_}")


check_compose(sys.argv[1])
for rendered in sys.argv[2:]:
    check_kubernetes(rendered)
if failures:
    print("\n".join(failures), file=sys.stderr)
    sys.exit(1)
