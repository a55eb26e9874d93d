"""`mentor loop`: a ModelDeployment's drift -> retrain loop on one machine, as the operator runs
it on a cluster: run the pipeline (as `mentor run`), serve the deployment, send it traffic
(in-domain, then shifted, with the users' feedback), run its drift check on the logged window
and, on drift, the retraining `plan_retraining` makes of it (a DomainDataset with the drifted
traffic, a FineTuneJob, two Evaluations). A candidate that passes both Evaluations replaces the
served model; one that fails keeps the old model (a valid outcome of the loop, not an error).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

import yaml

from mentor_trainer.config.deploy import DriftResult
from mentor_trainer.timestamps import parse_utc

from .api import KINDS
from .builders import render_drift_config
from .builders.config import output_uri
from .builders.inputs import resolve_inputs
from .builders.serving import payload_log_uri
from .local import LocalExecutor, StepResult, example_call
from .resources import Document
from .retraining import (
    Drifted,
    advance,
    gather_templates,
    observe,
    plan_retraining,
    start_refusal,
    target_model,
)
from .rollout import recorded
from .status import now, parse_result

# sent in this order: the shifted traffic is the newest, the window the drift check reads
TRAFFIC_FILES = ("in-domain.jsonl", "shifted.jsonl")
LOG_FLUSH_MARGIN_SECONDS = 2


@dataclass
class Loop:
    executor: LocalExecutor
    deployment: Document
    traffic_dir: Path
    approve: bool = False
    concurrency: int = 4
    out: TextIO | None = None
    on_step: Callable[[StepResult], None] | None = None

    def __post_init__(self) -> None:
        self.out = self.out or self.executor.out
        self.steps: list[StepResult] = []
        self.records: list[dict[str, Any]] = []  # status.retrainings of the loop's deployment

    def run(self, documents: list[Document]) -> bool:
        """The whole loop; False when a step failed (a refused candidate is not a failure)."""
        try:
            self.steps += self.executor.run(documents, on_step=self.on_step)
            if any(s.phase != "Succeeded" for s in self.steps):
                return False
            if not self._send_traffic():
                return False
            drift = self._check_drift()
            if drift is None:
                return False
            if not drift.drifted:
                self._say(f"no drift ({drift.skipped or 'no signal drifted'}): no retraining")
                return True
            return self._retrain(drift)
        finally:
            for server in self.executor.servers.values():
                server.stop()

    # ---- steps

    def _step(self, kind: str, name: str, phase: str, message: str, started: float) -> StepResult:
        return self._record(StepResult(kind, name, phase, message, time.perf_counter() - started))

    def _record(self, step: StepResult) -> StepResult:
        self.steps.append(step)
        if self.on_step:
            self.on_step(step)
        return step

    def _say(self, line: str) -> None:
        self.out.write(f"--> {line}\n")
        self.out.flush()

    @property
    def _body(self) -> dict[str, Any]:
        return self.executor.bodies[(self.deployment.kind, self.deployment.name)]

    @property
    def _spec(self) -> Any:
        return KINDS[self.deployment.kind].spec.model_validate(self._body["spec"])

    @property
    def _url(self) -> str:
        return self.executor.servers[self.deployment.name].url

    def _send_traffic(self) -> bool:
        from .traffic import load_prompts, send_traffic

        for path in (self.traffic_dir / name for name in TRAFFIC_FILES):
            if not path.is_file():
                continue
            started = time.perf_counter()
            self._say(f"sending {path} to {self._url}")
            report = send_traffic(self._url, load_prompts(path), concurrency=self.concurrency)
            if self._step("Traffic", path.stem, "Failed" if report.failed else "Succeeded", str(report), started).phase != "Succeeded":
                return False
        # the server writes its payload log in batches, at least every flushSeconds
        time.sleep(self._spec.logging.flush_seconds + LOG_FLUSH_MARGIN_SECONDS)
        return True

    def _check_drift(self) -> DriftResult | None:
        """The deployment's drift check on its logged traffic, as its CronJob runs it."""
        started = time.perf_counter()
        body, spec = self._body, self._spec
        resolved = resolve_inputs(self.deployment.kind, body["spec"], self.executor.lookup).values
        config = render_drift_config(body, spec, resolved, self.executor.settings, body["status"]["modelVersion"])
        ok, message = self.executor.run_stage(self.deployment, "drift", config)
        if not ok:
            self._step("DriftCheck", self.deployment.name, "Failed", message, started)
            return None
        result = DriftResult.from_wire(parse_result(message))
        drifted = [s.name for s in result.signals if s.drifted]
        verdict = {True: "drifted", False: "no drift", None: f"skipped: {result.skipped}"}[result.drifted]
        detail = f"{verdict} over {result.requests} requests (score {result.score}); drifted signals: {', '.join(drifted) or 'none'}"
        self._step("DriftCheck", self.deployment.name, "Succeeded", detail, started)
        for signal in result.signals:
            mark = "DRIFTED" if signal.drifted else ("-" if signal.drifted is None else "ok")
            self.out.write(f"    {signal.name:<28} score {signal.score!s:<10} threshold {signal.threshold!s:<6} {mark}\n")
        return result

    def _refusal(self, spec: Any, drift: DriftResult) -> str | None:
        """Why this drift starts no retraining (the cluster's rule, then what a local loop needs)."""
        policy = spec.monitoring.retrain
        refusal = start_refusal(self.records, policy, parse_utc(now()), drift.to_wire())
        if refusal:
            return refusal
        if policy.approval == "manual" and not self.approve:
            return "spec.monitoring.retrain.approval is manual: run the loop with --approve to retrain and serve a passing candidate"
        return None

    def _retrain(self, drift: DriftResult) -> bool:
        started = time.perf_counter()
        body, spec = self._body, self._spec
        served = body["status"]["modelVersion"]
        templates = self._refusal(spec, drift) or gather_templates(self.executor.lookup, spec, self.records, served)  # or why not
        if isinstance(templates, str):
            self._step("Retraining", self.deployment.name, "Skipped", templates, started)
            return True
        out = output_uri(spec, body, self.executor.settings)
        drifted = Drifted(f"local-{drift.last_check_time}", drift.window_start, drift.window_end, payload_log_uri(spec, out))
        policy = spec.monitoring.retrain
        plan = plan_retraining(body, policy, drifted, templates, served, served, now())
        if self.approve:  # what the operator does when the approval arrives before training
            next(r for r in plan.resources if r["kind"] == "FineTuneJob")["spec"].pop("suspend", None)
        record = plan.record
        self.records.append(record)
        self._say(f"drift: starting retraining {record['name']} ({record['message']})")
        documents = self._documents(record["name"], plan.resources)
        self.steps += self.executor.run(documents, on_step=self.on_step)
        record = advance(record, observe(self.executor.lookup, record), {}, policy, served, self.approve)
        if record["phase"] != "RollingOut":
            return self._kept(record, started)
        return self._roll_out(record, served, started)

    def _documents(self, name: str, resources: list[dict[str, Any]]) -> list[Document]:
        """The retraining's resources, also written out (as a cluster would hold them)."""
        path = self.executor.root / "retrainings" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump_all(resources, sort_keys=False))
        return [Document(path, index, resource) for index, resource in enumerate(resources)]

    def _kept(self, record: dict[str, Any], started: float) -> bool:
        """The retraining ended without a candidate to serve: the old model stays."""
        failed_stage = any(s.phase == "Failed" for s in self.steps)
        self._say(f"{record['name']}: {record['message']}; still serving {self._body['status']['modelVersion']}")
        self._step("Retraining", record["name"], record["phase"], record["message"], started)
        return not failed_stage

    def _roll_out(self, record: dict[str, Any], served: str, started: float) -> bool:
        """Serve the model the records name now (the candidate), then show both answers."""
        candidate = target_model([record], served)
        question = self._shifted_question()
        old_answer = example_call(self._url, question)
        self.executor.servers.pop(self.deployment.name).stop()
        if self._record(self.executor.run_one(self.deployment, model_version=candidate)).phase != "Succeeded":
            return False
        new_answer = example_call(self._url, question)
        status = {"rollouts": recorded({}, candidate, "replaced", f"replaced {served} (mentor loop)", now())}
        record = advance(record, observe(self.executor.lookup, record), status, self._spec.monitoring.retrain, served, self.approve)
        self.out.write(f"\nthe old model ({served}):\n    {old_answer}\nthe new model ({candidate}):\n    {new_answer}\n\n")
        self._step("Retraining", record["name"], record["phase"], record["message"], started)
        return record["phase"] == "Succeeded"

    def _shifted_question(self) -> dict[str, Any]:
        from .traffic import load_prompts

        files = [self.traffic_dir / name for name in reversed(TRAFFIC_FILES) if (self.traffic_dir / name).is_file()]
        prompt = load_prompts(files[0])[0]["prompt"]
        return {"messages": [{"role": "user", "content": prompt}], "max_tokens": self._spec.max_new_tokens}


def loop_deployment(documents: list[Document]) -> Document | str:
    """The one ModelDeployment the loop serves, or why the files do not make a loop."""
    deployments = [d for d in documents if d.kind == "ModelDeployment"]
    if len(deployments) != 1:
        return f"a loop needs exactly one ModelDeployment ({len(deployments)} found)"
    spec = KINDS["ModelDeployment"].spec.model_validate(deployments[0].body["spec"])
    if spec.runtime != "mentor" or not spec.logging.enabled or spec.monitoring.drift is None:
        return f"{deployments[0].label}: a loop needs runtime mentor, logging enabled and spec.monitoring.drift"
    return deployments[0]
