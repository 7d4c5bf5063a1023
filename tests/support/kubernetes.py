"""A real Kubernetes control plane for tests: etcd and kube-apiserver, nothing else.

The binaries are built from the official sources by `make envtest` (scripts/envtest/). This
module starts them on free loopback ports with a certificate authority of its own, a serving
certificate, service-account signing keys and RBAC, writes an admin kubeconfig (a client
certificate in `system:masters`) and gives clients for the admin or for a ServiceAccount (a
token from the TokenRequest API, so RBAC judges exactly what the chart grants).

There is no kubelet, scheduler or controller manager: objects are stored, validated, defaulted
and admitted for real, but no pod ever runs, no Job completes, no garbage is collected and a
deleted namespace stays Terminating (nothing finalizes it).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[2]
ENVTEST = REPO / "scripts" / "envtest"
STARTUP_SECONDS = 90.0  # a cold kube-apiserver on a busy 2-core machine takes 10-30 s
SERVICE_CIDR = "10.0.0.0/24"
CRD_FILE = REPO / "charts" / "flashsale" / "files" / "crds" / "flashsales.flashsale.io.yaml"
CRD_NAME = "flashsales.flashsale.io"


class ControlPlaneError(RuntimeError):
    """The control plane could not be found or started (the message says what to do)."""


def binaries_dir() -> Path:
    """The folder build.sh fills for the versions scripts/envtest/go.mod pins."""
    gomod = (ENVTEST / "go.mod").read_text()
    kube = re.search(r"^\s*k8s\.io/kubernetes (v\S+)$", gomod, re.MULTILINE)
    etcd = re.search(r"^\s*go\.etcd\.io/etcd/server/v3 (v\S+)$", gomod, re.MULTILINE)
    if not (kube and etcd):
        raise ControlPlaneError(f"{ENVTEST / 'go.mod'} pins no k8s.io/kubernetes or etcd")
    folder = REPO / ".cache" / "envtest" / f"k8s-{kube.group(1)}_etcd-{etcd.group(1)}"
    if not ((folder / "kube-apiserver").is_file() and (folder / "etcd").is_file()):
        raise ControlPlaneError(
            f"no kube-apiserver and etcd in {folder}: run `make envtest` (it builds them from "
            "source with Go; `make test` does it by itself)"
        )
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- certificates ----------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Authority:
    """A throw-away certificate authority: it signs the serving and client certificates."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls) -> Authority:
        key = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flashsale-test-ca")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        common_name: str,
        *,
        organizations: tuple[str, ...] = (),
        server_names: tuple[str, ...] = (),
        server_ips: tuple[str, ...] = (),
    ) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM): a server certificate when names or addresses are given,
        else a client certificate whose CN is the user and whose O's are the groups."""
        key = _key()
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        server = bool(server_names or server_ips)
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            alt: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
            alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in server_ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return _pem_cert(cert), _pem_key(key)


# -- the control plane -----------------------------------------------------------------------


@dataclass(frozen=True)
class ControlPlane:
    """A running etcd + kube-apiserver and the files to reach it as the admin."""

    url: str
    folder: Path
    kubeconfig: Path
    ca_file: Path
    admin_cert: Path
    admin_key: Path

    def client(self, *, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
        """An HTTP client of the API server: as the admin (`system:masters`), or as whoever
        `token` belongs to."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if token is None:
            context.load_cert_chain(str(self.admin_cert), str(self.admin_key))
            return httpx.Client(base_url=self.url, verify=context, timeout=timeout)
        return httpx.Client(
            base_url=self.url,
            verify=context,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    def service_account_token(self, namespace: str, name: str, *, seconds: int = 3600) -> str:
        """A token of ServiceAccount `namespace/name` from the TokenRequest API, as a pod of
        that ServiceAccount would get: the API server then sees the user
        `system:serviceaccount:NAMESPACE:NAME` in groups `system:serviceaccounts` and
        `system:serviceaccounts:NAMESPACE`, and RBAC grants it what its bindings say."""
        with self.client() as admin:
            answer = admin.post(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                json={
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {"expirationSeconds": seconds},
                },
            )
        answer.raise_for_status()
        return str(answer.json()["status"]["token"])

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig that logs in as ServiceAccount `namespace/name` (for kopf, kubectl,
        Helm), with that namespace as its default."""
        token = self.service_account_token(namespace, name)
        path.write_text(
            yaml.safe_dump(
                _kubeconfig(
                    self.url, self.ca_file, f"{namespace}-{name}", {"token": token}, namespace
                )
            )
        )
        path.chmod(0o600)
        return path

    def portable_kubeconfig(self, source: Path, path: Path) -> Path:
        """`source` with the CA inlined (certificate-authority-data) and readable by anyone:
        a kubeconfig that names no other file, for a process that sees other paths or runs as
        another user (the image's operator, UID 10001 in a mount namespace of its own)."""
        config = yaml.safe_load(source.read_text())
        for cluster in config["clusters"]:
            ca = Path(cluster["cluster"].pop("certificate-authority"))
            cluster["cluster"]["certificate-authority-data"] = base64.b64encode(
                ca.read_bytes()
            ).decode()
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o644)
        return path

    def kubectl(
        self, *args: str, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run /usr/bin/kubectl (or the one on PATH) against this API server."""
        binary = shutil.which("kubectl") or "/usr/bin/kubectl"
        return subprocess.run(
            [binary, "--kubeconfig", str(kubeconfig or self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=environment_without_kubeconfig(),
        )


def _kubeconfig(
    url: str, ca_file: Path, user: str, credentials: dict[str, str], namespace: str = "default"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "envtest", "cluster": {"server": url, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [
            {"name": user, "context": {"cluster": "envtest", "user": user, "namespace": namespace}}
        ],
        "current-context": user,
    }


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


class _Process:
    """A child process with its output in a log file, stopped for sure on exit."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of pytest does not reach it before teardown
        )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ControlPlaneError(
                f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}"
            )

    def tail(self, lines: int = 30) -> str:
        self._log_file.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self._log_file.close()


