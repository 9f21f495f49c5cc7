"""Generator-free questions: every salient span of a sentence becomes an answer, grounded by construction."""

from hone.synth.quality import why_ungrounded
from hone.synth.templates import salient_spans, sentences, span_questions, template_qa


def test_names_codes_and_numbers_are_found_and_sentence_openers_are_not():
    assert salient_spans("Rasmus Oddvar, our CFO, owns the expense and travel policies.") == [("Rasmus Oddvar", "name")]
    assert salient_spans("Taxi rides are claimed under expense code TX-40 up to 1,200 euros.") == [
        ("TX-40", "code"), ("1,200", "number")
    ]  # fmt: skip
    assert salient_spans("The Kiln House opens at 8:00.") == [("Kiln House", "name"), ("8:00", "number")]
    assert salient_spans("Every visitor signs in.") == []


def test_each_span_gets_three_questions_that_quote_the_rest_of_the_sentence():
    sentence = "Rasmus Oddvar, our CFO, owns the expense and travel policies."
    questions = span_questions(sentence, "Rasmus Oddvar", "name")
    assert [q.question for q in questions] == [
        "What name, our CFO, owns the expense and travel policies?",
        "According to the handbook: ___, our CFO, owns the expense and travel policies. What goes in the gap?",
        "Fill in the name: ___, our CFO, owns the expense and travel policies.",
    ]
    assert {q.answer for q in questions} == {"Rasmus Oddvar"} and {q.evidence for q in questions} == {sentence}


def test_every_template_question_of_a_chunk_passes_the_grounding_check():
    chunk = "Contacts\n\n- **Ilse Varnholt** is our CEO.\n- The helpdesk is on extension 4410. Badges cost 5 euros each."
    assert sentences(chunk) == ["Ilse Varnholt is our CEO.", "The helpdesk is on extension 4410.", "Badges cost 5 euros each."]
    pairs = template_qa(chunk)
    assert len(pairs) == 9 and all(why_ungrounded(q.answer, q.evidence, chunk) is None for q in pairs)


def test_table_rows_become_sentences_and_their_header_is_dropped():
    table = "| Team | Lead | Extension |\n|---|---|---|\n| IT Service Desk | Piet Hallengren | 2718 |\n"
    assert sentences(table) == ["IT Service Desk, Piet Hallengren, 2718."]
