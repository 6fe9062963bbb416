"""Phrase pools and vectorised assembly of the synthetic reviews and support tickets.

Every pool is expanded once, at import, from small templates into a flat list of sentences, so
a text is just a ragged list of sentence ids: drawing ids is numpy, joining them is one Arrow
kernel (``binary_join``), and no Python runs per text.

Texts differ by persona *topic* (vocabulary) and by *kind* (tone): positive, neutral and
negative reviews, plain and angry tickets. A share of one-sentence texts comes from tiny "short"
pools ("Great product!"), which gives the realistic exact duplicates found in real review data.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Tone of a text; reviews take theirs from the rating, tickets from the persona.
KINDS = ("pos", "neu", "neg", "ticket", "angry")
KIND_ID = {k: i for i, k in enumerate(KINDS)}

#: Vocabulary themes; each persona names one.
TOPICS = ("loyal", "churn", "deal", "new", "complaint", "dormant", "eco", "tech")
TOPIC_ID = {t: i for i, t in enumerate(TOPICS)}

# Topic pools are keyed by a coarser tone: neutral reviews borrow from pos or neg, and angry
# tickets from the topic's ticket pool (the anger comes from the generic sentences).
_TOPIC_KINDS = ("pos", "neg", "ticket")

_SLOTS = {
    "item": ["order", "package", "parcel", "item", "product", "delivery"],
    "good": ["great", "excellent", "fantastic", "really good", "solid", "lovely"],
    "bad": ["poor", "disappointing", "terrible", "not good", "awful"],
    "years": ["two", "three", "five", "many", "several"],
    "cat": ["groceries", "clothes", "home stuff", "books", "gifts", "everyday things"],
    "pct": ["10", "15", "20", "25", "30", "40", "50"],
    "promo": ["coupon code", "promo code", "discount code", "voucher", "loyalty coupon"],
    "eco_thing": [
        "recycled packaging",
        "plastic-free packaging",
        "compostable mailer",
        "refillable bottle",
        "organic cotton",
        "bamboo toothbrush",
        "reusable container",
    ],
    "eco_value": [
        "sustainability",
        "the environment",
        "ethical sourcing",
        "fair trade",
        "reducing waste",
        "a lower carbon footprint",
    ],
    "tech_feat": [
        "battery life",
        "bluetooth connection",
        "screen resolution",
        "charging speed",
        "processor",
        "noise cancelling",
        "camera",
        "wifi range",
        "touchscreen",
        "USB-C port",
    ],
    "device": ["headphones", "smartwatch", "tablet", "speaker", "phone charger", "laptop", "router"],
    "days": ["two", "three", "five", "ten"],
}

_SHORT = {
    "pos": [
        "Great product!",
        "Love it!",
        "Excellent.",
        "Highly recommend.",
        "Five stars.",
        "Very happy with it.",
        "Works great.",
        "Perfect.",
    ],
    "neu": ["It's okay.", "Does the job.", "Average.", "As described.", "Fine."],
    "neg": ["Not great.", "Disappointed.", "Would not buy again.", "Poor quality.", "Waste of money."],
    "ticket": [
        "Where is my order?",
        "Please call me back.",
        "I need help with my account.",
        "How do I return an item?",
    ],
    "angry": ["This is unacceptable!", "Still no answer!", "I want my money back!"],
}

_GENERIC = {
    "pos": [
        "The {item} arrived on time and was well packed.",
        "Quality is {good} for the price.",
        "Everything was exactly as described.",
        "Delivery was quick and the {item} was in perfect condition.",
        "Would definitely order again.",
        "Really {good} experience overall.",
        "My family loves it.",
    ],
    "neu": [
        "The {item} arrived a day later than expected.",
        "It is fine, nothing special.",
        "Does what it says, no more.",
        "Packaging could be better.",
        "Not sure I would order it again.",
        "The size was a bit different from the picture.",
    ],
    "neg": [
        "The {item} was {bad}.",
        "It stopped working after a week.",
        "Not what I expected at all.",
        "The description was misleading.",
        "Quality is {bad} for the price.",
        "I had to send it back.",
    ],
    "ticket": [
        "Could you tell me the status of my {item}?",
        "I would like to change my delivery address.",
        "Please help me update my payment details.",
        "I was charged twice for the same {item}.",
        "Can I get an invoice for my last {item}?",
        "Thanks in advance for your help.",
    ],
    "angry": [
        "This is the third time I am writing about this.",
        "Nobody from customer service has replied.",
        "I am extremely frustrated with this {item}.",
        "I expect a full refund immediately.",
        "Your support is useless.",
        "I will cancel my account if this is not fixed.",
    ],
}

_TOPIC = {
    "loyal": {
        "pos": [
            "I have been a customer for {years} years and it never disappoints.",
            "Another {good} order, as always.",
            "This shop is my go-to for {cat}.",
            "Consistently {good} quality every single time.",
            "Loyal customer here and happy to stay.",
        ],
        "neg": [
            "Not up to the usual standard this time, but I will keep ordering.",
            "A rare miss from a shop I have trusted for {years} years.",
            "Expected better given how often I order here.",
            "Usually {good}, this one was a letdown.",
        ],
        "ticket": [
            "As a long-time member, could you update my subscription?",
            "Please add my latest {item} to my loyalty points.",
            "Can I renew my premium membership early?",
            "I order every month, is there a subscription option?",
        ],
    },
    "churn": {
        "pos": [
            "Still decent, but not what it used to be.",
            "Okay this time, though the shop used to be better.",
            "Fine, but I remember when every order was {good}.",
            "Nothing wrong this time, I just shop here less now.",
        ],
        "neg": [
            "The quality used to be much better.",
            "Lately my orders take much longer to arrive.",
            "I am considering switching to another store.",
            "Prices went up and the service went down.",
            "I order less and less from here these days.",
        ],
        "ticket": [
            "How do I cancel my membership?",
            "Please close my account.",
            "Why have my recent orders been so slow?",
        ],
    },
    "deal": {
        "pos": [
            "Got it with a {pct}% discount, bargain!",
            "Great price during the sale.",
            "Used a {promo} and saved {pct}%.",
            "Cheapest price I could find anywhere.",
            "Worth it at the sale price.",
            "Free shipping made it a steal.",
        ],
        "neg": [
            "Not worth the full price.",
            "Too expensive without a discount.",
            "The sale price was not really a deal.",
        ],
        "ticket": [
            "My {promo} did not work at checkout.",
            "Can I still get the sale price on my last {item}?",
            "When is the next promotion?",
            "Please apply the {pct}% discount to my order.",
        ],
    },
    "new": {
        "pos": [
            "My first order here and it went smoothly.",
            "Just signed up and the onboarding was easy.",
            "New customer, first impression is {good}.",
            "Trying this shop for the first time and I am impressed.",
        ],
        "neg": [
            "First order and it was {bad}.",
            "Not a {good} first impression.",
            "As a new customer I expected a smoother start.",
            "My first {item} here was a disappointment.",
        ],
        "ticket": [
            "How do I set up my new account?",
            "I just signed up, how do I track my first order?",
            "Where can I find my welcome discount?",
        ],
    },
    "complaint": {
        "pos": [
            "Support finally sorted it out.",
            "At least the replacement works.",
            "Good in the end, after two calls to support.",
            "The refund eventually came through.",
        ],
        "neg": [
            "The {item} arrived broken.",
            "I still have not received my refund.",
            "Customer service never replied.",
            "The replacement was also defective.",
            "Delivery was {days} days late.",
            "Missing parts, again.",
        ],
        "ticket": [
            "My {item} arrived damaged and I need a replacement.",
            "I returned the item {days} weeks ago and still have no refund.",
            "The replacement you sent is broken too.",
            "I want to file a complaint about the courier.",
            "Part of my {item} is missing.",
        ],
    },
    "dormant": {
        "pos": [
            "Ordered once, it was fine.",
            "Nice {item}, I might come back some day.",
            "Good, it has been a while since I last ordered.",
            "Decent {item}, back then.",
        ],
        "neg": [
            "Not sure I will order again.",
            "Found it cheaper elsewhere in the end.",
            "I have not ordered since this one.",
            "Haven't used the shop in a long time.",
        ],
        "ticket": [
            "Please unsubscribe me from the newsletter.",
            "I forgot my password.",
            "Please delete my old account.",
            "Is my account still active?",
        ],
    },
    "eco": {
        "pos": [
            "Love the {eco_thing}.",
            "So glad this brand cares about {eco_value}.",
            "The {eco_thing} is a great touch.",
            "Finally a shop that takes {eco_value} seriously.",
            "Packaging was fully recyclable and plastic-free.",
            "Ethically made and it shows.",
        ],
        "neg": [
            "Too much plastic in the packaging for a green brand.",
            "The {eco_thing} was not as sustainable as advertised.",
            "I expected more commitment to {eco_value}.",
        ],
        "ticket": [
            "Is this product made from recycled materials?",
            "Can I send the {eco_thing} back for reuse?",
            "Could you ship without plastic wrapping?",
            "Where can I read about your ethical sourcing?",
        ],
    },
    "tech": {
        "pos": [
            "The {tech_feat} is impressive.",
            "The {device} has {good} specs for the price.",
            "Excellent {tech_feat} on this {device}.",
            "The latest firmware update improved the {tech_feat}.",
            "Pairing over bluetooth took seconds.",
        ],
        "neg": [
            "The {tech_feat} is weaker than the specs claim.",
            "After the firmware update the {device} keeps disconnecting.",
            "The {device} overheats while charging.",
        ],
        "ticket": [
            "My {device} will not pair over bluetooth.",
            "How do I install the latest firmware on my {device}?",
            "The {tech_feat} on my {device} stopped working.",
            "Is the {device} compatible with USB-C chargers?",
        ],
    },
}

_FIELD = re.compile(r"\{(\w+)\}")


def _expand(template: str) -> list[str]:
    """All fillings of a template's slots, in a fixed order."""
    names = _FIELD.findall(template)
    if not names:
        return [template]
    out = []
    for values in itertools.product(*(_SLOTS[n] for n in names)):
        text = template
        for name, value in zip(names, values, strict=True):
            text = text.replace("{" + name + "}", value, 1)
        out.append(text)
    return out


