"""A seeded simulator of a subscription business: customers, their interaction events, texts and labelled reviews.

It exists so that every pipeline (training, service, batch, Spark) can be tested end to end and benchmarked on
data whose churn is *caused* by things the feature engine can see, without shipping real customer data.

How churn happens (the hidden story the model has to learn back):
- Service failures drive it most. Each customer has a rate of problems (region and plan matter); a problem opens a
  ticket, and depending on its difficulty and the support team it is fixed at once, fixed slowly after repeated
  contacts (`complaint` events) or never. Long phone/chat waits, repeated contacts, unresolved tickets and angry
  texts add to a per-customer frustration that builds up over a few weeks, then fades; it raises the weekly
  hazard with a delay (people look around before they leave), so failures seen before a snapshot date predict
  cancellations after it.
- Price: two price-increase campaigns hit part of the monthly base (more for price-sensitive customers), and
  premium prices raise the hazard a little.
- Usage decline: some customers drift away (falling usage), which raises the hazard; a customer who has decided
  to leave also uses the service less in the weeks before the cancellation.
- Plus profile effects (new customers, invoices, annual contracts that mostly leave at renewal) and noise.

Texts are composed from fragment lists (opener x issue x wait detail x outcome x closing) whose tone follows the
service the customer got, with per-slot noise so that mixed texts occur. Calls and shop visits leave no text;
chats, emails, web forms and resolution feedback do. Everything is vectorised with numpy over (customer, week)
matrices and event arrays: the only Python loops run over outages, campaigns or customer chunks.

    simulate(n_customers, seed) -> SimulatedData        # in memory, for tests and benchmarks (<= ~100k customers)
    write_demo_data(out, n_customers, seed) -> summary   # customers.csv, events.parquet, reviews.csv, spec.yaml
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from numpy.dtypes import StringDType
from scipy.signal import lfilter

logger = logging.getLogger(__name__)

DEFAULT_START = "2024-01-01"
DEFAULT_END = "2025-01-01"  # exclusive: the simulated period is [start, end)
HORIZON_DAYS = 60
N_SNAPSHOTS = 4
# Results depend on the chunk size (each chunk has its own random stream), so it is fixed, not a parameter:
# `simulate` and `write_demo_data` give the same rows for the same seed.
CHUNK_CUSTOMERS = 200_000
ROW_GROUP_ROWS = 1_000_000

CUSTOMERS_FILE = "customers.csv"
EVENTS_FILE = "events.parquet"
REVIEWS_FILE = "reviews.csv"
SPEC_FILE = "spec.yaml"

CHURN_EVENT = "cancellation"
EVENT_TYPES = (
    "usage",
    "purchase",
    "billing",
    "price_increase",
    "ticket_opened",
    "complaint",
    "ticket_resolved",
    CHURN_EVENT,
)
CHANNELS = ("phone", "chat", "email", "web", "store")
PLANS = ("basic", "standard", "premium")
REGIONS = ("north", "south", "east", "west", "central")
CONTRACTS = ("monthly", "annual")
PAYMENT_METHODS = ("card", "direct_debit", "invoice")
REVIEW_SOURCES = ("review", "ticket", "chat", "email")
CUSTOMER_COLUMNS = (
    "customer_id",
    "signup_date",
    "churned_at",
    "plan",
    "monthly_price",
    "contract",
    "payment_method",
    "region",
    "age",
)
REVIEW_COLUMNS = ("review_id", "created_at", "source", "text", "stars")

_USAGE, _PURCHASE, _BILLING, _PRICE, _OPENED, _COMPLAINT, _RESOLVED, _CANCEL = range(len(EVENT_TYPES))
_PHONE, _CHAT, _EMAIL, _WEB, _STORE = range(len(CHANNELS))

EVENTS_SCHEMA = pa.schema(
    [
        ("customer_id", pa.dictionary(pa.int32(), pa.string())),
        ("timestamp", pa.timestamp("us")),
        ("event_type", pa.dictionary(pa.int8(), pa.string())),
        ("channel", pa.dictionary(pa.int8(), pa.string())),
        ("text", pa.dictionary(pa.int32(), pa.string())),
        ("duration_s", pa.float64()),
        ("amount", pa.float64()),
    ]
)

DAY = 86_400
WEEK = 7 * DAY
YEAR = 365.25 * DAY

# --- the world: shares and effect sizes -------------------------------------------------------------------------
EXISTING_SHARE = 0.8  # customers already on board at the start; the rest sign up during the period
REGION_SHARE = np.array([0.22, 0.20, 0.18, 0.20, 0.20])
REGION_ISSUES = np.array([1.0, 1.4, 0.8, 1.0, 1.15])  # the south has the worst network
REGION_SUPPORT = np.array([0.0, -0.4, 0.3, 0.0, -0.2])  # support-team quality (log-odds of a first-call fix)
PLAN_SHARE = np.array([0.5, 0.35, 0.15])
PLAN_PRICE = np.array([19.99, 34.99, 59.99])
PLAN_INCREASE = np.array([2.0, 3.0, 5.0])
PLAN_ISSUES = np.array([1.1, 1.0, 0.9])
PLAN_SUPPORT = np.array([-0.2, 0.0, 0.6])  # premium customers reach a priority queue
PLAN_WAIT = np.array([1.3, 1.0, 0.55])
ANNUAL_SHARE = np.array([0.25, 0.35, 0.5])
PAYMENT_SHARE = np.array([0.45, 0.4, 0.15])
# Issue categories: what went wrong. Difficulty decides how often it is fixed on the first contact.
CATEGORIES = ("account", "billing", "network", "device", "app", "delivery")
CATEGORY_SHARE = np.array([0.2, 0.2, 0.25, 0.13, 0.14, 0.08])
CATEGORY_DIFFICULTY = np.array([-1.0, 0.0, 0.35, 0.2, -0.2, 0.1])
CATEGORY_TONE = np.array([0.3, -0.2, -0.15, -0.1, 0.0, -0.15])
_NETWORK = CATEGORIES.index("network")
# Contact channels by age: younger customers chat, older ones phone or walk into a store.
CHANNEL_YOUNG = np.array([0.2, 0.35, 0.15, 0.2, 0.1])
CHANNEL_OLD = np.array([0.5, 0.1, 0.15, 0.1, 0.15])
LONG_WAIT_S = np.array([900.0, 600.0])  # phone, chat: waits beyond these make customers angry

# Weekly decay of the two-stage response (see `_delayed_response`): frustration peaks ~7 weeks after a failure and
# fades over a few months; annoyance at a price increase peaks after ~3 weeks.
FRUSTRATION_DECAY = 0.88
PRICE_DECAY = 0.75
BASE_LOGIT = -5.75  # weekly hazard of a content customer: ~0.3% (~15% a year)


@dataclass
class SimulatedData:
    """What the simulator produces, as the files hold it (user column names, not canonical ones).

    Attributes:
        customers: one row per customer, columns `CUSTOMER_COLUMNS`; `churned_at` is NaT for current customers.
        events: columns of `EVENTS_SCHEMA`, sorted by customer and time; ids, types, channels and texts are
            categoricals.
        reviews: labelled texts, columns `REVIEW_COLUMNS`, `stars` from 1 to 5.
        start, end: the simulated period [start, end).
    """

    customers: pd.DataFrame
    events: pd.DataFrame
    reviews: pd.DataFrame
    start: dt.date
    end: dt.date


@dataclass(frozen=True)
class _World:
    """What all customers share: the calendar, support queue load per region and week, price campaigns."""

    start_s: int
    end_s: int
    n_weeks: int
    load: np.ndarray  # (regions, weeks) multiplier on support waits
    outages: tuple[tuple[int, int, int], ...]  # (region, first second, end second)
    campaigns: tuple[
        tuple[int, int, float], ...
    ]  # (notice second, effective second, share of the monthly base)
    id_width: int


@dataclass
class _Customers:
    """Profile columns plus the latent traits that drive behaviour (never written out)."""

    ids: np.ndarray
    signup_s: np.ndarray
    active_from: np.ndarray
    age: np.ndarray
    region: np.ndarray
    plan: np.ndarray
    annual: np.ndarray
    payment: np.ndarray
    price: np.ndarray
    temper: np.ndarray
    price_sensitivity: np.ndarray
    engagement: np.ndarray
    drift: np.ndarray
    issue_rate: np.ndarray
    support: np.ndarray
    frailty: np.ndarray


@dataclass
class _Parts:
    """Events of one kind before filtering: customer index, time (s), type, channel, values, text reference."""

    customer: np.ndarray
    time: np.ndarray
    kind: np.ndarray
    channel: np.ndarray
    duration: np.ndarray
    amount: np.ndarray
    text_ref: np.ndarray


@dataclass
class _TextSpecs:
    """What a text is about and how it feels; `_compose_texts` turns these into strings."""

    kind: np.ndarray  # one of _T_OPENED, _T_COMPLAINT, _T_RESOLVED, _T_REVIEW
    category: np.ndarray
    tone: np.ndarray
    channel: np.ndarray
    wait_s: np.ndarray
    contact_no: np.ndarray


# --- text fragments -------------------------------------------------------------------------------------------
_T_OPENED, _T_COMPLAINT, _T_RESOLVED, _T_REVIEW = range(4)
_POS, _NEU, _NEG = range(3)

OPENERS = (
    (
        "Hi team!",
        "Thanks for the help.",
        "Great service as always.",
        "Quick note of thanks.",
        "Hello, hope you're well.",
    ),
    ("Hi,", "Hello,", "Good morning,", "Hi there,", "Hello support,", "Dear customer service,"),
    (
        "Honestly, I'm fed up.",
        "This is ridiculous.",
        "Very disappointed.",
        "Not happy at all.",
        "Unbelievable.",
        "I've had enough.",
    ),
)
ISSUE_DESCRIPTIONS = (
    (
        "I'd like to change my plan.",
        "How do I add a second line?",
        "I need to update my address.",
        "Can you explain the terms of my contract?",
        "I want to switch my payment method.",
    ),
    (
        "I was charged twice this month.",
        "My bill is higher than my plan price.",
        "There is a fee on my invoice I don't recognise.",
        "My direct debit failed although the money was there.",
        "I was billed for a service I cancelled.",
    ),
    (
        "My internet keeps dropping in the evenings.",
        "The connection has been really slow for a week.",
        "I have no signal at home since Monday.",
        "Streaming keeps buffering on every device.",
        "The router loses the connection several times a day.",
    ),
    (
        "The modem you sent stopped working.",
        "My new phone won't activate.",
        "The set-top box keeps restarting.",
        "The replacement device arrived damaged.",
        "The SIM card is not recognised.",
    ),
    (
        "I can't log in to the app.",
        "The app crashes when I open my usage page.",
        "Password reset emails never arrive.",
        "The app shows the wrong data balance.",
        "I can't download my invoices from the website.",
    ),
    (
        "My order hasn't arrived after two weeks.",
        "The technician didn't show up for the appointment.",
        "The delivery went to the wrong address.",
        "The installation was cancelled without notice.",
    ),
)
ISSUE_REFERENCES = (
    (
        "About my plan change:",
        "Re: adding a second line.",
        "About my address update:",
        "Re: my contract question.",
    ),
    (
        "About the double charge on my bill:",
        "Re: the wrong amount on my invoice.",
        "About the unknown fee:",
        "Re: my failed payment.",
    ),
    (
        "About my internet connection:",
        "Re: the slow connection.",
        "About the signal problem at home:",
        "Re: the network outage.",
    ),
    (
        "About my broken modem:",
        "Re: the phone activation.",
        "About the set-top box:",
        "Re: my replacement device.",
    ),
    (
        "About the app login:",
        "Re: the app crashing.",
        "About the password reset:",
        "Re: the website problem.",
    ),
    (
        "About my missing order:",
        "Re: the missed technician visit.",
        "About my delivery:",
        "Re: the installation date.",
    ),
)
OUTCOMES = (
    (  # ticket opened: first contact
        (
            "The agent picked this up right away.",
            "Got through straight away, thanks.",
            "The person on the line was very kind.",
            "Easy to report, let's see how it goes.",
        ),
        (
            "Please look into it.",
            "Can someone check this?",
            "I'd like this sorted.",
            "Waiting for an update.",
            "Let me know what you need from me.",
        ),
        (
            "It took ages to even reach someone.",
            "Nobody seems to know what is going on.",
            "This is not what I pay for.",
            "Your hotline is a joke.",
            "I keep getting passed around.",
        ),
    ),
    (  # complaint: a repeated contact about the same problem
        (
            "The agent today was finally helpful.",
            "At least someone called me back this time.",
            "Thanks for escalating it today.",
        ),
        (
            "Following up on my earlier request.",
            "Any news on this?",
            "Still waiting for an answer.",
            "Just checking on the status.",
        ),
        (
            "It is still not fixed.",
            "Every agent tells me something different.",
            "I was promised a call back that never came.",
            "You closed my ticket without fixing anything.",
            "Nothing has changed since my last call.",
            "I've explained this problem over and over.",
        ),
    ),
    (  # ticket resolved: the customer's feedback
        (
            "It was fixed within the hour.",
            "Sorted on the first call.",
            "The agent solved it right away.",
            "Everything works again, great job.",
            "Resolved quickly and politely.",
        ),
        (
            "It's working now, though it took a few days.",
            "Resolved eventually.",
            "Fixed after a couple of calls.",
            "Seems to be fine now.",
        ),
        (
            "It finally got fixed after weeks of calls.",
            "Fixed, but only after I threatened to leave.",
            "Took far too long to resolve.",
            "Fixed, but nobody apologised for the mess.",
        ),
    ),
    (  # review
        (
            "Great value for money.",
            "Fast internet and friendly support.",
            "Never had a problem.",
            "Best provider I've had.",
            "Reliable and easy to use.",
        ),
        (
            "It does the job.",
            "Average service, nothing special.",
            "Okay for the price.",
            "Some ups and downs, mostly fine.",
        ),
        (
            "Overpriced and unreliable.",
            "Support is useless.",
            "Constant outages.",
            "Avoid this provider.",
            "Hidden fees everywhere.",
        ),
    ),
)
CLOSINGS = (
    ("Thanks a lot!", "Really appreciate it.", "Keep it up!", "Happy customer here.", "Cheers!"),
    ("Thanks.", "Regards.", "Let me know.", "Best,", "Kind regards.", "Thank you."),
    (
        "I'm thinking of cancelling.",
        "Fix this or I'm leaving.",
        "Worst service I've had.",
        "I want to speak to a manager.",
        "I expect a refund.",
        "I'll be looking at other providers.",
    ),
)
NUMBER_DETAILS = (  # (prefix, suffix) around a number: phone wait, chat wait (minutes), years as a customer
    (
        ("I was on hold for ", " minutes."),
        ("I waited ", " minutes for someone to pick up."),
        ("", " minutes in the phone queue."),
    ),
    (
        ("I waited ", " minutes for a chat agent."),
        ("The chat queue took ", " minutes."),
        ("", " minutes before anyone answered my chat."),
    ),
    (
        ("Customer for ", " years."),
        ("I've been with you for ", " years."),
        ("After ", " years with this provider:"),
    ),
)
REPEAT_DETAILS = (
    "",
    "This is the second time I'm getting in touch.",
    "This is my third contact about this.",
    "I've now contacted you four times.",
    "This is my fifth attempt to get help.",
)


# --- helpers --------------------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _choose_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One category per row, each row with its own probabilities (rows of `probs` sum to 1)."""
    cumulative = np.cumsum(probs, axis=1)
    draws = rng.random(len(probs))[:, None]
    return np.minimum((draws > cumulative).sum(axis=1), probs.shape[1] - 1)


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within runs of equal `groups` values (which must be sorted)."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    sizes = np.diff(np.r_[starts, n])
    return np.arange(n) - np.repeat(starts, sizes)


