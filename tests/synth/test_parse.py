"""Generator replies, loose as small models write them, to question/answer pairs; the unreadable counted."""

from hone.synth.parse import QA, parse_qa, parse_restatement


def test_labelled_pairs_in_the_forms_generators_write_are_read():
    reply = (
        "Here are some questions:\n"
        '1. Question: Who is the CEO?\nAnswer: Ilse Varnholt\nEvidence: "Ilse Varnholt is our Chief\n Executive Officer."\n\n'
        "**Q:** Which extension is the helpdesk?\n**A:** 4410\n"
        "- Q: What colour are visitor badges?\n- A: blue\n- Quote: Badges are blue for visitors.\n"
    )
    pairs, malformed = parse_qa(reply)
    assert pairs == [
        QA("Who is the CEO?", "Ilse Varnholt", "Ilse Varnholt is our Chief Executive Officer."),
        QA("Which extension is the helpdesk?", "4410"),
        QA("What colour are visitor badges?", "blue", "Badges are blue for visitors."),
    ]
    assert malformed == 0


def test_malformed_replies_are_counted_and_skipped_never_raised():
    pairs, malformed = parse_qa("Question: Who founded it?\nQuestion: When?\nAnswer: 1998\nAnswer: twice\nA:\n")
    assert pairs == [QA("When?", "1998")]
    assert malformed == 3  # a question with no answer, an answer with no question, an empty answer
    assert parse_qa("") == ([], 0)
    assert parse_qa("I cannot help with that.\x00\ufffd") == ([], 0)
    assert parse_qa("Answer: Yes\nAnswer: No") == ([], 2)


def test_a_restatement_too_short_to_say_anything_is_refused():
    assert parse_restatement("  Corvallen makes greenhouse climate controllers in Tampere.  ", min_words=5)
    assert parse_restatement("Sure!", min_words=5) is None
