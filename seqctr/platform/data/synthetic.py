"""Synthetic behaviour log with known truth, for demos, tests and calibration.

Why a generator: the platform must show that both halves of the CTR model pay off, so the click
process has (1) a short-term session intent that only recent clicks reveal (the LSTM's job) and
(2) item titles built from category word lists, so a text encoder places an item with few clicks
(BERT's job). Each row keeps `p_true`, the probability its label was drawn from, so the best
possible AUC (`oracle_auc`) is known and a trained model is judged by its share of the oracle's lift.

Two profiles (`data.synthetic.profile`). `default` is the process above (`ClickProcess`), where
histories and titles carry nearly all the signal. `realistic` (`RealisticProcess`) is harder and
closer to real CTR logs, where user, item and context features carry as much as the history. Its
logit is `bias` plus one term per family (`LOGIT_FAMILIES`), each there to reward one model part:

- user: a per-user click bias (sd 0.8), learnt by a user-id embedding for returning users or read
  from the user's own past CTR;
- item, brand: per-item quality (sd 0.8) plus a per-brand offset (several brands per category), for
  item-id and brand embeddings and item past CTR;
- price: a weak price effect (-0.3 per sd of log price), for a numeric item feature;
- affinity: the default's intents and interests with weaker gains, so the history (the LSTM over
  recent clicks) is one signal among several;
- hour: each category has a preferred hour, `hour_gain * cos(2*pi*(hour - peak) / 24)`, for a
  context feature crossed with the item;
- device: a per-device effect plus a per-(device, category) offset, for a second context feature.

It also has short, heavy-tailed histories (at 15 events per user on average, about 80% of users
have under 20) and users who arrive uniformly over the span and stay a short window, so with the
split by global time a large share of test rows (about 40-45%) comes from users unseen in training:
there only the item, context and text features can help. Titles are noisy (each word but one is a
random other category's with probability 0.5), so text carries less than in the default. The log
gains side columns: events `device` (string: mobile, desktop or tablet) and `hour` (int32, the UTC
hour of the timestamp); items `brand` (string) and `price` (float32, log-normal). `p_true` stays the
exact click probability, and `family_logits` gives its terms row by row (`click_probability` sums
them back, bit for bit), so how much each family carries can be measured (bench/realistic_profile.py).

Memory is bounded by `chunk_events`: the log is written user-major in fixed-size chunks, and the
only state carried between chunks is the open session of the user cut by the chunk boundary.
"""

from __future__ import annotations

import filecmp
import shutil
import time
import uuid
from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class RealisticProcess(ClickProcess):
    """The `realistic` profile: logit = bias + the sum of `LOGIT_FAMILIES` (a gain or sd of 0 switches one off)."""

    session_min: int = 3
    session_max: int = 15
    span_days: float = 60.0  # users arrive uniformly over the span
    lifetime_days: float = 20.0  # mean of a user's active window (exponential), cut at the span's end
    activity_sigma: float = 1.6  # log-normal sd of a user's activity: heavy-tailed events per user
    bias: float = -3.3
    user_bias_sd: float = 0.8  # "user": a user's own click propensity
    quality_sd: float = 0.8  # "item": an item's own quality
    brands_per_category: int = 5
    brand_sd: float = 0.4  # "brand": shared by a brand's items, adds to item quality
    price_gain: float = -0.3  # "price": per standard deviation of log price
    price_sigma: float = 0.5  # log-normal sd of price around its brand's level
    intent_gain: float = 1.5  # "affinity": intent_gain*[cat == intent] + interest_gain*w[cat]
    interest_gain: float = 1.0
    hour_gain: float = 0.8  # "hour": hour_gain * cos(2*pi*(hour - peak[cat]) / 24)
    device_probs: tuple[float, float, float] = (0.55, 0.35, 0.10)  # of DEVICES, for a user's main device
    p_main_device: float = 0.85  # a session is on the user's main device, else a draw from device_probs
    device_gain: tuple[float, float, float] = (-0.2, 0.2, 0.0)  # "device": a main effect per device ...
    device_cat_sd: float = 0.5  # ... plus an offset per (device, category)
    title_noise: float = 0.5  # share of a title's words drawn from other categories' lists


