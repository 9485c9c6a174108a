"""Write synthetic review lines in the public Amazon Reviews 2023 schema, pointing at real catalog items.

Used for tests (tests/data/) and for the prepare throughput benchmark. The text is template-made,
NOT real customer reviews: never report retrieval quality measured on it as review-to-item results.

    python scripts/gen_reviews.py --n 1000000 --out /tmp/reviews_1M.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from importlib import resources
from pathlib import Path

OPENERS = ["Love this", "Really happy with this", "Great", "Nice", "Exactly what I wanted:", "Pretty good",
           "Not bad,", "Disappointed with this", "Perfect", "My daughter loves this"]
CLOSERS = ["Fits true to size.", "Would buy again.", "Arrived quickly and well packed.",
           "Quality is better than expected for the price.", "Comfortable to wear all day.",
           "The color is a bit different from the photos.", "Runs a little small, order a size up.",
           "Great gift idea.", "Material feels cheap.", "Washes well."]


def load_items(meta: Path | None) -> list[tuple[str, list[str]]]:
    path = meta or Path(str(resources.files("densesearch") / "data" / "meta_Amazon_Fashion.sample.jsonl.gz"))
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [(r["parent_asin"], [w for w in (r.get("title") or "").split() if w.isalpha() and len(w) > 3])
            for r in rows]


def review(rng: random.Random, items, n_users: int, base_ts: int) -> dict:
    item_id, words = items[rng.randrange(len(items))]
    noun = " ".join(rng.sample(words, min(len(words), 3))).lower() or "item"
    rating = rng.choices([1.0, 2.0, 3.0, 4.0, 5.0], weights=[6, 5, 9, 20, 60])[0]
    return {"rating": rating, "title": f"{rng.choice(OPENERS)} {noun}",
            "text": f"{rng.choice(OPENERS)} {noun}. {rng.choice(CLOSERS)} {rng.choice(CLOSERS)}",
            "images": [], "asin": item_id, "parent_asin": item_id, "user_id": f"U{rng.randrange(n_users):08d}",
            "timestamp": base_ts + rng.randrange(10**10), "helpful_vote": rng.randrange(5),
            "verified_purchase": rng.random() < 0.9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--users", type=int, default=None, help="distinct users (default n/3)")
    parser.add_argument("--meta", type=Path, default=None, help="metadata file (default: embedded sample)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    items = load_items(args.meta)
    n_users = args.users or max(1, args.n // 3)
    with open(args.out, "w", encoding="utf-8") as handle:
        for _ in range(args.n):
            handle.write(json.dumps(review(rng, items, n_users, 1_500_000_000_000)) + "\n")


if __name__ == "__main__":
    main()
