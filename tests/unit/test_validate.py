"""`mentor validate`: the CRDs' rules, offline, one line per problem naming file, resource and field."""

from __future__ import annotations

import pytest
import yaml

from mentor_operator.cli import main
from tests.bad_resources import CASES, GOOD, BadCase


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_resource_is_reported_with_its_field(case: BadCase, tmp_path, capsys):
    path = tmp_path / f"{case.id}.yaml"
    path.write_text(yaml.safe_dump(case.body(case.id)))
    assert main(["validate", "-f", str(path)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines, "no problem reported"
    assert any(line.startswith(f"{path}: {case.kind}/{case.id}: {case.field}") for line in lines), lines


def test_good_resources_pass_and_problems_are_one_line_each(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(
        yaml.safe_dump_all(
            [{"apiVersion": "mentor.dev/v1alpha1", "kind": kind, "metadata": {"name": "r"}, "spec": spec} for kind, spec in GOOD.items()]
            + [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ignored"}}]
        )
    )
    assert main(["validate", "-f", str(good)]) == 0
    assert "5 resource(s) valid" in capsys.readouterr().out

    bad = tmp_path / "bad"
    bad.mkdir()
    for case in CASES[:3]:
        (bad / f"{case.id}.yaml").write_text(yaml.safe_dump(case.body(case.id)))
    (bad / "broken.yaml").write_text("kind: [unclosed\n")
    assert main(["validate", "-f", str(bad)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert any("broken.yaml" in line and "cannot read YAML" in line for line in lines)


def test_examples_are_valid(capsys):
    assert main(["validate", "-f", "examples/"]) == 0


def test_reference_cycle_is_reported(tmp_path, capsys):
    def rlhf(name: str, policy: str) -> dict:
        return {"apiVersion": "mentor.dev/v1alpha1", "kind": "RLHFJob", "metadata": {"name": name},
                "spec": {"algorithm": "dpo", "policyRef": {"kind": "RLHFJob", "name": policy}, "datasetRef": {"name": "d"}}}

    path = tmp_path / "cycle.yaml"
    path.write_text(yaml.safe_dump_all([rlhf("a", "b"), rlhf("b", "a")]))
    assert main(["validate", "-f", str(path)]) == 1
    assert "reference cycle: RLHFJob/a -> RLHFJob/b -> RLHFJob/a" in capsys.readouterr().out
