"""Distinctive words: Unicode tokenisation, multilingual stop lists, the common-word rule."""

from __future__ import annotations

import logging
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from gpuseg.profile.words import (
    BUILTIN_LANGUAGES,
    STOP_WORDS,
    STOP_WORDS_BY_LANGUAGE,
    common_words,
    distinctive_words,
    distinctive_words_by_source,
    stop_words_for,
    tokenize,
)
from gpuseg.runtime.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def words_of(result: dict, segment: int) -> list[str]:
    return [w for w, _ in result[segment]]


# ----------------------------------------------------------------------------- tokenisation


@pytest.mark.parametrize("text, everything, without_stops", [
    ("Péssimo atendimento, produto não chegou",
     ["péssimo", "atendimento", "produto", "não", "chegou"],
     ["péssimo", "atendimento", "produto", "chegou"]),
    ("Muito confortável e bonito", ["muito", "confortável", "bonito"], ["confortável", "bonito"]),
    ("Não recomendo: a embalagem veio rasgada e o atendimento é lento",
     ["não", "recomendo", "embalagem", "veio", "rasgada", "atendimento", "lento"],
     ["recomendo", "embalagem", "veio", "rasgada", "atendimento", "lento"]),
    ("Die Größe passt nicht", ["die", "größe", "passt", "nicht"], ["größe", "passt"]),
    ("Sehr schön und bequem", ["sehr", "schön", "und", "bequem"], ["schön", "bequem"]),
    ("Die Straße war laut, die Übergröße gefällt mir", ["die", "straße", "war", "laut", "die",
     "übergröße", "gefällt", "mir"], ["straße", "laut", "übergröße", "gefällt"]),
    ("El envío llegó tarde y la caja estaba rota",
     ["el", "envío", "llegó", "tarde", "la", "caja", "estaba", "rota"],
     ["envío", "llegó", "tarde", "caja", "rota"]),
    # French: the elided article or pronoun goes, the word stays
    ("J'adore l'été, c'est qu'il fait beau", ["adore", "été", "est", "il", "fait", "beau"],
     ["adore", "beau"]),
    ("Livraison jusqu'à Paris, aujourd'hui d'accord", ["livraison", "paris", "aujourd'hui",
     "accord"], ["livraison", "paris", "aujourd'hui", "accord"]),
    # English as before: inner apostrophes kept, "don't" a stop word, whatever the apostrophe
    ("I don't like the colour", ["don't", "like", "the", "colour"], ["like", "colour"]),
    ("I don’t like the customer’s colour", ["don't", "like", "the", "customer's", "colour"],
     ["like", "customer's", "colour"]),
    ("don´t DON'T", ["don't", "don't"], []),
    # digits are not words, hyphens and underscores separate, one letter is too short
    ("2 unidades, 10x sem juros, iphone13 nº 4567", ["unidades", "sem", "juros", "iphone", "nº"],
     ["unidades", "juros", "iphone"]),
    ("bem-vindo t-shirt foo_bar x² ½", ["bem", "vindo", "shirt", "foo", "bar"],
     ["bem", "vindo", "shirt", "foo", "bar"]),
])
def test_tokenize_whole_words(text, everything, without_stops):
    assert tokenize(text, ()) == everything
    assert tokenize(text) == without_stops


def test_composed_and_decomposed_accents_give_the_same_token():
    composed = "Péssimo atendimento, não chegou; Größe; confortável; ÉTÉ"
    decomposed = nfd(composed)
    assert decomposed != composed and len(decomposed) > len(composed)
    assert tokenize(decomposed, ()) == tokenize(composed, ()) == [
        "péssimo", "atendimento", "não", "chegou", "größe", "confortável", "été"]
    # one text of each form: with min_df=2 the word survives only if both count as one word
    texts = ["péssimo serviço", nfd("Péssimo atendimento"), "ótimo preço", "ótimo frete"]
    out = distinctive_words(texts, np.array([0, 0, 1, 1]), min_df=2, top_n=5)
    assert words_of(out, 0) == ["péssimo"] and words_of(out, 1) == ["ótimo"]


def test_tokenize_keeps_combining_marks_inside_words():
    # Devanagari vowel signs are combining marks, not letters: the words must stay whole
    assert tokenize("हिंदी भाषा", ()) == ["हिंदी", "भाषा"]


def test_none_and_empty_texts_are_skipped():
    assert tokenize(None) == [] and tokenize("") == [] and tokenize("123 !!") == []
    with pytest.raises(UserInputError, match="'texts'.*float"):
        tokenize(3.5)
    texts = ["broken item", "broken box", "lovely dress", "lovely colour"]
    seg = np.array([0, 0, 1, 1])
    with_none = [None, "broken item", "", "broken box", None, "lovely dress", "lovely colour", None]
    seg_none = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    assert distinctive_words(with_none, seg_none) == distinctive_words(texts, seg)
    assert words_of(distinctive_words(with_none, seg_none), 0) == ["broken"]
    by_src = distinctive_words_by_source(with_none, ["review", "review", None, "review", "ticket",
                                                     "review", "review", None], seg_none)
    assert set(by_src) == {"review", "ticket"}
    assert words_of(by_src["review"], 0) == ["broken"] and by_src["ticket"] == {0: [], 1: []}
    # a segment of rating-only reviews gets no words
    assert distinctive_words([None, None, "lovely dress", "lovely colour"], seg)[0] == []


