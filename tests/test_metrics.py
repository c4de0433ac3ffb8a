"""core.arena.metrics: the evaluate modules, Scorer, score/score_batch and bootstrap_ci, against hand-computed values.

Offline: tests/conftest.py sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE before anything imports the hub libraries, and
every socket connection is refused while this module runs. The embedder is a bag-of-words fake (no model).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from core.arena.metrics import (
    EVALUATE_MODULES,
    METRIC_NAMES,
    MODULES_DIR,
    REFERENCE_METRICS,
    Scorer,
    bootstrap_ci,
    classification_accuracy,
    predict_label,
    score,
    score_batch,
)
from core.arena.metrics.modules._text import normalize_answer

REPO = Path(__file__).resolve().parents[1]
LABELS = ["billing", "shipping", "technical", "returns", "account", "feedback"]


class BagOfWordsEmbedder:
    """A sentence-transformers-like fake: one dimension per word seen (lowercased), counts as values."""

    def __init__(self) -> None:
        self.vocabulary: dict[str, int] = {}
        self.calls: list[tuple[list[str], bool]] = []

    def encode(self, sentences: list[str], *, normalize_embeddings: bool = False) -> np.ndarray:
        self.calls.append((list(sentences), normalize_embeddings))
        for sentence in sentences:
            for word in sentence.lower().split():
                self.vocabulary.setdefault(word, len(self.vocabulary))
        vectors = np.zeros((len(sentences), max(len(self.vocabulary), 1)))  # (n, vocabulary)
        for row, sentence in enumerate(sentences):
            for word in sentence.lower().split():
                vectors[row, self.vocabulary[word]] += 1.0
        if normalize_embeddings:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.where(norms > 0, norms, 1.0)
        return vectors


@pytest.fixture(scope="module", autouse=True)
def no_network() -> Iterator[None]:
    """Refuse every connection while this module runs (module scope, so it is active before the scorer loads)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted in an offline test")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        yield


@pytest.fixture(scope="module")
def scorer(no_network: None) -> Scorer:
    return Scorer()


def load_module(name: str):
    import evaluate

    return evaluate.load(str(MODULES_DIR / f"{name}.py"), keep_in_memory=True)


# --- the evaluate modules, loaded directly -------------------------------------------------------------------------


@pytest.mark.parametrize("name", [module.name for module in EVALUATE_MODULES])
def test_each_module_loads_from_its_file_with_real_info(name: str) -> None:
    metric = load_module(name)
    assert metric.name == name
    assert len(metric.description) > 100
    assert set(metric.features) == {"predictions", "references"}
    assert metric.features["predictions"].dtype == "string"
    assert "@inproceedings" in metric.citation
    per_example = metric.compute(predictions=["the cat sat", "x"], references=["the cat sat", "y"],
                                 use_aggregator=False)
    aggregated = metric.compute(predictions=["the cat sat", "x"], references=["the cat sat", "y"])
    for key, _ in next(m for m in EVALUATE_MODULES if m.name == name).outputs:
        assert per_example[key] == pytest.approx([1.0, 0.0])
        assert aggregated[key] == pytest.approx(0.5)


def test_rouge_module_hand_computed() -> None:
    rouge = load_module("rouge")
    # "the cat sat" vs reference "the cat sat down":
    #   ROUGE-1: 3 matched unigrams; P = 3/3, R = 3/4 -> F = 2*1*0.75/1.75 = 0.857142...
    #   ROUGE-2: pred bigrams {the cat, cat sat}, ref {the cat, cat sat, sat down}; P = 2/2, R = 2/3 -> F = 0.8
    #   ROUGE-L: LCS "the cat sat" = 3 -> same as ROUGE-1; one line, so ROUGE-Lsum too.
    result = rouge.compute(predictions=["the cat sat"], references=["the cat sat down"])
    assert result["rouge1"] == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert result["rouge2"] == pytest.approx(0.8)
    assert result["rougeL"] == pytest.approx(6 / 7)
    assert result["rougeLsum"] == pytest.approx(6 / 7)


