"""Sweep fine-tuning recipes on a judged BEIR set; report graded dev nDCG@10 per recipe and epoch.

A development aid for choosing `finetune`'s defaults, written to run on any machine with torch and
transformers (a GPU makes a sweep take minutes instead of hours). It reads a bundle written by
`make_sweep_bundle.py` (catalog, queries, graded qrels, the product's BM25 top-100) and a model
directory, and mirrors the product's recipe in plain torch: mean pooling, cosine x 20, MNRL
cross-entropy over in-batch positives and one hard negative per pair, AdamW with linear warm-up and
decay. Only dev is evaluated. It also trains a pointwise cross-encoder on the graded pairs and
re-scores the best hybrid run, and measures encode and training throughput.

    python scripts/recipe_sweep.py --bundle .sweep/bundle.json.gz --model .sweep/model --out results.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

SCALE = 20.0
RRF_K = 60
DEPTH = 100


@dataclass(frozen=True)
class Recipe:
    name: str
    positive_min: int = 5
    negatives: str = "none"          # none | judged | bm25 | mixed
    judged_max: int = 1              # judged negatives: grade <= this
    bm25_ranks: tuple[int, int] = (10, 50)
    epochs: int = 1
    lr: float = 5e-5
    batch: int = 64
    symmetric: bool = False


@dataclass
class Bundle:
    item_ids: list[str]
    texts: list[str]
    row_of: dict[str, int]
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]
    bm25: dict[str, list[list[float]]]
    extra: dict = field(default_factory=dict)


def load_bundle(path: Path) -> Bundle:
    with gzip.open(path, "rt") as handle:
        return Bundle(**json.load(handle))


# ---------------------------------------------------------------- metrics (graded, unjudged = 0)

def ndcg_at(ranked: list[int], grades: dict[int, int], k: int = 10) -> float:
    dcg = sum(grades.get(item, 0) / math.log2(rank + 2) for rank, item in enumerate(ranked[:k]))
    ideal = sorted(grades.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def score_run(run: dict[str, list[int]], qrels: dict[str, dict[int, int]], relevant_min: int) -> dict[str, float]:
    ndcg, judged, r10, r100 = [], [], [], []
    for qid, grades in qrels.items():
        if not any(g > 0 for g in grades.values()):
            continue
        ranked = run.get(qid, [])
        ndcg.append(ndcg_at(ranked, grades))
        judged.append(ndcg_at([i for i in ranked if i in grades], grades))
        relevant = {i for i, g in grades.items() if g >= relevant_min}
        if relevant:
            r10.append(len(relevant & set(ranked[:10])) / len(relevant))
            r100.append(len(relevant & set(ranked[:100])) / len(relevant))
    return {"ndcg@10": float(np.mean(ndcg)), "judged_ndcg@10": float(np.mean(judged)),
            "recall@10": float(np.mean(r10)), "recall@100": float(np.mean(r100)), "queries": len(ndcg)}


def rrf(runs: list[dict[str, list[int]]], k: int = RRF_K) -> dict[str, list[int]]:
    fused = {}
    for qid in runs[0]:
        scores: dict[int, float] = {}
        for run in runs:
            for rank, item in enumerate(run.get(qid, [])):
                scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank + 1)
        fused[qid] = [i for i, _ in sorted(scores.items(), key=lambda x: (-x[1], x[0]))][:DEPTH]
    return fused


def weighted(dense: dict[str, list[tuple[int, float]]], sparse: dict[str, list[tuple[int, float]]],
             w_sparse: float) -> dict[str, list[int]]:
    """Min-max normalised score fusion; a system that did not return an item gives it 0."""
    fused = {}
    for qid in dense:
        scores: dict[int, float] = {}
        for run, w in ((dense[qid], 1 - w_sparse), (sparse.get(qid, []), w_sparse)):
            if not run:
                continue
            values = np.array([s for _, s in run])
            lo, hi = values.min(), values.max()
            for item, s in run:
                scores[item] = scores.get(item, 0.0) + w * ((s - lo) / (hi - lo) if hi > lo else 1.0)
        fused[qid] = [i for i, _ in sorted(scores.items(), key=lambda x: (-x[1], x[0]))][:DEPTH]
    return fused


# ---------------------------------------------------------------- encoding

def mean_pool(model, batch) -> torch.Tensor:
    out = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    return F.normalize((out * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)


def token_batches(tokenizer, texts: list[str], max_len: int, batch: int = 512) -> list[tuple[np.ndarray, dict]]:
    """Length-sorted, tokenized batches (computed once per catalog and reused by every evaluation)."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    return [(order[i:i + batch], tokenizer([texts[j] for j in order[i:i + batch]], padding=True, truncation=True,
                                           max_length=max_len, return_tensors="pt"))
            for i in range(0, len(texts), batch)]


