"""Assembles the mentor runtime: a kserve ``ModelServer`` (REST + gRPC, Open Inference
Protocol v2, liveness ``/`` and ``/v2/health/live``, readiness ``/v2/health/ready`` and
``/v2/models/<name>/ready``, ``/metrics``) with our OpenAI routes mounted on its app.

Shutdown: on SIGTERM/SIGINT uvicorn stops accepting, lets in-flight requests finish (up to
the grace period), then kserve stops the gRPC server; afterwards the generator's worker is
joined and the payload logger flushed and closed, and :func:`serve` returns the result.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

from ..config.deploy import ServeResult, ServeStageConfig
from ..errors import StageError

log = logging.getLogger(__name__)

GRACE_PERIOD_S = 25  # within Kubernetes' default 30 s terminationGracePeriodSeconds
FLUSH_TIMEOUT_S = 10.0


@contextlib.contextmanager
def _bare_argv():
    """``kserve.model_server`` parses ``sys.argv`` when imported (``parse_known_args`` with
    abbreviations on): our ``--config FILE`` would be taken for its ``--configure_logging``.
    Import it with the program name only; every setting is passed to ModelServer explicitly."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def import_kserve() -> tuple[Any, Any]:
    with _bare_argv():
        import kserve
        from kserve import model_server
    return kserve, model_server


def load_rag(config: ServeStageConfig) -> Any:
    """The retrieval pipeline when RAG is on (an unavailable index is reported, not fatal)."""
    if config.rag is None or not config.rag.enabled:
        return None
    from .rag import RagPipeline

    rag = RagPipeline.load(config.index_uri, config.rag)
    if rag.available:
        log.info("RAG on: index %s", config.index_uri)
    else:
        log.warning("RAG is on but unavailable, serving without retrieval: %s", rag.reason)
    return rag


def payload_logger(config: ServeStageConfig) -> Any:
    if not config.logging.enabled:
        return None
    from .payload_log import PayloadLogger

    uri = config.payload_log_uri or config.logging.uri or f"{config.output_uri.rstrip('/')}/payload-logs"
    log.info("payload logs (sample rate %s) go to %s", config.logging.sample_rate, uri)
    return PayloadLogger(uri, config.logging, config.run.name)


def serve(config: ServeStageConfig) -> ServeResult:
    from ..models import resolve_model

    resolve_model(config.model_uri, "served model")  # a missing model fails here, before the heavy imports
    kserve, model_server = import_kserve()
    from .generator import Generator
    from .metrics import ServeMetrics
    from .openai_routes import openai_router
    from .service import MentorService
    from .v2 import MentorModel

    generator = Generator.load(config)
    rag = load_rag(config)
    payload = payload_logger(config)
    metrics = ServeMetrics(config.run.name)
    service = MentorService(config, generator, metrics, rag=rag, payload=payload)
    metrics.watch_payload_logger(service.payload_counts)
    model = MentorModel(service)
    model.load()
    model_server.app.include_router(openai_router(service))
    server = kserve.ModelServer(
        http_port=config.http_port,
        grpc_port=config.grpc_port,
        workers=1,
        enable_grpc=True,
        enable_docs_url=False,
        grace_period=GRACE_PERIOD_S,
    )
    log.info(
        "serving %s (%s) on http://0.0.0.0:%d (OpenAI /v1/chat/completions, v2 /v2/models/%s/infer, /metrics) and gRPC :%d",
        config.run.name, config.model_uri, config.http_port, config.run.name, config.grpc_port,
    )
    try:
        server.start([model])
    except OSError as error:  # a port in use
        raise StageError(f"cannot listen on port {config.http_port} or {config.grpc_port}: {error}", permanent=False) from error
    finally:
        generator.shutdown()
        if payload is not None:
            try:
                payload.close(timeout=FLUSH_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - the result still reports what was served
                log.exception("flushing the payload logs failed")
    written, dropped = service.payload_counts()
    log.info("stopped after %d requests (%d failed), %d payload logs written, %d dropped", service.served, service.failed, written, dropped)
    return ServeResult(
        model_uri=config.model_uri,
        model_version=config.model_version,
        requests_served=service.served,
        requests_failed=service.failed,
        tokens_generated=service.tokens,
        payload_logs_written=written,
        payload_logs_dropped=dropped,
        rag=service.rag_status,
    )
