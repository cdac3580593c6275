"""Synthetic behaviour log with known truth, for demos, tests and calibration.

Why a generator: the platform must show that both halves of the CTR model pay off, so the click
process has (1) a short-term session intent that only recent clicks reveal (the LSTM's job) and
(2) item titles built from category word lists, so a text encoder places an item with few clicks
(BERT's job). Each row keeps `p_true`, the probability its label was drawn from, so the best
possible AUC (`oracle_auc`) is known and a trained model is judged by its share of the oracle's lift.

Memory is bounded by `chunk_events`: the log is written user-major in fixed-size chunks, and the
only state carried between chunks is the open session of the user cut by the chunk boundary.
"""

from __future__ import annotations

import filecmp
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqctr.platform.config import SyntheticConfig
from seqctr.platform.data.contract import DataError
from seqctr.platform.model.metrics import auc
from seqctr.platform.storage import atomic_dir

# Hand-written category word lists (real English words, unique across categories).
CATEGORY_WORDS: dict[str, tuple[str, ...]] = {
    "sports": (
        "football",
        "soccer",
        "tennis",
        "marathon",
        "stadium",
        "goalkeeper",
        "tournament",
        "athlete",
        "referee",
        "basketball",
        "sprint",
        "championship",
    ),
    "cooking": (
        "recipe",
        "pasta",
        "garlic",
        "oven",
        "baking",
        "soup",
        "chef",
        "kitchen",
        "roast",
        "spices",
        "dessert",
        "bread",
    ),
    "travel": (
        "beach",
        "passport",
        "hotel",
        "flight",
        "island",
        "luggage",
        "resort",
        "cruise",
        "airport",
        "backpack",
        "tourist",
        "itinerary",
    ),
    "technology": (
        "laptop",
        "software",
        "smartphone",
        "processor",
        "gadget",
        "wireless",
        "keyboard",
        "robot",
        "server",
        "chip",
        "app",
        "startup",
    ),
    "music": (
        "guitar",
        "concert",
        "piano",
        "album",
        "melody",
        "drummer",
        "orchestra",
        "singer",
        "jazz",
        "lyrics",
        "violin",
        "symphony",
    ),
    "movies": (
        "cinema",
        "actor",
        "director",
        "trailer",
        "sequel",
        "screenplay",
        "hollywood",
        "premiere",
        "thriller",
        "documentary",
        "blockbuster",
        "studio",
    ),
    "fashion": (
        "dress",
        "sneakers",
        "jacket",
        "designer",
        "runway",
        "denim",
        "handbag",
        "jewelry",
        "boutique",
        "scarf",
        "outfit",
        "silk",
    ),
    "finance": (
        "stocks",
        "investment",
        "bank",
        "mortgage",
        "savings",
        "dividend",
        "portfolio",
        "budget",
        "loan",
        "crypto",
        "pension",
        "tax",
    ),
    "health": (
        "fitness",
        "vitamin",
        "doctor",
        "sleep",
        "nutrition",
        "therapy",
        "vaccine",
        "clinic",
        "cardio",
        "wellness",
        "diet",
        "hospital",
    ),
    "gardening": (
        "tomato",
        "seeds",
        "compost",
        "roses",
        "shovel",
        "greenhouse",
        "soil",
        "tulips",
        "orchard",
        "hedge",
        "fertilizer",
        "lawn",
    ),
    "pets": (
        "puppy",
        "kitten",
        "aquarium",
        "leash",
        "veterinarian",
        "parrot",
        "hamster",
        "grooming",
        "kennel",
        "dog",
        "cat",
        "treats",
    ),
    "cars": (
        "engine",
        "sedan",
        "tires",
        "mechanic",
        "convertible",
        "horsepower",
        "dealership",
        "garage",
        "turbo",
        "brakes",
        "motorcycle",
        "pickup",
    ),
    "science": (
        "physics",
        "telescope",
        "molecule",
        "laboratory",
        "galaxy",
        "chemistry",
        "experiment",
        "fossil",
        "quantum",
        "microscope",
        "genome",
        "astronomy",
    ),
    "books": (
        "novel",
        "author",
        "chapter",
        "library",
        "poetry",
        "bestseller",
        "paperback",
        "memoir",
        "fiction",
        "publisher",
        "bookstore",
        "literature",
    ),
    "gaming": (
        "console",
        "joystick",
        "multiplayer",
        "arcade",
        "esports",
        "controller",
        "quest",
        "pixel",
        "streamer",
        "dungeon",
        "gamer",
        "speedrun",
    ),
    "home": (
        "sofa",
        "furniture",
        "curtains",
        "carpet",
        "lamp",
        "mattress",
        "renovation",
        "wallpaper",
        "bedroom",
        "cabinet",
        "decor",
        "pillow",
    ),
    "art": (
        "painting",
        "canvas",
        "sculpture",
        "gallery",
        "museum",
        "portrait",
        "watercolor",
        "sketch",
        "exhibition",
        "easel",
        "mural",
        "ceramics",
    ),
    "history": (
        "empire",
        "medieval",
        "castle",
        "pharaoh",
        "revolution",
        "dynasty",
        "archive",
        "ancient",
        "battle",
        "knight",
        "monarchy",
        "artifact",
    ),
    "weather": (
        "storm",
        "rainfall",
        "forecast",
        "hurricane",
        "snowfall",
        "thunder",
        "humidity",
        "drought",
        "tornado",
        "heatwave",
        "blizzard",
        "monsoon",
    ),
    "outdoors": (
        "hiking",
        "camping",
        "tent",
        "trail",
        "mountain",
        "canoe",
        "fishing",
        "campfire",
        "compass",
        "wilderness",
        "kayak",
        "summit",
    ),
    "parenting": (
        "toddler",
        "stroller",
        "diaper",
        "nursery",
        "babysitter",
        "preschool",
        "lullaby",
        "crib",
        "playground",
        "newborn",
        "toys",
        "homework",
    ),
    "beauty": (
        "lipstick",
        "skincare",
        "perfume",
        "mascara",
        "shampoo",
        "manicure",
        "salon",
        "moisturizer",
        "makeup",
        "serum",
        "hairstyle",
        "cosmetics",
    ),
    "drinks": (
        "espresso",
        "wine",
        "cocktail",
        "brewery",
        "latte",
        "whiskey",
        "tea",
        "smoothie",
        "lemonade",
        "vineyard",
        "barista",
        "champagne",
    ),
    "politics": (
        "election",
        "senate",
        "parliament",
        "candidate",
        "ballot",
        "campaign",
        "policy",
        "minister",
        "debate",
        "congress",
        "governor",
        "vote",
    ),
}
GENERIC_WORDS: tuple[str, ...] = (
    "new",
    "best",
    "top",
    "guide",
    "ultimate",
    "classic",
    "daily",
    "essential",
    "simple",
    "modern",
    "review",
    "tips",
)