def _tier(tone: np.ndarray) -> np.ndarray:
    return np.where(tone > 0.25, _POS, np.where(tone < -0.25, _NEG, _NEU))


def _seconds(day: str | dt.date) -> int:
    return int(pd.Timestamp(day).value // 1_000_000_000)


def _date_of(seconds: int) -> dt.date:
    return pd.Timestamp(seconds, unit="s").date()


def _flat(groups: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fragments of nested groups as one array (with trailing spaces), plus each group's offset and size."""
    texts, offsets, sizes = [""], [], []  # index 0 is the empty fragment (a slot left out)
    for group in groups:
        offsets.append(len(texts))
        sizes.append(len(group))
        texts.extend(f"{fragment} " for fragment in group)
    return np.array(texts, dtype=StringDType()), np.array(offsets), np.array(sizes)


def _pick(rng: np.random.Generator, offsets: np.ndarray, sizes: np.ndarray, group: np.ndarray) -> np.ndarray:
    """A random fragment index within each row's group."""
    return offsets[group] + (rng.random(len(group)) * sizes[group]).astype(np.int64)


def _compose_texts(specs: _TextSpecs, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Texts for many events at once, as dictionary codes.

    Each text is opener + issue + number detail (wait, tenure) + repeat detail + outcome + closing. The tone picks the tier
    (positive / neutral / negative) of opener, outcome and closing, each with its own noise, so a polite opener
    can precede an angry outcome. Only distinct fragment combinations are turned into strings.

    Returns:
        (codes, dictionary): `dictionary[codes[i]]` is the text of row i; the dictionary has no duplicates.
    """
    n = len(specs.kind)
    if n == 0:
        return np.zeros(0, dtype=np.int32), []
    opener_text, opener_off, opener_size = _flat(OPENERS)
    opener = _pick(rng, opener_off, opener_size, _tier(specs.tone + rng.normal(0, 0.35, n)))
    opener[rng.random(n) < 0.15] = 0

    is_description = (specs.kind == _T_OPENED) | (specs.kind == _T_COMPLAINT)
    body_text, body_off, body_size = _flat(ISSUE_DESCRIPTIONS + ISSUE_REFERENCES)
    body = _pick(rng, body_off, body_size, np.where(is_description, 0, len(CATEGORIES)) + specs.category)
    review = specs.kind == _T_REVIEW
    body[review & (rng.random(n) < 0.25)] = 0  # some reviews are general

    minutes = np.clip(np.round(np.nan_to_num(specs.wait_s) / 60.0), 0, 999).astype(np.int64)
    chat = (specs.channel == _CHAT).astype(np.int64)
    waited = (specs.channel <= _CHAT) & (np.nan_to_num(specs.wait_s) >= 600) & (specs.kind != _T_REVIEW)
    template = np.where(waited, 1 + chat * 3 + rng.integers(0, 3, n), 0)
    minutes[template == 0] = 0
    tenure = review & (rng.random(n) < 0.5)  # reviewers like to say how long they have been customers
    template[tenure] = 7 + rng.integers(0, 3, int(tenure.sum()))
    minutes[tenure] = rng.integers(2, 16, int(tenure.sum()))
    repeat = np.where(specs.kind == _T_COMPLAINT, np.clip(specs.contact_no, 0, len(REPEAT_DETAILS) - 1), 0)
    repeat[rng.random(n) < 0.3] = 0

    outcome_text, outcome_off, outcome_size = _flat(tuple(tier for kind in OUTCOMES for tier in kind))
    outcome = _pick(
        rng, outcome_off, outcome_size, specs.kind * 3 + _tier(specs.tone + rng.normal(0, 0.2, n))
    )
    closing_text, closing_off, closing_size = _flat(CLOSINGS)
    closing = _pick(rng, closing_off, closing_size, _tier(specs.tone + rng.normal(0, 0.4, n)))
    closing[rng.random(n) < 0.2] = 0

    dims = (
        len(opener_text),
        len(body_text),
        10,
        1000,
        len(REPEAT_DETAILS),
        len(outcome_text),
        len(closing_text),
    )
    keys = np.ravel_multi_index((opener, body, template, minutes, repeat, outcome, closing), dims)
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    o, b, t, m, r, x, c = np.unravel_index(unique_keys, dims)

    prefixes = np.array([""] + [p for group in NUMBER_DETAILS for p, _ in group], dtype=StringDType())
    suffixes = np.array([""] + [f"{s} " for group in NUMBER_DETAILS for _, s in group], dtype=StringDType())
    repeats = np.array([""] + [f"{s} " for s in REPEAT_DETAILS[1:]], dtype=StringDType())
    number = np.where(t > 0, m.astype(StringDType()), np.array("", dtype=StringDType()))
    text = opener_text[o]
    for piece in (
        body_text[b],
        prefixes[t],
        number,
        suffixes[t],
        repeats[r],
        outcome_text[x],
        closing_text[c],
    ):
        text = np.strings.add(text, piece)
    text = np.strings.strip(text)
    # Different fragment choices can spell the same text (e.g. a dropped slot): merge them.
    text_codes, dictionary = pd.factorize(pd.Series(text.astype(object), dtype=object))
    return text_codes[inverse].astype(np.int32), [str(s) for s in dictionary]


# --- the world and its customers ------------------------------------------------------------------------------
def _make_world(rng: np.random.Generator, start: str, end: str, n_customers: int) -> _World:
    start_s, end_s = _seconds(start), _seconds(end)
    if end_s - start_s < 180 * DAY:
        raise ValueError(f"the simulated period {start}..{end} must be at least 180 days long")
    n_weeks = math.ceil((end_s - start_s) / WEEK)
    load = np.exp(rng.normal(0.0, 0.15, (len(REGIONS), n_weeks)))
    week_start = start_s + np.arange(n_weeks) * WEEK
    month = pd.to_datetime(week_start, unit="s").month.to_numpy()
    load *= np.where((month == 12) | (month == 1), 1.25, 1.0)  # holiday rush in the queues
    outages = []
    for _ in range(4):  # a few regional network outages a year: many tickets, long queues
        region = int(rng.integers(0, len(REGIONS)))
        first_week = int(rng.integers(2, n_weeks - 3))
        length = int(rng.integers(1, 3))
        load[region, first_week : first_week + length] *= 1.8
        first = start_s + first_week * WEEK + int(rng.integers(0, 7)) * DAY
        outages.append((region, first, min(first + length * WEEK, end_s)))
    campaigns = []
    for fraction, share in ((0.25, 0.5), (0.62, 0.35)):
        notice = start_s + int(fraction * (end_s - start_s) / DAY) * DAY
        campaigns.append((notice, notice + 21 * DAY, share))
    return _World(
        start_s, end_s, n_weeks, load, tuple(outages), tuple(campaigns), max(7, len(str(n_customers)))
    )


def _draw_customers(world: _World, first: int, n: int, rng: np.random.Generator) -> _Customers:
    existing = rng.random(n) < EXISTING_SHARE
    tenure_days = np.minimum(rng.exponential(900, n), 3650).astype(np.int64) + 14
    span_days = (world.end_s - world.start_s) // DAY
    signup_day = np.where(existing, -tenure_days, rng.integers(0, span_days - 1, n))
    signup_s = world.start_s + signup_day * DAY
    plan = rng.choice(len(PLANS), n, p=PLAN_SHARE)
    annual = rng.random(n) < ANNUAL_SHARE[plan]
    promo = rng.random(n) < 0.12
    price = np.round(PLAN_PRICE[plan] * np.where(annual, 0.85, 1.0) * np.where(promo, 0.8, 1.0), 2)
    region = rng.choice(len(REGIONS), n, p=REGION_SHARE)
    ids = np.char.add("C", np.char.zfill(np.arange(first, first + n).astype(str), world.id_width))
    return _Customers(
        ids=ids.astype(object),
        signup_s=signup_s,
        active_from=np.maximum(signup_s, world.start_s),
        age=np.clip(18 + rng.gamma(4.0, 6.5, n), 18, 90).astype(np.int64),
        region=region,
        plan=plan,
        annual=annual,
        payment=rng.choice(len(PAYMENT_METHODS), n, p=PAYMENT_SHARE),
        price=price,
        temper=rng.normal(0.0, 0.25, n),
        price_sensitivity=rng.lognormal(0.0, 0.5, n),
        engagement=rng.gamma(2.0, 0.15, n),  # usage sessions per week
        drift=rng.normal(-0.1, 0.45, n),  # log change of engagement per year
        issue_rate=rng.gamma(0.6, 1 / 0.6, n) * 1.3 * REGION_ISSUES[region] * PLAN_ISSUES[plan],
        support=REGION_SUPPORT[region] + PLAN_SUPPORT[plan],
        frailty=rng.normal(0.0, 0.5, n),
    )


def _contact_channels(rng: np.random.Generator, age: np.ndarray) -> np.ndarray:
    old = np.clip((age - 18) / 50.0, 0.0, 1.0)[:, None]
    return _choose_rows(rng, (1 - old) * CHANNEL_YOUNG + old * CHANNEL_OLD)


def _waits(rng: np.random.Generator, channel: np.ndarray, load: np.ndarray, plan: np.ndarray) -> np.ndarray:
    """Queue wait in seconds for phone and chat contacts (NaN for the other channels)."""
    median = np.where(channel == _PHONE, 240.0, 100.0)
    wait = median * np.exp(rng.normal(0.0, 0.75, len(channel))) * load * PLAN_WAIT[plan]
    return np.where(channel <= _CHAT, np.round(wait), np.nan)


def _service_events(
    world: _World, cust: _Customers, rng: np.random.Generator
) -> tuple[_Parts, _TextSpecs, np.ndarray, np.ndarray]:
    """Problems, the contacts they cause and their resolutions.

    Returns:
        (events, text specs, shock customer-week index, shock size): the shocks feed the frustration process.
    """
    n = len(cust.ids)
    years = (world.end_s - cust.active_from) / YEAR
    count = rng.poisson(cust.issue_rate * years)
    who = np.repeat(np.arange(n), count)
    when = cust.active_from[who] + (rng.random(len(who)) * (world.end_s - cust.active_from[who])).astype(
        np.int64
    )
    category = rng.choice(len(CATEGORIES), len(who), p=CATEGORY_SHARE)
    parts_who, parts_when, parts_cat = [who], [when], [category]
    for region, first, last in world.outages:
        hit = np.flatnonzero((cust.region == region) & (cust.active_from < last) & (rng.random(n) < 0.3))
        lo = np.maximum(first, cust.active_from[hit])
        parts_who.append(hit)
        parts_when.append(lo + (rng.random(len(hit)) * (last - lo)).astype(np.int64))
        parts_cat.append(np.full(len(hit), _NETWORK))
    who, when, category = (np.concatenate(p) for p in (parts_who, parts_when, parts_cat))
    order = np.lexsort((when, who))
    who, when, category = who[order], when[order], category[order]
    m = len(who)
    earlier = np.minimum(_rank_within(who), 3)  # repeated problems make customers short-tempered
    week = np.clip((when - world.start_s) // WEEK, 0, world.n_weeks - 1)
    load = world.load[cust.region[who], week]
    difficulty = CATEGORY_DIFFICULTY[category] + rng.normal(0.0, 0.7, m)
    fast = rng.random(m) < _sigmoid(1.4 - 1.3 * difficulty + cust.support[who] - 0.8 * (load - 1.0))
    unresolved = ~fast & (rng.random(m) < _sigmoid(-0.8 + 0.9 * difficulty - cust.support[who]))
    follow_ups = np.where(fast, 0, np.where(unresolved, 2 + rng.poisson(1.0, m), 1 + rng.poisson(0.5, m)))
    follow_ups = np.minimum(follow_ups, 6)

    # Contacts: the first one opens the ticket, the others are complaints, days apart.
    issue = np.repeat(np.arange(m), 1 + follow_ups)
    contact_no = _rank_within(issue)
    gap = np.where(contact_no == 0, 0.0, (0.5 + rng.exponential(3.5, len(issue))) * DAY)
    elapsed = np.cumsum(gap)
    elapsed -= np.repeat(elapsed[contact_no == 0], 1 + follow_ups)
    c_time = when[issue] + elapsed.astype(np.int64)
    c_cust = who[issue]
    channel = _contact_channels(rng, cust.age[c_cust])
    channel = np.where(
        (contact_no > 0) & (rng.random(len(issue)) < 0.4), _PHONE, channel
    )  # escalation by phone
    c_week = np.clip((c_time - world.start_s) // WEEK, 0, world.n_weeks - 1)
    c_load = world.load[cust.region[c_cust], c_week] * np.where(contact_no > 0, 1.3, 1.0)
    wait = _waits(rng, channel, c_load, cust.plan[c_cust])
    long_wait = (channel <= _CHAT) & (np.nan_to_num(wait) > LONG_WAIT_S[np.minimum(channel, _CHAT)])
    first_contact = contact_no == 0
    noise = rng.normal(0.0, 0.3, len(issue))
    tone = (
        np.where(
            first_contact,
            0.2 + CATEGORY_TONE[category[issue]] - 0.6 * long_wait - 0.2 * earlier[issue],
            -0.45 - 0.15 * np.minimum(contact_no - 1, 3) - 0.5 * long_wait - 0.1 * earlier[issue],
        )
        + cust.temper[c_cust]
        + noise
    )
    shock = np.where(first_contact, 0.1, 0.4) + 0.35 * long_wait + 0.3 * np.maximum(-tone, 0.0)

    # Resolutions: quick fixes calm customers down, slow ones hardly do; unresolved problems keep hurting.
    last_contact = np.flatnonzero(np.r_[issue[1:] != issue[:-1], True])
    any_long = np.bincount(issue, weights=long_wait, minlength=m) > 0
    done = ~unresolved
    r_issue = np.flatnonzero(done)
    r_delay = np.where(
        fast[r_issue], 0.02 + 0.98 * rng.random(len(r_issue)), 0.5 + 3.5 * rng.random(len(r_issue))
    )
    r_time = c_time[last_contact[r_issue]] + (r_delay * DAY).astype(np.int64)
    r_cust = who[r_issue]
    r_tone = (
        np.where(
            fast[r_issue],
            0.7 - 0.4 * any_long[r_issue],
            0.0 - 0.15 * follow_ups[r_issue] - 0.3 * any_long[r_issue],
        )
        + cust.temper[r_cust]
        + rng.normal(0.0, 0.3, len(r_issue))
    )
    r_shock = np.where(fast[r_issue], -0.15, 0.1)
    r_has_text = rng.random(len(r_issue)) < 0.35
    r_channel = channel[last_contact[r_issue]]
    u_issue = np.flatnonzero(unresolved)
    u_time = c_time[last_contact[u_issue]]

    n_contacts = len(issue)
    text_ref = np.arange(n_contacts + len(r_issue))
    written = (
        (channel == _CHAT) | (channel == _EMAIL) | (channel == _WEB)
    )  # calls and shop visits leave no text
    events = _Parts(
        customer=np.concatenate([c_cust, r_cust]).astype(np.int32),
        time=np.concatenate([c_time, r_time]),
        kind=np.concatenate(
            [np.where(first_contact, _OPENED, _COMPLAINT), np.full(len(r_issue), _RESOLVED)]
        ).astype(np.int8),
        channel=np.concatenate([channel, r_channel]).astype(np.int8),
        duration=np.concatenate([wait, np.full(len(r_issue), np.nan)]),
        amount=np.full(n_contacts + len(r_issue), np.nan),
        text_ref=np.where(np.r_[written, r_has_text], text_ref, -1).astype(np.int32),
    )
    specs = _TextSpecs(
        kind=np.concatenate(
            [np.where(first_contact, _T_OPENED, _T_COMPLAINT), np.full(len(r_issue), _T_RESOLVED)]
        ),
        category=np.concatenate([category[issue], category[r_issue]]),
        tone=np.concatenate([tone, r_tone]),
        channel=events.channel,
        wait_s=np.concatenate([wait, wait[last_contact[r_issue]]]),
        contact_no=np.concatenate([contact_no, np.zeros(len(r_issue), np.int64)]),
    )
    # An unresolved problem keeps hurting: a shock when the customer gives up asking, and again later.
    shock_cust = np.concatenate([c_cust, r_cust, np.tile(who[u_issue], 3)])
    shock_time = np.concatenate([c_time, r_time, u_time, u_time + 14 * DAY, u_time + 35 * DAY])
    shock_size = np.concatenate([shock, r_shock, np.repeat([0.6, 0.3, 0.3], len(u_issue))])
    inside = shock_time < world.end_s
    cell = shock_cust[inside] * world.n_weeks + (shock_time[inside] - world.start_s) // WEEK
    return events, specs, cell, shock_size[inside]


def _price_increases(
    world: _World, cust: _Customers, rng: np.random.Generator
) -> tuple[_Parts, np.ndarray, list[tuple[np.ndarray, np.ndarray, int]]]:
    """Campaign notices to part of the monthly base, and the weekly price-annoyance shocks they cause.

    Returns:
        (events, shocks, steps): `shocks` is (customers, weeks); each step is (customers hit, increase, effective
        second), which the billing amounts follow.
    """
    n = len(cust.ids)
    shocks = np.zeros((n, world.n_weeks))
    parts = []
    for notice, effective, share in world.campaigns:
        hit = np.flatnonzero(~cust.annual & (cust.signup_s < notice) & (rng.random(n) < share))
        increase = PLAN_INCREASE[cust.plan[hit]] + rng.integers(0, 2, len(hit))
        annoyance = 5.0 * increase / cust.price[hit] * cust.price_sensitivity[hit]
        shocks[hit, (notice - world.start_s) // WEEK] += annoyance
        if effective < world.end_s:
            shocks[hit, (effective - world.start_s) // WEEK] += (
                0.5 * annoyance
            )  # the first bill at the new price
        time = notice + (rng.random(len(hit)) * 10 * 3600).astype(np.int64) + 8 * 3600
        parts.append((hit, time, increase.astype(np.float64), effective))
    events = _constant_parts(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        _PRICE,
        _EMAIL,
        np.concatenate([p[2] for p in parts]),
    )
    # Per customer and campaign: the increase and when it takes effect, for the billing amounts.
    steps = [(p[0], p[2], p[3]) for p in parts]
    return events, shocks, steps


def _delayed_response(shocks: np.ndarray, decay: float) -> np.ndarray:
    """Weekly shocks -> a level that rises for a few weeks, then fades (a two-stage decay, lagged one week).

    People rarely leave the day something goes wrong: they look around first. The delay also means a failure
    seen before a snapshot date predicts a cancellation after it, as in real data.
    """
    first = lfilter([1.0 - decay], [1.0, -decay], shocks, axis=1)
    level = lfilter([1.0], [1.0, -decay], first, axis=1)
    lagged = np.zeros(shocks.shape, dtype=np.float32)
    lagged[:, 1:] = level[:, :-1]
    return lagged


def _weekly_grid(world: _World) -> tuple[np.ndarray, np.ndarray]:
    week_start = world.start_s + np.arange(world.n_weeks, dtype=np.int64) * WEEK
    return week_start, np.minimum(week_start + WEEK, world.end_s)


def _churn(
    world: _World,
    cust: _Customers,
    frustration: np.ndarray,
    price_annoyance: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Cancellation time (seconds) per customer, or -1 for those still customers at the end.

    A discrete-time hazard per week; the cancellation happens during a day, at least a day after signup.
    """
    # (customers, weeks) matrices in float32 and updated in place: at 200k customers a chunk, memory bandwidth
    # is what this step costs.
    n = len(cust.ids)
    week_start, week_end = _weekly_grid(world)
    middle_years = (((week_start + week_end) / 2 - world.start_s) / YEAR).astype(np.float32)
    earliest = cust.active_from + DAY
    exposure = (week_end[None, :] - np.maximum(week_start[None, :], earliest[:, None])).astype(np.float32)
    np.clip(exposure / WEEK, 0.0, 1.0, out=exposure)
    active_years = ((cust.active_from - world.start_s) / YEAR).astype(np.float32)
    years_active = np.maximum(middle_years[None, :] - active_years[:, None], np.float32(0.0))
    logit = np.maximum(
        years_active * (-1.2 * cust.drift).astype(np.float32)[:, None], np.float32(0.0)
    )  # decline
    logit += np.float32(2.8) * frustration
    logit += np.float32(3.0) * price_annoyance
    tenure_years = (
        middle_years[None, :] - ((cust.signup_s - world.start_s) / YEAR).astype(np.float32)[:, None]
    )
    logit += np.float32(0.35) * (tenure_years < 120 * DAY / YEAR)  # new customers are still deciding
    # Annual contracts mostly end at renewal: low hazard during the year, a bump around the anniversary.
    annual = np.flatnonzero(cust.annual)
    phase = tenure_years[annual] % 1.0
    logit[annual] += np.where((phase > 0.92) | (phase < 0.02), np.float32(0.4), np.float32(-1.6))
    price_z = (cust.price - 30.0) / 20.0
    static = (
        BASE_LOGIT
        - 0.35 * np.log(cust.engagement / 0.3)
        + 0.3 * price_z * cust.price_sensitivity
        + 0.25 * (cust.payment == PAYMENT_METHODS.index("invoice"))
        + cust.frailty
    )
    logit += static.astype(np.float32)[:, None]
    hazard = np.minimum(
        _sigmoid(logit), np.float32(0.999)
    )  # float32 rounds huge logits to 1: log1p(-1) = -inf
    hazard *= exposure
    cumulative = np.cumsum(-np.log1p(-hazard), axis=1)
    threshold = rng.exponential(1.0, n)
    churned = cumulative[:, -1] > threshold
    week = np.argmax(cumulative > threshold[:, None], axis=1)
    lo = np.maximum(week_start[week], earliest)
    hi = week_end[week]
    day = lo + ((rng.random(n) * np.maximum(hi - lo, 0)) // DAY).astype(np.int64) * DAY
    moment = day + (8 * 3600 + rng.random(n) * 12 * 3600).astype(np.int64)
    return np.where(churned & (hi > lo), moment, -1)


def _usage_events(
    world: _World,
    cust: _Customers,
    frustration: np.ndarray,
    active_until: np.ndarray,
    cancel_s: np.ndarray,
    rng: np.random.Generator,
) -> _Parts:
    """Usage sessions per week: engagement drifts, frustration dampens it, and leavers fade out before leaving."""
    week_start, week_end = _weekly_grid(world)
    middle = (week_start + week_end) // 2
    rate = (
        np.minimum(week_end[None, :], active_until[:, None])
        - np.maximum(week_start[None, :], cust.active_from[:, None])
    ).astype(np.float32)
    np.maximum(rate / WEEK, 0.0, out=rate)  # the share of the week the customer was with us
    years_active = np.maximum((middle[None, :] - cust.active_from[:, None]).astype(np.float32) / YEAR, 0.0)
    log_rate = years_active * cust.drift.astype(np.float32)[:, None]
    log_rate -= np.float32(0.3) * frustration
    rate *= np.exp(log_rate, out=log_rate)
    rate *= cust.engagement.astype(np.float32)[:, None]
    leavers = np.flatnonzero(cancel_s >= 0)
    weeks_to_cancel = (cancel_s[leavers, None] - middle[None, :]).astype(np.float32) / WEEK
    rate[leavers] *= 0.15 + 0.85 * np.clip(weeks_to_cancel / 8.0, 0.0, 1.0)
    counts = rng.poisson(rate).ravel()
    cell = np.repeat(np.arange(counts.size), counts)
    who, week = np.divmod(cell, world.n_weeks)
    first = np.maximum(week_start[week], cust.active_from[who])
    last = np.minimum(week_end[week], active_until[who])
    time = first + (rng.random(len(cell)) * (last - first)).astype(np.int64)
    return _constant_parts(who, time, _USAGE, _WEB)


def _constant_parts(
    who: np.ndarray, time: np.ndarray, kind: int, channel: int | np.ndarray, amount: np.ndarray | None = None
) -> _Parts:
    """Events without text or duration; `channel` is one code or one per event."""
    m = len(who)
    return _Parts(
        customer=who.astype(np.int32),
        time=time.astype(np.int64),
        kind=np.full(m, kind, dtype=np.int8),
        channel=np.broadcast_to(np.asarray(channel, dtype=np.int8), (m,)),
        duration=np.full(m, np.nan),
        amount=np.full(m, np.nan) if amount is None else amount,
        text_ref=np.full(m, -1, dtype=np.int32),
    )


def _billing_events(
    world: _World, cust: _Customers, steps: list[tuple[np.ndarray, np.ndarray, int]], active_until: np.ndarray
) -> _Parts:
    """Monthly bills on the signup day of the month; annual contracts pay 12 months once a year."""
    signup = cust.signup_s.astype("datetime64[s]").astype("datetime64[D]")
    signup_month = signup.astype("datetime64[M]")
    day_of_month = np.minimum((signup - signup_month.astype("datetime64[D]")).astype(np.int64), 27)
    month_of_year = (signup_month - signup.astype("datetime64[Y]").astype("datetime64[M]")).astype(np.int64)
    first_month = np.datetime64(_date_of(world.start_s), "M")
    last_month = np.datetime64(_date_of(world.end_s), "M")
    months = np.arange(first_month, last_month + 1)
    month_s = months.astype("datetime64[s]").astype(np.int64)
    bill = month_s[None, :] + day_of_month[:, None] * DAY + 5 * 3600
    is_anniversary = (months.astype(np.int64) % 12)[None, :] == month_of_year[:, None]
    due = np.where(cust.annual[:, None], is_anniversary, True)
    valid = due & (bill >= cust.active_from[:, None]) & (bill < active_until[:, None])
    who, col = np.nonzero(valid)
    time = bill[who, col]
    amount = np.where(cust.annual[who], 12.0 * cust.price[who], cust.price[who])
    raised = np.zeros(len(cust.ids))
    for hit, increase, effective in steps:
        raised[:] = 0.0
        raised[hit] = increase
        amount += np.where(time >= effective, raised[who], 0.0)
    channel = np.where(cust.payment[who] == PAYMENT_METHODS.index("invoice"), _EMAIL, _WEB)
    return _constant_parts(who, time, _BILLING, channel, np.round(amount, 2))


def _purchase_events(world: _World, cust: _Customers, rng: np.random.Generator) -> _Parts:
    years = (world.end_s - cust.active_from) / YEAR
    count = rng.poisson(0.6 * np.sqrt(cust.engagement / 0.3) * years)
    who = np.repeat(np.arange(len(cust.ids)), count)
    time = cust.active_from[who] + (rng.random(len(who)) * (world.end_s - cust.active_from[who])).astype(
        np.int64
    )
    amount = np.round(np.clip(rng.lognormal(np.log(40.0), 0.9, len(who)), 5.0, 1500.0), 2)
    channel = np.array([_WEB, _STORE, _PHONE])[rng.choice(3, len(who), p=[0.55, 0.35, 0.1])]
    return _constant_parts(who, time, _PURCHASE, channel, amount)


def _dictionary_array(
    codes: np.ndarray, values: list[str] | tuple[str, ...], index_type: pa.DataType
) -> pa.Array:
    indices = pa.array(codes, type=index_type, mask=codes < 0)
    return pa.DictionaryArray.from_arrays(indices, pa.array(list(values), type=pa.string()))


def _simulate_chunk(
    world: _World, first: int, n: int, rng: np.random.Generator
) -> tuple[pd.DataFrame, pa.Table]:
    """Customers `first`..`first + n - 1`: their profile frame and their events as an Arrow table."""
    cust = _draw_customers(world, first, n, rng)
    service, specs, shock_cell, shock_size = _service_events(world, cust, rng)
    shocks = np.bincount(shock_cell, weights=shock_size, minlength=n * world.n_weeks).reshape(
        n, world.n_weeks
    )
    prices, price_shocks, steps = _price_increases(world, cust, rng)
    frustration = _delayed_response(shocks, FRUSTRATION_DECAY)
    annoyance = _delayed_response(price_shocks, PRICE_DECAY)
    cancel_s = _churn(world, cust, frustration, annoyance, rng)
    churned = cancel_s >= 0
    active_until = np.where(churned, cancel_s, world.end_s)

    usage = _usage_events(world, cust, frustration, active_until, cancel_s, rng)
    billing = _billing_events(world, cust, steps, active_until)
    purchases = _purchase_events(world, cust, rng)
    leavers = np.flatnonzero(churned)
    cancel_channel = np.array([_PHONE, _CHAT, _WEB, _STORE])[
        rng.choice(4, len(leavers), p=[0.4, 0.2, 0.3, 0.1])
    ]
    cancels = _constant_parts(leavers, cancel_s[leavers], _CANCEL, cancel_channel)
    parts = (usage, billing, purchases, prices, service, cancels)
    column = {name: np.concatenate([getattr(p, name) for p in parts]) for name in _Parts.__dataclass_fields__}
    who, time = column["customer"], column["time"]
    # Nothing happens after a customer leaves (the cancellation itself is the last event) or outside the period.
    keep = (time >= cust.active_from[who]) & (time < world.end_s)
    keep &= (time < active_until[who]) | (column["kind"] == _CANCEL)
    order = np.flatnonzero(keep)
    # One int64 key (customer, second in the period, type) sorts faster than a three-key lexsort.
    key = (who[order].astype(np.int64) << 35) | ((time[order] - world.start_s) << 3) | column["kind"][order]
    order = order[np.argsort(key, kind="stable")]
    column = {name: values[order] for name, values in column.items()}

    ref = column["text_ref"]
    has_text = ref >= 0
    used = ref[has_text]
    text_rng = np.random.default_rng(rng.integers(0, 2**63))
    picked = _TextSpecs(*(getattr(specs, f)[used] for f in _TextSpecs.__dataclass_fields__))
    codes, dictionary = _compose_texts(picked, text_rng)
    text_codes = np.full(len(ref), -1, dtype=np.int32)
    text_codes[has_text] = codes

    table = pa.table(
        [
            _dictionary_array(column["customer"].astype(np.int32), list(cust.ids), pa.int32()),
            pa.array(column["time"] * 1_000_000, type=pa.timestamp("us")),
            _dictionary_array(column["kind"].astype(np.int8), EVENT_TYPES, pa.int8()),
            _dictionary_array(column["channel"].astype(np.int8), CHANNELS, pa.int8()),
            _dictionary_array(text_codes, dictionary, pa.int32()),
            pa.array(column["duration"], type=pa.float64(), from_pandas=True),
            pa.array(column["amount"], type=pa.float64(), from_pandas=True),
        ],
        schema=EVENTS_SCHEMA,
    )
    customers = pd.DataFrame(
        {
            "customer_id": pd.array(cust.ids, dtype="string"),
            "signup_date": cust.signup_s.astype("datetime64[s]"),
            "churned_at": np.where(churned, (cancel_s // DAY) * DAY, np.iinfo(np.int64).min).astype(
                "datetime64[s]"
            ),
            "plan": pd.Categorical.from_codes(cust.plan, PLANS),
            "monthly_price": cust.price,
            "contract": pd.Categorical.from_codes(cust.annual.astype(np.int8), CONTRACTS),
            "payment_method": pd.Categorical.from_codes(cust.payment, PAYMENT_METHODS),
            "region": pd.Categorical.from_codes(cust.region, REGIONS),
            "age": cust.age,
        }
    )
    return customers, table


# --- reviews --------------------------------------------------------------------------------------------------
def simulate_reviews(
    n_reviews: int, seed: int, start: str = DEFAULT_START, end: str = DEFAULT_END
) -> pd.DataFrame:
    """Labelled texts (reviews, tickets, chats, emails) with 1-5 stars that follow their tone, with noise.

    A few texts are posted twice (exact duplicates with their own ids), as in real review dumps.

    Returns:
        Columns `REVIEW_COLUMNS`.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    source = rng.choice(len(REVIEW_SOURCES), n_reviews, p=[0.4, 0.25, 0.2, 0.15])
    # Reviews are polarised: people write when they are happy or angry.
    tone = rng.choice(np.array([-0.7, -0.1, 0.5]), n_reviews, p=[0.35, 0.25, 0.4]) + rng.normal(
        0, 0.35, n_reviews
    )
    kind_by_source = np.array(
        [
            [_T_REVIEW, _T_REVIEW, _T_REVIEW],
            [_T_OPENED, _T_RESOLVED, _T_OPENED],
            [_T_COMPLAINT, _T_RESOLVED, _T_OPENED],
            [_T_COMPLAINT, _T_RESOLVED, _T_OPENED],
        ]
    )
    kind = kind_by_source[source, rng.integers(0, 3, n_reviews)]
    channel = np.array([_WEB, _PHONE, _CHAT, _EMAIL])[source]
    wait = np.where(tone < -0.3, rng.uniform(300, 3600, n_reviews), rng.uniform(30, 400, n_reviews))
    specs = _TextSpecs(
        kind=kind,
        category=rng.choice(len(CATEGORIES), n_reviews, p=CATEGORY_SHARE),
        tone=tone,
        channel=channel,
        wait_s=np.where(channel <= _CHAT, wait, np.nan),
        contact_no=rng.integers(1, 5, n_reviews),
    )
    codes, dictionary = _compose_texts(specs, rng)
    text = np.asarray(dictionary, dtype=object)[codes]
    stars = 1 + np.searchsorted(np.array([-0.55, -0.2, 0.2, 0.5]), tone + rng.normal(0, 0.25, n_reviews))
    copies = rng.choice(n_reviews, max(3, n_reviews // 200), replace=False)
    originals = rng.choice(n_reviews, len(copies), replace=False)
    text[copies], stars[copies] = text[originals], stars[originals]
    start_s, end_s = _seconds(start), _seconds(end)
    created = start_s + (rng.random(n_reviews) * (end_s - start_s) // DAY).astype(np.int64) * DAY
    width = max(6, len(str(n_reviews)))
    return pd.DataFrame(
        {
            "review_id": pd.array(
                np.char.add("R", np.char.zfill(np.arange(n_reviews).astype(str), width)), "string"
            ),
            "created_at": created.astype("datetime64[s]"),
            "source": pd.Categorical.from_codes(source, REVIEW_SOURCES),
            "text": pd.array(text, dtype="string"),
            "stars": stars.astype(np.int64),
        }
    )


# --- public entry points --------------------------------------------------------------------------------------
def default_review_count(n_customers: int) -> int:
    """A few thousand reviews for small demos, growing slowly with the customer base."""
    return int(np.clip(n_customers // 2, 2000, 50_000))


def snapshot_dates(
    start: str, end: str, horizon_days: int = HORIZON_DAYS, count: int = N_SNAPSHOTS
) -> list[dt.date]:
    """Monthly `as_of` dates whose label window ends within the period, with >= 90 days of history before.

    Returns:
        Up to `count` first-of-month dates, ascending; the newest plus `horizon_days` is <= `end`.
    """
    first_allowed = pd.Timestamp(start) + pd.Timedelta(days=90)
    newest = (pd.Timestamp(end) - pd.Timedelta(days=horizon_days)).to_period("M").to_timestamp()
    dates = [newest - pd.DateOffset(months=k) for k in range(count)]
    return sorted(d.date() for d in dates if d >= first_allowed)


def _chunks(n_customers: int) -> list[tuple[int, int, int]]:
    return [
        (k, first, min(CHUNK_CUSTOMERS, n_customers - first))
        for k, first in enumerate(range(0, n_customers, CHUNK_CUSTOMERS))
    ]


def _world_for(n_customers: int, seed: int, start: str, end: str) -> _World:
    return _make_world(
        np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))), start, end, n_customers
    )


def _chunk_rng(seed: int, chunk: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, chunk)))


def simulate(
    n_customers: int, seed: int, start: str = DEFAULT_START, end: str = DEFAULT_END
) -> SimulatedData:
    """Simulate a customer base in memory (for tests and benchmarks; fine up to ~100k customers).

    Args:
        n_customers: customers in the base (80% on board at `start`, the rest signing up during the period).
        seed: random seed; the same seed gives the same data, also as files from `write_demo_data`.
        start, end: the simulated period [start, end), ISO dates, at least 180 days apart.
    Returns:
        `SimulatedData` with customers, events (categoricals for ids, types, channels, texts) and reviews.
    """
    if n_customers < 1:
        raise ValueError("n_customers must be at least 1")
    world = _world_for(n_customers, seed, start, end)
    frames, tables = [], []
    for chunk, first, size in _chunks(n_customers):
        customers, events = _simulate_chunk(world, first, size, _chunk_rng(seed, chunk))
        frames.append(customers)
        tables.append(events)
    events = pa.concat_tables(tables).unify_dictionaries().combine_chunks().to_pandas()
    customers = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    reviews = simulate_reviews(default_review_count(n_customers), seed, start, end)
    return SimulatedData(customers, events, reviews, _date_of(world.start_s), _date_of(world.end_s))


def demo_spec(start: str = DEFAULT_START, end: str = DEFAULT_END) -> dict:
    """The dataset spec (as a mapping) that points churnsense at the files `write_demo_data` writes."""
    return {
        "customers": {
            "path": CUSTOMERS_FILE,
            "id": "customer_id",
            "churn_date": "churned_at",
            "signup_date": "signup_date",
        },
        "events": {
            "path": EVENTS_FILE,
            "id": "customer_id",
            "time": "timestamp",
            "type": "event_type",
            "text": "text",
            "values": ["duration_s", "amount"],
            "churn_event": CHURN_EVENT,
        },
        "reviews": {"path": REVIEWS_FILE, "id": "review_id", "text": "text", "rating": "stars"},
        "labels": {"as_of": snapshot_dates(start, end), "horizon_days": HORIZON_DAYS},
    }


def _write_customers_csv(frame: pd.DataFrame, path: Path, header: bool) -> None:
    frame.to_csv(path, mode="w" if header else "a", header=header, index=False, date_format="%Y-%m-%d")


def write_demo_data(out: Path | str, n_customers: int = 5000, seed: int = 7) -> str:
    """Write customers.csv, events.parquet, reviews.csv and a ready spec.yaml into `out`.

    Customers are generated in chunks of `CHUNK_CUSTOMERS`, each appended to the Parquet writer (row groups of
    about a million rows), so memory stays bounded for millions of customers. Files are written to a staging
    folder inside `out` and moved into place with spec.yaml last: a failed run leaves no half-written data set.

    Args:
        out: folder to write to (created if needed; files of a previous run are replaced).
        n_customers: customers in the base.
        seed: random seed; the same seed gives byte-identical files.
    Returns:
        A multi-line summary: customers, churn rate, events, texts, reviews and the spec path.
    """
    if n_customers < 1:
        raise ValueError("n_customers must be at least 1")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    world = _world_for(n_customers, seed, DEFAULT_START, DEFAULT_END)
    staging = Path(tempfile.mkdtemp(prefix=".demo-data-", dir=out))
    try:
        n_events = n_texts = n_churned = 0
        with pq.ParquetWriter(staging / EVENTS_FILE, EVENTS_SCHEMA, compression="zstd") as writer:
            for chunk, first, size in _chunks(n_customers):
                customers, events = _simulate_chunk(world, first, size, _chunk_rng(seed, chunk))
                writer.write_table(events, row_group_size=ROW_GROUP_ROWS)
                _write_customers_csv(customers, staging / CUSTOMERS_FILE, header=chunk == 0)
                n_events += events.num_rows
                n_texts += events.num_rows - events.column("text").null_count
                n_churned += int(customers["churned_at"].notna().sum())
                logger.info("simulated customers %d-%d: %d events", first, first + size - 1, events.num_rows)
        reviews = simulate_reviews(default_review_count(n_customers), seed)
        reviews.to_csv(staging / REVIEWS_FILE, index=False, date_format="%Y-%m-%d")
        spec = demo_spec()
        (staging / SPEC_FILE).write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        # A spec from an earlier run must not point at a mix of old and new files while we swap them in.
        (out / SPEC_FILE).unlink(missing_ok=True)
        for name in (CUSTOMERS_FILE, EVENTS_FILE, REVIEWS_FILE, SPEC_FILE):
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    as_of = spec["labels"]["as_of"]
    return "\n".join(
        [
            f"wrote demo data to {out}",
            f"customers: {n_customers:,} ({n_churned:,} churned in {DEFAULT_START}..{DEFAULT_END}, "
            f"{n_churned / n_customers:.1%})",
            f"events: {n_events:,} ({n_events / n_customers:.1f} per customer), {n_texts:,} with text "
            f"({n_texts / max(n_events, 1):.1%})",
            f"reviews: {len(reviews):,} labelled texts with 1-5 stars",
            f"spec: {out / SPEC_FILE} (as_of {as_of[0]}..{as_of[-1]}, horizon {HORIZON_DAYS} days)",
        ]
    )
