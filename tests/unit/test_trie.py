"""Topic names, topic filters and the topic trie (MQTT 5.0 4.7; 3.1.1 4.7).

`valid_topic_name` / `valid_topic_filter` are checked against tables from the specification
(including `$share/<name>/<filter>`, 4.8.2); `topic_matches` against the examples of 4.7.1-4.7.2;
`TopicTrie` for insert/remove/get/match, pruning, replacement, and, with hypothesis, against a
brute-force model that applies `topic_matches` to every stored filter.
"""

from __future__ import annotations

import pytest
from fluxmq._speedups.codec import valid_topic_filter, valid_topic_name
from fluxmq._speedups.trie import TopicTrie, topic_matches
from hypothesis import given, settings
from hypothesis import strategies as st

# ----------------------------------------------------------------------------------------------
# Topic names and filters (4.7.1, 4.7.3, 4.8.2)

TOPIC_NAMES = {
    # valid
    "a": True,
    "sport/tennis/player1": True,
    "/": True,  # two zero-length levels (4.7.1.1: a leading "/" is a distinct level)
    "/finance": True,
    "a//b": True,  # zero-length level
    "a/": True,
    " ": True,  # spaces are allowed (4.7.3)
    "$SYS/broker/load": True,  # valid to name; clients are refused elsewhere
    "ü/€/😀": True,
    "$share/g/t": True,  # only a filter is shared; as a name it is just a topic
    # invalid [MQTT-4.7.3-1] [MQTT-3.3.2-2]
    "": False,
    "+": False,
    "#": False,
    "a/+": False,
    "a/#": False,
    "sport/tennis#": False,
    "sport+": False,
    "+/a": False,
    "a\x00b": False,  # U+0000 [MQTT-4.7.3-2] (the HTTP bridge relies on this check)
    "\x00": False,
}

TOPIC_FILTERS = {
    # valid (4.7.1.2, 4.7.1.3)
    "#": True,
    "+": True,
    "sport/#": True,
    "sport/tennis/#": True,
    "+/+": True,
    "/+": True,
    "+/tennis/#": True,
    "sport/+/player1": True,
    "a//b": True,
    "/": True,
    "a/": True,
    "$SYS/#": True,
    "$SYS/+/x": True,
    "ü/+/😀": True,
    "$share": True,  # no "/" after it: an ordinary filter naming the topic "$share"
    "$shared/g/x": True,  # not the $share prefix
    "$share/g/x": True,  # 4.8.2: $share/{ShareName}/{filter}
    "$share/group-1/sport/+/player1": True,
    "$share/g/#": True,
    "$share/g/+": True,
    "$share/g//": True,  # the filter "/" is valid
    # invalid [MQTT-4.7.1-1] [MQTT-4.7.1-2] [MQTT-4.7.3-1]
    "": False,
    "sport/tennis#": False,  # "#" must be a whole level
    "sport/tennis/#/ranking": False,  # "#" must be last
    "#/a": False,
    "##": False,
    "sport+": False,  # "+" must be a whole level
    "sport/+tennis": False,
    "a/b+/c": False,
    "++": False,
    "+#": False,
    # shared subscriptions [MQTT-4.8.2-1] [MQTT-4.8.2-2]
    "$share/g": False,  # no filter
    "$share/g/": False,  # empty filter
    "$share//x": False,  # empty ShareName
    "$share/g+/x": False,  # wildcard in ShareName
    "$share/+/x": False,
    "$share/g#/x": False,
    "$share/#/x": False,
    "$share/g/a#": False,  # invalid filter after the prefix
    "$share/g/a/#/b": False,
    "a/\x00": False,  # U+0000 [MQTT-4.7.3-2]
    "$share/g\x00/a": False,
    "$share/g/a\x00": False,
}


