"""Where a resource may read and write (builders/uris.py), and the claims its pods mount."""

from __future__ import annotations

from mentor_operator.api import KINDS
from mentor_operator.builders import plan_job_children
from mentor_operator.builders.config import output_uri
from mentor_operator.builders.uris import uri_problems
from mentor_operator.settings import Settings

SETTINGS = Settings(artifact_root="s3://art")


def body(kind: str, spec: dict, namespace: str = "team-a") -> dict:
    return {"apiVersion": "mentor.dev/v1alpha1", "kind": kind, "metadata": {"name": "r", "namespace": namespace, "uid": "u1"}, "spec": spec}


def problems(kind: str, spec: dict, resolved: dict | None = None, settings: Settings = SETTINGS, cluster: bool = True) -> list[str]:
    b = body(kind, spec)
    model = KINDS[kind].spec.model_validate(spec)
    return uri_problems(model, b, resolved or {}, output_uri(model, b, settings), settings, cluster)


def dataset(output: str | None = None, source: str = "s3://raw/docs/") -> dict:
    return {"sources": [{"name": "d", "uri": source}], **({"outputUri": output} if output else {})}


def test_defaults_are_fine_in_a_cluster_and_locally():
    assert problems("DomainDataset", dataset()) == []
    ftj = {"baseModel": "s3://models/base/", "datasetRef": {"name": "docs"}}
    assert problems("FineTuneJob", ftj, {"dataset_uri": "s3://art/team-a/domaindataset/docs/u0/"}) == []
    assert problems("DomainDataset", dataset("file:///tmp/out/", "file:///data/docs/"), cluster=False) == []


def test_an_output_that_contains_or_lies_in_an_input_is_refused_naming_it():
    (inside,) = problems("DomainDataset", dataset("s3://art/team-a/docs/", "s3://art/team-a/docs/raw/"))
    assert "spec.outputUri s3://art/team-a/docs/ overlaps spec.sources[0].uri" in inside and "replaces everything" in inside
    (within,) = problems("DomainDataset", dataset("s3://art/team-a/raw/out/", "s3://art/team-a/raw"))
    assert "spec.sources[0].uri" in within
    ftj = {"baseModel": "s3://models/base/", "datasetRef": {"name": "docs"}, "outputUri": "s3://art/team-a/docs/"}
    (resolved,) = problems("FineTuneJob", ftj, {"dataset_uri": "s3://art/team-a/docs/"})
    assert "the resolved dataset_uri s3://art/team-a/docs/" in resolved
    # a sibling whose name merely starts the same is not inside
    assert problems("DomainDataset", dataset("s3://art/team-a/docs-out/", "s3://art/team-a/docs")) == []
    # locally too: publishing would delete the input there as well
    assert problems("DomainDataset", dataset("file:///d/", "file:///d/raw/"), cluster=False)


def test_in_a_cluster_outputs_stay_under_the_namespace_root():
    (outside,) = problems("DomainDataset", dataset("s3://art/team-b/stolen/"))
    assert "spec.outputUri s3://art/team-b/stolen/ lies outside this namespace's artifact roots (s3://art/team-a/)" in outside
    assert problems("DomainDataset", dataset("s3://team-a-bucket/x/")) != []
    allowed = SETTINGS.model_copy(update={"output_roots": ["s3://{namespace}-bucket/", "pvc://shared/{namespace}/"]})
    assert problems("DomainDataset", dataset("s3://team-a-bucket/x/"), settings=allowed) == []
    assert problems("DomainDataset", dataset("pvc://shared/team-a/x/"), settings=allowed) == []
    assert problems("DomainDataset", dataset("pvc://shared/team-b/x/"), settings=allowed) != []


def test_in_a_cluster_file_uris_name_the_container_and_are_refused():
    (source,) = problems("DomainDataset", dataset(source="file:///data/docs/"))
    assert source.startswith("spec.sources[0].uri: file:// is a path inside the stage's container")
    # a custom image may carry its inputs
    assert problems("DomainDataset", {**dataset(source="file:///data/docs/"), "image": "me/with-docs:1"}) == []
    allowed = SETTINGS.model_copy(update={"output_roots": ["file:///out/"]})
    output = problems("DomainDataset", dataset("file:///out/x/"), settings=allowed)
    assert output == ["spec.outputUri: file:// is a path inside the stage's container, lost when it exits; use s3:// or pvc://"]


def test_pods_mount_the_claims_their_pvc_uris_name_read_only_unless_written():
    spec = {"sources": [{"name": "d", "uri": "pvc://docs/raw/"}, {"name": "e", "uri": "pvc://docs/more/"}], "outputUri": "pvc://work/team-a/out/"}
    b = body("DomainDataset", spec)
    plan = plan_job_children(b, KINDS["DomainDataset"].spec.model_validate(spec), {}, SETTINGS, False)
    pod = plan.runner["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert {c: v["persistentVolumeClaim"]["readOnly"] for c, v in claims.items()} == {"docs": True, "work": False}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts[claims["docs"]["name"]] == {"name": claims["docs"]["name"], "mountPath": "/mnt/pvc/docs", "readOnly": True}
    assert mounts[claims["work"]["name"]]["mountPath"] == "/mnt/pvc/work" and not mounts[claims["work"]["name"]]["readOnly"]
    no_claims = plan_job_children(body("DomainDataset", dataset()), KINDS["DomainDataset"].spec.model_validate(dataset()), {}, SETTINGS, False)
    assert not [v for v in no_claims.runner["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]


def test_trainjob_pods_mount_the_claims_through_the_runtime_patch():
    spec = {"baseModel": "pvc://models/base/", "datasetRef": {"name": "d"}, "distributed": {"nodes": 2, "gpusPerNode": 1},
            "outputUri": "pvc://work/team-a/ft/"}
    b = body("FineTuneJob", spec)
    plan = plan_job_children(b, KINDS["FineTuneJob"].spec.model_validate(spec), {"dataset_uri": "s3://art/team-a/d/"}, SETTINGS, True)
    (patch,) = plan.runner["spec"]["runtimePatches"]
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"] for v in pod["volumes"]} == {"models": True, "work": False}
    assert {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]} == {"/mnt/pvc/models", "/mnt/pvc/work"}
    s3_only = {**spec, "baseModel": "s3://m/b/", "outputUri": "s3://art/team-a/ft/"}
    plain = plan_job_children(body("FineTuneJob", s3_only), KINDS["FineTuneJob"].spec.model_validate(s3_only), {"dataset_uri": "s3://art/team-a/d/"}, SETTINGS, True)
    pod = plain.runner["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert "volumes" not in pod and "volumeMounts" not in pod["containers"][0]
