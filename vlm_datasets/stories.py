"""Synthetic TinyStories-like stories, deterministic by seed: the embedded default text for language-model pretraining.

A story is one of several simple causal plots (a lost toy, sharing, a storm, a broken thing, a hurt animal, a fear
overcome, making something) told with a cast drawn per story (names, pronouns, animals, a parent), a place and an
object, through several phrasings per sentence and dialogue lines. Names, pronouns and the object recur within a
story, so a model gains by reading its context: with thousands of combinations per plot, memorizing stories is
not the best strategy. Not TinyStories itself (roneneldan/TinyStories), which the real config streams.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

GIRLS = ("Lily", "Mia", "Sue", "Anna", "Emma", "Lucy", "Sara", "Zoe", "Kim", "Ella", "Rosa", "Amy", "Nina", "Jane")
BOYS = ("Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Tim", "Joe", "Finn", "Noah", "Ravi", "Luca", "Omar", "Bob")
ANIMALS = ("bunny", "puppy", "kitten", "bear", "fox", "duck", "mouse", "frog", "pig", "lamb", "owl", "turtle")
ANIMAL_NAMES = ("Bo", "Pip", "Coco", "Fluffy", "Spot", "Dot", "Nutmeg", "Buzz", "Momo", "Tiny", "Sunny", "Pebble")
TRAITS = ("little", "happy", "curious", "kind", "brave", "shy", "funny", "friendly", "clever", "sleepy", "silly")
PLACES = (
    ("park", "under a big tree"),
    ("garden", "behind the flowers"),
    ("forest", "under a pile of leaves"),
    ("beach", "in the soft sand"),
    ("backyard", "behind the fence"),
    ("playground", "under the slide"),
    ("farm", "in the hay"),
    ("kitchen", "under the table"),
    ("meadow", "in the tall grass"),
    ("lake", "near the water"),
)
COLORS = ("red", "blue", "green", "yellow", "pink", "purple", "orange", "shiny", "soft", "big", "small")
OBJECTS = ("ball", "kite", "teddy bear", "hat", "toy car", "book", "balloon", "doll", "drum", "boat", "cup", "scarf")
MAKES = (("a sandcastle", "sand"), ("a cake", "flour"), ("a tower", "blocks"), ("a card", "paper"), ("a hut", "sticks"))
FEARS = (
    ("the dark", "turned off the light"),
    ("big waves", "went into the water"),
    ("the tall slide", "climbed up the slide"),
    ("thunder", "heard the loud boom"),
    ("the big dog next door", "walked past the gate"),
)
HURTS = ("had a hurt leg", "was stuck in a bush", "was lost and cold", "could not find its mom", "was very hungry")
FEELINGS_GOOD = ("happy", "glad", "proud", "excited", "thankful")
FEELINGS_BAD = ("sad", "worried", "upset", "scared", "angry")
WEATHER = ("it started to rain", "a strong wind began to blow", "dark clouds filled the sky", "it began to snow")
MORALS = (
    "Sharing is caring.",
    "It is good to tell the truth.",
    "Friends help each other.",
    "Being brave is not the same as not being scared.",
    "Kindness always comes back.",
    "It is fun to try new things.",
)


@dataclass(frozen=True)
class Character:
    name: str
    kind: str  # "girl", "boy" or an animal noun
    subject: str  # she / he
    object: str  # her / him
    possessive: str  # her / his
    trait: str

    def intro(self) -> str:
        return f"{_a(self.trait)} {self.kind} named {self.name}"


def _a(phrase: str) -> str:
    """The phrase with its indefinite article: "an orange ball", "a red ball"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _character(rng: random.Random, exclude: tuple[str, ...] = ()) -> Character:
    roll = rng.random()
    if roll < 0.4:
        name, kind, pron = rng.choice([n for n in GIRLS if n not in exclude]), "girl", ("she", "her", "her")
    elif roll < 0.8:
        name, kind, pron = rng.choice([n for n in BOYS if n not in exclude]), "boy", ("he", "him", "his")
    else:
        name, kind = rng.choice([n for n in ANIMAL_NAMES if n not in exclude]), rng.choice(ANIMALS)
        pron = ("she", "her", "her") if rng.random() < 0.5 else ("he", "him", "his")
    return Character(name, kind, *pron, trait=rng.choice(TRAITS))


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _say(rng: random.Random, who: Character, line: str, verb: str = "said") -> str:
    """A dialogue line in one of three layouts; `line` ends with its punctuation (. ! ?)."""
    layout = rng.randrange(3)
    if layout == 1:
        return f'{who.name} {verb}, "{line}"'
    if line.endswith("."):
        line = line[:-1] + ","  # "I lost it," said Tom.
    return f'"{line}" {verb} {who.name}.' if layout == 0 else f'"{line}" {who.subject} {verb}.'


