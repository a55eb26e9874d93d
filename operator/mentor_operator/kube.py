"""A thin JSON client over urllib3: server-side apply, status patches and reads, with kopf's
credentials (its kubeconfig and service-account logins). Plain dicts, as kopf hands out; not
the kubernetes client package, whose generated models cost the operator tens of MB of RSS."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import kopf
import urllib3
import yaml

from .api import API_VERSION, KINDS

FIELD_MANAGER = "mentor-operator"

PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Pod": "pods",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Event": "events",
    "Job": "jobs",
    "CronJob": "cronjobs",
    "TrainJob": "trainjobs",
    "InferenceService": "inferenceservices",
    **{kind: api.info.plural for kind, api in KINDS.items()},
}
API_VERSIONS = {kind: API_VERSION for kind in KINDS}


class ConfigError(Exception):
    """No usable cluster configuration: no service account, no readable kubeconfig."""


class ApiException(Exception):
    """An error answer of the API server; `status` and `reason` as kubernetes' ApiException."""

    def __init__(self, status: int, reason: str, body: bytes):
        super().__init__(f"{status} {reason}: {body[:500].decode(errors='replace')}")
        self.status = status
        self.reason = reason
        self.body = body


@contextlib.contextmanager
def _kubeconfig_env(path: str | None) -> Iterator[None]:
    """kopf's kubeconfig login reads only $KUBECONFIG: point it at `path` for one call."""
    before = os.environ.get("KUBECONFIG")
    if path:
        os.environ["KUBECONFIG"] = path
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = before


def _uses_plugin(kubeconfig: str | None) -> bool:
    """Does the kubeconfig's current user log in through an exec or auth-provider plugin (EKS,
    GKE, OIDC)? kopf's own kubeconfig login runs neither; the kubernetes client does."""
    paths = (kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")).split(os.pathsep)
    configs = [yaml.safe_load(open(path)) or {} for path in paths if os.path.isfile(path)]
    context = next((c.get("current-context") for c in configs if c.get("current-context")), None)
    user = next((ctx["context"].get("user") for c in configs for ctx in c.get("contexts") or [] if ctx.get("name") == context), None)
    entry = next((u.get("user") or {} for c in configs for u in c.get("users") or [] if u.get("name") == user), {})
    return "exec" in entry or "auth-provider" in entry


def _login_via_client(kubeconfig: str | None) -> kopf.ConnectionInfo:
    """Credentials from the kubernetes client, which runs the plugin (imported only here)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    header = configuration.api_key.get("BearerToken") or configuration.api_key.get("authorization") or ""
    token = header.removeprefix("Bearer ").strip()
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def load_config(kubeconfig: str | None = None) -> kopf.ConnectionInfo:
    """The pod's service account in a cluster, else `kubeconfig` ($KUBECONFIG, ~/.kube/config),
    read by kopf's own logins, so the operator's watches and its writes share credentials.
    A user's kubeconfig with an exec or auth-provider plugin logs in through the kubernetes
    client (`mentor approve` on EKS or GKE); the operator never needs it."""
    settings = kopf.OperatorSettings()
    if kubeconfig is None and (info := kopf.login_with_service_account(settings=settings)):
        return info
    try:
        with _kubeconfig_env(kubeconfig):
            info = _login_via_client(kubeconfig) if _uses_plugin(kubeconfig) else kopf.login_with_kubeconfig(settings=settings)
    except (OSError, KeyError, ValueError, yaml.YAMLError, kopf.LoginError) as error:
        raise ConfigError(f"kubeconfig {kubeconfig or os.environ.get('KUBECONFIG', '~/.kube/config')}: {error}") from error
    if info is None:
        raise ConfigError("no service account token and no kubeconfig ($KUBECONFIG, ~/.kube/config)")
    return info


def object_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{root}/namespaces/{namespace}/{PLURALS[kind]}" if namespace else f"{root}/{PLURALS[kind]}"
    return f"{path}/{name}" if name else path


class Kube:
    """One pooled connection per concurrent caller (`pool_size`): no TLS handshake per request."""

    def __init__(self, kubeconfig: str | None = None, pool_size: int = 10):
        self.kubeconfig = kubeconfig
        self.pool_size = pool_size
        self._connect()

    def _connect(self) -> None:
        info = load_config(self.kubeconfig)
        self.server = info.server.rstrip("/")
        self.headers = {"Accept": "application/json", **info.as_http_headers()}
        pool: dict[str, Any] = {
            "maxsize": self.pool_size,
            # a hung API server must not hold a handler thread (nor the operator's shutdown)
            "timeout": urllib3.Timeout(connect=10, read=60),
            "ssl_context": info.as_ssl_context() if self.server.startswith("https:") else None,
        }
        self.http = urllib3.ProxyManager(info.proxy_url, **pool) if info.proxy_url else urllib3.PoolManager(**pool)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, Any]] | None = None,
    ) -> dict[str, Any] | None:
        """One API call; returns the decoded JSON body, or None for 404."""
        url = self.server + path + (f"?{urlencode(query)}" if query else "")
        payload = body if body is None or isinstance(body, str) else json.dumps(body)
        response = self._send(method, url, payload, content_type)
        if response.status == 401:
            # a service-account token is rotated on disk (bound tokens expire): log in again, once
            self._connect()
            response = self._send(method, url, payload, content_type)
        if response.status == 404:
            return None
        if response.status >= 400:
            raise ApiException(status=response.status, reason=response.reason or "", body=response.data)
        return json.loads(response.data) if response.data else {}

    def _send(self, method: str, url: str, payload: str | None, content_type: str) -> urllib3.BaseHTTPResponse:
        return self.http.request(method, url, body=payload, headers={**self.headers, "Content-Type": content_type})

    def get(self, kind: str, namespace: str, name: str, api_version: str | None = None) -> dict[str, Any] | None:
        return self.request("GET", object_path(api_version or API_VERSIONS[kind], kind, namespace, name))

    def list(
        self, kind: str, namespace: str, api_version: str, label_selector: str | None = None, field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = [(key, value) for key, value in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if value]
        result = self.request("GET", object_path(api_version, kind, namespace), query=query) or {}
        return result.get("items", [])

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply: idempotent, so a restarted operator never makes a second copy."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        result = self.request(
            "PATCH",
            path,
            body=json.dumps(obj),
            content_type="application/apply-patch+yaml",
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        )
        assert result is not None, f"apply of {path} returned 404"
        return result

    def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """POST; None when it exists already (409), so it doubles as a cheap existence check."""
        meta = obj["metadata"]
        try:
            return self.request("POST", object_path(obj["apiVersion"], obj["kind"], meta.get("namespace")), body=obj)
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise

    def patch_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any] | None:
        """Merge `status` in; with `resource_version`, only into that version (409 Conflict if
        the object changed since)."""
        path = object_path(API_VERSIONS[kind], kind, namespace, name) + "/status"
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return self.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any], api_version: str) -> dict[str, Any] | None:
        path = object_path(api_version, kind, namespace, name)
        return self.request("PATCH", path, body=patch, content_type="application/merge-patch+json")

    def crd_installed(self, name: str) -> bool:
        return self.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}") is not None
