"""What the page calls items and the act of consuming them, per catalog domain (movie, artist, game).

Every sentence of the UI that names items goes through ``Words``, so a LastFM page speaks of artists listened to
where a MovieLens page speaks of watched movies (the MovieLens wording is the one the page always had).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Words:
    item: str  # "movie"
    done: str  # "watched"
    items: str  # "movies"
    one: str  # one history entry: "watched movie"
    history: str  # the history: "watched movies"
    unseen: str  # candidates: "unwatched movies"
    names: str  # what a label is: "movie titles"
    order: str  # "watch order"
    search_label: str
    search_placeholder: str
    search_empty: str  # the refusal of an empty search

    @property
    def History(self) -> str:  # noqa: N802 (the capitalised form, at the start of a label)
        return self.history[0].upper() + self.history[1:]


WORDS: dict[str, Words] = {
    "movie": Words(
        "movie", "watched", "movies", "watched movie", "watched movies", "unwatched movies", "movie titles", "watch order",
        "Find movies by description (title, year and genre words)",
        "e.g. a 1990s crime thriller (searches titles, years and genres)",
        "Describe a movie first, e.g. 'a 1990s crime thriller' (the search reads titles, years and genres only)."),
    "artist": Words(
        "artist", "listened to", "artists", "artist listened to", "artists listened to", "artists not listened to yet",
        "artist names", "listening order",
        "Find artists by name (the search reads artist names only)",
        "e.g. an artist's name, or words in it",
        "Type an artist's name first (the search reads artist names only)."),
    "game": Words(
        "game", "played", "games", "played game", "played games", "unplayed games", "game titles", "play order",
        "Find games by title (the search reads titles only)", "e.g. a word in a game's title",
        "Type a game's title first (the search reads titles only)."),
}


def words_for(domain: str) -> Words:
    """The wording of a catalog domain; an unknown domain gets neutral "item" wording."""
    return WORDS.get(domain) or Words("item", "consumed", "items", "item in the history", "items in the history", "unseen items",
                                      "item names", "history order", "Find items by name", "e.g. a word in a name",
                                      "Type a name first.")


INTRO = (
    "Pick the {items} a user {done}, in order. LLaRA lists each {item} in its prompt by title **and** by a "
    "behavioural token: the {item}'s embedding from a trained {recommender}, projected into the language model. "
    "Compare the text-only prompt, the hybrid prompt and the recommender alone, inspect the prompt and see which "
    "{history} drove the answer."
)


def intro(w: Words, recommender: str) -> str:
    return INTRO.format(items=w.items, item=w.item, done=w.done, history=w.history, recommender=recommender)


def history_label(w: Words) -> str:
    return f"{w.History}, oldest first (up to 10: more keeps the 10 most recent)"


def candidates_label(w: Words) -> str:
    return f"Candidates: 20 {w.unseen} drawn at random with the seed (redrawn when the history changes; editable)"


def method_labels(w: Words) -> dict[str, str]:
    return {"grad_x_input": "token: gradient × input", "ig": "token: integrated gradients",
            "ablation": "item: remove title / embedding (slow)",
            "deletion": f"item: delete the {w.item}, rebuild the prompt"}


def ablation_labels(w: Words) -> dict[str, str]:
    return {"none": "none", "no-embeddings": "drop item embeddings (every slot gets the average item)",
            "no-titles": "drop titles (IDs only: slots alone)", "shuffle": f"shuffle the {w.order} (seeded)"}


def attributions_title(w: Words) -> str:
    return f"Attributions: which {w.history} drove the answer"


def attribution_legend(w: Words) -> str:
    i, h = w.item, w.one
    return ("Colours: red pushed the explained answer up, purple pushed it down; the stronger the colour, the larger "
            "the effect (scaled to the strongest word of each prompt). Sub-word pieces are merged into words. "
            f"Deletion (the default) removes each {h}, rebuilds the prompt and scores the answer again: a bar is "
            f"what the answer's score (log-softmax over the 20 candidates) loses without that {i}, so it is exact "
            f"for one {i} at a time but says nothing about {w.items} removed together. Gradient × input and "
            f"integrated gradients score tokens (a {i}'s bar sums its title's tokens and its slot); title / "
            "embedding removal scores each part by how much removing it lowers the answer's score. On the "
            f"faithfulness benchmark the token methods' top {i} matters no more than a random one (README, *Are "
            "they faithful?*).")


def written_line(written: str | None, text: str, ranked_first: str, words: Words) -> str:
    """The hybrid panel's line about the title the LLM writes (``written``: its label, None when the written text
    names no candidate) next to the ranking's top pick (``ranked_first``)."""
    if written is None:
        return f"\n\n**The LLM writes:** {text[:200]!r}: names none of the candidates (its ranking picks {ranked_first})"
    if written == ranked_first:
        return f"\n\n**The LLM writes:** {written}, the same {words.item} its ranking puts first"
    return f"\n\n**The LLM writes:** {written}, but its ranking puts {ranked_first} first: they disagree"