def test_rouge_lsum_splits_on_newlines() -> None:
    rouge = load_module("rouge")
    # Two sentences in swapped order. ROUGE-L over the whole token sequence: LCS is one sentence (3 of 6 tokens)
    # -> P = R = 0.5 -> F = 0.5. ROUGE-Lsum: each reference line is fully covered by one predicted line
    # -> union-LCS hits 3 + 3 = 6 of 6 reference tokens and of 6 predicted tokens -> F = 1.0.
    result = rouge.compute(predictions=["the dog ran\nthe cat sat"], references=["the cat sat\nthe dog ran"])
    assert result["rougeL"] == pytest.approx(0.5)
    assert result["rougeLsum"] == pytest.approx(1.0)


def test_rouge_stems_words_longer_than_three_characters() -> None:
    rouge = load_module("rouge")
    # Porter stems: cats -> cat, running -> run, runs -> run ("cat" has 3 letters and is left as is): all match.
    stemmed = rouge.compute(predictions=["cats running"], references=["cat runs"])
    assert stemmed["rouge1"] == pytest.approx(1.0)
    unstemmed = rouge.compute(predictions=["cats running"], references=["cat runs"], use_stemmer=False)
    assert unstemmed["rouge1"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="rouge_types"):
        rouge.compute(predictions=["a"], references=["a"], rouge_types=["rouge9"])


def test_bleu_module_hand_computed() -> None:
    bleu = load_module("bleu")
    # Identical texts: every n-gram precision is 1 and the brevity penalty 1 -> BLEU = 1.0 (0..1 scale).
    same = bleu.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"])
    assert same["bleu"] == pytest.approx(1.0)
    assert same["sentence_bleu"] == pytest.approx(1.0)
    assert same["precisions"] == pytest.approx([1.0, 1.0, 1.0, 1.0])
    # No shared word: no matched n-gram -> 0.
    disjoint = bleu.compute(predictions=["dogs bark loudly"], references=["the cat sat"])
    assert disjoint["bleu"] == pytest.approx(0.0, abs=1e-9)
    assert disjoint["sentence_bleu"] == pytest.approx(0.0, abs=1e-9)
    # "the cat sat" (3 tokens) vs "the cat sat down" (4): 1-, 2-, 3-gram precisions are 3/3, 2/2, 1/1; there is no
    # 4-gram, so effective order keeps orders 1..3 (geometric mean 1); brevity penalty exp(1 - 4/3) = 0.7165...
    short = bleu.compute(predictions=["the cat sat"], references=["the cat sat down"], use_aggregator=False)
    assert short["sentence_bleu"] == pytest.approx([math.exp(1 - 4 / 3)])
    # Corpus BLEU (no effective order): a 3-token text has no 4-gram at all, its 4-gram precision stays 0 (smoothing
    # only covers orders with n-grams but no match), so BLEU = 0 -- the reason sentence BLEU uses effective order.
    assert short["bleu"] == pytest.approx(0.0, abs=1e-9)


def test_exact_match_normalisation() -> None:
    # Lowercase, punctuation (ASCII and Unicode) out, articles out, whitespace collapsed.
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("An apple; the theatre.") == "apple theatre"  # "the" inside "theatre" stays
    assert normalize_answer("\u201cParis\u201d \u2014 a city\u2026") == "paris city"
    exact_match = load_module("exact_match")
    result = exact_match.compute(
        predictions=["The  Cat, sat!", "cat sat.", "\u201cParis.\u201d"],
        references=["cat sat", "cat sat down", "paris"],
        use_aggregator=False,
    )
    assert result["exact_match"] == [1.0, 0.0, 1.0]


