"""`mentor-trainer serve`: the ``mentor`` runtime, a kserve ModelServer serving an exported
HF model directory (Open Inference Protocol v2 over REST and gRPC, OpenAI-compatible routes,
dynamic batching, RAG, payload logs, Prometheus metrics).

Modules: ``generator`` (model, batcher, streaming), ``service`` (what the endpoints share),
``v2`` (the kserve Model), ``openai_routes``, ``metrics``, ``server`` (assembly, shutdown);
``rag`` and ``payload_log`` are the retrieval pipeline and the payload logger.
"""

from __future__ import annotations

from ..config.deploy import ServeResult, ServeStageConfig


def main(config: ServeStageConfig) -> ServeResult:
    """Serve until SIGTERM/SIGINT, then shut down gracefully and return what was served."""
    from .server import serve

    return serve(config)