def _wait_ready(plane: ControlPlane, processes: list[_Process]) -> None:
    """Until /readyz answers ok (every post-start hook done: RBAC bootstrap roles, the CRD
    controllers); a process that dies meanwhile fails at once with its log."""
    deadline = time.monotonic() + STARTUP_SECONDS
    last = ""
    with plane.client(timeout=5) as client:
        while time.monotonic() < deadline:
            for process in processes:
                process.check_alive()
            try:
                answer = client.get("/readyz")
                if answer.status_code == 200:
                    return
                last = f"/readyz {answer.status_code}: {answer.text[-500:]}"
            except httpx.TransportError as error:
                last = repr(error)
            time.sleep(0.25)
    logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in processes)
    raise ControlPlaneError(
        f"kube-apiserver not ready after {STARTUP_SECONDS:.0f} s ({last})\n{logs}"
    )


@contextmanager
def control_plane() -> Iterator[ControlPlane]:
    """Start etcd and kube-apiserver, yield when /readyz says ok, stop both and remove every
    file they used on the way out, whatever happened."""
    binaries = binaries_dir()
    with ExitStack() as stack:
        folder = Path(tempfile.mkdtemp(prefix="flashsale-envtest-"))
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        pki = folder / "pki"
        pki.mkdir(mode=0o700)

        ca = Authority.create()
        ca_file = _write(pki / "ca.crt", _pem_cert(ca.cert), 0o644)
        service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
        serving_cert, serving_key = ca.issue(
            "kube-apiserver",
            server_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            server_ips=("127.0.0.1", service_ip),
        )
        admin_cert, admin_key = ca.issue("flashsale-test-admin", organizations=("system:masters",))
        sa_key = _key()
        sa_public = sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        files = {
            "serving.crt": serving_cert,
            "serving.key": serving_key,
            "admin.crt": admin_cert,
            "admin.key": admin_key,
            "sa.key": _pem_key(sa_key),
            "sa.pub": sa_public,
        }
        paths = {name: _write(pki / name, data) for name, data in files.items()}

        etcd_client, etcd_peer, secure_port = free_port(), free_port(), free_port()
        etcd = _Process(
            "etcd",
            [
                str(binaries / "etcd"),
                "--name=envtest",
                f"--data-dir={folder / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=envtest=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync=true",  # a throw-away store: no fsync on a shared disk
                "--log-level=warn",
            ],
            folder / "etcd.log",
        )
        stack.callback(etcd.stop)
        apiserver = _Process(
            "kube-apiserver",
            [
                str(binaries / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # no Endpoints for the `kubernetes` Service: it would need a routable address
                "--endpoint-reconciler-type=none",
                f"--secure-port={secure_port}",
                f"--tls-cert-file={paths['serving.crt']}",
                f"--tls-private-key-file={paths['serving.key']}",
                f"--client-ca-file={ca_file}",
                f"--service-account-key-file={paths['sa.pub']}",
                f"--service-account-signing-key-file={paths['sa.key']}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--authorization-mode=RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--cert-dir={folder / 'certs'}",
                "--profiling=false",
            ],
            folder / "kube-apiserver.log",
        )
        stack.callback(apiserver.stop)

        url = f"https://127.0.0.1:{secure_port}"
        kubeconfig = folder / "admin.kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                _kubeconfig(
                    url,
                    ca_file,
                    "admin",
                    {
                        "client-certificate": str(paths["admin.crt"]),
                        "client-key": str(paths["admin.key"]),
                    },
                )
            )
        )
        kubeconfig.chmod(0o600)
        plane = ControlPlane(
            url=url,
            folder=folder,
            kubeconfig=kubeconfig,
            ca_file=ca_file,
            admin_cert=paths["admin.crt"],
            admin_key=paths["admin.key"],
        )
        _wait_ready(plane, [etcd, apiserver])
        yield plane


