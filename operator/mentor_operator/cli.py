"""`mentor`: run the operator, validate resource files, run a pipeline or its drift -> retrain
loop locally, send traffic to a served model, or approve a retraining."""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import sys
from pathlib import Path


def _limit_malloc_arenas() -> None:
    """glibc gives each thread of the handler pool its own malloc arena; two arenas keep the
    operator's RSS flat under load at no measurable cost (same as MALLOC_ARENA_MAX=2)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # -8 = M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc


def _operator(args: argparse.Namespace) -> int:
    # kopf imports the kubernetes client package whenever it is installed (the serving extra
    # brings it) for isinstance checks on its models and a login through it: tens of MB of
    # RSS the operator has no use for (kube.py talks JSON). A None entry makes that optional
    # import fail as if the package were absent, and kopf logs in with its own service-account
    # and kubeconfig logins, the same as kube.load_config.
    sys.modules.setdefault("kubernetes", None)
    import kopf

    _limit_malloc_arenas()

    from . import handlers  # noqa: F401  (registers the handlers)
    from .settings import Settings

    kopf.configure(verbose=args.verbose)
    settings = Settings.from_env()
    namespaces = args.namespace or ([] if args.all_namespaces else settings.namespaces)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=args.standalone,
        peering_name=args.peering or settings.peering,
        # Equal priorities make every replica pause; a random one per process makes exactly
        # one replica act, and another take over when it dies.
        priority=args.priority if args.priority is not None else random.randint(1, 2**31 - 1),
        liveness_endpoint=args.liveness,
    )
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .resources import load, order, validate_all

    documents, problems = load(args.file)
    problems += validate_all(documents)
    if not problems:
        try:
            order(documents)
        except ValueError as error:
            print(error)
            return 1
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{len(documents)} resource(s) valid")
    return 1 if problems else 0


def _ordered(files: list[str]) -> list | None:
    """The valid resources of `files` in dependency order (None: the problems were printed)."""
    from .resources import load, order, validate_all

    documents, problems = load(files)
    problems += validate_all(documents)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return None
    if not documents:
        print("no mentor.dev resources found", file=sys.stderr)
        return None
    return order(documents)


def _report(step) -> None:
    line = f"<== {step.kind}/{step.name}: {step.phase} in {step.seconds:.1f}s"
    print(line + (f": {step.message}" if step.message else ""))


def _run(args: argparse.Namespace) -> int:
    from .local import LocalExecutor

    ordered = _ordered(args.file)
    if ordered is None:
        return 1
    print(f"running {len(ordered)} resource(s) under {args.root}: " + " -> ".join(d.label for d in ordered))
    executor = LocalExecutor(Path(args.root), serve_seconds=args.serve_seconds, serve_port=args.port, example_question=args.ask)
    results = executor.run(ordered, on_step=_report)
    _summary(results)
    return 0 if all(step.phase == "Succeeded" for step in results) else 1


def _summary(results: list) -> None:
    """The table of steps, then each Evaluation's metrics and a few answers."""
    print(f"\n{'KIND':<16} {'NAME':<28} {'PHASE':<10} {'SECONDS':>8}  OUTPUT")
    for step in results:
        # an Evaluation's status names the model it evaluated; its own output is the report
        own = ("reportUri",) if step.kind == "Evaluation" else ("modelUri",)
        output = next((step.status[k] for k in (*own, "outputUri") if step.status.get(k)), "")
        print(f"{step.kind:<16} {step.name:<28} {step.phase:<10} {step.seconds:>8.1f}  {output}")
    for step in results:
        if step.kind == "Evaluation" and step.status.get("metrics"):
            print(evaluation_table(step.name, step.status))
            print(sample_answers(step.status, SAMPLE_ANSWERS))


