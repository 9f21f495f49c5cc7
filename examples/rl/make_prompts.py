"""Writes examples/rl/arithmetic.jsonl: small sums whose answer the reward can check.

python examples/rl/make_prompts.py
"""

import json
import random
from pathlib import Path

rng = random.Random(0)
rows = []
for _ in range(400):
    a, b = rng.randint(2, 49), rng.randint(2, 49)
    rows.append(
        {"messages": [{"role": "user", "content": f"What is {a} + {b}? Reply with the number only."}], "answer": str(a + b)}
    )
path = Path(__file__).with_name("arithmetic.jsonl")
path.write_text("".join(json.dumps(r) + "\n" for r in rows))
print(f"wrote {len(rows)} prompts to {path}")