def wait_for(what: str, check: Any, seconds: float = 60.0) -> Any:
    """Poll `check` until it returns something true (the API server's controllers work
    asynchronously, e.g. a CRD becomes Established after it is stored)."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {seconds:.0f} s")
        time.sleep(0.1)


def apply(client: httpx.Client, path: str, obj: dict[str, Any]) -> httpx.Response:
    """Server-side apply (what `kubectl apply --server-side --force-conflicts` sends)."""
    return client.patch(
        path,
        params={"fieldManager": "flashsale-tests", "force": "true", "fieldValidation": "Strict"},
        content=json.dumps(obj),
        headers={"Content-Type": "application/apply-patch+yaml"},
    )


def established(client: httpx.Client, name: str) -> dict[str, Any] | None:
    answer = client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    if answer.status_code != 200:
        return None
    crd = answer.json()
    conditions = {c["type"]: c for c in (crd.get("status") or {}).get("conditions") or []}
    if conditions.get("Established", {}).get("status") == "True":
        return crd
    return None


def install_crd(client: httpx.Client) -> dict[str, Any]:
    """The FlashSale CRD from its file, applied as `kubectl apply --server-side` would, once
    Established (a test of the chart may have replaced it: this puts the file's back)."""
    crd = yaml.safe_load(CRD_FILE.read_text())
    answer = apply(
        client, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}", crd
    )
    assert answer.status_code in (200, 201), answer.text
    crd = wait_for("Established", lambda: established(client, CRD_NAME))
    # Established comes before the storage serves: a list answers 429 "storage is
    # (re)initializing" for a moment (clients retry it); wait until it answers
    wait_for(
        "served",
        lambda: client.get("/apis/flashsale.io/v1alpha1/flashsales").status_code == 200,
    )
    return crd


class Resources:
    """Where each kind lives on this server (from its discovery documents): the path of an
    object, and whether its kind is namespaced."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self._found: dict[str, dict[str, tuple[str, bool]]] = {}

    def _discover(self, api_version: str) -> dict[str, tuple[str, bool]]:
        if api_version not in self._found:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            answer = self.client.get(base)
            answer.raise_for_status()
            self._found[api_version] = {
                r["kind"]: (r["name"], r["namespaced"])
                for r in answer.json()["resources"]
                if "/" not in r["name"]
            }
        return self._found[api_version]

    def path(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> str:
        plural, namespaced = self._discover(api_version)[kind]
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        where = f"/namespaces/{namespace}" if namespaced else ""
        return f"{base}{where}/{plural}/{name}"

    def of(self, obj: dict[str, Any], namespace: str | None = None) -> str:
        meta = obj["metadata"]
        return self.path(
            obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace", namespace)
        )


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def jobs_completed(plane: ControlPlane, namespace: str) -> Iterator[list[str]]:
    """Stand in for the Job controller, which this control plane lacks: every Job created in
    `namespace` meanwhile is marked succeeded (its status as the controller writes it, through
    the status subresource the server validates). Helm waits for a hook Job to complete, so
    without this a chart's migration hook would hold `helm install` until its timeout. Yields
    the names of the Jobs it completed."""
    done: list[str] = []
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with plane.client() as client:
                while not stop.is_set():
                    jobs = client.get(f"/apis/batch/v1/namespaces/{namespace}/jobs")
                    jobs.raise_for_status()
                    for job in jobs.json()["items"]:
                        if (job.get("status") or {}).get("conditions"):
                            continue
                        now = _now()
                        finished = {
                            "status": "True",
                            "lastProbeTime": now,
                            "lastTransitionTime": now,
                            "reason": "CompletionsReached",
                            "message": "Reached expected number of succeeded pods",
                        }
                        status = {
                            "startTime": now,
                            "completionTime": now,
                            "succeeded": 1,
                            "active": 0,
                            "ready": 0,
                            "uncountedTerminatedPods": {},
                            "conditions": [
                                {"type": "SuccessCriteriaMet", **finished},
                                {"type": "Complete", **finished},
                            ],
                        }
                        name = job["metadata"]["name"]
                        answer = client.patch(
                            f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}/status",
                            content=json.dumps({"status": status}),
                            headers={"Content-Type": "application/merge-patch+json"},
                        )
                        answer.raise_for_status()
                        done.append(name)
                    stop.wait(0.1)
        except BaseException as error:  # reported by the caller, not lost in the thread
            failure.append(error)

    thread = threading.Thread(target=run, name=f"jobs-{namespace}", daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(timeout=30)
    if failure:
        raise failure[0]


def create_namespace(client: httpx.Client, name: str) -> str:
    answer = client.post("/api/v1/namespaces", json={"metadata": {"name": name}})
    assert answer.status_code == 201, answer.text
    return name


def version_of(plane: ControlPlane) -> dict[str, Any]:
    with plane.client() as client:
        answer = client.get("/version")
    answer.raise_for_status()
    return dict(answer.json())


def environment_without_kubeconfig() -> dict[str, str]:
    """The environment minus KUBECONFIG, so nothing reaches a real cluster by accident."""
    return {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
