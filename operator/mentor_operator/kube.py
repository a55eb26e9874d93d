"""A thin JSON client over the kubernetes package's ApiClient: server-side apply, status
patches and reads, without the generated models (plain dicts are cheaper and match kopf)."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

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


def load_config(kubeconfig: str | None = None) -> client.ApiClient:
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        return client.ApiClient(configuration)


def object_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{root}/namespaces/{namespace}/{PLURALS[kind]}" if namespace else f"{root}/{PLURALS[kind]}"
    return f"{path}/{name}" if name else path


class Kube:
    def __init__(self, api_client: client.ApiClient):
        self.api_client = api_client

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, Any]] | None = None,
    ) -> dict[str, Any] | None:
        """One API call; returns the decoded JSON body, or None for 404."""
        method, url, headers, payload, post = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(method, url, header_params=headers, body=payload, post_params=post)
        data = response.read()
        if response.status == 404:
            return None
        if response.status >= 400:
            raise ApiException(status=response.status, reason=response.reason, body=data)
        return json.loads(data) if data else {}

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
