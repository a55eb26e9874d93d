"""`mentor approve`: the annotation it sets and its one-line errors, without a cluster."""

from __future__ import annotations

import pytest

from mentor_operator import cli
from mentor_operator.retraining import APPROVE_ANNOTATION


class FakeKube:
    patched: list = []

    def __init__(self, api_client):
        pass

    def patch(self, kind, namespace, name, patch, api_version):
        FakeKube.patched.append((kind, namespace, name, patch, api_version))
        return None if name == "missing" else {"metadata": {"name": name}}


@pytest.fixture
def kube(monkeypatch):
    import mentor_operator.kube

    FakeKube.patched = []
    monkeypatch.setattr(mentor_operator.kube, "Kube", FakeKube)
    monkeypatch.setattr(mentor_operator.kube, "load_config", lambda kubeconfig: kubeconfig)
    return FakeKube


@pytest.mark.parametrize(("args", "value"), [([], "latest"), (["--retraining", "serve-rt-1a2b3c4d"], "serve-rt-1a2b3c4d")])
def test_approve_annotates_the_deployment(kube, capsys, args, value):
    assert cli.main(["approve", "serve", "-n", "team", *args]) == 0
    assert kube.patched == [("ModelDeployment", "team", "serve", {"metadata": {"annotations": {APPROVE_ANNOTATION: value}}},
                             "mentor.dev/v1alpha1")]
    assert f"annotated ModelDeployment team/serve with {APPROVE_ANNOTATION}={value}" in capsys.readouterr().out


def test_a_missing_deployment_is_one_line(kube, capsys):
    assert cli.main(["approve", "missing"]) == 1
    assert capsys.readouterr().err == "mentor approve: ModelDeployment default/missing not found\n"


def test_no_kubeconfig_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert cli.main(["approve", "serve", "--kubeconfig", str(tmp_path / "absent")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mentor approve: no cluster configuration: ") and err.count("\n") == 1