@torch.no_grad()
def encode_batches(model, batches, size: int, device: str, half: bool) -> np.ndarray:
    model.eval()
    out = np.zeros((size, model.config.hidden_size), dtype=np.float32)
    for rows, tokens in batches:
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.float16, enabled=half):
            out[rows] = mean_pool(model, tokens.to(device)).float().cpu().numpy()
    return out


def encode(model, tokenizer, texts: list[str], device: str, max_len: int, batch: int = 512,
           half: bool = False) -> np.ndarray:
    return encode_batches(model, token_batches(tokenizer, texts, max_len, batch), len(texts), device, half)


def dense_run(model, tokenizer, bundle: Bundle, qids: list[str], device: str, max_len: int,
              catalog_tokens) -> tuple[dict[str, list[tuple[int, float]]], np.ndarray]:
    half = device != "cpu"
    catalog = encode_batches(model, catalog_tokens, len(bundle.texts), device, half)
    queries = encode(model, tokenizer, [bundle.queries[q] for q in qids], device, max_len, batch=256, half=half)
    cat = torch.from_numpy(catalog).to(device)
    run = {}
    for start in range(0, len(qids), 256):
        q = torch.from_numpy(queries[start:start + 256]).to(device)
        scores, ids = (q @ cat.T).topk(DEPTH, dim=1)
        for qid, row_ids, row_scores in zip(qids[start:start + 256], ids.cpu().numpy(), scores.cpu().numpy(),
                                            strict=True):
            run[qid] = list(zip(row_ids.tolist(), row_scores.tolist(), strict=True))
    return run, catalog


def ids_only(run: dict[str, list[tuple[int, float]]]) -> dict[str, list[int]]:
    return {q: [i for i, _ in hits] for q, hits in run.items()}


# ---------------------------------------------------------------- training data

def graded_rows(bundle: Bundle, split: str) -> dict[str, dict[int, int]]:
    return {q: {bundle.row_of[i]: g for i, g in items.items() if i in bundle.row_of}
            for q, items in bundle.qrels[split].items()}


def training_examples(recipe: Recipe, bundle: Bundle, train: dict[str, dict[int, int]],
                      rng: random.Random) -> list[tuple[str, int, int | None]]:
    """(query id, positive row, negative row or None); the false-negative guard applies to negatives."""
    examples = []
    for qid, grades in train.items():
        positives = [i for i, g in grades.items() if g >= recipe.positive_min]
        judged_low = [i for i, g in grades.items() if g <= recipe.judged_max]
        lo, hi = recipe.bm25_ranks
        mined = [int(i) for i, _ in bundle.bm25.get(qid, [])[lo:hi]
                 if int(i) not in grades or grades[int(i)] <= recipe.judged_max]
        for positive in positives:
            negative = None
            if recipe.negatives == "judged" and judged_low:
                negative = rng.choice(judged_low)
            elif recipe.negatives == "bm25" and mined:
                negative = rng.choice(mined)
            elif recipe.negatives == "mixed":
                pool = judged_low if judged_low and rng.random() < 0.5 else mined
                negative = rng.choice(pool) if pool else None
            examples.append((qid, positive, negative))
    return examples


def batches_without_duplicates(examples, batch: int, rng: random.Random, texts: list[str]):
    """Shuffled batches in which no query and no item text appears twice (no in-batch false negatives)."""
    pending = examples[:]
    rng.shuffle(pending)
    while pending:
        current, seen_q, seen_t, rest = [], set(), set(), []
        for ex in pending:
            qid, pos, neg = ex
            keys = {texts[pos]} | ({texts[neg]} if neg is not None else set())
            if len(current) < batch and qid not in seen_q and not (keys & seen_t):
                current.append(ex)
                seen_q.add(qid)
                seen_t |= keys
            else:
                rest.append(ex)
        yield current
        pending = rest