def realistic_process(cfg: SyntheticConfig) -> RealisticProcess:
    """The realistic profile's process with the config's overrides (synthetic.title_noise)."""
    proc = RealisticProcess()
    return proc if cfg.title_noise is None else replace(proc, title_noise=cfg.title_noise)


START_TS = 1_704_067_200  # 2024-01-01 00:00:00 UTC
DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
LOGIT_FAMILIES: tuple[str, ...] = ("user", "item", "brand", "price", "affinity", "hour", "device")


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
class _Realistic:
    """What only the realistic profile has; O(users + items + brands)."""

    user_bias: np.ndarray  # (U,) logit offset
    main_device: np.ndarray  # (U,) index into DEVICES
    item_brand: np.ndarray  # (I,) brand id; brand b belongs to category b // brands_per_category
    brand_names: list[str]
    brand_quality: np.ndarray  # (B,) logit offset
    price: np.ndarray  # (I,) float32, as written
    price_z: np.ndarray  # (I,) standardised log of the written price
    hour_peak: np.ndarray  # (C,) preferred hour of each category, in [0, 24)
    device_offset: np.ndarray  # (3, C) device main effect + per-(device, category) offset


@dataclass
class _World:
    """Everything O(users + items): item table, popularity samplers, user interests and timing."""

    item_cat: np.ndarray  # (I,) category of each item
    item_quality: np.ndarray  # (I,) logit offset
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
    real: _Realistic | None = None  # the realistic profile's extra families


def _catalogue(rng: np.random.Generator, n_items: int, n_cats: int, proc: ClickProcess) -> tuple:
    """Item categories and the within-category Zipf popularity sampler (keys for searchsorted)."""
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
    return item_cat, items_by_cat, sorted_cat + cdf


def _titles(rng: np.random.Generator, item_cat: np.ndarray, vocab: list) -> list[str]:
    """3-6 words, mostly from the item's category list, sometimes one generic word."""
    n_items = len(item_cat)
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
    return titles


def _noisy_titles(rng: np.random.Generator, item_cat: np.ndarray, vocab: list, noise: float) -> list[str]:
    """3-6 words; each word, but one kept from the item's own list (below noise 1), is a random other
    category's w.p. `noise`."""
    n_items, n_cats = len(item_cat), len(vocab)
    all_words = np.array([w for _, words in vocab for w in words])  # (C * 12,)
    n_words = rng.integers(3, 7, n_items)
    own = np.argsort(rng.random((n_items, 12)), axis=1)[:, :6]  # distinct own-category words
    noisy = rng.random((n_items, 6)) < noise
    if noise < 1:  # noise 1: no word from the item's own list, so the title carries no signal of its category
        noisy[np.arange(n_items), rng.integers(0, n_words)] = False
    other_cat = (item_cat[:, None] + rng.integers(1, n_cats, (n_items, 6))) % n_cats
    word_cat = np.where(noisy, other_cat, item_cat[:, None])
    pick = all_words[word_cat * 12 + np.where(noisy, rng.integers(0, 12, (n_items, 6)), own)]
    return [" ".join(pick[i, : n_words[i]]) for i in range(n_items)]


def _interests(rng: np.random.Generator, n_users: int, n_cats: int, proc: ClickProcess) -> tuple:
    """2-3 distinct interests per user (Gumbel top-k over mildly skewed category popularity)."""
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
    return interest_cat, interest_w, interest_cdf


def _build_world(cfg: SyntheticConfig, proc: ClickProcess, vocab: list) -> _World:
    rng = np.random.default_rng([cfg.seed % 2**63, 0])
    n_items, n_cats, n_users = cfg.items, cfg.categories, cfg.users
    item_cat, items_by_cat, cat_keys = _catalogue(rng, n_items, n_cats, proc)
    quality = rng.normal(0.0, proc.quality_sd, n_items)
    titles = _titles(rng, item_cat, vocab)
    interest_cat, interest_w, interest_cdf = _interests(rng, n_users, n_cats, proc)

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
        cat_keys,
        titles,
        interest_cat,
        interest_w,
        interest_cdf,
        counts,
        np.cumsum(counts),
        start_ts,
        gap_mean,
    )


