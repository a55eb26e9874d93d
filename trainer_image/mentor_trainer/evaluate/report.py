"""The evaluation report: one self-contained HTML file a reviewer can open offline.

plotly.js is embedded inline once (with the first figure), so the file needs no network; every
piece of text from the data (questions, answers, gate texts, errors) is HTML-escaped. A part that
was not measured shows "not measured" instead of breaking the report.

``data`` keys (all optional): title, model_uri, baseline_uri, created_at, confidence (default
0.95), passed (bool or None when nothing was gated), failed_gates, gates, metrics,
baseline_metrics, comparison (name -> candidate, baseline, delta, ciLow, ciHigh, pValue; the
interval is the delta's), suite_errors, calibration_curve (bin_low, bin_high, confidence,
accuracy, count), calibrated_temperature, loss_curve (step, loss, eval_loss), examples
(question, reference, candidate, baseline, f1).
"""

from __future__ import annotations

import html
import logging
import math
from typing import Any, Collection

log = logging.getLogger(__name__)

NOT_MEASURED = '<p class="missing">not measured</p>'

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0; }
th, td { border-bottom: 1px solid #ddd; padding: .3rem .5rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.banner { padding: 1rem; border-radius: .4rem; font-size: 1.2rem; }
.passed { background: #e3f6e5; } .failed { background: #fbe3e3; } .ungated { background: #eee; }
.missing { color: #888; font-style: italic; }
.meta { color: #555; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}"


def _table(header: list[str], rows: list[list[str]], numeric: Collection[int] = ()) -> str:
    """Cells are already escaped; columns in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{_e(title)}</h2>{body}</section>'


class _Plots:
    """Figures as HTML fragments; plotly.js goes inline with the first one only."""

    def __init__(self) -> None:
        self.included = False

    def html(self, figure) -> str:
        import plotly.io as pio

        fragment = pio.to_html(
            figure, full_html=False, include_plotlyjs=not self.included, config={"displaylogo": False}
        )
        self.included = True
        return fragment


def _verdict(data: dict) -> str:
    passed = data.get("passed")
    failed = data.get("failed_gates") or []
    gates = data.get("gates") or []
    if passed is None:
        banner = '<div class="banner ungated">No gates evaluated</div>'
    elif passed:
        banner = '<div class="banner passed">PASSED: the candidate meets every gate</div>'
    else:
        banner = '<div class="banner failed">FAILED: the candidate misses a gate</div>'
    failed_list = "".join(f"<li>{_e(gate)}</li>" for gate in failed)
    gate_list = "".join(f"<li>{_e(gate)}</li>" for gate in gates)
    return _section(
        "verdict",
        "Verdict",
        banner
        + (f'<h3>Failed gates</h3><ul class="failed-gates">{failed_list}</ul>' if failed else "")
        + (f"<h3>Gates</h3><ul>{gate_list}</ul>" if gates else ""),
    )


def _metric_table(data: dict) -> str:
    metrics = data.get("metrics") or {}
    baseline = data.get("baseline_metrics") or {}
    comparison = data.get("comparison") or {}
    names = sorted(set(metrics) | set(baseline) | set(comparison))
    if not names:
        return _section("metrics", "Metrics", NOT_MEASURED)
    confidence = float(data.get("confidence", 0.95))
    alpha = 1.0 - confidence
    rows = []
    for name in names:
        compared = comparison.get(name) or {}
        p = compared.get("pValue")
        significant = isinstance(p, (int, float)) and p < alpha
        interval = (
            f"[{_number(compared['ciLow'])}, {_number(compared['ciHigh'])}]"
            if "ciLow" in compared and "ciHigh" in compared
            else "n/a"
        )
        rows.append([
            _e(name),
            _number(compared.get("candidate", metrics.get(name))),
            _number(compared.get("baseline", baseline.get(name))),
            _number(compared.get("delta")),
            interval,
            _number(p) + (' <span class="significant" title="significant">*</span>' if significant else ""),
        ])
    note = f'<p class="meta">* significant: p &lt; {_number(alpha)}; interval of the delta (paired bootstrap).</p>'
    header = ["metric", "candidate", "baseline", "delta", f"{confidence:.0%} CI", "p"]
    return _section("metrics", "Metrics", _table(header, rows, numeric={1, 2, 3, 4, 5}) + note)


def _deltas(data: dict, plots: _Plots) -> str:
    points = [
        (name, c["delta"], c["ciLow"], c["ciHigh"])
        for name, c in sorted((data.get("comparison") or {}).items())
        if all(isinstance(c.get(k), (int, float)) for k in ("delta", "ciLow", "ciHigh"))
    ]
    if not points:
        return _section("deltas", "Candidate minus baseline", NOT_MEASURED)
    import plotly.graph_objects as go

    names, deltas, lows, highs = zip(*points)
    figure = go.Figure(
        go.Scatter(
            x=deltas,
            y=names,
            mode="markers",
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [h - d for h, d in zip(highs, deltas)],
                "arrayminus": [d - lo for d, lo in zip(deltas, lows)],
            },
            name="delta",
        )
    )
    figure.add_vline(x=0, line_dash="dash", line_color="grey")
    figure.update_layout(xaxis_title="candidate - baseline", height=120 + 40 * len(points), margin={"t": 20})
    return _section("deltas", "Candidate minus baseline", plots.html(figure))


def _calibration(data: dict, plots: _Plots) -> str:
    curve = data.get("calibration_curve") or []
    temperature = data.get("calibrated_temperature")
    if not curve:
        return _section("calibration", "Calibration", NOT_MEASURED)
    import plotly.graph_objects as go

    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line={"dash": "dash", "color": "grey"}))
    figure.add_trace(
        go.Scatter(
            x=[b["confidence"] for b in curve],
            y=[b["accuracy"] for b in curve],
            mode="lines+markers",
            name="model",
            text=[f"{b['count']} examples in ({b['bin_low']:.2f}, {b['bin_high']:.2f}]" for b in curve],
        )
    )
    figure.update_layout(xaxis_title="confidence", yaxis_title="accuracy", xaxis_range=[0, 1], yaxis_range=[0, 1], height=420)
    note = f'<p class="meta">Fitted temperature: {_number(temperature)}</p>' if temperature is not None else ""
    return _section("calibration", "Calibration", plots.html(figure) + note)


def _loss(data: dict, plots: _Plots) -> str:
    curve = data.get("loss_curve") or []
    if not curve:
        return _section("loss", "Training loss", NOT_MEASURED)
    import plotly.graph_objects as go

    figure = go.Figure()
    for key, label in (("loss", "training"), ("eval_loss", "validation")):
        points = [(p["step"], p[key]) for p in curve if p.get(key) is not None]
        if points:
            steps, values = zip(*points)
            figure.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", name=label))
    figure.update_layout(xaxis_title="step", yaxis_title="loss", height=380)
    return _section("loss", "Training loss", plots.html(figure))


def _suite_errors(data: dict) -> str:
    errors = data.get("suite_errors") or {}
    if not errors:
        return _section("errors", "Suite errors", "<p>Every suite ran.</p>")
    rows = [[_e(suite), _e(message)] for suite, message in sorted(errors.items())]
    return _section("errors", "Suite errors", _table(["suite", "error"], rows))


def _examples(data: dict) -> str:
    examples = data.get("examples") or []
    if not examples:
        return _section("examples", "Sample answers", NOT_MEASURED)
    keys = ("question", "reference", "candidate", "baseline")
    rows = [[_e(example.get(key) or "") for key in keys] + [_number(example.get("f1"))] for example in examples]
    header = ["question", "reference", "candidate answer", "baseline answer", "F1"]
    return _section("examples", "Sample answers", _table(header, rows, numeric={4}))


def render_report(data: dict) -> str:
    """The report as one HTML document (see the module docstring for ``data``)."""
    plots = _Plots()
    title = data.get("title") or "Evaluation report"
    meta = "".join(
        f"<div><b>{_e(label)}:</b> {_e(data.get(key) or 'n/a')}</div>"
        for label, key in (("Candidate", "model_uri"), ("Baseline", "baseline_uri"), ("Created", "created_at"))
    )
    body = "".join([
        _verdict(data),
        _metric_table(data),
        _deltas(data, plots),
        _calibration(data, plots),
        _loss(data, plots),
        _suite_errors(data),
        _examples(data),
    ])
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>"
        f'<div class="meta">{meta}</div>{body}</body></html>'
    )


def loss_curve_from_mlflow(tracking_uri: str, run_id: str) -> list[dict]:
    """The training run's loss and eval_loss by step; [] with a warning when unreadable, since a
    missing plot must not fail an evaluation."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        history = {key: client.get_metric_history(run_id, key) for key in ("loss", "eval_loss")}
    except Exception as error:  # noqa: BLE001 - any tracking failure only costs the plot
        log.warning("no loss curve: MLflow run %s could not be read (%s: %s)", run_id, type(error).__name__, error)
        return []
    points: dict[int, dict] = {}
    for key, measurements in history.items():
        for measurement in measurements:
            point = points.setdefault(measurement.step, {"step": measurement.step, "loss": None, "eval_loss": None})
            point[key] = measurement.value
    if not points:
        log.warning("no loss curve: MLflow run %s has no loss or eval_loss metrics", run_id)
    return [points[step] for step in sorted(points)]
