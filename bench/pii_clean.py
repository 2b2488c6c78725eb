"""Over-redaction of a policy on text that holds no personal data: placeholders per 1,000 words.

    python bench/pii_clean.py [--policy default] [--set NAME=DIR ...] [--cacm-every N] [--top K]
                              [--totals-only NAME ...] [--json]

Every file goes through ingestion's worker pool and redaction transform (``enclave eval pii``'s
path, :func:`rag.eval.pii.over_redaction_files`), so a removal here is one ingestion would make.
On PII-free text every placeholder is a false positive. Default sets: the demo corpus
(``tests/fixtures/sample-corpus`` without its three files that hold people), Enclave's own
clinical/financial prose (``tests/fixtures/pii-free/tune`` and ``holdout``), and every Nth CACM
document's title and abstract from ``../shared/corpus/cacm`` (public 1958-1979 abstracts) when
present.

Removed values are printed (they are public, PII-free text) except for sets named in
``--totals-only`` (the hold-out ones, looked at only as totals): ``holdout`` and ``cacm4`` (every
8th CACM document from the 5th, ``--cacm-offset 4``; offset 0 is the tuning sample). CACM documents carry an author
line: removals there are people, not over-redaction, so only each document's title and abstract
(the text before its "CACM Month, Year" line) is redacted and counted.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag.config import load_settings  # noqa: E402
from rag.eval.pii import over_redaction_files  # noqa: E402

SAMPLE = ROOT / "tests" / "fixtures" / "sample-corpus"
# demo files that name people on purpose (the PII demo); the rest is PII-free
SAMPLE_WITH_PEOPLE = ("oncology/discharge-summary.txt", "finance/wire-transfer.md", "hr/leave-policy.csv")
CACM = ROOT.parent / "shared" / "corpus" / "cacm" / "docs.tar.gz"
# title and abstract: everything in <pre> before the "CACM December, 1958" line (authors follow it)
_CACM_BODY = re.compile(r"<pre>(.*?)^CACM [A-Z][a-z]+, \d{4}$", re.MULTILINE | re.DOTALL)


def _copy_sample(dest: Path) -> Path:
    for path in sorted(SAMPLE.rglob("*")):
        rel = path.relative_to(SAMPLE)
        if path.is_file() and str(rel) not in SAMPLE_WITH_PEOPLE and path.stat().st_size:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(path.read_bytes())
    return dest


def _cacm_bodies(dest: Path, every: int, offset: int = 0) -> Path:
    """Title and abstract of every Nth CACM document (no author or citation lines)."""
    with tarfile.open(CACM) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
        for m in members[offset::every]:
            f = tar.extractfile(m)
            if f is None:
                continue
            body = _CACM_BODY.search(f.read().decode("utf-8", errors="replace"))
            text = body.group(1).strip() if body else ""
            if text:
                (dest / (Path(m.name).name + ".txt")).write_text(text + "\n", encoding="utf-8")
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default="default")
    ap.add_argument("--policies-dir", type=Path, default=ROOT / "policies")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=DIR", help="extra PII-free directories")
    ap.add_argument("--cacm-every", type=int, default=8, help="every Nth CACM document (0: none)")
    ap.add_argument("--cacm-offset", type=int, default=0,
                    help="first CACM document of the sample (0 was tuned on; 4 is the hold-out sample)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these sets")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--totals-only", nargs="+", default=["holdout", "cacm4"],
                    help="sets whose removed values are not printed (the hold-out ones)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    settings = load_settings(policies_dir=args.policies_dir)
    report: dict[str, Any] = {"policy": args.policy, "sets": {}}
    with tempfile.TemporaryDirectory(prefix="pii-clean-") as tmp:
        sets: dict[str, Path] = {
            "sample-corpus": _copy_sample(Path(tmp) / "sample"),
            "tune": ROOT / "tests" / "fixtures" / "pii-free" / "tune",
            "holdout": ROOT / "tests" / "fixtures" / "pii-free" / "holdout"}
        if args.cacm_every and CACM.exists():
            (Path(tmp) / "cacm").mkdir()
            sets[f"cacm{args.cacm_offset}"] = _cacm_bodies(Path(tmp) / "cacm", args.cacm_every, args.cacm_offset)
        for spec in args.set:
            name, _, path = spec.partition("=")
            sets[name] = Path(path)
        for name, path in sets.items():
            if args.only is not None and name not in args.only:
                continue
            result = over_redaction_files(path, settings, args.policy, b"bench")
            report["sets"][name] = result.to_json(0 if name in args.totals_only else args.top)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(f"policy {args.policy}")
    for name, row in report["sets"].items():
        print(f"\n{name}: {row['documents']} documents, {row['words']} words, {row['placeholders']} placeholders "
              f"({row['placeholders_per_1000_words']} per 1,000 words) {row['by_type']}")
        for q, reason in row["quarantined"].items():
            print(f"  quarantined: {q} ({reason})")
        for item in row["most_removed"]:
            print(f"  {item['count']:>4}  {item['type']:<15} {item['value']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
