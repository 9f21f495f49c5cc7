"""The filters that decide what synthesis keeps: grounding, eval overlap, near-duplicates."""

from hone.synth.quality import EvalOverlap, NearDuplicates, why_ungrounded

CHUNK = (
    "People and contacts\n\n- **Ilse Varnholt** is our Chief Executive Officer.\n"
    "- The IT helpdesk answers on extension 4410 from 8:00 to 17:00."
)


def test_a_grounded_answer_passes_whatever_its_case_spacing_and_wrapping():
    assert why_ungrounded("Ilse  Varnholt.", "", CHUNK) is None
    assert why_ungrounded("extension 4410", "The IT helpdesk answers on  extension 4410", CHUNK) is None
    assert why_ungrounded("Ilse Varnholt", '"Ilse Varnholt is our Chief Executive Officer"', CHUNK) is None  # no ** in it


def test_a_planted_ungrounded_pair_is_rejected_with_its_reason():
    assert why_ungrounded("Mikko Salo", "", CHUNK) == "answer not in chunk"  # invented
    assert why_ungrounded("4410", "The helpdesk is open all night", CHUNK) == "evidence not in chunk"
    assert why_ungrounded("17:00", "Ilse Varnholt is our Chief Executive Officer", CHUNK) == "answer not in its evidence"
    assert why_ungrounded(" . ", "", CHUNK) == "empty answer"
    assert why_ungrounded("441", "", CHUNK) == "answer not in chunk"  # a piece of a number is not the number
    assert why_ungrounded("Chief", "Ilse Varnholt is our Chief Executive Officer", CHUNK) is None


def test_a_question_that_copies_an_evaluation_question_is_dropped_and_others_are_kept():
    """The check is against leaked wording: a training question on the same fact, asked another way, is
    what teaches the fact and stays; a near-copy of the evaluation's question would test memory of it."""
    heldout = EvalOverlap(["Which extension do I dial for the IT helpdesk?", "Who is the CEO of Corvallen?"])
    assert heldout.overlaps("Which extension do I dial for the IT helpdesk, please?")
    assert heldout.overlaps("who is the ceo of corvallen")
    assert not heldout.overlaps("To reach the IT helpdesk by phone, what extension should I dial?")
    assert not heldout.overlaps("Until what time does the IT helpdesk answer?")  # same topic, another fact
    assert not heldout.overlaps("What is it?")  # nothing but stopwords shares nothing
    assert not EvalOverlap([]).overlaps("Who is the CEO?")


def test_near_duplicates_are_dropped_and_different_items_kept():
    seen = NearDuplicates()
    assert not seen.seen("Who is the Chief Executive Officer of Corvallen?")
    assert seen.seen("Who is the chief executive officer of Corvallen ?")
    assert seen.seen("who is the Chief Executive Officer of Corvallen")
    assert not seen.seen("Which extension is the IT helpdesk on?")