@pytest.mark.parametrize(("name", "ok"), TOPIC_NAMES.items(), ids=[repr(n) for n in TOPIC_NAMES])
def test_valid_topic_name(name: str, ok: bool) -> None:
    """Topic Names are at least one character [MQTT-4.7.3-1], contain no wildcard
    [MQTT-3.3.2-2] [MQTT-4.7.0-1] and no U+0000 [MQTT-4.7.3-2]; anything else (empty levels,
    spaces, $) is allowed."""
    assert valid_topic_name(name) is ok


@pytest.mark.parametrize(
    ("topic_filter", "ok"), TOPIC_FILTERS.items(), ids=[repr(f) for f in TOPIC_FILTERS]
)
def test_valid_topic_filter(topic_filter: str, ok: bool) -> None:
    """ "#" only as the whole last level [MQTT-4.7.1-1], "+" only as a whole level
    [MQTT-4.7.1-2], at least one character [MQTT-4.7.3-1], no U+0000 [MQTT-4.7.3-2]; a shared filter needs a non-empty
    ShareName without wildcards and a valid filter after it [MQTT-4.8.2-1] [MQTT-4.8.2-2]."""
    assert valid_topic_filter(topic_filter) is ok


# ----------------------------------------------------------------------------------------------
# topic_matches (4.7.1.2, 4.7.1.3, 4.7.2)

