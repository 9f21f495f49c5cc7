"""The synthesis step on a scripted generator (a plain function; real generators are tested end to end):
what is kept, what is rejected and why, what the cache saves on a rerun."""

from hone.synth.cache import ReplyCache
from hone.synth.documents import chunk_document
from hone.synth.quality import EvalOverlap
from hone.synth.step import Recipe, assemble, by_document, fetch, missing, plan

DOC = "# Contacts\n\nThe IT helpdesk answers on extension 4410.\n\n# Badges\n\nVisitor badges are blue.\n"
HELDOUT = EvalOverlap(["Which extension is the IT helpdesk on?"])


def scripted(prompts: list[str]) -> list[str]:
    """Replies like a small model's: some right, one invented, one copying the evaluation, one broken."""
    replies = []
    for prompt in prompts:
        text = prompt.split("Text:\n", 1)[1]
        if "Question:" not in prompt:  # a restatement
            replies.append(f"In other words: {text} That is all there is to say about it here." if "List" in prompt else "Ok.")
        elif "4410" in text:
            replies.append(
                "Question: What number do I call for IT help?\nAnswer: 4410\nEvidence: The IT helpdesk answers on extension 4410.\n"
                "Question: Who runs the helpdesk?\nAnswer: Mikko Salo\n"  # planted: not in the text
                "Question: Which extension is the IT helpdesk on?\nAnswer: 4410\n"  # the evaluation's own question
                "Question: And when?\n"  # malformed: no answer
            )
        else:
            replies.append("Question: What colour are visitor badges?\nAnswer: Blue.\n")
    return replies


def test_kept_rows_carry_their_source_and_the_report_counts_every_rejection(tmp_path):
    chunks = chunk_document("handbook.md", DOC, max_words=50)
    recipe = Recipe(styles=("direct",), restatements=("key_facts", "colleague"), templates=False)
    requests = plan(chunks, recipe, "scripted")
    cache = ReplyCache(tmp_path)
    assert sum(fetch(missing(requests, cache), scripted, cache, batch_size=3)) == len(requests) == 6
    out = assemble(chunks, requests, cache, recipe, HELDOUT)

    assert [r["messages"][0]["content"] for r in out.qa_rows] == [
        "What number do I call for IT help?",
        "What colour are visitor badges?",
    ]
    assert out.qa_rows[0] == {
        "messages": [{"role": "user", "content": "What number do I call for IT help?"}, {"role": "assistant", "content": "4410"}],
        "source": "handbook.md", "chunk": 0, "evidence": "The IT helpdesk answers on extension 4410.", "style": "direct",
    }  # fmt: skip
    assert [(r["kind"], r["chunk"]) for r in out.text_rows] == [
        ("original", 0),
        ("original", 1),
        ("key_facts", 0),
        ("key_facts", 1),
    ]
    contacts, badges = (c.as_dict() for c in out.chunks)
    assert contacts["rejected"] == {
        "answer not in chunk": 1, "overlaps an evaluation question": 1, "malformed": 1, "restatement too short": 1
    }  # fmt: skip
    assert contacts["exposures"] == 1 + 1 + 1 and badges["exposures"] == 3
    assert by_document(out.chunks)["handbook.md"]["qa_kept"] == 2


def test_a_rerun_asks_the_generator_for_nothing_and_gives_the_same_rows(tmp_path):
    chunks = chunk_document("handbook.md", DOC, max_words=50)
    requests = plan(chunks, Recipe(), "scripted")
    cache = ReplyCache(tmp_path)
    list(fetch(missing(requests, cache), scripted, cache, batch_size=4))
    first = assemble(chunks, requests, cache, Recipe(), HELDOUT)

    def refuse(prompts: list[str]) -> list[str]:
        raise AssertionError(f"the generator was asked again for {len(prompts)} prompts")

    again = plan(chunks, Recipe(), "scripted")
    assert missing(again, cache) == []
    assert list(fetch(missing(again, cache), refuse, cache, batch_size=4)) == []
    assert assemble(chunks, again, cache, Recipe(), HELDOUT).qa_rows == first.qa_rows
    edited = chunk_document("handbook.md", DOC.replace("blue", "green"), max_words=50)
    assert len(missing(plan(edited, Recipe(), "scripted"), cache)) == len(again) // 2  # only the edited chunk's prompts
    assert len(missing(plan(chunks, Recipe(), "another-generator"), cache)) == len(again)


def test_a_synthesis_killed_midway_keeps_the_batches_it_finished(tmp_path):
    chunks = chunk_document("handbook.md", DOC, max_words=50)
    requests = plan(chunks, Recipe(), "scripted")
    cache = ReplyCache(tmp_path)
    batches = fetch(missing(requests, cache), scripted, cache, batch_size=5)
    next(batches)  # one batch done, then the process "dies"
    assert len(missing(requests, cache)) == len(requests) - 5


def test_template_questions_need_no_generator_and_ask_for_every_name_code_and_number(tmp_path):
    chunks = chunk_document("handbook.md", DOC, max_words=50)
    recipe = Recipe(styles=(), restatements=())
    out = assemble(chunks, plan(chunks, recipe, "none"), ReplyCache(tmp_path), recipe, HELDOUT)
    asked = {(r["messages"][0]["content"], r["messages"][1]["content"]) for r in out.qa_rows}
    assert ("The IT helpdesk answers on extension what number?", "4410") in asked
    assert ("Fill in the number: The IT helpdesk answers on extension ___.", "4410") in asked
    assert {r["style"] for r in out.qa_rows} == {"template"} and all(r["evidence"] for r in out.qa_rows)
    assert [c.qa_kept for c in out.chunks] == [3, 0]  # "Visitor badges are blue" holds no name, code or number