# ----------------------------------------------------------------------------- stop lists


@pytest.mark.parametrize("lang", BUILTIN_LANGUAGES)
def test_builtin_stop_lists_are_words_the_tokeniser_can_produce(lang):
    words = STOP_WORDS_BY_LANGUAGE[lang]
    assert 100 <= len(words) <= 260
    bad = sorted(w for w in words if tokenize(w, ()) != [w])
    assert bad == []
    assert words <= STOP_WORDS


def test_builtin_stop_lists_hold_the_usual_function_words():
    expect = {"en": {"the", "and", "don't", "not", "very"}, "pt": {"não", "que", "muito", "uma"},
              "es": {"que", "muy", "pero", "está"}, "de": {"und", "die", "nicht", "sehr", "daß"},
              "fr": {"les", "que", "est", "très", "pas"}}
    for lang, words in expect.items():
        assert words <= STOP_WORDS_BY_LANGUAGE[lang], lang


def test_stop_languages_and_extra_stop_words():
    assert stop_words_for() == STOP_WORDS
    assert stop_words_for([]) == frozenset()
    assert stop_words_for("pt-BR") == STOP_WORDS_BY_LANGUAGE["pt"]
    assert stop_words_for(["EN", "de_AT"]) == STOP_WORDS_BY_LANGUAGE["en"] | STOP_WORDS_BY_LANGUAGE["de"]
    text = "Não gostei, the produto não é bom"
    assert tokenize(text, stop_words_for(["en"])) == ["não", "gostei", "produto", "não", "bom"]
    assert tokenize(text, stop_words_for(["pt"])) == ["gostei", "the", "produto", "bom"]
    # user words: any case or Unicode form
    stops = stop_words_for(["pt"], ["PRODUTO", nfd("Gostei")])
    assert tokenize(text, stops) == ["the", "bom"]
    with pytest.raises(UserInputError, match="'stop_languages'.*'it'.*de, en, es, fr, pt"):
        stop_words_for(["en", "it"])
    with pytest.raises(UserInputError, match="'extra_stop_words'.*'t-shirt'.*'shirt'"):
        stop_words_for([], ["t-shirt"])
    with pytest.raises(UserInputError, match="'extra_stop_words'.*False.*quote"):
        stop_words_for([], [False])  # YAML reads an unquoted `no` as False


def test_distinctive_words_stop_options():
    texts = ["the box broke", "the box tore", "lovely dress", "lovely colour"]
    seg = np.array([0, 0, 1, 1])
    assert words_of(distinctive_words(texts, seg), 0) == ["box"]
    assert "the" in words_of(distinctive_words(texts, seg, stop_words=()), 0)  # old API: keep all
    assert "the" in words_of(distinctive_words(texts, seg, stop_languages=["pt"]), 0)
    assert words_of(distinctive_words(texts, seg, extra_stop_words=["box"]), 0) == []
    with pytest.raises(UserInputError, match="'stop_words'.*'stop_languages'"):
        distinctive_words(texts, seg, stop_words=(), stop_languages=["en"])
    for bad in (0, 1.5, True, "half"):
        with pytest.raises(UserInputError, match="'common_share'"):
            distinctive_words(texts, seg, common_share=bad)
    with pytest.raises(UserInputError, match="'common_min_texts'"):
        distinctive_words(texts, seg, common_min_texts=0)


# ----------------------------------------------------------------------------- bilingual corpus

COMPLAINTS = [
    "Péssimo atendimento, o produto não chegou e não responderam",
    "Acho que o produto não chegou, péssimo",
    "Péssimo, quero que devolvam o dinheiro",
    "Die Größe passt nicht und die Farbe ist falsch",
    "Die Lieferung kam nicht, die Größe passt nicht",
    "The parcel never arrived and the refund is late",
    "The refund is late, the parcel was damaged",
]
PRAISE = [
    "Muito confortável e bonito, adorei",
    "Produto bonito e muito confortável",
    "Adorei, muito bonito",
    "Sehr schön und bequem",
    "Sehr bequem und schön, gerne wieder",
    "Lovely quality, fits perfectly",
    "Lovely colour and the quality is great",
]
FUNCTION_WORDS = {"não", "und", "die", "que", "the", "muito", "sehr", "nicht", "is", "and"}