MATCHES = [
    # 4.7.1.2 multi-level wildcard examples
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),  # "#" includes the parent level
    ("#", "sport/tennis", True),
    ("#", "/", True),
    ("a/#", "a/", True),
    ("a/#", "ab", False),
    ("a/b/#", "a", False),
    # 4.7.1.3 single-level wildcard examples
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),  # "+" matches an empty level
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+", "a", True),
    ("a/+/c", "a//c", True),
    ("+/+/+", "a/b", False),
    ("+/#", "a", True),
    # exact levels, case and empty levels are significant (4.7.3)
    ("ACCOUNTS", "Accounts", False),
    ("a/b", "a/b", True),
    ("a/b", "a/b/", False),
    ("a//b", "a/b", False),
    ("/a", "a", False),
    ("a/", "a", False),
    # 4.7.2: topics starting with $ are not matched by a wildcard in the first level
    ("#", "$SYS/monitor/Clients", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("+", "$SYS", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$SYS/#", "$SYS", True),
    ("a/#", "a/$SYS", True),  # only the first level is special
    ("a/+", "a/$x", True),
    ("$x", "$x", True),
]


@pytest.mark.parametrize(("topic_filter", "topic", "ok"), MATCHES)
def test_topic_matches_spec_examples(topic_filter: str, topic: str, ok: bool) -> None:
    """The matching examples of 4.7.1.2, 4.7.1.3 and 4.7.2 [MQTT-4.7.2-1]."""
    assert topic_matches(topic_filter, topic) is ok


@pytest.mark.parametrize(("topic_filter", "topic", "ok"), MATCHES)
def test_trie_agrees_with_spec_examples(topic_filter: str, topic: str, ok: bool) -> None:
    """The trie matches exactly as the examples say (one filter stored at a time)."""
    trie = TopicTrie()
    trie.insert(topic_filter, "k", topic_filter)
    assert trie.match(topic) == ([topic_filter] if ok else [])


# ----------------------------------------------------------------------------------------------
# TopicTrie


def test_insert_get_remove_and_count() -> None:
    """insert() is True for a new (filter, key), get() finds it, remove() returns the value and
    then None; count follows."""
    t = TopicTrie()
    assert len(t) == 0 and t.count == 0
    assert t.insert("a/b", "c1", 1) is True
    assert t.insert("a/b", "c2", 2) is True
    assert t.insert("a/+", "c1", 3) is True
    assert len(t) == 3
    assert t.get("a/b", "c1") == 1 and t.get("a/b", "c2") == 2 and t.get("a/+", "c1") == 3
    assert (
        t.get("a/b", "nobody") is None and t.get("a", "c1") is None and t.get("x/y/z", "c1") is None
    )
    assert t.remove("a/b", "c1") == 1
    assert t.remove("a/b", "c1") is None
    assert t.remove("a/b/c", "c2") is None and t.remove("zzz", "c2") is None
    assert len(t) == 2
    assert sorted(t.match("a/b")) == [2, 3]


def test_same_filter_and_key_replaces() -> None:
    """A second insert of the same (filter, key) replaces the value: False, count unchanged,
    and matching yields only the new value."""
    t = TopicTrie()
    assert t.insert("a/#", "c", "old") is True
    assert t.insert("a/#", "c", "new") is False
    assert len(t) == 1
    assert t.match("a/b") == ["new"]
    assert t.filters() == [("a/#", "c", "new")]


def test_one_value_per_matching_filter() -> None:
    """A key subscribed through several matching filters gets one value per filter (the
    dispatcher merges them per client)."""
    t = TopicTrie()
    for f in ("a/b", "a/+", "a/#", "#", "+/b", "+/+"):
        t.insert(f, "c", f)
    assert sorted(t.match("a/b")) == sorted(["a/b", "a/+", "a/#", "#", "+/b", "+/+"])
    assert sorted(t.match("a")) == ["#", "a/#"]


def test_dollar_topics_and_wildcards_in_first_level() -> None:
    """[MQTT-4.7.2-1]: "#" and "+" at the first level do not match $-topics, "$SYS/#" does."""
    t = TopicTrie()
    for f in ("#", "+/x", "+", "$SYS/#", "$SYS/+", "+/#"):
        t.insert(f, "c", f)
    assert sorted(t.match("$SYS/x")) == ["$SYS/#", "$SYS/+"]
    assert sorted(t.match("$SYS")) == ["$SYS/#"]
    assert sorted(t.match("a/x")) == ["#", "+/#", "+/x"]
    assert sorted(t.match("SYS")) == ["#", "+", "+/#"]


def test_empty_levels() -> None:
    """Zero-length levels are levels: "a//b", "/a" and "a/" are distinct topics (4.7.1.1)."""
    t = TopicTrie()
    for f in ("a//b", "/a", "a/", "a/+/b", "+/a", "a/+", "/#", "+/+"):
        t.insert(f, "c", f)
    assert sorted(t.match("a//b")) == sorted(["a//b", "a/+/b"])
    assert sorted(t.match("/a")) == ["+/+", "+/a", "/#", "/a"]
    assert sorted(t.match("a/")) == ["+/+", "a/", "a/+"]
    assert sorted(t.match("/")) == ["+/+", "/#"]
    assert t.match("a") == []


def test_hash_matches_parent_level() -> None:
    """ "sport/#" matches "sport" itself (4.7.1.2), and "#" under "+" does the same."""
    t = TopicTrie()
    t.insert("sport/#", "c", 1)
    t.insert("+/tennis/#", "c", 2)
    assert t.match("sport") == [1]
    assert sorted(t.match("sport/tennis")) == [1, 2]
    assert sorted(t.match("x/tennis")) == [2]
    assert t.match("x/tennisx") == []


def test_pruning_after_removals() -> None:
    """After every filter is removed the count is 0, nothing matches and no filter is left;
    filters added again work as new (the pruned branches are rebuilt)."""
    filters = ["a/b/c", "a/b", "a/+/c", "a/#", "#", "+", "+/+/+", "/x", "x/", "a//b", "$SYS/#"]
    keys = ["k1", "k2", ("$share", "g")]
    t = TopicTrie()
    for f in filters:
        for k in keys:
            t.insert(f, k, (f, k))
    assert len(t) == len(filters) * len(keys)
    for i, f in enumerate(filters):
        for k in keys:
            assert t.remove(f, k) == (f, k)
        for g in filters[i + 1 :]:  # the others still match
            if "+" not in g and "#" not in g:
                assert (g, "k1") in t.match(g)
    assert len(t) == 0 and t.filters() == []
    for topic in ("a/b/c", "a", "x", "$SYS/x", "/x"):
        assert t.match(topic) == []
    assert t.insert("a/b/c", "k1", "again") is True
    assert t.match("a/b/c") == ["again"] and len(t) == 1


def test_removing_a_leaf_keeps_the_inner_filter() -> None:
    """Pruning stops at a node that still holds a value or children: removing "a/b/c" keeps
    "a/b" and "a/+/d"; removing "a/b" keeps "a/b/c"."""
    t = TopicTrie()
    t.insert("a/b", "k", 1)
    t.insert("a/b/c", "k", 2)
    t.insert("a/+/d", "k", 3)
    assert t.remove("a/b/c", "k") == 2
    assert t.match("a/b") == [1] and t.match("a/x/d") == [3] and t.match("a/b/c") == []
    t.insert("a/b/c", "k", 2)
    assert t.remove("a/b", "k") == 1
    assert t.match("a/b/c") == [2] and t.match("a/b") == []
    assert t.get("a/b", "k") is None


def test_filters_lists_everything() -> None:
    """filters() returns every (filter, key, value), wildcards included."""
    t = TopicTrie()
    entries = {("a/b", "k1", 1), ("a/+", "k1", 2), ("#", "k2", 3), ("/", "k3", 4), ("a/#", "k3", 5)}
    for f, k, v in entries:
        t.insert(f, k, v)
    assert set(t.filters()) == entries


def test_many_filters() -> None:
    """A trie with thousands of filters matches the same as brute force on a sample."""
    t = TopicTrie()
    filters = []
    for i in range(60):
        for j in range(60):
            f = (
                [f"d{i}", "+", f"m{j}"]
                if j % 3 == 0
                else [f"d{i}", f"s{j}", "#" if j % 2 else f"m{j}"]
            )
            filters.append("/".join(f))
    for n, f in enumerate(filters):
        t.insert(f, n, f)
    assert len(t) == len(filters)
    for topic in ("d1/s4/m4", "d7/x/m3", "d59/s59/anything/else", "d0/s1", "nothing"):
        expected = sorted(f for f in filters if topic_matches(f, topic))
        assert sorted(t.match(topic)) == expected


# ----------------------------------------------------------------------------------------------
# Model test: TopicTrie against brute-force topic_matches

LEVELS = ["a", "b", "", "$x", "$SYS"]
name_levels = st.sampled_from([*LEVELS, "c"])
filter_levels = st.sampled_from([*LEVELS, "+"])


@st.composite
def topic_filters(draw: st.DrawFn) -> str:
    """Random valid filters over a small alphabet (so that they overlap), "#" only last."""
    levels = draw(st.lists(filter_levels, min_size=1, max_size=4))
    if draw(st.booleans()):
        levels = [*levels[: draw(st.integers(0, len(levels)))], "#"]
    return "/".join(levels) or "+"  # a lone empty level is not a filter [MQTT-4.7.3-1]


topic_names = st.lists(name_levels, min_size=1, max_size=5).map("/".join).filter(bool)
operations = st.lists(
    st.tuples(
        st.sampled_from(["insert", "remove"]), topic_filters(), st.sampled_from(["k1", "k2", "k3"])
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(ops=operations, topics=st.lists(topic_names, min_size=1, max_size=12))
def test_trie_matches_brute_force_model(ops: list[tuple[str, str, str]], topics: list[str]) -> None:
    """After any sequence of inserts and removes, match(topic) returns exactly the values of
    the stored filters for which topic_matches(filter, topic) holds; get/count agree too."""
    trie = TopicTrie()
    model: dict[tuple[str, str], object] = {}
    for n, (op, f, key) in enumerate(ops):
        assert valid_topic_filter(f)
        if op == "insert":
            assert trie.insert(f, key, (f, key, n)) is ((f, key) not in model)
            model[(f, key)] = (f, key, n)
        else:
            assert trie.remove(f, key) == model.pop((f, key), None)
        assert len(trie) == len(model)
    for (f, key), value in model.items():
        assert trie.get(f, key) == value
    for topic in topics:
        expected = sorted(v for (f, _), v in model.items() if topic_matches(f, topic))
        assert sorted(trie.match(topic)) == expected
    for f, key in list(model):
        trie.remove(f, key)
    assert len(trie) == 0
    assert all(trie.match(topic) == [] for topic in topics)
