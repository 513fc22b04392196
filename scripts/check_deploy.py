#!/usr/bin/env python3
"""Structural check of the deployment artefacts (no Docker engine, no cluster needed).

Checks Dockerfile + .dockerignore, docker-compose.yml and deploy/k8s/ against the repository and
against the pendo-segment binary itself: role names come from the binary's own CLI, every
PENDO_SEGMENT_* setting is validated by `pendo-segment config check` (which rejects unknown
keys), consumed topics come from src/roles.rs and src/kafka/topics.rs.

Prints one line per check ("ok", "FAIL", "warn" or "skip") and exits 1 if any check failed,
2 on a usage problem (missing PyYAML, binary not found).

Usage: scripts/check-deploy [--binary PATH]   (the wrapper builds target/debug/pendo-segment)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - environment problem, reported plainly
    print(
        "error: PyYAML is required: `python3 -m pip install pyyaml` or `apt-get install python3-yaml`",
        file=sys.stderr,
    )
    sys.exit(2)

try:
    import tomllib  # Python 3.11+
except ImportError:  # pragma: no cover
    tomllib = None

# Paths of the monitoring files another part of the repository provides; compose mounts them.
REQUIRED_MONITORING_MOUNTS = {
    "prometheus": ["deploy/prometheus/prometheus.yml", "deploy/prometheus/alerts.yml"],
    "grafana": ["deploy/grafana/provisioning", "deploy/grafana/pendo-segment.json"],
}
# Roles that call Pendo's REST API: need [pendo], so they sit in a compose profile.
PENDO_API_ROLES = {"pendo-poller", "pendo-sink"}
WEBHOOK_ROLES = {"pendo-webhook": "pendo_webhook", "segment-webhook": "segment_webhook"}
METRICS_PORT = 9464
K8S_CONFIG_PATH = "/etc/pendo-segment/pendo-segment.toml"
K8S_SECRET_NAME = "pendo-segment-secrets"
SECRET_RE = re.compile(r"\{\s*(file|env)\s*=\s*\"([^\"]+)\"\s*\}")
NGINX_BODY_SIZE = "nginx.ingress.kubernetes.io/proxy-body-size"
# ingress-nginx's proxy-body-size when the annotation is absent.
NGINX_DEFAULT_BODY_SIZE = "1m"


def nginx_size(text: str) -> int | None:
    """Bytes of an nginx size ("32m", "512k", "1g", "1048576"); 0 = unlimited; None if malformed."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", str(text))
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]


