"""Prompt builders (pure functions): zero-shot, few-shot, RAG layouts, passage fitting, shot selection, the nearest
pool example, label sets."""

from __future__ import annotations

import numpy as np
import pytest

from core.arena.prompting import (
    Passage,
    PromptTooLongError,
    few_shot_messages,
    fit_passages,
    format_passages,
    label_set,
    nearest_example,
    query_example,
    rag_messages,
    select_shots,
    zero_shot_messages,
)
from core.data import Example, build_messages

QUERY = Example(instruction="How big is the tank?", task="qa", uid="q")
# p0 p2 p4: classification; p1 p3 p5: qa
POOL = [Example(instruction=f"Question {i}?", output=f"Answer {i}.", task="qa" if i % 2 else "classification",
                uid=f"p{i}") for i in range(6)]


# --------------------------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------------------------


def test_zero_shot_is_the_training_layout():
    example = Example(instruction="Summarise.", input="The tank holds 5.5 litres.", history=(("Hi", "Hello"),))
    assert zero_shot_messages(example, "Be brief.") == build_messages(example, "Be brief.")
    assert zero_shot_messages(example, "Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Summarise.\n\nThe tank holds 5.5 litres."},
    ]
    assert zero_shot_messages(QUERY) == [{"role": "user", "content": "How big is the tank?"}]


def test_few_shot_puts_shots_as_turns_between_system_and_query():
    shots = [POOL[1], Example(instruction="Summarise.", input="Long text.", output="Short.", uid="s")]
    messages = few_shot_messages(QUERY, shots, "Be brief.")
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Question 1?"},
        {"role": "assistant", "content": "Answer 1."},
        {"role": "user", "content": "Summarise.\n\nLong text."},
        {"role": "assistant", "content": "Short."},
        {"role": "user", "content": "How big is the tank?"},
    ]


def test_few_shot_uses_the_examples_own_system_once():
    own = Example(instruction="Tank?", system="Own system.")
    messages = few_shot_messages(own, POOL[1:4], "Default system.")
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert messages[0]["content"] == "Own system."
    assert sum(m["role"] == "system" for m in messages) == 1
    assert few_shot_messages(own, [])[0] == {"role": "system", "content": "Own system."}
    assert [m["role"] for m in few_shot_messages(QUERY, POOL[:2])] == ["user", "assistant", "user", "assistant",
                                                                       "user"]  # no system at all


def test_few_shot_refuses_a_shot_without_an_answer():
    with pytest.raises(ValueError, match="'nope' has no answer"):
        few_shot_messages(QUERY, [Example(instruction="x", uid="nope")])


def test_rag_prompt_numbers_passages_with_their_file_names():
    passages = [Passage("The tank holds\n 5.5 litres.", "corpus/sub/orbit.md", 0.9), Passage("Other.", "y.md", 0.5)]
    messages = rag_messages(QUERY, passages, "Be brief.")
    assert messages[0] == {"role": "system", "content": "Be brief."} and len(messages) == 2
    content = messages[-1]["content"]
    assert "[1] (source: orbit.md) The tank holds 5.5 litres." in content  # whitespace collapsed, file name only
    assert "[2] (source: y.md) Other." in content
    assert content.index("[1]") < content.index("[2]") < content.index("Question: How big is the tank?")
    assert content.endswith("Question: How big is the tank?")
    assert "corpus/sub" not in content
    assert rag_messages(QUERY, []) == zero_shot_messages(QUERY)


def test_format_passages_separates_blocks_by_a_blank_line():
    text = format_passages([Passage("a", "1.md", 0.1), Passage("b", "dir/2.txt", 0.2)])
    assert text == "[1] (source: 1.md) a\n\n[2] (source: 2.txt) b"


def test_query_example_refuses_an_empty_query():
    assert query_example("  Tank?  ", task="qa").instruction == "Tank?"
    for empty in ("", "   \n"):
        with pytest.raises(ValueError, match="^query: is empty"):
            query_example(empty)


# --------------------------------------------------------------------------------------------------------------------
# Fitting passages into the window
# --------------------------------------------------------------------------------------------------------------------


def _size(kept):
    """A fake token count: 5 for the query, one per word of each passage."""
    return 5 + sum(len(p.text.split()) for p in kept)