class _SentenceBank:
    """All sentences in one list, grouped by template; pools are ranges of templates.

    Pool ids: ``kind`` for short pools, ``5 + kind`` for generic pools and
    ``10 + 3 * topic + topic_kind`` for topic pools. A sentence is drawn by picking a template
    of its pool, then one of that template's slot fillings, so templates weigh equally however
    many fillings they have.
    """

    def __init__(self) -> None:
        pools: list[list[str]] = []
        pools += [list(_SHORT[k]) for k in KINDS]
        pools += [list(_GENERIC[k]) for k in KINDS]
        pools += [list(_TOPIC[t][k]) for t in TOPICS for k in _TOPIC_KINDS]
        templates = [t for p in pools for t in p]
        expanded = [_expand(t) for t in templates]
        n_tmpl = np.array([len(p) for p in pools], dtype=np.int64)
        self.pool_offset = np.concatenate([[0], np.cumsum(n_tmpl)[:-1]])
        self.pool_size = n_tmpl
        n_fill = np.array([len(x) for x in expanded], dtype=np.int64)
        self.tmpl_offset = np.concatenate([[0], np.cumsum(n_fill)[:-1]])
        self.tmpl_size = n_fill
        self.sentences = pa.array([s for x in expanded for s in x], type=pa.string())


