"""`mentor`: run the operator, validate resource files, or run a pipeline locally."""

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


def _run(args: argparse.Namespace) -> int:
    from .local import LocalExecutor, StepResult
    from .resources import load, order, validate_all

    documents, problems = load(args.file)
    problems += validate_all(documents)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    if not documents:
        print("no mentor.dev resources found", file=sys.stderr)
        return 1
    ordered = order(documents)
    print(f"running {len(ordered)} resource(s) under {args.root}: " + " -> ".join(d.label for d in ordered))

    def report(step: StepResult) -> None:
        line = f"<== {step.kind}/{step.name}: {step.phase} in {step.seconds:.1f}s"
        print(line + (f": {step.message}" if step.message else ""))

    executor = LocalExecutor(Path(args.root), serve_seconds=args.serve_seconds, serve_port=args.port, example_question=args.ask)
    results = executor.run(ordered, on_step=report)
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
    return 0 if all(step.phase == "Succeeded" for step in results) else 1


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

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