@dataclass
class Cast:
    hero: Character
    friend: Character
    parent: Character  # Mom or Dad
    place: tuple[str, str]  # (place, hiding spot)
    thing: str  # "red ball"


def _opening(rng: random.Random, c: Cast) -> str:
    h = c.hero
    return rng.choice(
        (
            f"Once upon a time, there was {h.intro()}.",
            f"There once was {h.intro()}.",
            f"One day, {h.intro()} went to the {c.place[0]}.",
            f"{h.name} was {_a(h.trait)} {h.kind}. {_cap(h.subject)} loved to play at the {c.place[0]}.",
            f"Once upon a time, in a small town, there lived {h.intro()}.",
        )
    )


def _lost_toy(rng: random.Random, c: Cast) -> list[str]:
    h, f = c.hero, c.friend
    place, spot = c.place
    s = [
        f"{h.name} had {_a(c.thing)}. {_cap(h.subject)} took it everywhere.",
        f"One day, {h.name} went to the {place} with the {c.thing}, but {h.subject} lost it.",
        f"{h.name} felt {rng.choice(FEELINGS_BAD)}. {_say(rng, h, f'Where is my {c.thing.split()[-1]}?', 'cried')}",
        f'{f.name} the {f.kind} saw {h.object} and asked, "Why are you sad?"',
        _say(rng, h, f"I lost my {c.thing}.", "said"),
        rng.choice(
            (
                f"{f.name} wanted to help, so they looked together.",
                f"{_say(rng, f, 'I will help you find it!')} They looked everywhere.",
            )
        ),
        f"At last, {f.name} found the {c.thing} {spot}.",
        f"{h.name} was so {rng.choice(FEELINGS_GOOD)}. {_say(rng, h, 'Thank you!')}",
        f"From that day on, {h.name} and {f.name} were best friends.",
    ]
    return s


def _sharing(rng: random.Random, c: Cast) -> list[str]:
    h, f = c.hero, c.friend
    toy = c.thing
    return [
        f"{h.name} had a new {toy}. {_cap(h.subject)} played with it all day in the {c.place[0]}.",
        f"{f.name} came by and saw the {toy}. {_say(rng, f, 'Can I play too?', 'asked')}",
        rng.choice(
            (
                f"{h.name} did not want to share. {_say(rng, h, f'No, it is my {toy.split()[-1]}!')}",
                f"{h.name} held the {toy} close and said no.",
            )
        ),
        f"{f.name} felt {rng.choice(FEELINGS_BAD)} and sat down alone.",
        f"Then {h.name} saw that playing alone was not fun.",
        f"So {h.subject} gave the {toy} to {f.name}. {_say(rng, h, 'Let us play together.')}",
        f"They played with the {toy} until the sun went down.",
        rng.choice(("They had so much fun.", "They laughed and laughed.", "It was the best day ever.")),
        rng.choice(MORALS[:1] + MORALS[2:3]),
    ]


def _storm(rng: random.Random, c: Cast) -> list[str]:
    h, f = c.hero, c.friend
    weather = rng.choice(WEATHER)
    return [
        f"{h.name} and {f.name} went to the {c.place[0]} to play with {_a(c.thing)}.",
        f"They were having fun, but then {weather}.",
        f"{_say(rng, f, 'Oh no! What do we do?', 'said')}",
        rng.choice(
            (
                f"Because {weather.replace('it started', 'it was starting').replace('began', 'was starting')}, "
                f"{h.name} had an idea.",
                f"{h.name} looked around and had an idea.",
            )
        ),
        f"{_say(rng, h, 'Let us hide ' + c.place[1] + '!')}",
        f"They ran and waited {c.place[1]} until the sky was clear.",
        f"When it was over, they went home and told {h.possessive} {c.parent.kind} about it.",
        f'{h.possessive.capitalize()} {c.parent.kind} smiled and said, "You were very smart."',
    ]


def _broken(rng: random.Random, c: Cast) -> list[str]:
    h = c.hero
    thing = rng.choice(("vase", "cup", "lamp", "plate", "clock"))
    return [
        f"{h.name} was playing with {_a(c.thing)} in the house.",
        f"{_cap(h.subject)} threw it too high, and it hit {_a(thing)}. The {thing} fell and broke.",
        f"{h.name} felt {rng.choice(('scared', 'worried', 'bad'))}. {_cap(h.subject)} wanted to hide the pieces.",
        f"But {h.subject} remembered that hiding things is not right.",
        f'So {h.name} went to {h.possessive} {c.parent.kind} and said, "I broke the {thing}. I am sorry."',
        f"{h.possessive.capitalize()} {c.parent.kind} gave {h.object} a hug.",
        _say(rng, c.parent, "Thank you for telling me the truth."),
        f"Together they fixed the {thing} with glue.",
        "It is good to tell the truth.",
    ]


