"""The CRDs are generated from the api models: in sync, structural, documented."""

from __future__ import annotations

from pathlib import Path

import yaml

from mentor_operator.api import KINDS
from mentor_operator.api.crdgen import main as crdgen_main, render_all

CRDS = Path("crds")


def test_crds_match_the_models(tmp_path):
    rendered = render_all()
    on_disk = {p.name: p.read_text() for p in CRDS.glob("*.yaml")}
    assert set(on_disk) == set(rendered), "crds/ has missing or extra files: run `make crds`"
    for name, text in rendered.items():
        assert on_disk[name] == text, f"crds/{name} is out of date: run `make crds`"
    assert crdgen_main(["--check", "--out", str(CRDS)]) == 0
    assert crdgen_main(["--check", "--out", str(tmp_path)]) == 1


def _walk(schema: dict, path: str):
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def _schemas():
    for api in KINDS.values():
        crd = yaml.safe_load((CRDS / f"{api.info.crd_name()}.yaml").read_text())
        version = crd["spec"]["versions"][0]
        yield api, crd, version, version["schema"]["openAPIV3Schema"]


def test_every_field_is_described_and_structural():
    for api, crd, version, root in _schemas():
        for part in ("spec", "status"):
            for path, node in _walk(root["properties"][part], f"{api.info.kind}.{part}"):
                assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
                assert node.get("type") or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
                if not path.endswith("[]") and not path.endswith("{}"):
                    assert node.get("description"), f"{path} has no description"


def test_names_columns_and_subresources():
    short = set()
    for api, crd, version, root in _schemas():
        names = crd["spec"]["names"]
        assert names["categories"] == ["mentor"]
        assert crd["spec"]["group"] == "mentor.dev" and version["name"] == "v1alpha1"
        assert version["subresources"] == {"status": {}}
        columns = [c["name"] for c in version["additionalPrinterColumns"]]
        assert columns[0] == "Phase" and columns[-1] == "Age" and len(columns) >= 3
        short.update(names["shortNames"])
        conditions = root["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert short == {"dds", "ftj", "rlhf", "eval", "md"}


def test_cel_rules_and_immutability_reach_the_crd():
    ftj = yaml.safe_load((CRDS / "finetunejobs.mentor.dev.yaml").read_text())
    spec = ftj["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert "self.method != 'qlora' || has(self.lora)" in rules
    assert spec["properties"]["baseModel"]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    assert spec["properties"]["distributed"]["properties"]["nodes"]["minimum"] == 1
    # nested blocks default to their model's defaults, so the API server fills them in
    assert spec["properties"]["hyperparameters"]["default"]["learningRate"] == 0.0002