def test_bilingual_corpus_distinctive_words():
    texts = COMPLAINTS + PRAISE
    seg = np.array([0] * len(COMPLAINTS) + [1] * len(PRAISE))
    out = distinctive_words(texts, seg, top_n=50, min_df=2)
    assert set(words_of(out, 0)) == {"péssimo", "chegou", "größe", "passt", "parcel", "refund",
                                     "late", "produto"}
    assert set(words_of(out, 1)) == {"confortável", "bonito", "adorei", "schön", "bequem",
                                     "lovely", "quality", "produto"}
    assert words_of(out, 0)[0] == "péssimo" and words_of(out, 1)[0] == "bonito"
    assert not FUNCTION_WORDS & (set(words_of(out, 0)) | set(words_of(out, 1)))
    # the same corpus without stop lists: the function words do rank, so the check above bites
    raw = distinctive_words(texts, seg, top_n=50, min_df=2, stop_languages=[])
    assert {"não", "die", "que", "the", "nicht"} <= set(words_of(raw, 0))
    assert {"muito", "sehr", "und"} <= set(words_of(raw, 1))
    assert words_of(raw, 0)[0] in {"die", "the", "não"}


# ----------------------------------------------------------------------------- common-word rule


def test_common_words_rule():
    doc_freq = [{"a": 10, "b": 10, "c": 4}, {"a": 6, "b": 2, "c": 9}, {"d": 3}]
    n_texts = [10, 10, 3]
    assert common_words(doc_freq, n_texts, common_share=0.5, common_min_texts=5) == {"a": 0.6}
    # segment 2 (3 texts) counts once common_min_texts allows it: it has no "a"
    assert common_words(doc_freq, n_texts, common_share=0.5, common_min_texts=3) == {}
    assert common_words(doc_freq, n_texts, common_share=0.2, common_min_texts=5) == {
        "a": 0.6, "b": 0.2, "c": 0.4}
    assert common_words(doc_freq, n_texts, common_share=None, common_min_texts=5) == {}
    # one segment big enough: the rule needs two
    assert common_words(doc_freq, [10, 4, 3], common_share=0.5, common_min_texts=5) == {}


def test_word_common_to_every_segment_is_dropped_and_logged(caplog):
    broken = ["produto quebrado e entrega atrasada", "produto quebrado, entrega lenta",
              "chegou quebrado o produto, entrega ruim", "produto veio quebrado entrega"]
    lovely = ["produto lindo", "produto lindo e entrega rápida", "lindo produto", "produto lindo demais"]
    texts = broken + lovely + ["lindo demais", None, None, None]
    seg = np.array([0] * 4 + [1] * 4 + [2] * 4)
    with caplog.at_level(logging.INFO, logger="gpuseg.profile.words"):
        out = distinctive_words(texts, seg, top_n=10, common_share=0.5, common_min_texts=3)
    kept = set(words_of(out, 0)) | set(words_of(out, 1)) | set(words_of(out, 2))
    assert "produto" not in kept  # in every text of segments 0 and 1; segment 2 is too small
    assert {"quebrado", "entrega"} <= set(words_of(out, 0))  # entrega: 4/4 vs 1/4 texts
    assert "lindo" in words_of(out, 1)
    assert "dropped 1 word(s)" in caplog.text and "produto" in caplog.text
    # the rule off, or no two segments with enough texts (None texts do not count): kept
    for options in ({"common_share": None}, {"common_share": 0.5, "common_min_texts": 5}):
        assert "produto" in words_of(distinctive_words(texts, seg, top_n=10, **options), 0)
    # a lower share also drops "entrega" (1 of 4 texts in segment 1), never "quebrado"
    low = distinctive_words(texts, seg, top_n=10, common_share=0.25, common_min_texts=3)
    assert "entrega" not in words_of(low, 0) and "quebrado" in words_of(low, 0)
    # within a source: tickets mention "produto" in one segment only, so there it is kept
    sources = ["review"] * 8 + ["ticket"] * 4
    by_src = distinctive_words_by_source(texts[:8] + ["produto sumiu"] * 2 + [None] * 2, sources,
                                         np.array([0] * 4 + [1] * 4 + [0] * 4), top_n=10,
                                         common_share=0.5, common_min_texts=3)
    assert "produto" not in words_of(by_src["review"], 0)
    assert words_of(by_src["ticket"], 0) == ["produto", "sumiu"]


def test_default_config_words_block_maps_onto_the_keyword_arguments():
    cfg = OmegaConf.load(REPO / "gpuseg" / "conf" / "profile" / "default.yaml")
    options = OmegaConf.to_container(cfg.words, resolve=True)
    assert set(options) == {"top_n", "min_df", "stop_languages", "extra_stop_words",
                            "common_share", "common_min_texts"}
    assert options["stop_languages"] == list(BUILTIN_LANGUAGES) and options["extra_stop_words"] == []
    texts = COMPLAINTS + PRAISE
    seg = np.array([0] * len(COMPLAINTS) + [1] * len(PRAISE))
    out = distinctive_words_by_source(texts, ["review"] * len(texts), seg, **options)
    assert out["review"] == distinctive_words(texts, seg)
    assert OmegaConf.load(REPO / "gpuseg" / "conf" / "profile" / "default.yaml").words.common_share == 0.5
