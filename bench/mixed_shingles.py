"""Mixed Chinese/English text: how many one-token edits does near-duplicate detection still match?

    python bench/mixed_shingles.py            # 4,000 prompts
    python bench/mixed_shingles.py --n 20000

The corpus is synthetic and deterministic (``--seed``; no downloads): prompts that mix Chinese clauses
and English terms, as users write them ("请用Python写一个函数..."), with a share of Han characters
drawn between 10% and 55% so that many prompts sit near the old ``auto`` mode's 30% cutoff, and 30 to
70 tokens (a token is a Han character or an English word). Each prompt gets one edit of one token:
a substitution (a Han character by another, a word by another), a deletion or an insertion.

For every shingle mode the script reports the share of (prompt, edited prompt) pairs that are matched
(a) by exact Jaccard similarity of the shingle sets >= the threshold and (b) by the dedup itself
(MinHash signatures + LSH + verification, :func:`~joydataforge.text.minhash_dedup.near_duplicate_clusters`),
overall and for the pairs whose Han share lies within 10 points of the cutoff; and how many pairs share
no shingle at all (the cutoff's failure: one side got word shingles, the other character shingles).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from joydataforge.text.minhash import MinHasher, exact_jaccard
from joydataforge.text.minhash_dedup import near_duplicate_clusters
from joydataforge.text.shingles import DEFAULT_CJK_RATIO, ShingleSpec, cjk_ratio, shingle_set

CHINESE = [
    "请解释一下",
    "中的装饰器是什么",
    "以及如何使用",
    "我想了解",
    "的区别和联系",
    "请给出一个完整的例子",
    "并说明每一步的作用",
    "怎么优化这段代码的性能",
    "为什么会报错",
    "帮我写一个函数",
    "读取文件并统计每列的平均值",
    "用中文回答",
    "注意边界情况",
    "这个问题在面试中经常出现",
    "我的电脑运行很慢",
    "孕妇可以吃",
    "吗",
    "每天服用两次",
    "饭后半小时",
    "医生建议我做",
    "检查结果显示",
    "偏高",
    "需要注意什么",
    "能不能同时服用",
    "有什么副作用",
    "如何部署到服务器上",
    "数据库连接失败了",
]
ENGLISH = [
    "Python",
    "decorator",
    "machine learning",
    "the transformer model",
    "gradient descent",
    "API",
    "Docker container",
    "pandas DataFrame",
    "unit test",
    "React hooks",
    "SQL query",
    "ibuprofen",
    "vitamin D",
    "blood pressure",
    "CT scan",
    "async function",
    "Kubernetes cluster",
    "linked list",
    "binary search tree",
    "HTTP request",
    "JSON schema",
    "git rebase",
    "memory leak",
    "for loop",
    "regular expression",
    "cross validation",
    "learning rate",
    "batch size",
]
_HAN = re.compile(r"[\u4e00-\u9fff]")
_TOKEN = re.compile(r"[\u4e00-\u9fff]|[A-Za-z0-9]+")
_HAN_POOL = "".join(CHINESE)
_WORD_POOL = [word for phrase in ENGLISH for word in phrase.split()]


def _join(tokens: list[str]) -> str:
    """Tokens back to text: no space between Han characters, one around English words."""
    out = ""
    for token in tokens:
        if out and (not _HAN.match(token) or not _HAN.match(out[-1])):
            out += " "
        out += token
    return out


def prompt(rng: random.Random) -> str:
    """One mixed prompt: clauses and terms added until the wanted length, steering the Han share."""
    share = rng.uniform(0.10, 0.55)
    length = rng.randint(30, 70)
    parts: list[str] = []
    han = latin = tokens = 0
    while tokens < length:
        if han / max(han + latin, 1) < share:
            part = rng.choice(CHINESE)
            han += len(part)
            tokens += len(part)
        else:
            part = rng.choice(ENGLISH)
            latin += len(part.replace(" ", ""))
            tokens += len(part.split())
        parts.append(part)
    return _join(_TOKEN.findall(" ".join(parts)))


def edit(text: str, rng: random.Random) -> str:
    """The text with one token substituted, deleted or inserted."""
    tokens = _TOKEN.findall(text)
    i = rng.randrange(len(tokens))
    operation = rng.choice(("substitute", "delete", "insert"))

    def like(token: str) -> str:
        return rng.choice(_HAN_POOL) if _HAN.match(token) else rng.choice(_WORD_POOL)

    if operation == "substitute":
        tokens[i] = like(tokens[i])
    elif operation == "delete" and len(tokens) > 1:
        del tokens[i]
    else:
        tokens.insert(i, like(tokens[rng.randrange(len(tokens))]))
    return _join(tokens)


def corpus(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (prompt, edited prompt) pairs."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        text = prompt(rng)
        pairs.append((text, edit(text, rng)))
    return pairs


@dataclass
class Matched:
    """Shares of pairs matched, overall and near the old cutoff, and pairs without a shared shingle."""

    mode: str
    exact: float
    dedup: float
    exact_near_cutoff: float
    dedup_near_cutoff: float
    disjoint: int
    pairs: int
    near_cutoff: int


def measure(pairs: list[tuple[str, str]], mode: str, threshold: float = 0.8, num_perm: int = 128) -> Matched:
    spec = ShingleSpec(mode)  # type: ignore[arg-type]
    near = [abs(cjk_ratio(a) - DEFAULT_CJK_RATIO) <= 0.10 for a, _ in pairs]
    exact = []
    disjoint = 0
    for a, b in pairs:
        similarity = exact_jaccard(shingle_set(a, spec), shingle_set(b, spec))
        exact.append(similarity >= threshold)
        disjoint += similarity == 0.0
    # the dedup itself, every pair in one run: original i and edit i are ids 2i and 2i+1
    texts = [t for pair in pairs for t in pair]
    roots = near_duplicate_clusters(texts, threshold=threshold, hasher=MinHasher(num_perm=num_perm, mode=mode)).roots  # type: ignore[arg-type]
    found = [roots[2 * i] == roots[2 * i + 1] for i in range(len(pairs))]
    n_near = sum(near)

    def share(hits: list[bool], mask: list[bool] | None = None) -> float:
        chosen = [h for h, m in zip(hits, mask or [True] * len(hits)) if m]
        return sum(chosen) / len(chosen) if chosen else 0.0

    return Matched(
        mode, share(exact), share(found), share(exact, near), share(found, near), disjoint, len(pairs), n_near
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000, help="prompts (default 4,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.8)
    args = parser.parse_args()
    pairs = corpus(args.n, args.seed)
    print(f"{args.n:,} mixed prompts, each with one edited token; threshold {args.threshold}")
    print(f"example: {pairs[0][0]}\n   edit: {pairs[0][1]}\n")
    print(f"{'mode':<7} {'exact J':>9} {'dedup':>9} {'exact J':>9} {'dedup':>9} {'no shared':>10}")
    print(f"{'':<7} {'all':>9} {'all':>9} {'cutoff±10':>9} {'cutoff±10':>9} {'shingle':>10}")
    results = {mode: measure(pairs, mode, args.threshold) for mode in ("auto", "mixed", "char")}
    for m in results.values():
        print(
            f"{m.mode:<7} {m.exact:>9.2%} {m.dedup:>9.2%} {m.exact_near_cutoff:>9.2%} {m.dedup_near_cutoff:>9.2%} "
            f"{m.disjoint:>10,}"
        )
    near = results["mixed"].near_cutoff
    old, new = results["auto"], results["mixed"]
    print(f"\n{near:,} pairs within 10 points of the 30% cutoff.")
    print(
        f"one-token edits matched by dedup: auto (old default) {old.dedup:.2%}, mixed (new default) {new.dedup:.2%}; "
        f"lost: {1 - old.dedup:.2%} -> {1 - new.dedup:.2%}"
    )


if __name__ == "__main__":
    main()