def _brand_names(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    consonants, vowels = list("bdfgklmnprstvz"), list("aeiou")
    names: list[str] = []
    while len(names) < n:
        syl = rng.choice(consonants, 3) + rng.choice(vowels, 3)
        name = "".join(syl[: int(rng.integers(2, 4))]).capitalize()
        if name.lower() not in taken:
            taken.add(name.lower())
            names.append(name)
    return names


def _build_realistic_world(cfg: SyntheticConfig, proc: RealisticProcess, vocab: list) -> _World:
    rng = np.random.default_rng([cfg.seed % 2**63, 2])
    n_items, n_cats, n_users = cfg.items, cfg.categories, cfg.users
    item_cat, items_by_cat, cat_keys = _catalogue(rng, n_items, n_cats, proc)

    # Items: brands of a category (Zipf-ish shares), each with a quality offset and a price level.
    n_b = proc.brands_per_category
    share = np.cumsum(1.0 / np.arange(1, n_b + 1))
    brand_in_cat = np.minimum(np.searchsorted(share / share[-1], rng.random(n_items), side="right"), n_b - 1)
    item_brand = item_cat * n_b + brand_in_cat
    brand_quality = rng.normal(0.0, proc.brand_sd, n_cats * n_b)
    brand_level = rng.normal(np.log(30.0), 0.8, n_cats)[np.arange(n_cats * n_b) // n_b] + rng.normal(
        0.0, 0.4, n_cats * n_b
    )
    log_price = brand_level[item_brand] + rng.normal(0.0, proc.price_sigma, n_items)
    price = np.maximum(np.round(np.exp(log_price), 2), 0.01).astype(np.float32)
    lp = np.log(price.astype(np.float64))
    price_z = (lp - lp.mean()) / max(float(lp.std()), 1e-9)
    quality = rng.normal(0.0, proc.quality_sd, n_items)
    titles = _noisy_titles(rng, item_cat, vocab, proc.title_noise)
    taken = {w for _, words in vocab for w in words} | set(GENERIC_WORDS)
    brand_names = _brand_names(rng, n_cats * n_b, taken)

    # Users: interests as in the default, a click bias, a main device; contexts per category.
    interest_cat, interest_w, interest_cdf = _interests(rng, n_users, n_cats, proc)
    user_bias = rng.normal(0.0, proc.user_bias_sd, n_users)
    device_cdf = np.cumsum(proc.device_probs) / sum(proc.device_probs)
    main_device = np.minimum(np.searchsorted(device_cdf, rng.random(n_users), side="right"), 2)
    hour_peak = rng.uniform(0.0, 24.0, n_cats)
    device_offset = np.asarray(proc.device_gain)[:, None] + rng.normal(0.0, proc.device_cat_sd, (3, n_cats))

    # Timing: heavy-tailed activity; users arrive uniformly over the span and stay a short window.
    span = proc.span_days * 86400
    arrival = rng.uniform(0.0, span, n_users)
    window = np.minimum(rng.exponential(proc.lifetime_days * 86400, n_users), span - arrival)
    activity = rng.lognormal(0.0, proc.activity_sigma, n_users) * (window + 86400)  # rate x time seen
    counts = rng.multinomial(cfg.events, activity / activity.sum()).astype(np.int64)
    sessions = np.maximum(counts / ((proc.session_min + proc.session_max) / 2), 1.0)
    gap_mean = np.maximum(window / (sessions + 1) - proc.min_gap_s, 60.0)
    real = _Realistic(
        user_bias, main_device, item_brand, brand_names, brand_quality, price, price_z, hour_peak, device_offset
    )
    return _World(
        item_cat,
        quality,
        items_by_cat,
        cat_keys,
        titles,
        interest_cat,
        interest_w,
        interest_cdf,
        counts,
        np.cumsum(counts),
        START_TS + arrival.astype(np.int64),
        gap_mean,
        real,
    )


def _family_logits(
    world: _World,
    proc: RealisticProcess,
    user: np.ndarray,
    item: np.ndarray,
    intent: np.ndarray,
    hour: np.ndarray,
    device: np.ndarray,
) -> dict[str, np.ndarray]:
    """The realistic logit, family by family (`LOGIT_FAMILIES` order), for events given as indices."""
    real = world.real
    assert real is not None
    icat = world.item_cat[item]
    w = ((world.interest_cat[user] == icat[:, None]) * world.interest_w[user]).sum(axis=1)
    return {
        "user": real.user_bias[user],
        "item": world.item_quality[item],
        "brand": real.brand_quality[real.item_brand[item]],
        "price": proc.price_gain * real.price_z[item],
        "affinity": proc.intent_gain * (icat == intent) + proc.interest_gain * w,
        "hour": proc.hour_gain * np.cos(2 * np.pi * (hour - real.hour_peak[icat]) / 24),
        "device": real.device_offset[device, icat],
    }


def click_probability(bias: float, families: dict[str, np.ndarray]) -> np.ndarray:
    """sigmoid(bias + the families summed in `LOGIT_FAMILIES` order): bit for bit the log's `p_true`."""
    logit = np.float64(bias)
    for name in LOGIT_FAMILIES:
        logit = logit + families[name]
    return 1.0 / (1.0 + np.exp(-logit))


@dataclass
class _Carry:
    """State of the user cut by a chunk boundary (user == -1: the next chunk starts a new user)."""

    user: int = -1
    remaining: int = 0  # impressions left in the open session (0: the next one starts a session)
    intent: int = 0
    session: int = -1
    last_ts: int = 0
    next_session: int = 0
    device: int = 0  # realistic profile: the open session's device


def _pick_interest(world: _World, users: np.ndarray, u: np.ndarray) -> np.ndarray:
    col = (u[:, None] >= world.interest_cdf[users]).sum(axis=1)
    return world.interest_cat[users, np.minimum(col, 2)]


def _chunk(
    world: _World, proc: ClickProcess, g0: int, g1: int, carry: _Carry, rng: np.random.Generator, n_cats: int
) -> tuple[dict[str, np.ndarray], _Carry]:
    """Rows [g0, g1) of the user-major log, continuing `carry` (the realistic draws only when `world.real`)."""
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
    real = world.real
    if real is not None:  # a device per session: mostly the user's main one
        device_cdf = np.cumsum(proc.device_probs) / sum(proc.device_probs)
        other = np.minimum(np.searchsorted(device_cdf, rng.random(n_sess), side="right"), 2)
        sess_device = np.where(rng.random(n_sess) < proc.p_main_device, real.main_device[sess_user], other)
        if continued_session:
            sess_device[0] = carry.device

    # Timestamps: seconds apart inside a session, hours or days between sessions.
    dt = rng.integers(proc.step_s[0], proc.step_s[1] + 1, n)
    new_sess = np.ones(n_sess, dtype=bool)
    new_sess[0] = not continued_session
    gaps = proc.min_gap_s + rng.exponential(world.gap_mean[sess_user])
    if real is not None:  # bounded, so a user's sessions stay near their active window
        gaps = np.minimum(gaps, proc.min_gap_s + 3 * world.gap_mean[sess_user])
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
    if real is None:
        icat = world.item_cat[item]
        w = ((world.interest_cat[ev_user] == icat[:, None]) * world.interest_w[ev_user]).sum(axis=1)
        logit = proc.bias + proc.intent_gain * (icat == ev_intent) + proc.interest_gain * w
        p_true = 1.0 / (1.0 + np.exp(-(logit + world.item_quality[item])))
    else:
        ev_device = sess_device[ev_sess]
        hour = (ts % 86400) // 3600  # UTC hour of day
        p_true = click_probability(
            proc.bias,
            _family_logits(world, proc, ev_user, item, ev_intent, hour, ev_device),
        )
    label = (rng.random(n) < p_true).astype(np.int8)

    last_user = int(users[-1])
    out_carry = _Carry(next_session=int(session_id[-1]) + 1)
    if world.user_end[last_user] > g1:
        out_carry.user, out_carry.intent, out_carry.last_ts = last_user, int(intent[-1]), int(ts[-1])
        out_carry.remaining = int(sess_start[-1] + lens[-1] - n)
        out_carry.session = int(session_id[-1])
        if real is not None:
            out_carry.device = int(sess_device[-1])
    cols = {
        "user": ev_user,
        "item": item,
        "timestamp": ts,
        "label": label,
        "p_true": p_true,
        "session": session_id[ev_sess].astype(np.int32),
        "intent": ev_intent,
    }
    if real is not None:
        cols["device"], cols["hour"] = ev_device, hour.astype(np.int32)
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
    realistic = cfg.profile == "realistic"
    proc = process or (realistic_process(cfg) if realistic else ClickProcess())
    if realistic != isinstance(proc, RealisticProcess):
        raise ValueError(f"synthetic.profile '{cfg.profile}' needs a {'Realistic' if realistic else 'Click'}Process")
    out = Path(out)
    t0 = time.perf_counter()
    vocab = category_vocabulary(cfg.categories, cfg.seed)
    world = (
        _build_realistic_world(cfg, proc, vocab)
        if isinstance(proc, RealisticProcess)
        else _build_world(cfg, proc, vocab)
    )
    user_names, item_names = _names("u", cfg.users), _names("i", cfg.items)
    cat_names = pa.array([name for name, _ in vocab], type=pa.string())
    device_names = pa.array(DEVICES, type=pa.string())
    n_files = -(-cfg.events // cfg.chunk_events)
    carry = _Carry()
    with atomic_dir(out / "events") as tmp:
        for k in range(n_files):
            g0, g1 = k * cfg.chunk_events, min((k + 1) * cfg.chunk_events, cfg.events)
            rng = np.random.default_rng([cfg.seed % 2**63, 1, k])
            cols, carry = _chunk(world, proc, g0, g1, carry, rng, cfg.categories)
            columns = {
                "user_id": pc.take(user_names, pa.array(cols["user"])),
                "item_id": pc.take(item_names, pa.array(cols["item"])),
                "timestamp": pa.array(cols["timestamp"], type=pa.int64()),
                "label": pa.array(cols["label"], type=pa.int8()),
                "p_true": pa.array(cols["p_true"], type=pa.float64()),
                "session": pa.array(cols["session"], type=pa.int32()),
                "intent": pc.take(cat_names, pa.array(cols["intent"])),
            }
            if realistic:
                columns["device"] = pc.take(device_names, pa.array(cols["device"]))
                columns["hour"] = pa.array(cols["hour"], type=pa.int32())
            table = pa.table(columns)
            pq.write_table(table, tmp / f"part-{k:05d}.parquet")
    item_columns = {
        "item_id": item_names,
        "text": pa.array(world.titles, type=pa.string()),
        "category": pc.take(cat_names, pa.array(world.item_cat)),
    }
    if world.real is not None:
        brands = pa.array(world.real.brand_names, type=pa.string())
        item_columns["brand"] = pc.take(brands, pa.array(world.real.item_brand))
        item_columns["price"] = pa.array(world.real.price, type=pa.float32())
    items = pa.table(item_columns)
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


def _id_numbers(events: pa.Table, name: str) -> np.ndarray:
    """The generator's index of each row's user or item: its id ("u000042", "i000007") without the prefix."""
    return pc.cast(pc.utf8_slice_codeunits(events[name], 1), pa.int64()).to_numpy(zero_copy_only=False)


def family_logits(
    cfg: SyntheticConfig, events: pa.Table, process: RealisticProcess | None = None
) -> dict[str, np.ndarray]:
    """The realistic log's logit family by family, for its rows (columns user_id, item_id, intent, hour, device).

    Rebuilds the generator's world from `cfg`, so `click_probability(process.bias, result)` equals the rows'
    `p_true` bit for bit; one family alone (or all but one) measures how much of the oracle it carries.
    """
    if cfg.profile != "realistic":
        raise ValueError(f"family_logits needs synthetic.profile 'realistic' (got '{cfg.profile}')")
    proc = process or realistic_process(cfg)
    vocab = category_vocabulary(cfg.categories, cfg.seed)
    world = _build_realistic_world(cfg, proc, vocab)

    def index(name: str, values: list[str]) -> np.ndarray:
        return pc.index_in(events[name], value_set=pa.array(values)).to_numpy(zero_copy_only=False)

    intent = index("intent", [n for n, _ in vocab])
    hour = events["hour"].to_numpy(zero_copy_only=False).astype(np.int64)
    device = index("device", list(DEVICES))
    return _family_logits(
        world, proc, _id_numbers(events, "user_id"), _id_numbers(events, "item_id"), intent, hour, device
    )


def intent_from_impressions(
    cfg: SyntheticConfig, events: pa.Table, recent: int = 10, process: RealisticProcess | None = None
) -> np.ndarray:
    """(N,) the realistic log's "affinity" family as a reader of the user's last `recent` impressions could
    know it: the intent term becomes log(q e^intent_gain + 1 - q), q the posterior probability that the
    session's intent is the row's category; the interest term stays exact.

    Why: it estimates how much a model can get from the intent. Summed with the other families (exact),
    it is the logit of a model that knew every user's bias, item's quality, interests and context effect
    and read the categories of the last `recent` impressions before the row (the user's earlier rows in
    time order): bench/realistic_profile.py prints its AUC beside the oracle's. The posterior is an
    approximation: it ignores session boundaries and the impressions' labels. The prior is the generator's
    fresh-intent draw (a random category or one of the user's interests); each earlier impression of
    category k is evidence p_show_intent [k = c] + p_show_interest w[k] + rest / C.
    """
    if cfg.profile != "realistic":
        raise ValueError(f"intent_from_impressions needs synthetic.profile 'realistic' (got '{cfg.profile}')")
    proc = process or realistic_process(cfg)
    world = _build_realistic_world(cfg, proc, category_vocabulary(cfg.categories, cfg.seed))
    user, item = _id_numbers(events, "user_id"), _id_numbers(events, "item_id")
    ts = events["timestamp"].to_numpy(zero_copy_only=False)
    n, n_cats = len(user), cfg.categories
    order = np.lexsort((np.arange(n), ts, user))
    u, cat = user[order], world.item_cat[item[order]]
    weight = np.zeros((n, n_cats))  # (N, C) the user's interest weight of each category
    for j in range(world.interest_cat.shape[1]):
        np.add.at(weight, (np.arange(n), world.interest_cat[u, j]), world.interest_w[u, j])
    prior = proc.p_random_intent / n_cats + (1 - proc.p_random_intent) * weight
    rest = (1 - proc.p_show_intent - proc.p_show_interest) / n_cats
    w_own = weight[np.arange(n), cat]  # (N,) interest weight of each row's own category
    evidence = np.log(
        proc.p_show_intent * (np.arange(n_cats) == cat[:, None]) + proc.p_show_interest * w_own[:, None] + rest
    )
    first = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
    user_first = np.repeat(first, np.diff(np.r_[first, n]))  # (N,) the row of the user's first event
    log_post = np.log(prior)
    for lag in range(1, recent + 1):
        src = np.arange(n) - lag
        seen = src >= user_first
        log_post[seen] += evidence[src[seen]]
    post = np.exp(log_post - log_post.max(axis=1, keepdims=True))
    q = post[np.arange(n), cat] / post.sum(axis=1)  # P(intent = the row's category | impressions)
    affinity = np.log(q * np.exp(proc.intent_gain) + 1 - q) + proc.interest_gain * w_own
    out = np.empty(n)
    out[order] = affinity
    return out
