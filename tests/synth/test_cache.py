"""Replies are cached by what produced them: the chunk, the generator, the prompt, the sample number."""

from hone.synth.cache import ReplyCache, reply_key


def test_a_reply_is_found_again_only_for_the_same_chunk_generator_prompt_and_sample(tmp_path):
    cache = ReplyCache(tmp_path / "cache")
    key = reply_key("chunk text", "smollm2", "Write questions about:\n{chunk}")
    assert key not in cache and cache.get(key) is None
    cache.put(key, {"reply": "Q: a\nA: b"})
    assert key in cache and ReplyCache(tmp_path / "cache").get(key) == {"reply": "Q: a\nA: b"}
    others = [
        reply_key("chunk text!", "smollm2", "Write questions about:\n{chunk}"),
        reply_key("chunk text", "other-model", "Write questions about:\n{chunk}"),
        reply_key("chunk text", "smollm2", "Write five questions about:\n{chunk}"),
        reply_key("chunk text", "smollm2", "Write questions about:\n{chunk}", sample=1),
    ]
    assert len(set(others) | {key}) == 5 and not any(k in cache for k in others)
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # written whole (atomic write helper)