@dataclass(frozen=True)
class ClickProcess:
    """The hidden process; the defaults are calibrated so recent clicks reveal most of the truth."""

    session_min: int = 10  # impressions per session: uniform in [session_min, session_max]
    session_max: int = 30
    step_s: tuple[int, int] = (2, 15)  # seconds between impressions of a session
    span_days: float = 60.0  # each user's sessions spread over about this many days
    min_gap_s: int = 1800  # sessions are at least this far apart
    p_stay: float = 0.6  # a new session keeps the previous intent
    p_random_intent: float = 0.1  # else: a random category, otherwise one of the user's interests
    p_show_intent: float = 0.3  # impression from the intent category (~46% in all, counting the others)
    p_show_interest: float = 0.3  # ... from a long-term interest; otherwise a random category
    interest_concentration: float = 2.0  # Dirichlet parameter of a user's interest weights
    zipf_alpha: float = 1.1  # popularity of items within a category
    bias: float = -4.5  # logit = bias + intent_gain*[cat == intent] + interest_gain*w[cat] + quality
    intent_gain: float = 4.0
    interest_gain: float = 1.5
    quality_sd: float = 0.2


START_TS = 1_704_067_200  # 2024-01-01 00:00:00 UTC


def category_vocabulary(n_categories: int, seed: int = 0) -> list[tuple[str, tuple[str, ...]]]:
    """(name, words) per category: the hand-written lists first, then generated pseudo-words."""
    vocab = list(CATEGORY_WORDS.items())[:n_categories]
    rng = np.random.default_rng([seed % 2**63, 7])
    used = {w for _, words in vocab for w in words} | set(GENERIC_WORDS)
    consonants, vowels = list("bdfgklmnprstvz"), list("aeiou")
    for c in range(len(vocab), n_categories):
        words: list[str] = []
        while len(words) < 12:
            n_syl = int(rng.integers(2, 4))
            word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(n_syl))
            if word not in used:
                used.add(word)
                words.append(word)
        vocab.append((f"topic{c:03d}", tuple(words)))
    return vocab