PASSAGES = [Passage("a " * 10, "1", 0.9), Passage("b " * 10, "2", 0.8), Passage("c " * 10, "3", 0.7)]


@pytest.mark.parametrize(("budget", "kept"), [(35, ["1", "2", "3"]), (34, ["1", "2"]), (25, ["1", "2"]),
                                              (24, ["1"]), (15, ["1"]), (14, []), (5, [])])
def test_fit_passages_drops_the_lowest_ranked_first(budget, kept):
    assert [p.source for p in fit_passages(_size, PASSAGES, budget)] == kept


def test_fit_passages_refuses_when_the_query_alone_does_not_fit():
    with pytest.raises(PromptTooLongError, match="5 tokens, over the 4"):
        fit_passages(_size, PASSAGES, 4)
    assert issubclass(PromptTooLongError, ValueError)


def test_fit_passages_does_not_modify_its_input():
    given = list(PASSAGES)
    fit_passages(_size, given, 15)
    assert given == PASSAGES


# --------------------------------------------------------------------------------------------------------------------
# Choosing shots
# --------------------------------------------------------------------------------------------------------------------


def test_fixed_takes_the_first_k_of_the_same_task_never_the_query():
    pool = [Example(instruction="How big is the tank?", output="x", task="qa", uid="other-id"),  # same text
            *POOL, Example(instruction="Tank?", output="y", task="qa", uid="q")]  # same uid
    assert [s.uid for s in select_shots(pool, QUERY, 2, selection="fixed")] == ["p1", "p3"]
    assert [s.uid for s in select_shots(pool, QUERY, 9, selection="fixed")] == ["p1", "p3", "p5"]
    other = Example(instruction="Which category?", task="classification", uid="c")
    assert [s.uid for s in select_shots(POOL, other, 2, selection="fixed")] == ["p0", "p2"]


def test_without_a_task_or_a_same_task_shot_every_example_is_a_candidate():
    no_task = Example(instruction="Anything?")
    assert [s.uid for s in select_shots(POOL, no_task, 3, selection="fixed")] == ["p0", "p1", "p2"]
    unknown_task = Example(instruction="Anything?", task="summarization")
    assert [s.uid for s in select_shots(POOL, unknown_task, 2, selection="fixed")] == ["p0", "p1"]


def test_shots_without_answers_and_k_zero():
    pool = [Example(instruction="No answer?", task="qa", uid="n"), *POOL]
    assert "n" not in {s.uid for s in select_shots(pool, QUERY, 5, selection="fixed")}
    assert select_shots(POOL, QUERY, 0, selection="similar") == []  # no embedder needed for nothing


def test_random_is_seeded():
    pool = [Example(instruction=f"Q{i}?", output="A.", task="qa", uid=f"r{i}") for i in range(12)]
    picks = {seed: [s.uid for s in select_shots(pool, QUERY, 3, selection="random", seed=seed)] for seed in range(6)}
    assert picks[0] == [s.uid for s in select_shots(pool, QUERY, 3, selection="random", seed=0)]
    assert len({tuple(p) for p in picks.values()}) > 1  # another seed, another draw
    for chosen in picks.values():
        assert len(set(chosen)) == 3 and set(chosen) <= {f"r{i}" for i in range(12)}
        assert chosen == sorted(chosen, key=lambda uid: int(uid[1:]))  # kept in pool order


def _embed_by_number(calls):
    """Texts -> unit vectors: "Question i?" points at angle i; anything else (the query) at angle 4.6."""

    def embed(texts):
        calls.append(list(texts))
        angles = [float(t.split()[1].rstrip("?")) if t.startswith("Question") else 4.6 for t in texts]
        return np.array([[np.cos(a / 10), np.sin(a / 10)] for a in angles], dtype=np.float32)

    return embed


def test_similar_picks_the_nearest_most_similar_last():
    calls = []
    similar = select_shots(POOL, QUERY, 2, selection="similar", embed=_embed_by_number(calls))
    assert [s.uid for s in similar] == ["p3", "p5"]  # qa shots 1, 3, 5: 5 is nearest to 4.6, then 3
    other = Example(instruction="Which?", task="classification", uid="c")
    assert [s.uid for s in select_shots(POOL, other, 3, selection="similar",
                                        embed=_embed_by_number([]))] == ["p0", "p2", "p4"]
    assert [s.uid for s in select_shots(POOL, other, 2, selection="similar",
                                        embed=_embed_by_number([]))] == ["p2", "p4"]