def test_token_f1_hand_computed() -> None:
    token_f1 = load_module("token_f1")
    result = token_f1.compute(
        predictions=["the cat sat on the mat", "cat cat cat", "", "dog"],
        references=["a cat lay on a mat", "cat", "anything", "cat"],
        use_aggregator=False,
    )
    expected = [
        # [cat sat on mat] vs [cat lay on mat]: 3 common; P = R = 3/4 -> F = 0.75
        0.75,
        # [cat cat cat] vs [cat]: common = min(3, 1) = 1; P = 1/3, R = 1 -> F = 2*(1/3)/(4/3) = 0.5
        0.5,
        # empty prediction vs a non-empty reference -> 0
        0.0,
        # no common token -> 0
        0.0,
    ]
    assert result["token_f1"] == pytest.approx(expected)


# --- Scorer / score / score_batch -----------------------------------------------------------------------------------


def test_score_keys_and_hand_computed_values(scorer: Scorer) -> None:
    result = scorer.score("the cat sat", "the cat sat down")
    assert tuple(result) == REFERENCE_METRICS
    assert result["rouge1"] == pytest.approx(0.857142857)
    assert result["rouge2"] == pytest.approx(0.8)
    assert result["bleu"] == pytest.approx(math.exp(-1 / 3))  # sentence BLEU, see test_bleu_module_hand_computed
    assert result["exact_match"] == 0.0
    assert result["token_f1"] == pytest.approx(0.8)  # [cat sat] vs [cat sat down]: P = 1, R = 2/3 -> 0.8
    assert result["similarity"] is None  # no embedder
    assert all(isinstance(value, float) for key, value in result.items() if key != "similarity")
    assert set(METRIC_NAMES) == {*REFERENCE_METRICS, "accuracy"}


@pytest.mark.parametrize("reference", [None, "", "   \n"])
def test_no_reference_gives_none_never_zero(scorer: Scorer, reference: str | None) -> None:
    embedder = BagOfWordsEmbedder()
    result = scorer.score("the cat sat", reference, task="classification", label_set=LABELS, embedder=embedder)
    assert tuple(result) == METRIC_NAMES
    assert all(value is None for value in result.values())
    assert embedder.calls == []


def test_similarity_with_a_bag_of_words_embedder(scorer: Scorer) -> None:
    embedder = BagOfWordsEmbedder()
    rows = scorer.score_batch(
        ["cat sat", "the cat", "dogs bark"], ["cat sat down", "the cat", "the cat"], embedder=embedder
    )
    # [1,1,0] . [1,1,1] / (sqrt 2 * sqrt 3) = 2/sqrt 6 = 0.8165; identical -> 1; no shared word -> 0
    assert [row["similarity"] for row in rows] == pytest.approx([2 / math.sqrt(6), 1.0, 0.0])
    assert len(embedder.calls) == 1  # one encode call for the whole batch
    texts, normalize = embedder.calls[0]
    assert normalize is True
    assert len(texts) == 6


def test_classification_accuracy_with_a_label_set(scorer: Scorer) -> None:
    # the label that comes first in the prediction wins, case-insensitive, whole word
    assert predict_label("This is a Billing question, not shipping.", LABELS) == "billing"
    assert predict_label("Shipping. Or maybe billing?", LABELS) == "shipping"
    assert predict_label("untechnical rambling", LABELS) is None
    assert predict_label("Category: hardware fault", ["hardware_fault", "other"]) == "hardware_fault"
    assert predict_label("order status please", ["order", "order status"]) == "order status"
    result = scorer.score("I'd say: Technical.", "technical", task="classification", label_set=LABELS)
    assert result["accuracy"] == 1.0
    assert scorer.score("billing, clearly", "shipping", task="classification", label_set=LABELS)["accuracy"] == 0.0
    assert scorer.score("no idea", "shipping", task="classification", label_set=LABELS)["accuracy"] == 0.0
    assert "accuracy" not in scorer.score("technical", "technical", task="qa", label_set=LABELS)