_BANK = _SentenceBank()

# Sentences per text: short texts are the commonest, as in real review data.
_N_SENT_P = np.array([0.35, 0.30, 0.20, 0.15])


def compose_texts(
    rng: np.random.Generator,
    kind: np.ndarray,
    topic: np.ndarray,
    p_topic: np.ndarray,
    p_short: float = 0.5,
) -> pa.Array:
    """Assemble one text per row from the sentence pools.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of all draws.
    kind : ndarray of int
        Tone per text, an index into :data:`KINDS`.
    topic : ndarray of int
        Vocabulary theme per text, an index into :data:`TOPICS`.
    p_topic : ndarray of float
        Per text: probability that each of its sentences (short stock texts aside) comes from
        the topic pool rather than from the generic pool of the same tone.
    p_short : float
        Probability that a one-sentence text is a stock short phrase (duplicates across customers).

    Returns
    -------
    pyarrow.StringArray
        The texts, 1-4 sentences each.
    """
    n = len(kind)
    if n == 0:
        return pa.array([], type=pa.string())
    n_sent = rng.choice(4, size=n, p=_N_SENT_P) + 1
    short = (n_sent == 1) & (rng.random(n) < p_short)
    owner = np.repeat(np.arange(n), n_sent)
    s_kind = kind[owner]
    use_topic = (rng.random(len(owner)) < p_topic[owner]) & ~short[owner]
    # A neutral review leans to one side of the topic (the same for all its sentences); both
    # ticket tones use the topic's ticket pool.
    topic_kind = np.select(
        [s_kind == KIND_ID["pos"], s_kind == KIND_ID["neg"], s_kind == KIND_ID["neu"]],
        [0, 1, (rng.random(n) < 0.5).astype(np.int64)[owner]],
        default=2,
    )
    pool = np.where(
        short[owner],
        s_kind,
        np.where(use_topic, 10 + 3 * topic[owner] + topic_kind, 5 + s_kind),
    )
    # Consecutive sentences of a text step through their pool's templates from a random start,
    # so one text does not repeat a template (uniform marginal, no within-text duplicates).
    start = rng.integers(0, 1 << 30, size=n)[owner]
    step = np.arange(len(owner)) - np.repeat(np.cumsum(n_sent) - n_sent, n_sent)
    tmpl = _BANK.pool_offset[pool] + (start + step) % _BANK.pool_size[pool]
    fill = (rng.random(len(owner)) * _BANK.tmpl_size[tmpl]).astype(np.int64)
    pick = _BANK.tmpl_offset[tmpl] + fill
    offsets = np.concatenate([[0], np.cumsum(n_sent)]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), _BANK.sentences.take(pa.array(pick)))
    return pc.binary_join(lists, " ")
