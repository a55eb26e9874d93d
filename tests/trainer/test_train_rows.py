"""How dataset rows become training examples for task mixed and retrieved context: chat and
documents in one prompt/completion form whose loss falls on the answers and the documents,
never on prompts, with no doubled BOS; RAG copies in the evaluation's prompt layout."""

from __future__ import annotations

import pytest

from mentor_trainer.errors import StageError
from mentor_trainer.prompts import rag_messages
from mentor_trainer.train.rows import Examples, as_text_pairs, to_example, with_retrieved_context

QUESTION = [{"role": "user", "content": "When is the Lantern Flush picked?"}]
ANSWER = [{"role": "assistant", "content": "In October."}]
CHAT = {"prompt": QUESTION, "completion": ANSWER}
DOCUMENT = {"text": "The autumn flush, the Lantern Flush, is picked in October."}


def tokenizers(tiny, smollm2):
    from transformers import AutoTokenizer

    return [AutoTokenizer.from_pretrained(tiny), AutoTokenizer.from_pretrained(smollm2)]


def test_mixed_rows_keep_documents_and_chat():
    assert to_example({"text": " facts "}, "mixed", True) == {"text": "facts"}
    chat = to_example({"messages": QUESTION + ANSWER}, "mixed", True)
    assert chat == CHAT
    assert to_example({"messages": QUESTION + ANSWER}, "mixed", False) == {"messages": QUESTION + ANSWER}


@pytest.mark.slow
def test_text_pairs_match_the_chat_template(tiny, smollm2):
    for tokenizer in tokenizers(tiny, smollm2):
        pairs = as_text_pairs(Examples([CHAT, DOCUMENT, {"messages": QUESTION + ANSWER}], [0.1, 0.2, 0.3]), tokenizer)
        chat, document, whole = pairs.rows
        assert pairs.difficulty == [0.1, 0.2, 0.3]
        # the answer alone is the completion; prompt + completion is the template's rendering
        rendered = tokenizer.apply_chat_template(QUESTION + ANSWER, tokenize=False).rstrip()
        assert rendered.endswith(chat["prompt"] + chat["completion"])
        assert "In October." in chat["completion"] and "Lantern" not in chat["completion"]
        assert chat["prompt"].endswith(tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)[-10:])
        assert document == {"prompt": "", "completion": DOCUMENT["text"]}
        assert whole["prompt"] == "" and whole["completion"] == chat["prompt"] + chat["completion"]

    # the tiny (DeepSeek-style) tokenizer adds BOS to any text and its template writes one too:
    # tokenised as the trainer does, the sequence still has exactly one
    tiny_tokenizer = tokenizers(tiny, smollm2)[0]
    chat = as_text_pairs(Examples([CHAT], [0.0]), tiny_tokenizer).rows[0]
    assert tiny_tokenizer(chat["prompt"] + chat["completion"]).input_ids.count(tiny_tokenizer.bos_token_id) == 1


def test_a_template_that_rewrites_the_prompt_is_refused(tiny):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    # a template that renders the last user turn differently when an answer follows
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' and not loop.last %}[U]{% else %}[{{ m['role'] }}]{% endif %}"
        "{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}[A]{% endif %}"
    )
    with pytest.raises(StageError, match="not a prefix"):
        as_text_pairs(Examples([CHAT], [0.0]), tokenizer)


def test_retrieved_context_adds_a_rag_copy_of_each_single_turn_question():
    searched = []

    def search(question, k):
        searched.append((question, k))
        return [{"text": f"passage {n} about {question}"} for n in range(k)]

    multi_turn = {"messages": QUESTION + ANSWER + QUESTION + ANSWER}
    system = {"prompt": [{"role": "system", "content": "Be brief."}, *QUESTION], "completion": ANSWER}
    examples = Examples([CHAT, DOCUMENT, multi_turn, system], [0.1, 0.2, 0.3, 0.4])
    out = with_retrieved_context(examples, search, 2)
    assert out.rows[:4] == examples.rows  # the originals stay, closed book
    copies = out.rows[4:]
    assert len(copies) == 2 and out.difficulty[4:] == [0.1, 0.4]
    passages = [f"passage {n} about {QUESTION[0]['content']}" for n in range(2)]
    assert copies[0] == {"prompt": rag_messages(QUESTION[0]["content"], passages), "completion": ANSWER}
    assert copies[1]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert copies[1]["prompt"][1:] == rag_messages(QUESTION[0]["content"], passages)
    assert searched == [(QUESTION[0]["content"], 2)] * 2


def test_rag_prompt_without_passages_is_the_closed_book_prompt():
    assert rag_messages("Q?", []) == [{"role": "user", "content": "Q?"}]
    content = rag_messages("Q?", ["first", " second "])[0]["content"]
    assert content == "Context:\nfirst\n\nsecond\n\nQuestion: Q?"
