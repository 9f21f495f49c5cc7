"""An example reward function for `type: function` (see README, "Reinforcement learning").

hone calls it with the prompts, the completions and every other field of the prompt rows, by name.
"""


def concise_number(prompts: list[str], completions: list[str], answer: list[str], **fields) -> list[float]:
    """1 for a reply that is just the right number, 0.5 when the number is right but wrapped in words."""
    scores = []
    for completion, expected in zip(completions, answer, strict=True):
        text = completion.strip().rstrip(".")
        if text == expected:
            scores.append(1.0)
        elif expected in text.split():
            scores.append(0.5)
        else:
            scores.append(0.0)
    return scores
