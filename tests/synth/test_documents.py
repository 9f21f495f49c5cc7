"""Documents to chunks: readable formats, headings kept, size bounded, nothing readable refused by name."""

from pathlib import Path

import pytest

from hone.synth.documents import chunk_document, html_text, read_documents
from hone.training.data import DataError

HANDBOOK = Path(__file__).resolve().parents[2] / "examples" / "handbook"


def test_a_folder_gives_its_md_txt_and_html_documents_and_skips_the_rest(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# Travel\n\nTaxis need code TX-40.\n")
    (tmp_path / "sub" / "b.txt").write_text("\ufeffThe helpdesk is extension 4410.\n")  # a BOM, as Windows writes
    (tmp_path / "c.html").write_text(
        "<html><head><style>p{}</style><script>var x=1</script></head><body><h2>Badges</h2>"
        "<p>Badges are <b>blue</b> for visitors.</p></body></html>"
    )
    (tmp_path / ".env").write_text("KEY=secret\n")
    (tmp_path / "empty.md").write_text("\n\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    docs = read_documents(tmp_path)
    assert sorted(docs) == ["a.md", "c.html", "sub/b.txt"]
    assert docs["sub/b.txt"] == "The helpdesk is extension 4410.\n"
    assert docs["c.html"] == "## Badges\n\nBadges are blue for visitors.\n"


def test_a_folder_with_nothing_readable_is_refused_by_name(tmp_path):
    (tmp_path / "scan.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match=f"{tmp_path} holds no readable document.*convert PDFs"):
        read_documents(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        read_documents(tmp_path / "missing")


def test_a_binary_file_named_txt_is_refused_by_name(tmp_path):
    (tmp_path / "data.txt").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(DataError, match="data.txt: not UTF-8"):
        read_documents(tmp_path)


def test_chunks_never_cross_a_heading_and_stay_within_the_word_limit():
    text = "# Travel\n\n" + "Taxis need a code. " * 30 + "\n\nShort one.\n\n## Meals\n\nLunch is paid up to 14 euros.\n"
    chunks = chunk_document("t.md", text, max_words=40)
    assert [c.heading for c in chunks] == ["Travel"] * len(chunks[:-1]) + ["Meals"]
    assert all(c.words <= 40 for c in chunks)
    assert all(c.text.startswith(c.heading) for c in chunks)  # a chunk names its section
    assert chunks[-1].text == "Meals\n\nLunch is paid up to 14 euros."
    body = " ".join(c.text.removeprefix("Travel\n\n") for c in chunks[:-1])
    assert body.split() == ("Taxis need a code. " * 30 + "Short one.").split()  # nothing lost or doubled
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_the_handbook_chunks_into_keyed_pieces_that_change_only_where_the_text_does():
    docs = read_documents(HANDBOOK / "handbook")
    chunks = [c for doc, text in docs.items() for c in chunk_document(doc, text, max_words=180)]
    assert len(docs) == 9 and 40 <= len(chunks) <= 200
    assert len({c.key for c in chunks}) == len(chunks)
    doc, text = next(iter(docs.items()))
    edited = chunk_document(doc, text.replace("\n\n", "\n\nA new first paragraph here.\n\n", 1), max_words=180)
    before = {c.key for c in chunk_document(doc, text, max_words=180)}
    assert len(before - {c.key for c in edited}) <= 2  # one edit re-keys the chunk(s) holding it, not the document


def test_html_text_keeps_paragraphs_and_heading_levels():
    assert html_text("<h1>T</h1><p>a&amp;b</p><ul><li>x</li><li>y</li></ul>") == "# T\n\na&b\n\nx\n\ny\n"