def _loop(args: argparse.Namespace) -> int:
    from .local import LocalExecutor
    from .loop import TRAFFIC_FILES, Loop, loop_deployment

    ordered = _ordered(args.file)
    if ordered is None:
        return 1
    deployment = loop_deployment(ordered)
    traffic_dir = Path(args.traffic_dir)
    if not any((traffic_dir / name).is_file() for name in TRAFFIC_FILES):
        deployment = f"{traffic_dir} holds none of {', '.join(TRAFFIC_FILES)}"
    if isinstance(deployment, str):
        print(deployment, file=sys.stderr)
        return 1
    print(f"looping {deployment.label} under {args.root}: " + " -> ".join(d.label for d in ordered)
          + f" -> traffic from {traffic_dir} -> drift check -> retraining on drift")
    executor = LocalExecutor(Path(args.root), serve_port=args.port, example_question=args.ask, keep_serving=True)
    loop = Loop(executor, deployment, traffic_dir, approve=args.approve, concurrency=args.concurrency, on_step=_report)
    ok = loop.run(ordered)
    print(f"\n{'STEP':<30} {'NAME':<36} {'PHASE':<10} {'SECONDS':>8}")
    for step in loop.steps:
        print(f"{step.kind:<30} {step.name:<36} {step.phase:<10} {step.seconds:>8.1f}")
    for step in loop.steps:
        if step.kind == "Evaluation" and step.status.get("metrics"):
            print(evaluation_table(step.name, step.status))
    return 0 if ok else 1


def _traffic(args: argparse.Namespace) -> int:
    from .traffic import load_prompts, send_traffic

    try:
        prompts = load_prompts(Path(args.file))
    except (OSError, ValueError) as error:
        print(f"mentor traffic: {error}", file=sys.stderr)
        return 1
    report = send_traffic(args.url, prompts, count=args.count, concurrency=args.concurrency, max_tokens=args.max_tokens)
    print(report)
    return 0 if report.failed == 0 else 1


