"""Generator-free questions: every salient span of a sentence becomes an answer, grounded by construction."""

from hone.synth.quality import why_ungrounded
from hone.synth.templates import emphasised, salient_spans, sentences, span_questions, template_qa, template_restatements


def test_names_codes_and_numbers_are_found_and_sentence_openers_are_not():
    assert salient_spans("Rasmus Oddvar, our CFO, owns the expense and travel policies.") == [("Rasmus Oddvar", "name")]
    assert salient_spans("Taxi rides are claimed under expense code TX-40 up to 1,200 euros.") == [
        ("TX-40", "code"), ("1,200 euros", "money")
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


def test_amounts_dates_durations_and_contacts_are_answers_whole():
    spans = salient_spans("From 1 April, parental leave is topped up for 16 weeks and meals are paid up to EUR 48 per day.")
    assert spans == [("1 April", "date"), ("16 weeks", "quantity"), ("EUR 48 per day", "money")]
    spans = salient_spans("Call +358 40 771 2090 or write to phish@corvallen.fi, then check #status-board.")
    assert spans == [("+358 40 771 2090", "phone"), ("phish@corvallen.fi", "email"), ("#status-board", "channel")]
    assert salient_spans("Each one may work abroad for 20 working days, between 10:00 to 15:00.") == [
        ("20 working days", "quantity"), ("10:00 to 15:00", "hours")
    ]  # fmt: skip
    assert salient_spans("Three of us went along.") == []  # no number, no name past the opener


def test_a_one_word_name_keeps_its_the_and_a_bare_digit_is_not_an_answer():
    assert salient_spans("Software is installed from the Shelf in Glasshouse 3.") == [
        ("the Shelf", "name"),
        ("Glasshouse", "name"),
    ]


def test_emphasised_terms_and_quoted_phrases_are_answers_and_a_bold_label_is_not():
    chunk = '- **Ground floor:** the kitchen.\n- **corv-guest** is for visitors.\n\nOur motto is "Measure, then move."'
    terms = emphasised(chunk)
    assert terms == frozenset({"corv-guest"})
    assert salient_spans("corv-guest is for visitors.", terms) == [("corv-guest", "term")]
    assert salient_spans('Our motto is "Measure, then move."', terms) == [("Measure, then move", "phrase")]


def test_a_quantity_is_asked_for_with_what_it_counts():
    question = span_questions("Parental leave is topped up for 16 weeks.", "16 weeks", "quantity")[0].question
    assert question == "Parental leave is topped up for how many weeks?"


def test_a_table_row_question_is_grounded_on_the_row_it_came_from():
    table = "| Team | Lead |\n|---|---|\n| IT Service Desk | Piet Hallengren |\n"
    pairs = template_qa(table)
    assert {q.answer for q in pairs} == {"IT Service Desk", "Piet Hallengren"}
    assert all(why_ungrounded(q.answer, q.evidence, table) is None for q in pairs)


def test_restatements_reorder_and_list_the_chunks_own_sentences():
    chunk = "Badges are blue for visitors. Staff badges are green. Lost badges cost EUR 15."
    kinds = dict(template_restatements(chunk))
    assert kinds["reordered"] == "Lost badges cost EUR 15. Staff badges are green. Badges are blue for visitors."
    assert kinds["key_facts"].splitlines()[1:] == [f"- {s}" for s in sentences(chunk)]
    assert template_restatements("One sentence only here.") == []