class Checker:
    def __init__(self, repo: Path, binary: Path):
        self.repo = repo
        self.binary = binary
        self.failures = 0
        self.tmp = Path(tempfile.mkdtemp(prefix="check-deploy-"))

    # -- reporting ----------------------------------------------------------------------------
    def ok(self, msg: str) -> None:
        print(f"ok    {msg}")

    def fail(self, msg: str) -> None:
        self.failures += 1
        print(f"FAIL  {msg}")

    def warn(self, msg: str) -> None:
        print(f"warn  {msg}")

    def skip(self, msg: str) -> None:
        print(f"skip  {msg}")

    def check(self, cond: bool, ok_msg: str, fail_msg: str) -> bool:
        if cond:
            self.ok(ok_msg)
        else:
            self.fail(fail_msg)
        return cond

    def rel(self, p: Path) -> str:
        try:
            return str(p.relative_to(self.repo))
        except ValueError:
            return str(p)

    # -- the binary ---------------------------------------------------------------------------
    def run_binary(self, args, env=None, cwd=None):
        clean_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        clean_env.update(env or {})
        return subprocess.run(
            [str(self.binary), *args],
            env=clean_env,
            cwd=str(cwd or self.tmp),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def binary_roles(self) -> list[str]:
        r = self.run_binary(["run", "--role", "__no_such_role__"])
        m = re.search(r"\[possible values: ([^\]]+)\]", r.stderr)
        if not m:
            raise SystemExit(f"error: cannot read the role list from `{self.binary} run --role`: {r.stderr.strip()}")
        return [s.strip() for s in m.group(1).split(",")]

    def source_consumed_topics(self) -> dict[str, list[str]]:
        """role -> default topic names it consumes, from src/roles.rs + src/kafka/topics.rs."""
        roles_rs = (self.repo / "src/roles.rs").read_text()
        topics_rs = (self.repo / "src/kafka/topics.rs").read_text()
        topic_names = dict(re.findall(r"^\s*(\w+)\s*=>\s*\"([a-z0-9.\-]+)\"", topics_rs, re.M))
        variant_names = dict(re.findall(r"Role::(\w+)\s*=>\s*\"([a-z\-]+)\"", roles_rs))
        m = re.search(r"fn consumed_topics\(self\)[^{]*\{(.*?)\n    \}", roles_rs, re.S)
        if not m:
            return {}
        out: dict[str, list[str]] = {}
        for arm in re.finditer(r"((?:Role::\w+\s*\|?\s*)+)=>\s*&\[([^\]]*)\]", m.group(1)):
            topics = [topic_names.get(t, f"?{t}") for t in re.findall(r"TopicId::(\w+)", arm.group(2))]
            for v in re.findall(r"Role::(\w+)", arm.group(1)):
                if v in variant_names:
                    out[variant_names[v]] = topics
        return out

    def config_check(self, label, env, config_text=None, files=None):
        """Runs `config check`; returns the effective configuration (dict) or None."""
        work = Path(tempfile.mkdtemp(dir=self.tmp))
        args = []
        if config_text is not None:
            cfg = work / "pendo-segment.toml"
            cfg.write_text(config_text)
            args = ["--config", str(cfg)]
        r = self.run_binary([*args, "config", "check"], env=env, cwd=work)
        if r.returncode != 0:
            self.fail(f"{label}: `pendo-segment config check` refuses the configuration: {r.stderr.strip()}")
            return None
        self.ok(f"{label}: `pendo-segment config check` accepts its configuration ({len(env)} PENDO_SEGMENT_*/secret variables)")
        if tomllib is None:
            self.skip(f"{label}: role requirements (tomllib needs Python 3.11+)")
            return None
        try:
            return tomllib.loads(r.stdout)
        except Exception as e:  # noqa: BLE001
            self.fail(f"{label}: cannot parse the effective configuration printed by config check: {e}")
            return None

    def secret_stub(self, inside_path: str) -> str:
        """A readable dummy file standing in for a secret mounted at inside_path."""
        p = self.tmp / "secrets" / inside_path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("dummy-secret-for-check-deploy\n")
        return str(p)

    def role_requirements(self, label, role, cfg, command, listens_exposed):
        """What each role's start-up code needs (see src/roles.rs and the roles' task())."""
        obs = str(cfg.get("observability", {}).get("listen", ""))
        self.check(
            obs == f"0.0.0.0:{METRICS_PORT}",
            f"{label}: observability.listen = {obs} (all interfaces, the metrics/probe port)",
            f"{label}: observability.listen must be 0.0.0.0:{METRICS_PORT} (got {obs!r}): probes and Prometheus reach it from outside the container",
        )
        if role in WEBHOOK_ROLES:
            section = cfg.get(WEBHOOK_ROLES[role], {})
            has_secret = bool(section.get("secrets"))
            self.check(
                has_secret or "--insecure-no-auth" in command,
                f"{label}: {WEBHOOK_ROLES[role]}.secrets set",
                f"{label}: {role} needs {WEBHOOK_ROLES[role]}.secrets (or --insecure-no-auth): it refuses to start without",
            )
            listen = str(section.get("listen", ""))
            host, _, port = listen.rpartition(":")
            self.check(
                host == "0.0.0.0" and port in listens_exposed,
                f"{label}: {WEBHOOK_ROLES[role]}.listen = {listen}, port exposed",
                f"{label}: {WEBHOOK_ROLES[role]}.listen = {listen!r} must be 0.0.0.0:<port> with the port exposed ({sorted(listens_exposed)})",
            )
        if role == "segment-sink":
            dry = cfg.get("segment_sink", {}).get("dry_run_file")
            self.check(
                "segment" in cfg or bool(dry),
                f"{label}: segment-sink has " + ("[segment]" if "segment" in cfg else f"dry_run_file {dry}"),
                f"{label}: segment-sink needs [segment] (region, write_key) or segment_sink.dry_run_file",
            )
        if role in PENDO_API_ROLES:
            self.check(
                "pendo" in cfg,
                f"{label}: [pendo] set (region, integration_key)",
                f"{label}: {role} needs [pendo] with region and integration_key",
            )

    # ------------------------------------------------------------------------------------------
    # Dockerfile
    def check_dockerfile(self, path: Path) -> None:
        text = path.read_text()
        lines = [l for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.lstrip().startswith("#")]
        froms = [l for l in lines if l.upper().startswith("FROM ")]
        self.check(len(froms) >= 2, f"{self.rel(path)}: multi-stage ({len(froms)} stages)", f"{self.rel(path)}: expected a builder and a runtime stage")
        self.check(
            any("cargo build" in l and "--release" in l and "--locked" in l and "--bin pendo-segment" in l for l in lines),
            f"{self.rel(path)}: builds with cargo build --release --locked --bin pendo-segment",
            f"{self.rel(path)}: no `cargo build --release --locked --bin pendo-segment`",
        )
        final = text[text.upper().rfind("\nFROM "):]
        user = re.findall(r"^USER\s+(\S+)", final, re.M)
        self.check(
            bool(user) and user[-1].split(":")[0] not in ("0", "root"),
            f"{self.rel(path)}: runtime stage runs as non-root user {user[-1] if user else ''}",
            f"{self.rel(path)}: the runtime stage must end with a non-root USER",
        )
        self.check(
            re.search(r'^ENTRYPOINT\s+\["pendo-segment"\]', final, re.M) is not None,
            f"{self.rel(path)}: ENTRYPOINT [\"pendo-segment\"]",
            f"{self.rel(path)}: the runtime stage needs ENTRYPOINT [\"pendo-segment\"]",
        )
        exposed = set()
        for l in re.findall(r"^EXPOSE\s+(.+)$", final, re.M):
            exposed.update(p.split("/")[0] for p in l.split())
        self.check(
            {"8080", "8081", str(METRICS_PORT)} <= exposed,
            f"{self.rel(path)}: EXPOSE {' '.join(sorted(exposed))}",
            f"{self.rel(path)}: must EXPOSE 8080 8081 {METRICS_PORT} (has {sorted(exposed)})",
        )
        # COPY sources (from the build context) exist and are not excluded by .dockerignore.
        ignore = self.repo / ".dockerignore"
        allowed = None
        if ignore.exists():
            pats = [l.strip() for l in ignore.read_text().splitlines() if l.strip() and not l.startswith("#")]
            if "*" in pats:
                allowed = [p[1:].rstrip("/") for p in pats if p.startswith("!")]
        else:
            self.fail(".dockerignore is missing: the whole repository (target/, secrets) would be sent to the build")
        copied = []
        for l in lines:
            m = re.match(r"^COPY\s+(.*)$", l, re.I)
            if not m or "--from=" in m.group(1):
                continue
            parts = [p for p in m.group(1).split() if not p.startswith("--")]
            copied += parts[:-1]
            for src in parts[:-1]:
                matches = list(self.repo.glob(src)) if any(c in src for c in "*?[") else [self.repo / src]
                if not matches or not all(p.exists() for p in matches):
                    self.fail(f"{self.rel(path)}: COPY source {src} does not exist in the repository")
                    continue
                if allowed is not None and not any(src == a or src.startswith(a + "/") for a in allowed):
                    self.fail(f"{self.rel(path)}: COPY source {src} is excluded by .dockerignore (add a `!{src}` line)")
                    continue
                self.ok(f"{self.rel(path)}: COPY {src} exists and is in the build context")
        # Files the crate compiles in (include_str!/include_bytes!) must be copied into the builder.
        for rs in sorted((self.repo / "src").rglob("*.rs")):
            for inc in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', rs.read_text()):
                target = (rs.parent / inc).resolve()
                relp = self.rel(target)
                self.check(
                    any(relp == c.rstrip("/") or relp.startswith(c.rstrip("/") + "/") for c in copied),
                    f"{self.rel(path)}: {relp} (compiled in by {self.rel(rs)}) is copied into the build",
                    f"{self.rel(path)}: {self.rel(rs)} compiles in {relp}, which no COPY brings into the build",
                )

    # ------------------------------------------------------------------------------------------
    # docker-compose.yml
    def interpolate(self, value: str) -> str:
        """Compose variable interpolation with defaults; unset variables become `dummy`."""
        def sub(m):
            expr = m.group(1) or m.group(2)
            for op in (":-", "-", ":?", "?"):
                if op in expr:
                    name, default = expr.split(op, 1)
                    return default if "-" in op else "dummy"
            return "dummy"
        out = re.sub(r"\$\{([^}]+)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, value.replace("$$", "\x00"))
        return out.replace("\x00", "$")

    def check_compose(self, roles: list[str]) -> None:
        path = self.repo / "docker-compose.yml"
        try:
            doc = yaml.safe_load(path.read_text())
        except Exception as e:  # noqa: BLE001
            self.fail(f"docker-compose.yml does not parse: {e}")
            return
        services = doc.get("services") or {}
        self.ok(f"docker-compose.yml parses ({len(services)} services)")
        top_volumes = set((doc.get("volumes") or {}).keys())
        top_secrets = doc.get("secrets") or {}

        # Operator-provided secret files: never in git.
        for name, spec in top_secrets.items():
            f = (spec or {}).get("file")
            if not f:
                continue
            p = (self.repo / f).resolve()
            tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(p)], cwd=self.repo, capture_output=True).returncode == 0
            self.check(not tracked, f"compose secret {name}: {f} is not tracked by git", f"compose secret {name}: {f} is committed to git: remove it and rotate the secret")
            ignored = subprocess.run(["git", "check-ignore", "-q", str(p)], cwd=self.repo, capture_output=True).returncode == 0
            if not ignored:
                top = Path(os.path.normpath(f)).parts[0]
                self.warn(f"compose secret {name}: {f} is not git-ignored (add `/{top}/` to .gitignore)")

        kafka_internal = set()
        for name, svc in services.items():
            env = svc.get("environment") or {}
            if isinstance(env, dict) and "KAFKA_ADVERTISED_LISTENERS" in env:
                for l in str(env["KAFKA_ADVERTISED_LISTENERS"]).split(","):
                    kafka_internal.add(l.split("://", 1)[-1])

        for name, svc in services.items():
            svc = svc or {}
            label = f"compose service {name}"
            if not self.check("image" in svc or "build" in svc, f"{label}: has image/build", f"{label}: has neither image nor build"):
                continue
            if "build" in svc:
                b = svc["build"]
                ctx = b if isinstance(b, str) else b.get("context", ".")
                dockerfile = "Dockerfile" if isinstance(b, str) else b.get("dockerfile", "Dockerfile")
                ctx_path = self.repo / ctx
                df = ctx_path / dockerfile
                self.check(ctx_path.is_dir() and df.is_file(), f"{label}: build context {ctx} and {dockerfile} exist", f"{label}: build context {ctx} / {dockerfile} not found")
            # Bind mounts and named volumes.
            targets = set()
            for v in svc.get("volumes") or []:
                if isinstance(v, str):
                    parts = v.split(":")
                    src, dst = parts[0], parts[1] if len(parts) > 1 else parts[0]
                    kind = "bind" if src.startswith((".", "/", "~")) else "volume"
                else:
                    src, dst, kind = v.get("source", ""), v.get("target", ""), v.get("type", "volume")
                targets.add(dst)
                if kind == "bind":
                    p = (self.repo / src).resolve()
                    self.check(p.exists(), f"{label}: mounted {src} exists", f"{label}: mounted path {src} does not exist in the repository")
                elif src:
                    self.check(src in top_volumes, f"{label}: volume {src} declared", f"{label}: volume {src} is not declared under top-level volumes")
            for tool, required in REQUIRED_MONITORING_MOUNTS.items():
                if name == tool:
                    mounted = {
                        (v.split(":")[0] if isinstance(v, str) else v.get("source", "")).lstrip("./")
                        for v in svc.get("volumes") or []
                    }
                    for r in required:
                        self.check(r in mounted, f"{label}: mounts {r}", f"{label}: must mount {r}")
            for s in svc.get("secrets") or []:
                sname = s if isinstance(s, str) else s.get("source")
                self.check(sname in top_secrets, f"{label}: secret {sname} declared", f"{label}: secret {sname} is not declared under top-level secrets")
            for dep in (svc.get("depends_on") or {}):
                self.check(dep in services, f"{label}: depends on {dep}", f"{label}: depends_on names unknown service {dep}")

            command = svc.get("command") or []
            if isinstance(command, str):
                command = command.split()
            env = svc.get("environment") or {}
            if isinstance(env, list):
                env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
            env_raw = env
            env = {k: self.interpolate(str(v)) for k, v in env.items()}
            ps_env = {k: v for k, v in env.items() if k.startswith("PENDO_SEGMENT_")}
            role = None
            if "run" in command and "--role" in command:
                role = command[command.index("--role") + 1]
                self.check(role in roles, f"{label}: runs role {role}", f"{label}: `--role {role}` is not a role of the binary ({', '.join(roles)})")
                self.check(name == role, f"{label}: service named after its role (Prometheus finds it by that DNS name)", f"{label}: runs role {role} but is named {name}: deploy/prometheus/prometheus.yml scrapes the service named like the role")
                self.check(
                    str(METRICS_PORT) in [str(p).split(":")[-1].split("/")[0] for p in svc.get("expose") or []],
                    f"{label}: exposes {METRICS_PORT} to the network",
                    f"{label}: must `expose` {METRICS_PORT} (metrics)",
                )
                sgp = str(svc.get("stop_grace_period", "10s"))
                secs = sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"(\d+)([hms])", sgp))
                grace = int(self.interpolate(str(env_raw.get("PENDO_SEGMENT_PROCESSING__SHUTDOWN_GRACE_MS", "30000"))))
                self.check(
                    secs * 1000 > grace,
                    f"{label}: stop_grace_period {sgp} > shutdown_grace_ms {grace} ms",
                    f"{label}: stop_grace_period {sgp} must exceed processing.shutdown_grace_ms ({grace} ms), or SIGKILL cuts the drain short",
                )
                if role not in WEBHOOK_ROLES:
                    self.check(
                        "container_name" not in svc and not svc.get("ports"),
                        f"{label}: scalable (no container_name, no host ports)",
                        f"{label}: container_name/host ports prevent `docker compose up --scale {name}=N`",
                    )
                if role in PENDO_API_ROLES:
                    self.check(bool(svc.get("profiles")), f"{label}: in profile {svc.get('profiles')} (needs a Pendo key)", f"{label}: needs a Pendo integration key: put it in a profile so `docker compose up` works without")
            if command[:2] == ["topics", "apply"]:
                self.check(
                    (svc.get("depends_on") or {}).get("kafka", {}).get("condition") == "service_healthy",
                    f"{label}: waits for a healthy kafka",
                    f"{label}: must depend_on kafka with condition service_healthy",
                )
            if not ps_env:
                continue
            bs = ps_env.get("PENDO_SEGMENT_KAFKA__BOOTSTRAP_SERVERS")
            if bs and kafka_internal:
                self.check(all(b in kafka_internal for b in bs.split(",")), f"{label}: kafka.bootstrap_servers {bs} is an advertised listener", f"{label}: kafka.bootstrap_servers {bs} is not among kafka's advertised listeners {sorted(kafka_internal)}")
            # Secrets: { file = /run/secrets/<name> } must be a secret of this service.
            mounted_secrets = {s if isinstance(s, str) else s.get("target") or s.get("source") for s in svc.get("secrets") or []}
            run_env = {}
            for k, v in ps_env.items():
                def swap(m, k=k):
                    kind, ref = m.group(1), m.group(2)
                    if kind == "file":
                        sname = ref.rsplit("/", 1)[-1]
                        if not (ref.startswith("/run/secrets/") and sname in mounted_secrets):
                            self.fail(f"{label}: {k} reads {ref}, which is not one of this service's secrets ({sorted(mounted_secrets)})")
                        return '{file="%s"}' % self.secret_stub(ref)
                    if ref not in env:
                        self.fail(f"{label}: {k} reads environment variable {ref}, which the service does not set")
                    run_env[ref] = "dummy-secret-for-check-deploy"
                    return m.group(0)
                run_env[k] = SECRET_RE.sub(swap, v)
            cfg = self.config_check(label, run_env)
            if cfg is not None and role:
                exposed = {str(p).split(":")[-1].split("/")[0] for p in (svc.get("ports") or []) + (svc.get("expose") or [])}
                self.role_requirements(label, role, cfg, command, exposed)
                dry = cfg.get("segment_sink", {}).get("dry_run_file") if role == "segment-sink" else None
                if dry:
                    self.check(any(dry.startswith(t.rstrip("/") + "/") for t in targets), f"{label}: dry_run_file {dry} is on a mounted volume", f"{label}: dry_run_file {dry} is not on a volume of the service")
                mf = cfg.get("transform_pendo", {}).get("mapping_file") if role == "transform-pendo" else None
                if mf:
                    self.check(mf in targets or mf.startswith("/etc/pendo-segment/mappings/"), f"{label}: mapping_file {mf} is mounted or in the image", f"{label}: mapping_file {mf} is neither mounted nor in the image")

        # Every role has its own service (one Prometheus job per role).
        for role in roles:
            svc = services.get(role)
            cmd = (svc or {}).get("command") or []
            self.check(svc is not None and "--role" in cmd and cmd[cmd.index("--role") + 1] == role, f"compose: role {role} has its service", f"compose: no service `{role}` running `run --role {role}`")

        # Prometheus scrapes a job per role by the service's DNS name on the metrics port.
        prom = self.repo / "deploy/prometheus/prometheus.yml"
        if prom.exists():
            try:
                pdoc = yaml.safe_load(prom.read_text()) or {}
                jobs = {}
                for sc in pdoc.get("scrape_configs") or []:
                    for sd in sc.get("dns_sd_configs") or []:
                        jobs[sc.get("job_name")] = (sd.get("names") or [], sd.get("port"))
                for role in roles:
                    names, port = jobs.get(role, ([], None))
                    self.check(role in names and port == METRICS_PORT, f"deploy/prometheus/prometheus.yml: job {role} scrapes {role}:{METRICS_PORT}", f"deploy/prometheus/prometheus.yml: no job `{role}` with dns_sd names [{role}] port {METRICS_PORT}")
            except Exception as e:  # noqa: BLE001
                self.fail(f"deploy/prometheus/prometheus.yml does not parse: {e}")

    # ------------------------------------------------------------------------------------------
    # deploy/k8s
    def check_k8s(self, roles: list[str], consumed: dict[str, list[str]]) -> None:
        base = self.repo / "deploy/k8s"
        kpath = base / "kustomization.yaml"
        if not kpath.exists():
            self.fail("deploy/k8s/kustomization.yaml is missing")
            return
        kust = yaml.safe_load(kpath.read_text()) or {}
        resources = kust.get("resources") or []
        docs = []
        for f in sorted(base.glob("*.y*ml")):
            try:
                loaded = [d for d in yaml.safe_load_all(f.read_text()) if d]
            except Exception as e:  # noqa: BLE001
                self.fail(f"{self.rel(f)} does not parse: {e}")
                continue
            self.ok(f"{self.rel(f)} parses ({len(loaded)} documents)")
            if f.name in ("kustomization.yaml", "secret.example.yaml"):
                continue
            if f.name not in resources:
                self.fail(f"{self.rel(f)} is not listed in kustomization.yaml resources")
            docs += [(f.name, d) for d in loaded]
        for r in resources:
            self.check((base / r).exists(), f"kustomization: resource {r} exists", f"kustomization: resource {r} does not exist")
        self.check("secret.example.yaml" not in resources, "kustomization: secret.example.yaml is not applied", "kustomization: secret.example.yaml must not be a resource (placeholder values)")

        if shutil.which("kubectl"):
            r = subprocess.run(["kubectl", "kustomize", str(base)], capture_output=True, text=True, timeout=120)
            self.check(r.returncode == 0, "kubectl kustomize deploy/k8s builds", f"kubectl kustomize deploy/k8s fails: {r.stderr.strip()}")
        else:
            self.skip("kubectl kustomize deploy/k8s (kubectl not installed)")

        # The shared configuration.
        configmaps = {}
        for g in kust.get("configMapGenerator") or []:
            files = {}
            for spec in g.get("files") or []:
                key, _, fname = spec.partition("=") if "=" in spec else (Path(spec).name, "", spec)
                fp = base / fname
                if self.check(fp.exists(), f"configMapGenerator {g['name']}: {fname} exists", f"configMapGenerator {g['name']}: file {fname} does not exist"):
                    files[key] = fp.read_text()
            configmaps[g["name"]] = files
        for _, d in docs:
            if d.get("kind") == "ConfigMap":
                configmaps[d["metadata"]["name"]] = d.get("data") or {}

        secrets = {}
        spath = base / "secret.example.yaml"
        if self.check(spath.exists(), "deploy/k8s/secret.example.yaml exists", "deploy/k8s/secret.example.yaml is missing"):
            for d in yaml.safe_load_all(spath.read_text()):
                if d and d.get("kind") == "Secret":
                    data = {**(d.get("data") or {}), **(d.get("stringData") or {})}
                    secrets[d["metadata"]["name"]] = data
                    placeholders = all("REPLACE-ME" in str(v) for v in data.values())
                    self.check(placeholders, f"secret.example.yaml: {d['metadata']['name']} holds placeholders only", f"secret.example.yaml: {d['metadata']['name']} has a value without REPLACE-ME: templates must not carry real values")

        # Base config (for config check and the KEDA cross-checks).
        base_cfg = None
        toml_text = None
        for files in configmaps.values():
            if "pendo-segment.toml" in files:
                toml_text = files["pendo-segment.toml"]
        if toml_text is None:
            self.fail("no ConfigMap holds pendo-segment.toml")
        else:
            base_cfg = self.config_check("k8s ConfigMap pendo-segment.toml", {}, config_text=toml_text)

        deployments = {d["metadata"]["name"]: d for _, d in docs if d.get("kind") == "Deployment"}
        role_deploy = {}
        webhook_cfg = {}  # Deployment name -> (role, effective webhook section)
        grace_ms = int(((base_cfg or {}).get("processing") or {}).get("shutdown_grace_ms", 30000))
        for dname, d in deployments.items():
            label = f"k8s Deployment {dname}"
            pod = d["spec"]["template"]["spec"]
            pod_labels = d["spec"]["template"]["metadata"].get("labels") or {}
            sel = (d["spec"].get("selector") or {}).get("matchLabels") or {}
            self.check(sel and all(pod_labels.get(k) == v for k, v in sel.items()), f"{label}: selector matches the pod labels", f"{label}: selector {sel} does not match the pod labels {pod_labels}")
            containers = pod.get("containers") or []
            if len(containers) != 1:
                self.fail(f"{label}: expected one container, found {len(containers)}")
                continue
            c = containers[0]
            args = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
            role = args[args.index("--role") + 1] if "--role" in args else None
            if not self.check(role in roles, f"{label}: runs role {role}", f"{label}: `--role {role}` is not a role of the binary ({', '.join(roles)})"):
                continue
            role_deploy[role] = dname
            # Configuration file mounted from the ConfigMap.
            cfg_arg = args[args.index("--config") + 1] if "--config" in args else None
            vols = {v["name"]: v for v in pod.get("volumes") or []}
            mounts = c.get("volumeMounts") or []
            cfg_mount = next((m for m in mounts if m.get("mountPath") == cfg_arg or (cfg_arg or "").startswith(m.get("mountPath", "//") + "/")), None)
            cm_name = ((vols.get(cfg_mount["name"]) or {}).get("configMap") or {}).get("name") if cfg_mount else None
            self.check(
                cfg_arg == K8S_CONFIG_PATH and cm_name in configmaps,
                f"{label}: --config {cfg_arg} from ConfigMap {cm_name}",
                f"{label}: must pass --config {K8S_CONFIG_PATH} mounted from an existing ConfigMap (got --config {cfg_arg}, ConfigMap {cm_name})",
            )
            for v in vols.values():
                if "configMap" in v:
                    self.check(v["configMap"]["name"] in configmaps, f"{label}: ConfigMap {v['configMap']['name']} exists", f"{label}: ConfigMap {v['configMap']['name']} is not defined")
            # Probes.
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                hg = (c.get(probe) or {}).get("httpGet") or {}
                port = ports.get(hg.get("port"), hg.get("port"))
                self.check(hg.get("path") == path and port == METRICS_PORT, f"{label}: {probe} GET {path} on {METRICS_PORT}", f"{label}: {probe} must be httpGet {path} on port {METRICS_PORT} (got {hg})")
            # Hardening and resources.
            psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
            self.check(psc.get("runAsNonRoot") or csc.get("runAsNonRoot"), f"{label}: runAsNonRoot", f"{label}: securityContext.runAsNonRoot must be true")
            self.check(csc.get("readOnlyRootFilesystem") is True, f"{label}: readOnlyRootFilesystem", f"{label}: container securityContext.readOnlyRootFilesystem must be true")
            self.check(csc.get("allowPrivilegeEscalation") is False, f"{label}: no privilege escalation", f"{label}: allowPrivilegeEscalation must be false")
            res = c.get("resources") or {}
            self.check(
                all(k in (res.get(kind) or {}) for kind in ("requests", "limits") for k in ("cpu", "memory")),
                f"{label}: cpu/memory requests and limits",
                f"{label}: needs cpu and memory requests and limits",
            )
            pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
            pre_s = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" and str(pre[1]).isdigit() else 0
            tgps = pod.get("terminationGracePeriodSeconds", 30)
            self.check(
                tgps * 1000 > grace_ms + pre_s * 1000,
                f"{label}: terminationGracePeriodSeconds {tgps} > shutdown_grace_ms {grace_ms} ms + preStop {pre_s} s",
                f"{label}: terminationGracePeriodSeconds {tgps} must exceed processing.shutdown_grace_ms ({grace_ms} ms) + preStop ({pre_s} s)",
            )
            # Secrets referenced exist (in secret.example.yaml) with the keys used.
            secret_mounts = {}
            for v in vols.values():
                if "secret" in v:
                    sn = v["secret"].get("secretName")
                    if self.check(sn in secrets, f"{label}: Secret {sn} (volume) is in secret.example.yaml", f"{label}: Secret {sn} is not defined in secret.example.yaml"):
                        for it in v["secret"].get("items") or []:
                            self.check(it["key"] in secrets[sn], f"{label}: Secret {sn} key {it['key']} exists", f"{label}: Secret {sn} has no key {it['key']}")
                    m = next((m for m in mounts if m["name"] == v["name"]), None)
                    if m:
                        items = v["secret"].get("items")
                        names = [it.get("path", it["key"]) for it in items] if items else list(secrets.get(sn, {}).keys())
                        for n in names:
                            secret_mounts[m["mountPath"].rstrip("/") + "/" + n] = True
            env = {}
            for e in c.get("env") or []:
                if "value" in e:
                    env[e["name"]] = str(e["value"])
                    continue
                vf = e.get("valueFrom") or {}
                if "secretKeyRef" in vf:
                    ref = vf["secretKeyRef"]
                    if self.check(ref["name"] in secrets and ref["key"] in secrets.get(ref["name"], {}), f"{label}: env {e['name']} <- Secret {ref['name']}/{ref['key']}", f"{label}: env {e['name']} references Secret {ref['name']} key {ref['key']}, not in secret.example.yaml"):
                        env[e["name"]] = "dummy-secret-for-check-deploy"
                elif "configMapKeyRef" in vf:
                    ref = vf["configMapKeyRef"]
                    self.check(ref["name"] in configmaps, f"{label}: env {e['name']} <- ConfigMap {ref['name']}", f"{label}: env {e['name']} references undefined ConfigMap {ref['name']}")
                    env[e["name"]] = "dummy"
                else:
                    env[e["name"]] = "dummy-pod-name"
            for ef in c.get("envFrom") or []:
                if "secretRef" in ef:
                    self.check(ef["secretRef"]["name"] in secrets, f"{label}: envFrom Secret {ef['secretRef']['name']}", f"{label}: envFrom Secret {ef['secretRef']['name']} is not in secret.example.yaml")
                if "configMapRef" in ef:
                    self.check(ef["configMapRef"]["name"] in configmaps, f"{label}: envFrom ConfigMap {ef['configMapRef']['name']}", f"{label}: envFrom ConfigMap {ef['configMapRef']['name']} is not defined")
            run_env = {}
            for k, v in env.items():
                if not k.startswith("PENDO_SEGMENT_"):
                    run_env[k] = v  # e.g. a variable a { env = ... } secret names
                    continue
                def swap(m, k=k):
                    kind, ref = m.group(1), m.group(2)
                    if kind == "file":
                        if ref not in secret_mounts:
                            self.fail(f"{label}: {k} reads {ref}, which no secret volume of the pod provides ({sorted(secret_mounts)})")
                        return '{file="%s"}' % self.secret_stub(ref)
                    if ref not in env:
                        self.fail(f"{label}: {k} reads environment variable {ref}, which the pod does not set")
                    run_env[ref] = "dummy-secret-for-check-deploy"
                    return m.group(0)
                run_env[k] = SECRET_RE.sub(swap, v)
            if toml_text is not None:
                # Secrets named in the shared file must be available in every pod.
                def swap_file(m):
                    kind, ref = m.group(1), m.group(2)
                    if kind == "file":
                        if ref not in secret_mounts:
                            self.fail(f"{label}: pendo-segment.toml reads secret file {ref}, which this pod does not mount")
                        return '{file="%s"}' % self.secret_stub(ref)
                    if ref not in env:
                        self.fail(f"{label}: pendo-segment.toml reads environment variable {ref}, which this pod does not set")
                    return m.group(0)
                pod_toml = "\n".join(
                    l if l.lstrip().startswith("#") else SECRET_RE.sub(swap_file, l) for l in toml_text.splitlines()
                )
                cfg = self.config_check(label, run_env, config_text=pod_toml)
                if cfg is not None:
                    exposed = {str(p) for p in ports.values()}
                    self.role_requirements(label, role, cfg, args, exposed)
                    if role in WEBHOOK_ROLES:
                        webhook_cfg[dname] = (role, cfg.get(WEBHOOK_ROLES[role], {}))
                    if role == "segment-sink" and cfg.get("segment_sink", {}).get("dry_run_file"):
                        self.fail(f"{label}: segment_sink.dry_run_file is set: production delivers to Segment (and the root filesystem is read-only)")

        for role in roles:
            self.check(role in role_deploy, f"k8s: role {role} has a Deployment", f"k8s: no Deployment runs role {role}")

        # Services, Ingresses, PDBs select real pods; Ingress TLS secrets are templated.
        def pods_matching(selector):
            return [n for n, d in deployments.items() if selector and all((d["spec"]["template"]["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())]

        services = {d["metadata"]["name"]: d for _, d in docs if d.get("kind") == "Service"}
        for sname, s in services.items():
            matched = pods_matching(s["spec"].get("selector") or {})
            if self.check(bool(matched), f"k8s Service {sname} selects {matched}", f"k8s Service {sname} selects no Deployment's pods"):
                cports = {p.get("name"): p.get("containerPort") for c in deployments[matched[0]]["spec"]["template"]["spec"]["containers"] for p in c.get("ports") or []}
                for p in s["spec"].get("ports") or []:
                    tp = p.get("targetPort", p.get("port"))
                    self.check(tp in cports or tp in cports.values(), f"k8s Service {sname}: targetPort {tp} is a container port", f"k8s Service {sname}: targetPort {tp} is not a port of {matched[0]}")
        ingressed = set()
        for _, d in docs:
            if d.get("kind") != "Ingress":
                continue
            iname = d["metadata"]["name"]
            body_size_text = ((d["metadata"].get("annotations") or {}).get(NGINX_BODY_SIZE))
            body_size = nginx_size(body_size_text if body_size_text is not None else NGINX_DEFAULT_BODY_SIZE)
            if body_size is None:
                self.fail(f"k8s Ingress {iname}: {NGINX_BODY_SIZE} {body_size_text!r} is not an nginx size")
            for t in d["spec"].get("tls") or []:
                sn = t.get("secretName")
                self.check(sn in secrets, f"k8s Ingress {iname}: TLS Secret {sn} is templated in secret.example.yaml", f"k8s Ingress {iname}: TLS Secret {sn} is not in secret.example.yaml")
            for rule in d["spec"].get("rules") or []:
                for p in (rule.get("http") or {}).get("paths") or []:
                    be = (p.get("backend") or {}).get("service") or {}
                    svc = services.get(be.get("name"))
                    port = be.get("port") or {}
                    ok = svc is not None and any(sp.get("name") == port.get("name") or sp.get("port") == port.get("number") for sp in svc["spec"].get("ports") or [])
                    if self.check(ok, f"k8s Ingress {iname}: {p.get('path')} -> Service {be.get('name')}", f"k8s Ingress {iname}: backend {be} is not a Service port"):
                        ingressed.update(pods_matching(svc["spec"].get("selector") or {}))
                        # The proxy must pass every body the webhook accepts (an Actions batch
                        # refused by the ingress never reaches the role, and Segment retries it in vain).
                        for dname in pods_matching(svc["spec"].get("selector") or {}):
                            if dname not in webhook_cfg or body_size is None:
                                continue
                            role, section = webhook_cfg[dname]
                            max_body = int(section.get("max_body_bytes", 0))
                            shown = body_size_text if body_size_text is not None else f"absent, ingress-nginx default {NGINX_DEFAULT_BODY_SIZE}"
                            if body_size == 0 or body_size >= max_body:
                                self.ok(f"k8s Ingress {iname}: {NGINX_BODY_SIZE} ({shown}) passes {role}'s max_body_bytes {max_body}")
                                if body_size > max_body:
                                    self.warn(f"k8s Ingress {iname}: {NGINX_BODY_SIZE} ({shown}) is larger than {role}'s max_body_bytes {max_body}: the role answers 413 beyond it")
                            else:
                                self.fail(f"k8s Ingress {iname}: {NGINX_BODY_SIZE} ({shown} = {body_size} bytes) refuses bodies {role} accepts ({WEBHOOK_ROLES[role]}.max_body_bytes {max_body}); make them agree")
        for role in WEBHOOK_ROLES:
            if role in role_deploy:
                self.check(role_deploy[role] in ingressed, f"k8s: {role} is reachable through an Ingress", f"k8s: no Ingress routes to {role}")

        pdb_targets = set()
        for _, d in docs:
            if d.get("kind") == "PodDisruptionBudget":
                matched = pods_matching((d["spec"].get("selector") or {}).get("matchLabels") or {})
                self.check(bool(matched), f"k8s PDB {d['metadata']['name']} covers {matched}", f"k8s PDB {d['metadata']['name']} selects no Deployment's pods")
                pdb_targets.update(matched)

        # KEDA: one ScaledObject per consumer role, on the role's group and topics.
        group_prefix = ((base_cfg or {}).get("kafka") or {}).get("group_id_prefix", "pendo-segment")
        bootstrap = ((base_cfg or {}).get("kafka") or {}).get("bootstrap_servers")
        topics_cfg = (base_cfg or {}).get("topics") or {}
        prefix = topics_cfg.get("prefix", "")
        overrides = topics_cfg.get("overrides") or {}
        partitions = int(topics_cfg.get("partitions", 6))

        def topic_name(default):
            o = overrides.get(default) or {}
            return o.get("name") or prefix + default

        scaled = {}
        for _, d in docs:
            if d.get("kind") != "ScaledObject":
                continue
            soname = d["metadata"]["name"]
            target = d["spec"]["scaleTargetRef"]["name"]
            if not self.check(target in deployments, f"k8s ScaledObject {soname} targets Deployment {target}", f"k8s ScaledObject {soname} targets unknown Deployment {target}"):
                continue
            role = next((r for r, n in role_deploy.items() if n == target), None)
            scaled[role] = d
            want_topics = [topic_name(t) for t in consumed.get(role, [])]
            triggers = d["spec"].get("triggers") or []
            got_topics = sorted(t["metadata"].get("topic") for t in triggers if t.get("type") == "kafka")
            self.check(sorted(want_topics) == got_topics, f"k8s ScaledObject {soname}: kafka triggers on {got_topics}", f"k8s ScaledObject {soname}: kafka triggers on {got_topics}, role {role} consumes {sorted(want_topics)}")
            for t in triggers:
                md = t.get("metadata") or {}
                self.check(md.get("consumerGroup") == f"{group_prefix}.{role}", f"k8s ScaledObject {soname}: group {md.get('consumerGroup')}", f"k8s ScaledObject {soname}: consumerGroup must be {group_prefix}.{role} (got {md.get('consumerGroup')})")
                if bootstrap:
                    self.check(md.get("bootstrapServers") == bootstrap, f"k8s ScaledObject {soname}: bootstrapServers as in pendo-segment.toml", f"k8s ScaledObject {soname}: bootstrapServers {md.get('bootstrapServers')} differs from kafka.bootstrap_servers {bootstrap}")
            maxp = max([int((overrides.get(t) or {}).get("partitions") or partitions) for t in consumed.get(role, [])] or [partitions])
            self.check(d["spec"].get("maxReplicaCount") == maxp, f"k8s ScaledObject {soname}: maxReplicaCount {maxp} = partitions", f"k8s ScaledObject {soname}: maxReplicaCount {d['spec'].get('maxReplicaCount')} should equal the input partitions ({maxp})")
            self.check("replicas" not in deployments[target]["spec"], f"k8s Deployment {target}: replicas left to KEDA", f"k8s Deployment {target}: sets replicas, which fights the ScaledObject's HPA on every apply")
        for role, topics in consumed.items():
            if topics and role in role_deploy:
                self.check(role in scaled, f"k8s: consumer role {role} autoscales on lag", f"k8s: consumer role {role} has no ScaledObject")
                self.check(role_deploy[role] in pdb_targets, f"k8s: consumer role {role} has a PDB", f"k8s: consumer role {role} has no PodDisruptionBudget")
        for role in WEBHOOK_ROLES:
            if role in role_deploy:
                self.check(role_deploy[role] in pdb_targets, f"k8s: {role} has a PDB", f"k8s: {role} has no PodDisruptionBudget")

    # ------------------------------------------------------------------------------------------
    def run(self) -> int:
        roles = self.binary_roles()
        self.ok(f"roles of {self.rel(self.binary)}: {', '.join(roles)}")
        consumed = self.source_consumed_topics()
        if consumed:
            self.ok("consumed topics (src/roles.rs): " + "; ".join(f"{r}: {', '.join(t)}" for r, t in consumed.items() if t))
        else:
            self.fail("cannot read Role::consumed_topics from src/roles.rs")
        for role, topics in consumed.items():
            for t in topics:
                if t.startswith("?"):
                    self.fail(f"src/roles.rs: {role} consumes TopicId::{t[1:]}, not found in src/kafka/topics.rs")
        df = self.repo / "Dockerfile"
        if self.check(df.exists(), "Dockerfile exists", "Dockerfile is missing"):
            self.check_dockerfile(df)
        mapping = self.repo / "deploy/mappings/pendo-to-segment.toml"
        r = self.run_binary(["mapping", "check", str(mapping)], env={"PENDO_SEGMENT_KAFKA__BOOTSTRAP_SERVERS": "unused:9092"})
        self.check(r.returncode == 0, f"deploy/mappings/pendo-to-segment.toml: {r.stderr.strip()}", f"deploy/mappings/pendo-to-segment.toml: mapping check fails: {r.stderr.strip()}")
        self.check_compose(roles)
        self.check_k8s(roles, consumed)
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.failures:
            print(f"\ncheck-deploy: {self.failures} check(s) FAILED")
            return 1
        print("\ncheck-deploy: all deployment checks passed")
        return 0


def main() -> int:
    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.environ.get("PENDO_SEGMENT_BIN", str(repo / "target/debug/pendo-segment")))
    ap.add_argument("--repo", default=str(repo), help="repository root (default: this script's)")
    a = ap.parse_args()
    binary = Path(a.binary)
    if not os.access(binary, os.X_OK):
        print(f"error: {binary} not found: build it (`cargo build --locked --bin pendo-segment`) or pass --binary", file=sys.stderr)
        return 2
    return Checker(Path(a.repo).resolve(), binary.resolve()).run()


if __name__ == "__main__":
    sys.exit(main())
