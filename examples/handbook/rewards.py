"""The RL stage's reward function (`type: function`, see the README's "Reinforcement learning").

hone calls it with the prompts, the completions and the prompt rows' other fields by name; here the
handbook's `answer` and `key_fact` for each prompt.
"""


def _words(text: str) -> list[str]:
    return text.lower().replace(",", " ").replace(".", " ").split()


def key_fact_short_answer(
    prompts: list[str], completions: list[str], answer: list[str], key_fact: list[str], **fields
) -> list[float]:
    """1 for a reply that states the key fact and nothing much else (at most 3 words more than the
    handbook's answer), 0.5 for the key fact inside a longer reply, 0 without it."""
    scores = []
    for completion, expected, key in zip(completions, answer, key_fact, strict=True):
        reply = " ".join(completion.split())
        if key.lower() not in reply.lower():
            scores.append(0.0)
        elif len(_words(reply)) <= len(_words(expected)) + 3:
            scores.append(1.0)
        else:
            scores.append(0.5)
    return scores
