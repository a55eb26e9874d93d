"""Prompts that several stages must render identically.

The retrieval-augmented (RAG) prompt is trained on (``data.retrievedContext`` of a
FineTuneJob), evaluated (the retrieval suite) and served with the same wording: a model
fine-tuned to read context only helps if it later sees context laid out the same way.
"""

from __future__ import annotations

from collections.abc import Sequence


def question_messages(question: str) -> list[dict]:
    """A closed-book question as a chat prompt."""
    return [{"role": "user", "content": question}]


def rag_messages(question: str, passages: Sequence[str]) -> list[dict]:
    """A question with retrieved passages as a chat prompt (the passages best first)."""
    context = "\n\n".join(passage.strip() for passage in passages if passage and passage.strip())
    if not context:
        return question_messages(question)
    return [{"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"}]