def test_similar_uses_cached_pool_vectors():
    calls = []
    embed = _embed_by_number(calls)
    vectors = embed([p.user_text for p in POOL])
    calls.clear()
    assert [s.uid for s in select_shots(POOL, QUERY, 1, selection="similar", embed=embed,
                                        pool_vectors=vectors)] == ["p5"]
    assert calls == [["How big is the tank?"]]  # only the query was embedded


def test_similar_needs_an_embedder_and_selection_is_checked():
    with pytest.raises(ValueError, match="needs an embedding model"):
        select_shots(POOL, QUERY, 2, selection="similar")
    with pytest.raises(ValueError, match="^few_shot_selection: .*'best'"):
        select_shots(POOL, QUERY, 2, selection="best")


def test_nearest_example_by_embedding_same_task_never_itself():
    calls = []
    embed = _embed_by_number(calls)
    nearest = nearest_example(POOL, QUERY, embed=embed, pool_vectors=embed([p.user_text for p in POOL]))
    assert nearest.example.uid == "p5" and nearest.by == "embedding"  # qa: 5 is nearest to 4.6
    assert nearest.score == pytest.approx(np.cos(0.04), abs=1e-6)
    assert calls[-1] == ["How big is the tank?"]  # the pool's vectors were given: only the query is embedded
    itself = Example(instruction="Question 5?", task="qa", uid="p5")
    assert nearest_example(POOL, itself, embed=_embed_by_number([])).example.uid == "p3"


def test_nearest_example_by_word_overlap_without_an_embedder():
    pool = [Example(instruction="What colour is the light?", output="White.", uid="light"),
            Example(instruction="How big is the water tank?", output="5.5 litres.", uid="tank"),
            Example(instruction="How big is the tank of the Orbit 3?", output="5.5 l.", uid="orbit")]
    nearest = nearest_example(pool, QUERY)
    assert (nearest.example.uid, nearest.by) == ("tank", "word overlap")  # 5 of 5 words, of 6 and of 8
    assert nearest.score == pytest.approx(5 / np.sqrt(5 * 6))
    unrelated = nearest_example(pool, Example(instruction="Zzz?"))
    assert (unrelated.example.uid, unrelated.score) == ("light", 0.0)  # equal scores: the earliest


def test_nearest_example_without_candidates_is_none():
    assert nearest_example([], QUERY) is None
    only_query = [Example(instruction="How big is the tank?", output="x", uid="q"), Example(instruction="No?")]
    assert nearest_example(only_query, QUERY) is None


# --------------------------------------------------------------------------------------------------------------------
# Label sets
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("instruction", "labels"), [
    ("Classify the message into one category: billing, shipping, technical.", ["billing", "shipping", "technical"]),
    ("Pick one of these categories: spam or ham", ["spam", "ham"]),
    ("Category: 'billing', 'shipping', or 'technical'.\nMessage follows.", ["billing", "shipping", "technical"]),
    ("Summarise this.", None),
])
def test_label_set_from_the_instruction(instruction, labels):
    assert label_set(Example(instruction=instruction)) == labels


def test_label_set_prefers_known_labels():
    example = Example(instruction="Classify the message into one category: billing, shipping, technical.")
    assert label_set(example, ["refund", "other"]) == ["refund", "other"]
    assert label_set(example, []) == ["billing", "shipping", "technical"]  # empty known: fall back to the text


def test_similar_orders_by_similarity_even_when_the_pool_has_only_k_candidates():
    pool = [Example(instruction=f"Question {i}?", output="A.", uid=f"p{i}") for i in (4, 0, 2)]
    chosen = select_shots(pool, Example(instruction="Which?"), 3, selection="similar", embed=_embed_by_number([]))
    assert [s.uid for s in chosen] == ["p0", "p2", "p4"]  # 4 is nearest to 4.6: last, right before the query


def test_no_candidates_gives_no_shots():
    only_query = [Example(instruction="How big is the tank?", output="x", uid="q"), Example(instruction="No?")]
    for selection in ("similar", "fixed", "random"):
        assert select_shots(only_query, QUERY, 2, selection=selection) == []