def test_classification_accuracy_without_a_label_set() -> None:
    # normalised exact match of the first non-empty line
    assert classification_accuracy("\nTechnical.\nBecause the hub is offline.", "technical") == 1.0
    assert classification_accuracy("The category is technical", "technical") == 0.0
    assert classification_accuracy("", "technical") == 0.0


def test_score_batch_equals_per_example_score(scorer: Scorer) -> None:
    predictions = ["the cat sat", "Billing, I think.", "dogs bark", "anything", "Paris is the capital.", ""]
    references = ["the cat sat down", "billing", "the cat sat", None, "The capital is Paris", "something"]
    tasks = [None, "classification", "qa", "classification", "qa", "summarization"]
    label_sets = [None, LABELS, None, LABELS, None, None]
    batch = scorer.score_batch(predictions, references, tasks, label_sets=label_sets, embedder=BagOfWordsEmbedder())
    singles = [
        scorer.score(p, r, task=t, label_set=labels, embedder=BagOfWordsEmbedder())
        for p, r, t, labels in zip(predictions, references, tasks, label_sets, strict=True)
    ]
    assert len(batch) == len(singles)
    for got, want in zip(batch, singles, strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert (got[key] is None) == (value is None), key
            if value is not None:
                assert got[key] == pytest.approx(value, abs=1e-12), key
    assert batch[1]["accuracy"] == 1.0
    assert all(value is None for value in batch[3].values())


def test_score_batch_checks_lengths_and_handles_empty(scorer: Scorer) -> None:
    with pytest.raises(ValueError, match="references"):
        scorer.score_batch(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="tasks"):
        scorer.score_batch(["a"], ["a"], ["qa", "qa"])
    assert scorer.score_batch([], []) == []
    with pytest.raises(KeyError, match="nope"):
        scorer.module("nope")


def test_modules_load_lazily_once_per_scorer(monkeypatch: pytest.MonkeyPatch) -> None:
    import evaluate

    loads: list[str] = []
    real_load = evaluate.load

    def counting_load(path: str, **kwargs: object):
        loads.append(Path(path).stem)
        return real_load(path, **kwargs)

    monkeypatch.setattr(evaluate, "load", counting_load)
    fresh = Scorer()
    assert loads == []  # nothing at construction
    fresh.score("a b", "a b")
    fresh.score_batch(["a", "b"], ["a", "c"])
    fresh.score("x", None)
    assert sorted(loads) == sorted(module.name for module in EVALUATE_MODULES)
    assert set(fresh.load()) == {module.name for module in EVALUATE_MODULES}
    assert len(loads) == len(EVALUATE_MODULES)  # load() after use loads nothing again


def test_module_level_functions_accept_a_scorer(scorer: Scorer) -> None:
    assert score("the cat sat", "the cat sat", scorer=scorer)["exact_match"] == 1.0
    rows = score_batch(["a", "b"], ["a", None], scorer=scorer)
    assert rows[0]["exact_match"] == 1.0
    assert rows[1]["exact_match"] is None


def test_scorer_is_safe_to_share_between_threads(scorer: Scorer) -> None:
    pairs = [(f"the cat sat {i}", f"the cat sat {i % 3}") for i in range(40)]
    expected = [scorer.score(p, r) for p, r in pairs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda pair: scorer.score(*pair), pairs))
    assert got == expected


# --- bootstrap_ci -------------------------------------------------------------------------------------------------


def test_bootstrap_ci_is_deterministic_and_contains_the_mean() -> None:
    values = [0.2, 0.9, 0.4, 0.7, 0.1, 0.6, 0.3, 0.8]
    mean, low, high = bootstrap_ci(values, seed=7)
    assert mean == pytest.approx(0.5)  # (0.2+0.9+0.4+0.7+0.1+0.6+0.3+0.8) / 8 = 4.0 / 8
    assert low < mean < high
    assert bootstrap_ci(values, seed=7) == (mean, low, high)
    assert bootstrap_ci(values, seed=8) != (mean, low, high)
    assert bootstrap_ci(values, seed=7, confidence=0.5)[2] - bootstrap_ci(values, seed=7, confidence=0.5)[1] < (
        high - low
    )