def _hurt_animal(rng: random.Random, c: Cast) -> list[str]:
    h = c.hero
    animal = rng.choice([a for a in ANIMALS if a != h.kind])
    hurt = rng.choice(HURTS)
    return [
        f"One day, {h.name} was walking in the {c.place[0]} when {h.subject} saw a little {animal}.",
        f"The {animal} {hurt}.",
        _say(rng, h, f"Poor little {animal}. I will help you.", "said"),
        rng.choice(
            (
                f"{h.name} was gentle and careful. {_cap(h.subject)} took the {animal} home.",
                f"{h.name} gave the {animal} some water and a warm blanket to sleep on.",
            )
        ),
        f"Soon the {animal} felt better. It jumped and played with {h.name}.",
        f"Every day after that, the {animal} came back to the {c.place[0]} to see {h.object}.",
        rng.choice(MORALS[4:5] + MORALS[2:3]),
    ]


def _fear(rng: random.Random, c: Cast) -> list[str]:
    h, f = c.hero, c.friend
    fear, act = rng.choice(FEARS)
    return [
        f"{h.name} was afraid of {fear}.",
        f"Every time {h.subject} {act}, {h.subject} felt {rng.choice(('scared', 'shaky', 'worried'))}.",
        f'One day, {f.name} said, "Do not be afraid. I will be with you."',
        f"{h.name} took a deep breath. {_cap(h.subject)} held {f.name}'s hand.",
        f"This time, when {h.subject} {act}, nothing bad happened.",
        _say(rng, h, "I did it! I am not scared anymore!", "shouted"),
        f"{f.name} smiled. {h.name} felt {rng.choice(FEELINGS_GOOD)} and brave.",
        rng.choice(MORALS[3:4] + MORALS[5:6]),
    ]


def _making(rng: random.Random, c: Cast) -> list[str]:
    h, f = c.hero, c.friend
    made, stuff = rng.choice(MAKES)
    return [
        f"{h.name} and {f.name} wanted to make {made}.",
        f"They got some {stuff} and started to work in the {c.place[0]}.",
        f"{_say(rng, f, 'This will be the best one ever!')}",
        f"But then, {rng.choice(('it fell down', 'a big wave came', 'the wind blew it over', 'a dog ran into it'))}.",
        f"{h.name} felt {rng.choice(FEELINGS_BAD)}. {_say(rng, h, 'Now we have to start again.')}",
        f'{f.name} said, "We can make it again, and this time it will be even better."',
        f"So they worked together, and they made {made} that was even better than before.",
        f"They showed it to {h.possessive} {c.parent.kind}.",
        _say(rng, c.parent, f"It is {rng.choice(('wonderful', 'beautiful', 'great'))}!"),
    ]


PLOTS: dict[str, Callable[[random.Random, Cast], list[str]]] = {
    "lost_toy": _lost_toy,
    "sharing": _sharing,
    "storm": _storm,
    "broken": _broken,
    "hurt_animal": _hurt_animal,
    "fear": _fear,
    "making": _making,
}


def story(rng: random.Random, plot: str | None = None) -> str:
    """One story (a random plot unless named): an opening, then the plot's sentences, as one paragraph."""
    hero = _character(rng)
    friend = _character(rng, exclude=(hero.name,))
    cast = Cast(
        hero=hero,
        friend=friend,
        parent=rng.choice(
            (Character("Mom", "mom", "she", "her", "her", "kind"), Character("Dad", "dad", "he", "him", "his", "kind"))
        ),
        place=rng.choice(PLACES),
        thing=f"{rng.choice(COLORS)} {rng.choice(OBJECTS)}",
    )
    tell = PLOTS[plot or rng.choice(sorted(PLOTS))]
    friend_intro = rng.choice(
        (
            "",
            f"{hero.name} had a friend named {friend.name}.",
            f"{hero.possessive.capitalize()} best friend was {friend.intro()}.",
        )
    )
    return " ".join(s for s in (_opening(rng, cast), friend_intro, *tell(rng, cast)) if s)


def generate_stories(num: int, seed: int = 0, split: str = "train") -> list[str]:
    """`num` stories, deterministic by (seed, split); different splits draw from different random streams."""
    rng = random.Random(f"stories-{split}-{seed}")
    return [story(rng) for _ in range(num)]