@dataclass
class _World:
    """Everything O(users + items): item table, popularity samplers, user interests and timing."""

    item_cat: np.ndarray  # (I,) category of each item
    item_quality: np.ndarray  # (I,) small logit offset
    items_by_cat: np.ndarray  # (I,) item ids sorted by category
    cat_keys: np.ndarray  # (I,) category + within-category popularity CDF, increasing
    titles: list[str]
    interest_cat: np.ndarray  # (U, 3) category ids; a 2-interest user repeats with weight 0
    interest_w: np.ndarray  # (U, 3) Dirichlet weights, rows sum to 1
    interest_cdf: np.ndarray  # (U, 3)
    counts: np.ndarray  # (U,) events per user
    user_end: np.ndarray  # (U,) exclusive end of each user's rows in the user-major log
    start_ts: np.ndarray  # (U,) first impression time
    gap_mean: np.ndarray  # (U,) mean extra seconds between sessions


def _build_world(cfg: SyntheticConfig, proc: ClickProcess, vocab: list) -> _World:
    rng = np.random.default_rng([cfg.seed % 2**63, 0])
    n_items, n_cats, n_users = cfg.items, cfg.categories, cfg.users
    item_cat = rng.permutation(np.arange(n_items) % n_cats)
    items_by_cat = np.argsort(item_cat, kind="stable")
    sorted_cat = item_cat[items_by_cat]
    cat_first = np.searchsorted(sorted_cat, np.arange(n_cats))
    rank = np.arange(n_items) - cat_first[sorted_cat] + 1  # within-category rank, random by item id
    pop = rank.astype(np.float64) ** -proc.zipf_alpha
    cum = np.cumsum(pop)
    cum_before = np.r_[0.0, cum][cat_first]
    cat_total = np.add.reduceat(pop, cat_first)
    cdf = (cum - cum_before[sorted_cat]) / cat_total[sorted_cat]
    cdf[np.r_[cat_first[1:] - 1, n_items - 1]] = 1.0
    quality = rng.normal(0.0, proc.quality_sd, n_items)

    # Titles: 3-6 words, mostly from the item's category list, sometimes one generic word.
    n_words = rng.integers(3, 7, n_items)
    generic = rng.random(n_items) < 0.35
    word_order = np.argsort(rng.random((n_items, 12)), axis=1)
    generic_pick = rng.integers(0, len(GENERIC_WORDS), n_items)
    generic_pos = rng.integers(0, 6, n_items)
    titles = []
    for i in range(n_items):
        words = vocab[item_cat[i]][1]
        chosen = [words[j] for j in word_order[i, : n_words[i] - generic[i]]]
        if generic[i]:
            chosen.insert(int(generic_pos[i]) % len(chosen), GENERIC_WORDS[generic_pick[i]])
        titles.append(" ".join(chosen))

    # Users: 2-3 distinct interests (Gumbel top-k over mildly skewed category popularity).
    cat_logw = -0.5 * np.log(np.arange(1, n_cats + 1))[rng.permutation(n_cats)]
    interest_cat = np.empty((n_users, 3), dtype=np.int64)
    for lo in range(0, n_users, 65536):
        hi = min(lo + 65536, n_users)
        keys = cat_logw + rng.gumbel(size=(hi - lo, n_cats))
        interest_cat[lo:hi, : min(3, n_cats)] = np.argsort(-keys, axis=1)[:, :3]
    two = (rng.random(n_users) < 0.5) | (n_cats < 3)
    g = rng.gamma(proc.interest_concentration, size=(n_users, 3))
    g[two, 2] = 0.0
    interest_cat[two, 2] = interest_cat[two, 0]
    interest_w = g / g.sum(axis=1, keepdims=True)
    interest_cdf = np.cumsum(interest_w, axis=1)
    interest_cdf[:, 2] = 1.0

    activity = rng.lognormal(0.0, 0.6, n_users)
    counts = rng.multinomial(cfg.events, activity / activity.sum()).astype(np.int64)
    span = proc.span_days * 86400
    sessions = np.maximum(counts / ((proc.session_min + proc.session_max) / 2), 1.0)
    gap_mean = np.maximum(span / sessions - proc.min_gap_s, 3600.0)
    start_ts = START_TS + rng.integers(0, 2 * 86400, n_users)
    return _World(
        item_cat,
        quality,
        items_by_cat,
        sorted_cat + cdf,
        titles,
        interest_cat,
        interest_w,
        interest_cdf,
        counts,
        np.cumsum(counts),
        start_ts,
        gap_mean,
    )


