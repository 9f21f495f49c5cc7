"""Writes ledger_dates.jsonl: the quickstart's supervised data, a house style the base model cannot guess.

Each row asks for a date "for the ledger" and the answer is the date in ISO form (2024-03-05), nothing
else. The base model answers in prose; after a minute or two of LoRA SFT it answers in the house style.

    python examples/quickstart/make_data.py
"""

import calendar
import json
import random
from pathlib import Path

STYLES = [
    lambda d: f"{calendar.month_name[d[1]]} {d[2]}, {d[0]}",
    lambda d: f"{d[2]} {calendar.month_name[d[1]]} {d[0]}",
    lambda d: f"{calendar.month_abbr[d[1]]} {d[2]} {d[0]}",
    lambda d: f"the {d[2]}th of {calendar.month_name[d[1]]}, {d[0]}",
]


def main() -> None:
    rng = random.Random(0)
    rows = []
    for _ in range(320):
        date = (rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28))
        asked = rng.choice(STYLES)(date)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Date for the ledger: {asked}"},
                    {"role": "assistant", "content": f"{date[0]:04d}-{date[1]:02d}-{date[2]:02d}"},
                ]
            }
        )
    out = Path(__file__).with_name("ledger_dates.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