def _approve(args: argparse.Namespace) -> int:
    """Annotate the ModelDeployment; the operator consumes the annotation (handlers/retrain.py)."""
    from .api import API_VERSION
    from .kube import ApiException, ConfigError, Kube
    from .retraining import APPROVE_ANNOTATION

    value = args.retraining or "latest"
    target = f"ModelDeployment {args.namespace}/{args.deployment}"
    try:
        kube = Kube(args.kubeconfig)
        patched = kube.patch("ModelDeployment", args.namespace, args.deployment,
                             {"metadata": {"annotations": {APPROVE_ANNOTATION: value}}}, API_VERSION)
    except ConfigError as error:
        print(f"mentor approve: no cluster configuration: {error}", file=sys.stderr)
        return 1
    except ApiException as error:
        print(f"mentor approve: {target}: the API server answered {error.status} {error.reason}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - connection errors (urllib3's) become one line
        print(f"mentor approve: cannot reach the cluster: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    if patched is None:
        print(f"mentor approve: {target} not found", file=sys.stderr)
        return 1
    print(f"annotated {target} with {APPROVE_ANNOTATION}={value}: the operator approves "
          + (f"retraining {value}" if args.retraining else "its newest retraining awaiting approval"))
    return 0


SAMPLE_ANSWERS = 3


def sample_answers(status: dict, count: int) -> str:
    """The first held-out questions with the baseline's and the model's answers side by side
    (from the evaluation's local metrics.json)."""
    path = Path(str(status.get("outputUri", "")).removeprefix("file://"), "metrics.json")
    if not path.is_file():
        return ""
    rows = json.loads(path.read_text()).get("answers") or []
    lines = []
    for row in rows[:count]:
        lines += [f"\nQ: {row['question']}", f"  reference:       {row['reference']}"]
        for key, label in (("baseline", "baseline"), ("candidate", "model"),
                           ("baselineRag", "baseline + RAG"), ("candidateRag", "model + RAG")):
            if key in row:
                lines.append(f"  {label + ':':<16} {' '.join(row[key].split())[:200]}")
    return "\n".join(lines)


def evaluation_table(name: str, status: dict) -> str:
    """An Evaluation's metrics against its baseline, as the quickstart ends with."""
    comparison = status.get("comparison") or {}
    verdict = {True: "passed", False: "did not pass", None: "no verdict"}[status.get("passed")]
    lines = [f"\nEvaluation {name}: {verdict}", f"{'METRIC':<30} {'MODEL':>9} {'BASELINE':>9} {'DELTA':>9}  {'95% CI':<20} {'P':>7}"]

    def number(value: float | None) -> str:
        return f"{value:>9.4g}" if value is not None else f"{'-':>9}"

    for metric, value in sorted(status["metrics"].items()):
        c = comparison.get(metric) or {}
        interval = f"[{c['ciLow']:.3g}, {c['ciHigh']:.3g}]" if "ciLow" in c else "-"
        p = f"{c['pValue']:>7.3g}" if "pValue" in c else f"{'-':>7}"
        lines.append(f"{metric:<30} {number(value)} {number(c.get('baseline'))} {number(c.get('delta'))}  {interval:<20} {p}")
    lines += [f"  failed gate: {gate}" for gate in status.get("failedGates") or []]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mentor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    op = sub.add_parser("operator", help="Run the kopf operator against the current kubeconfig.")
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", help="Namespace or glob to watch (repeatable).")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="Watch all namespaces (default unless MENTOR_NAMESPACES is set).")
    op.add_argument("--standalone", action="store_true", help="No peering (a single replica).")
    op.add_argument("--peering", default=None, help="Peering name shared by replicas (default: MENTOR_PEERING or mentor).")
    op.add_argument("--priority", type=int, default=None, help="Peering priority; the highest acts (default: random).")
    op.add_argument("--liveness", default=None, help="Liveness endpoint, e.g. http://0.0.0.0:8081/healthz.")
    op.add_argument("-v", "--verbose", action="store_true")
    op.set_defaults(func=_operator)

    val = sub.add_parser("validate", help="Check resource files offline with the CRDs' rules.")
    val.add_argument("-f", "--file", action="append", required=True, help="File or directory (repeatable).")
    val.set_defaults(func=_validate)

    run = sub.add_parser("run", help="Run a pipeline's stages locally in dependency order.")
    run.add_argument("-f", "--file", action="append", required=True, help="File or directory (repeatable).")
    run.add_argument("--root", default=".mentor", help="Local artifact root (default: ./.mentor).")
    run.add_argument(
        "--serve-seconds", type=float, default=None,
        help="Keep a ModelDeployment serving this long after its example request (default: until Ctrl-C; 0: stop at once).",
    )
    run.add_argument("--port", type=int, default=8080, help="Local port of a served ModelDeployment (gRPC: port + 1).")
    run.add_argument("--ask", default="What can you tell me about this domain?", help="The example question a served ModelDeployment answers.")
    run.set_defaults(func=_run)

    loop = sub.add_parser("loop", help="Run a pipeline, serve it, send it traffic, check drift and retrain on drift, locally.")
    loop.add_argument("-f", "--file", action="append", required=True, help="File or directory (repeatable).")
    loop.add_argument("--root", default=".mentor/loop", help="Local artifact root (default: ./.mentor/loop).")
    loop.add_argument("--port", type=int, default=8080, help="Local port of the served ModelDeployment (gRPC: port + 1).")
    loop.add_argument("--traffic-dir", default="examples/quickstart/traffic",
                      help="Folder of in-domain.jsonl and shifted.jsonl, sent in that order (default: examples/quickstart/traffic).")
    loop.add_argument("--concurrency", type=int, default=4, help="Requests in flight while sending traffic.")
    loop.add_argument("--approve", action="store_true", help="Approve the retraining when spec.monitoring.retrain.approval is manual.")
    loop.add_argument("--ask", default="What can you tell me about this domain?", help="The example question the served model answers first.")
    loop.set_defaults(func=_loop)

    traffic = sub.add_parser("traffic", help="Send prompts (and users' feedback) to a served model's OpenAI API.")
    traffic.add_argument("--url", required=True, help="The server, e.g. http://127.0.0.1:8080.")
    traffic.add_argument("--file", required=True, help='JSON lines: {"prompt", "correction" (optional), "rating" (optional, -1..1)}.')
    traffic.add_argument("--count", type=int, default=None, help="Requests to send (default: each prompt once; more cycle).")
    traffic.add_argument("--concurrency", type=int, default=4, help="Requests in flight.")
    traffic.add_argument("--max-tokens", type=int, default=None, help="max_tokens of each request (default: the server's).")
    traffic.set_defaults(func=_traffic)

    approve = sub.add_parser("approve", help="Approve a ModelDeployment's retraining awaiting approval (on the cluster).")
    approve.add_argument("deployment", help="The ModelDeployment's name.")
    approve.add_argument("--retraining", default=None, help="The retraining to approve (default: the newest awaiting approval).")
    approve.add_argument("-n", "--namespace", default="default", help="Namespace (default: default).")
    approve.add_argument("--kubeconfig", default=None, help="Kubeconfig file (default: in-cluster, then $KUBECONFIG or ~/.kube/config).")
    approve.set_defaults(func=_approve)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