@dataclass
class _Carry:
    """State of the user cut by a chunk boundary (user == -1: the next chunk starts a new user)."""

    user: int = -1
    remaining: int = 0  # impressions left in the open session (0: the next one starts a session)
    intent: int = 0
    session: int = -1
    last_ts: int = 0
    next_session: int = 0


def _pick_interest(world: _World, users: np.ndarray, u: np.ndarray) -> np.ndarray:
    col = (u[:, None] >= world.interest_cdf[users]).sum(axis=1)
    return world.interest_cat[users, np.minimum(col, 2)]


def _chunk(
    world: _World, proc: ClickProcess, g0: int, g1: int, carry: _Carry, rng: np.random.Generator, n_cats: int
) -> tuple[dict[str, np.ndarray], _Carry]:
    """Rows [g0, g1) of the user-major log, continuing `carry`."""
    n = g1 - g0
    u_lo = int(np.searchsorted(world.user_end, g0, side="right"))
    u_hi = int(np.searchsorted(world.user_end, g1 - 1, side="right"))
    users = np.arange(u_lo, u_hi + 1)
    users = users[world.counts[users] > 0]
    seg_start = np.maximum(world.user_end[users] - world.counts[users], g0) - g0
    seg_len = np.minimum(world.user_end[users], g1) - g0 - seg_start
    continued = carry.user == users[0]
    continued_session = continued and carry.remaining > 0

    # Sessions: enough uniform lengths per user segment to cover it, cut at the segment end.
    per_seg = seg_len // proc.session_min + 2
    lens = rng.integers(proc.session_min, proc.session_max + 1, int(per_seg.sum()))
    if continued_session:
        lens[0] = carry.remaining
    sess_seg = np.repeat(np.arange(len(users)), per_seg)
    cum = np.cumsum(lens)
    first = np.cumsum(per_seg) - per_seg
    start_in_seg = cum - lens - (cum[first] - lens[first])[sess_seg]
    keep = start_in_seg < seg_len[sess_seg]
    sess_seg, start_in_seg, lens = sess_seg[keep], start_in_seg[keep], lens[keep]
    sess_start = seg_start[sess_seg] + start_in_seg
    n_sess = len(sess_start)
    ev_sess = np.repeat(np.arange(n_sess), np.diff(np.r_[sess_start, n]))
    ev_seg = sess_seg[ev_sess]
    sess_user = users[sess_seg]
    ev_user = users[ev_seg]

    # Intent: a Markov chain over a user's sessions; a fresh draw unless the session stays.
    fresh = np.where(
        rng.random(n_sess) < proc.p_random_intent,
        rng.integers(0, n_cats, n_sess),
        _pick_interest(world, sess_user, rng.random(n_sess)),
    )
    stay = rng.random(n_sess) < proc.p_stay
    stay[start_in_seg == 0] = False  # a user's first session
    if continued:
        stay[0] = continued_session or stay[0]
    cand = np.r_[carry.intent, fresh]
    src = np.where(np.r_[False, stay], 0, np.arange(n_sess + 1))
    intent = cand[np.maximum.accumulate(src)][1:]
    session_id = carry.next_session + np.arange(n_sess) - int(continued_session)

    # Timestamps: seconds apart inside a session, hours or days between sessions.
    dt = rng.integers(proc.step_s[0], proc.step_s[1] + 1, n)
    new_sess = np.ones(n_sess, dtype=bool)
    new_sess[0] = not continued_session
    gaps = proc.min_gap_s + rng.exponential(world.gap_mean[sess_user])
    dt[sess_start[new_sess]] = gaps[new_sess].astype(np.int64)
    csum = np.cumsum(dt)
    base = world.start_ts[users] - csum[seg_start]  # a user's first impression is at start_ts
    if continued:
        base[0] = carry.last_ts - csum[0] + dt[0]
    ts = base[ev_seg] + csum

    # Impressions and clicks.
    ev_intent = intent[ev_sess]
    r = rng.random(n)
    cat = np.where(
        r < proc.p_show_intent,
        ev_intent,
        np.where(
            r < proc.p_show_intent + proc.p_show_interest,
            _pick_interest(world, ev_user, rng.random(n)),
            rng.integers(0, n_cats, n),
        ),
    )
    item = world.items_by_cat[np.searchsorted(world.cat_keys, cat + rng.random(n), side="right")]
    icat = world.item_cat[item]
    w = ((world.interest_cat[ev_user] == icat[:, None]) * world.interest_w[ev_user]).sum(axis=1)
    logit = proc.bias + proc.intent_gain * (icat == ev_intent) + proc.interest_gain * w
    p_true = 1.0 / (1.0 + np.exp(-(logit + world.item_quality[item])))
    label = (rng.random(n) < p_true).astype(np.int8)

    last_user = int(users[-1])
    out_carry = _Carry(next_session=int(session_id[-1]) + 1)
    if world.user_end[last_user] > g1:
        out_carry.user, out_carry.intent, out_carry.last_ts = last_user, int(intent[-1]), int(ts[-1])
        out_carry.remaining = int(sess_start[-1] + lens[-1] - n)
        out_carry.session = int(session_id[-1])
    cols = {
        "user": ev_user,
        "item": item,
        "timestamp": ts,
        "label": label,
        "p_true": p_true,
        "session": session_id[ev_sess].astype(np.int32),
        "intent": ev_intent,
    }
    return cols, out_carry