def test_bootstrap_ci_width_shrinks_with_more_data() -> None:
    # 0/1 values with mean 0.5: the standard error is 0.5/sqrt(n), so a 95% interval is about 2*1.96*0.5/sqrt(n)
    # wide: 0.62 for n = 10, 0.196 for n = 100, 0.062 for n = 1000.
    widths = []
    for n in (10, 100, 1000):
        mean, low, high = bootstrap_ci([0.0, 1.0] * (n // 2))
        assert mean == pytest.approx(0.5)
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] == pytest.approx(2 * 1.96 * 0.5 / math.sqrt(100), rel=0.25)


def test_bootstrap_ci_edge_cases() -> None:
    assert bootstrap_ci([0.3] * 20) == (pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3))
    mean, low, high = bootstrap_ci([0.3] * 20)
    assert low == mean == high  # zero width
    assert bootstrap_ci([0.42]) == (0.42, 0.42, 0.42)
    assert bootstrap_ci([]) == (None, None, None)
    assert bootstrap_ci([None, None]) == (None, None, None)
    assert bootstrap_ci([1.0, None, 0.0, float("nan")])[0] == pytest.approx(0.5)  # None and NaN ignored
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0], confidence=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci([1.0], n_resamples=0)


# --- offline loading in a clean process -----------------------------------------------------------------------------

_CLEAN_PROCESS = textwrap.dedent(
    """
    import json, socket, sys
    attempts = []
    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network access attempted")
    socket.socket.connect = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse

    import core.arena.metrics as metrics
    imported_at_import = "evaluate" in sys.modules
    scorer = metrics.Scorer()
    imported_at_construction = "evaluate" in sys.modules
    result = scorer.score("the cat sat", "the cat sat down")
    print(json.dumps({
        "imported_at_import": imported_at_import,
        "imported_at_construction": imported_at_construction,
        "rouge1": result["rouge1"],
        "load_seconds": scorer.load_seconds,
        "attempts": attempts,
    }))
    """
)


def _tree(folder: Path) -> dict[str, int]:
    return {
        str(path.relative_to(folder)): path.stat().st_size
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_cold_load_is_lazy_offline_and_writes_only_under_hf_home(tmp_path: Path) -> None:
    hf_home = tmp_path / "hf"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = _tree(REPO / "core" / "arena" / "metrics")
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("HF_MODULES_CACHE", None)
    env.pop("HF_METRICS_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", _CLEAN_PROCESS], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["imported_at_import"] is False
    assert report["imported_at_construction"] is False
    assert report["rouge1"] == pytest.approx(6 / 7)
    assert set(report["load_seconds"]) == {module.name for module in EVALUATE_MODULES}
    assert report["attempts"] == []
    # evaluate copies each script (and _text.py for the modules that import it) into $HF_HOME/modules ...
    copied = {path.name for path in (hf_home / "modules" / "evaluate_modules" / "metrics").rglob("*.py")}
    assert {"rouge.py", "bleu.py", "exact_match.py", "token_f1.py", "_text.py"} <= copied
    # ... and writes nothing in the working directory or beside the module files.
    assert list(cwd.iterdir()) == []
    assert _tree(REPO / "core" / "arena" / "metrics") == before


def test_contains_answer_whole_words_after_normalisation() -> None:
    from core.arena.metrics import contains_answer

    assert contains_answer("The capital of France is Paris.", "Paris") == 1.0
    assert contains_answer("It is 12 litres, I think", "12 litres") == 1.0
    assert contains_answer("Parisian food is great", "Paris") == 0.0  # not a whole word
    assert contains_answer("anything", "The") == 0.0  # nothing left after normalisation
    assert contains_answer("A triangle has 3 sides.", "Three") == 1.0  # number words up to twelve match digits
    assert contains_answer("It has 30 sides.", "Three") == 0.0