def adamw_linear(model, lr: float, total: int):
    """AdamW with 10% linear warm-up, then linear decay to 0 at step ``total``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    warmup = max(1, int(0.1 * total))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))


def optimize(loss, optimizer, scheduler) -> None:
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def synchronize(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


def train_bi_encoder(recipe: Recipe, model, tokenizer, bundle: Bundle, device: str, max_len: int,
                     evaluate, log) -> list[dict]:
    rng = random.Random(13)
    torch.manual_seed(13)
    train = graded_rows(bundle, "train")
    examples = training_examples(recipe, bundle, train, rng)
    steps_per_epoch = math.ceil(len(examples) / recipe.batch)
    total = steps_per_epoch * recipe.epochs
    optimizer, scheduler = adamw_linear(model, recipe.lr, total)
    history = []
    for epoch in range(recipe.epochs):
        model.train()
        started, seen = time.perf_counter(), 0
        for batch in batches_without_duplicates(examples, recipe.batch, rng, bundle.texts):
            queries = [bundle.queries[q] for q, _, _ in batch]
            docs = [bundle.texts[p] for _, p, _ in batch] + [bundle.texts[n] for _, _, n in batch if n is not None]
            tq = tokenizer(queries, padding=True, truncation=True, max_length=max_len, return_tensors="pt").to(device)
            td = tokenizer(docs, padding=True, truncation=True, max_length=max_len, return_tensors="pt").to(device)
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device != "cpu"):
                q, d = mean_pool(model, tq).float(), mean_pool(model, td).float()
            scores = SCALE * q @ d.T
            labels = torch.arange(len(batch), device=device)
            loss = F.cross_entropy(scores, labels)
            if recipe.symmetric:
                loss = (loss + F.cross_entropy(scores[:, :len(batch)].T, labels)) / 2
            optimize(loss, optimizer, scheduler)
            seen += len(batch)
        synchronize(device)
        seconds = time.perf_counter() - started
        metrics = evaluate(model)
        history.append({"epoch": epoch + 1, "pairs": len(examples), "pairs_per_s": seen / seconds,
                        "train_s": round(seconds, 1), **metrics})
        log(f"  {recipe.name} epoch {epoch + 1}: {json.dumps(history[-1])}")
    return history


# ---------------------------------------------------------------- cross-encoder

def train_cross_encoder(model, tokenizer, bundle: Bundle, device: str, max_len: int, epochs: int, lr: float,
                        mined_per_query: int, log) -> float:
    rng = random.Random(13)
    torch.manual_seed(13)
    train = graded_rows(bundle, "train")
    rows = []
    for qid, grades in train.items():
        rows += [(qid, i, g / 6.0) for i, g in grades.items()]
        mined = [int(i) for i, _ in bundle.bm25.get(qid, [])[:30] if int(i) not in grades]
        rows += [(qid, i, 0.0) for i in rng.sample(mined, min(mined_per_query, len(mined)))]
    batch = 64
    total = math.ceil(len(rows) / batch) * epochs
    optimizer, scheduler = adamw_linear(model, lr, total)
    started, seen = time.perf_counter(), 0
    for _ in range(epochs):
        model.train()
        rng.shuffle(rows)
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            tokens = tokenizer([bundle.queries[q] for q, _, _ in chunk], [bundle.texts[i] for _, i, _ in chunk],
                               padding=True, truncation=True, max_length=max_len, return_tensors="pt").to(device)
            target = torch.tensor([t for _, _, t in chunk], device=device)
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device != "cpu"):
                logits = model(**tokens).logits.squeeze(-1).float()
            loss = F.binary_cross_entropy_with_logits(logits, target)
            optimize(loss, optimizer, scheduler)
            seen += len(chunk)
    synchronize(device)
    rate = seen / (time.perf_counter() - started)
    log(f"  cross-encoder: {len(rows):,} rows x {epochs} epochs, {rate:.0f} pairs/s")
    return rate


@torch.no_grad()
def rerank(model, tokenizer, bundle: Bundle, run: dict[str, list[int]], depth: int, device: str,
           max_len: int) -> dict[str, list[int]]:
    model.eval()
    out = {}
    for qid, ranked in run.items():
        head = ranked[:depth]
        if not head:
            out[qid] = []
            continue
        tokens = tokenizer([bundle.queries[qid]] * len(head), [bundle.texts[i] for i in head], padding=True,
                           truncation=True, max_length=max_len, return_tensors="pt").to(device)
        scores = model(**tokens).logits.squeeze(-1).float().cpu().numpy()
        order = np.argsort(-scores, kind="stable")
        out[qid] = [head[i] for i in order] + ranked[depth:]
    return out


# ---------------------------------------------------------------- main

def shrink_catalog(bundle: Bundle, size: int) -> Bundle:
    """A smaller catalog for smoke runs: every judged item of the kept queries, then the first rows."""
    judged = {bundle.row_of[i] for split in ("train", "dev") for items in bundle.qrels[split].values()
              for i in items if i in bundle.row_of}
    rows = sorted(judged | set(range(min(size, len(bundle.texts)))))
    new_row = {old: new for new, old in enumerate(rows)}
    ids = [bundle.item_ids[r] for r in rows]
    bm25 = {q: [[new_row[int(i)], s] for i, s in hits if int(i) in new_row] for q, hits in bundle.bm25.items()}
    return Bundle(item_ids=ids, texts=[bundle.texts[r] for r in rows], row_of={i: n for n, i in enumerate(ids)},
                  queries=bundle.queries, qrels=bundle.qrels, bm25=bm25)



DEFAULT_RECIPES = [  # in order of priority: a time budget drops the last ones
    Recipe("pos5-inbatch-1ep", positive_min=5, epochs=1),
    Recipe("pos4-inbatch", positive_min=4, epochs=3),
    Recipe("pos3-inbatch", positive_min=3, epochs=3),
    Recipe("pos5-inbatch", positive_min=5, epochs=3),
    Recipe("pos4-judgedneg", positive_min=4, negatives="judged", epochs=3),
    Recipe("pos4-bm25neg-10-50", positive_min=4, negatives="bm25", bm25_ranks=(10, 50), epochs=3),
    Recipe("pos4-mixed", positive_min=4, negatives="mixed", epochs=3),
    Recipe("pos4-lr1e-4", positive_min=4, epochs=3, lr=1e-4),
    Recipe("pos4-b256-lr1e-4", positive_min=4, epochs=3, lr=1e-4, batch=256),
    Recipe("pos2-inbatch", positive_min=2, epochs=3),
    Recipe("pos4-bm25neg-0-10", positive_min=4, negatives="bm25", bm25_ranks=(0, 10), epochs=3),
    Recipe("pos4-symmetric", positive_min=4, epochs=3, symmetric=True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--recipes", default="", help="comma-separated names from DEFAULT_RECIPES (default: all)")
    parser.add_argument("--epochs", type=int, default=0, help="override every recipe's epochs (smoke runs)")
    parser.add_argument("--limit-train", type=int, default=0, help="keep only this many train queries (smoke)")
    parser.add_argument("--limit-dev", type=int, default=0)
    parser.add_argument("--limit-items", type=int, default=0, help="shrink the catalog (smoke; keeps judged items)")
    parser.add_argument("--budget-s", type=float, default=0, help="start no recipe after this many seconds")
    parser.add_argument("--cross-encoder-epochs", type=int, default=2)
    parser.add_argument("--cross-encoder-mined", default="0,4")
    parser.add_argument("--rerank-depths", default="20,50,100")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    results: dict = {"device": args.device, "recipes": {}, "torch": torch.__version__}
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name(0)

    def log(line: str) -> None:
        print(line, flush=True)
        args.out.write_text(json.dumps(results, indent=1))

    bundle = load_bundle(args.bundle)
    started_all = time.perf_counter()
    if args.limit_train:
        keep = sorted(bundle.qrels["train"])[:args.limit_train]
        bundle.qrels["train"] = {q: bundle.qrels["train"][q] for q in keep}
    if args.limit_dev:
        keep = sorted(bundle.qrels["dev"])[:args.limit_dev]
        bundle.qrels["dev"] = {q: bundle.qrels["dev"][q] for q in keep}
    if args.limit_items:
        bundle = shrink_catalog(bundle, args.limit_items)
    dev = graded_rows(bundle, "dev")
    dev_ids = sorted(dev)
    bm25_run = {q: [(int(i), s) for i, s in bundle.bm25[q]] for q in dev_ids}
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    lengths = np.array([len(x) for x in tokenizer(bundle.texts[:20000])["input_ids"]])
    qlengths = np.array([len(x) for x in tokenizer(list(bundle.queries.values()))["input_ids"]])
    results["title_tokens_p50_p99_max"] = [int(np.percentile(lengths, 50)), int(np.percentile(lengths, 99)),
                                           int(lengths.max())]
    results["query_tokens_p50_p99_max"] = [int(np.percentile(qlengths, 50)), int(np.percentile(qlengths, 99)),
                                           int(qlengths.max())]
    catalog_tokens = token_batches(tokenizer, bundle.texts, args.max_len)
    results["bm25"] = score_run(ids_only(bm25_run), dev, 5)
    log(f"bm25 {results['bm25']}")

    def load_bi():
        return AutoModel.from_pretrained(args.model).float().to(args.device)

    def evaluate(model, keep_run: dict | None = None) -> dict:
        run, _ = dense_run(model, tokenizer, bundle, dev_ids, args.device, args.max_len, catalog_tokens)
        if keep_run is not None:
            keep_run["run"] = run
        metrics = {f"dense_{k}": round(v, 4) for k, v in score_run(ids_only(run), dev, 5).items()}
        metrics["rrf60_ndcg@10"] = round(score_run(rrf([ids_only(run), ids_only(bm25_run)]), dev, 5)["ndcg@10"], 4)
        for w in (0.3, 0.5):
            metrics[f"wsum{w}_ndcg@10"] = round(score_run(weighted(run, bm25_run, w), dev, 5)["ndcg@10"], 4)
        return metrics

    # Throughput: the base model encoding the whole catalog, FP32 and FP16 (autocast), sorted by length.
    base = load_bi()
    for half in () if args.skip_throughput else (False, True):
        encode(base, tokenizer, bundle.texts[:2048], args.device, args.max_len, half=half)
        if args.device != "cpu":
            torch.cuda.synchronize()
        started = time.perf_counter()
        encode(base, tokenizer, bundle.texts, args.device, args.max_len, half=half)
        if args.device != "cpu":
            torch.cuda.synchronize()
        results[f"catalog_items_per_s_{'fp16' if half else 'fp32'}"] = round(len(bundle.texts) /
                                                                            (time.perf_counter() - started), 1)
    log(f"throughput {results.get('catalog_items_per_s_fp32')} / {results.get('catalog_items_per_s_fp16')} items/s")
    results["base"] = evaluate(base)
    log(f"base {results['base']}")
    del base

    wanted = [r for r in DEFAULT_RECIPES if not args.recipes or r.name in args.recipes.split(",")]
    best_name, best_score, best_run = None, -1.0, None
    for recipe in wanted:
        if args.budget_s and time.perf_counter() - started_all > args.budget_s:
            log(f"time budget spent: skipping {recipe.name}")
            continue
        if args.epochs:
            recipe = replace(recipe, epochs=args.epochs)
        model = load_bi()
        holder: dict = {}
        best_epoch_score = -1.0

        def evaluate_keep(m, holder=holder):
            nonlocal best_epoch_score
            current: dict = {}
            metrics = evaluate(m, current)
            if metrics["dense_ndcg@10"] > best_epoch_score:
                best_epoch_score = metrics["dense_ndcg@10"]
                holder["run"] = current["run"]
            return metrics

        history = train_bi_encoder(recipe, model, tokenizer, bundle, args.device, args.max_len, evaluate_keep, log)
        results["recipes"][recipe.name] = {"recipe": asdict(recipe), "history": history}
        log(f"{recipe.name}: best dense nDCG@10 {best_epoch_score}")
        if best_epoch_score > best_score:
            best_name, best_score, best_run = recipe.name, best_epoch_score, holder["run"]
        del model
        if args.device != "cpu":
            torch.cuda.empty_cache()
    results["best_recipe"] = best_name

    if best_run is not None and args.cross_encoder_epochs:
        hybrid = rrf([ids_only(best_run), ids_only(bm25_run)])
        results["cross_encoder"] = {}
        for mined in [int(x) for x in args.cross_encoder_mined.split(",")]:
            ce = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1).float().to(args.device)
            rate = train_cross_encoder(ce, tokenizer, bundle, args.device, args.max_len * 2,
                                       args.cross_encoder_epochs, 5e-5, mined, log)
            entry = {"pairs_per_s": round(rate, 1)}
            for depth in [int(x) for x in args.rerank_depths.split(",")]:
                reranked = rerank(ce, tokenizer, bundle, {q: hybrid[q] for q in dev_ids}, depth, args.device,
                                  args.max_len * 2)
                entry[f"rerank{depth}"] = {k: round(v, 4) for k, v in score_run(reranked, dev, 5).items()}
                bm25_reranked = rerank(ce, tokenizer, bundle, {q: ids_only(bm25_run)[q] for q in dev_ids}, depth,
                                       args.device, args.max_len * 2) if depth == 50 else None
                if bm25_reranked is not None:
                    entry["rerank50_of_bm25"] = round(score_run(bm25_reranked, dev, 5)["ndcg@10"], 4)
            results["cross_encoder"][f"mined{mined}"] = entry
            log(f"cross-encoder mined {mined}: {json.dumps(entry)}")
            del ce
    log("done")


if __name__ == "__main__":
    main()