def _names(prefix: str, n: int) -> pa.Array:
    width = max(6, len(str(n - 1)))
    return pa.array([f"{prefix}{i:0{width}d}" for i in range(n)], type=pa.string())


def generate_synthetic(cfg: SyntheticConfig, out: str | Path, process: ClickProcess | None = None) -> dict:
    """Write `out/events/part-*.parquet` and `out/items/items.parquet`; return a report.

    Each folder is built beside its final place and renamed in, so readers never see half a log.
    """
    if cfg.items < cfg.categories:
        raise ValueError(
            f"synthetic.items ({cfg.items}) must be >= synthetic.categories ({cfg.categories}) "
            "so every category has an item"
        )
    if "://" in str(out):
        raise ValueError(f"generate_synthetic writes a local folder; got the URI {out}")
    proc = process or ClickProcess()
    out = Path(out)
    t0 = time.perf_counter()
    vocab = category_vocabulary(cfg.categories, cfg.seed)
    world = _build_world(cfg, proc, vocab)
    user_names, item_names = _names("u", cfg.users), _names("i", cfg.items)
    cat_names = pa.array([name for name, _ in vocab], type=pa.string())
    n_files = -(-cfg.events // cfg.chunk_events)
    carry = _Carry()
    with atomic_dir(out / "events") as tmp:
        for k in range(n_files):
            g0, g1 = k * cfg.chunk_events, min((k + 1) * cfg.chunk_events, cfg.events)
            rng = np.random.default_rng([cfg.seed % 2**63, 1, k])
            cols, carry = _chunk(world, proc, g0, g1, carry, rng, cfg.categories)
            table = pa.table(
                {
                    "user_id": pc.take(user_names, pa.array(cols["user"])),
                    "item_id": pc.take(item_names, pa.array(cols["item"])),
                    "timestamp": pa.array(cols["timestamp"], type=pa.int64()),
                    "label": pa.array(cols["label"], type=pa.int8()),
                    "p_true": pa.array(cols["p_true"], type=pa.float64()),
                    "session": pa.array(cols["session"], type=pa.int32()),
                    "intent": pc.take(cat_names, pa.array(cols["intent"])),
                }
            )
            pq.write_table(table, tmp / f"part-{k:05d}.parquet")
    items = pa.table(
        {
            "item_id": item_names,
            "text": pa.array(world.titles, type=pa.string()),
            "category": pc.take(cat_names, pa.array(world.item_cat)),
        }
    )
    with atomic_dir(out / "items") as tmp:
        pq.write_table(items, tmp / "items.parquet")
    seconds = time.perf_counter() - t0
    return {
        "events": cfg.events,
        "users": int((world.counts > 0).sum()),
        "items": cfg.items,
        "files": n_files,
        "seconds": seconds,
        "events_per_s": cfg.events / seconds,
        "events_path": str(out / "events"),
        "items_path": str(out / "items" / "items.parquet"),
    }


def _same_folder(a: Path, b: Path) -> bool:
    """Same file names and the same bytes in each (the generator is deterministic for a config)."""
    names = sorted(p.name for p in a.iterdir() if p.is_file())
    if not b.is_dir() or names != sorted(p.name for p in b.iterdir() if p.is_file()):
        return False
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def write_synthetic(cfg: SyntheticConfig, out: str | Path, force: bool = False) -> dict:
    """generate_synthetic, safe over a log that is already there: `report["action"]` says what happened.

    Nothing there: generated. The same log (what this config generates, byte for byte): kept as it is,
    files and modification times untouched, so the sample and embedding caches keyed on them stay valid.
    Anything else (another config, or a user's own log): a DataError naming the folder, nothing changed,
    unless `force`, which replaces it.
    """
    out = Path(out)
    existing = [p for p in (out / "events", out / "items") if p.exists()]
    if not existing:
        return {**generate_synthetic(cfg, out), "action": "generated"}
    staging = out.parent / f".{out.name}.generate-{uuid.uuid4().hex[:8]}"
    try:
        report = generate_synthetic(cfg, staging)
        if all(_same_folder(staging / p.name, p) for p in (out / "events", out / "items")):
            paths = {"events_path": str(out / "events"), "items_path": str(out / "items" / "items.parquet")}
            return {**report, **paths, "action": "kept"}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not force:
        raise DataError(
            f"{out}: a different behaviour log is already there ({', '.join(p.name for p in existing)}/); "
            "pass --force to replace it, or --out another folder"
        )
    return {**generate_synthetic(cfg, out), "action": "replaced"}


def read_columns(path: str | Path, columns: list[str]) -> dict[str, np.ndarray]:
    """Columns of a Parquet file or folder of files as numpy arrays; errors name the file and column."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise FileNotFoundError(f"{path}: no Parquet files found")
    parts: dict[str, list] = {c: [] for c in columns}
    for f in files:
        names = pq.read_schema(f).names
        for c in columns:
            if c not in names:
                raise ValueError(f"{f}: missing column '{c}' (has {names})")
        table = pq.read_table(f, columns=columns)
        for c in columns:
            if table[c].null_count:
                raise ValueError(f"{f}: column '{c}' has {table[c].null_count} nulls")
            parts[c].append(table[c].to_numpy())
    return {c: np.concatenate(v) for c, v in parts.items()}


def oracle_auc(events_path: str | Path) -> float:
    """AUC of the true click probability `p_true` against `label`: the best any model can reach."""
    cols = read_columns(events_path, ["label", "p_true"])
    bad = ~np.isin(cols["label"], (0, 1))
    if bad.any():
        raise ValueError(
            f"{events_path}: column 'label' must be 0/1; row {int(np.argmax(bad))} "
            f"(counting across files in name order) is {cols['label'][bad][0]}"
        )
    return auc(cols["label"], cols["p_true"])
