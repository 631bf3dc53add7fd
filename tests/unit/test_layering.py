"""Layering strategies: hand-worked tiny graphs, and nixpkgs' own output on a generated closure.

The expected orders of the tiny graphs are worked out by hand in the comments next to them. The
fixtures under tests/fixtures/layering were produced by nixpkgs' closure-graph.py, the jq split of
streamLayeredImage and auto-layer.py (see the README there); ociforge must reproduce them exactly.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from ociforge.errors import UsageError
from ociforge.layering import (
    STRATEGIES,
    LayerPlan,
    package_name_key,
    plan_layers,
    popularity_order,
    popularity_scores,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "layering"
MB = 1_000_000

Graph = dict[str, list[str]]


def sp(name: str, digest: str = "0") -> str:
    """A store path whose hash is ``digest`` repeated to 32 characters."""
    return f"/nix/store/{(digest * 32)[:32]}-{name}"


def layers(plans: Sequence[LayerPlan]) -> list[list[str]]:
    return [list(plan.paths) for plan in plans]


def names(paths: Sequence[str]) -> list[str]:
    return [path.split("-", 1)[1] for path in paths]


def load_fixture_graph() -> tuple[Graph, dict[str, int]]:
    """The generated closure, read from exportReferencesGraph JSON (self-references included)."""
    nodes = json.loads((FIXTURES / "graph.json").read_text())["graph"]
    graph = {node["path"]: list(node["references"]) for node in nodes}
    sizes = {node["path"]: node["narSize"] for node in nodes}
    return graph, sizes


def renamed(graph: Mapping[str, Sequence[str]], old: str, new: str) -> Graph:
    """``graph`` with store path ``old`` replaced by ``new`` everywhere (a rebuilt package)."""
    swap = {old: new}
    return {swap.get(p, p): [swap.get(r, r) for r in refs] for p, refs in graph.items()}


# --- popularity: scores and order on hand-worked graphs -----------------------------------------

A, B, C, D, E, F, G = (sp(n) for n in "abcdefg")


def test_chain_scores_grow_with_depth_not_path_count() -> None:
    # One route reaches each node, yet nixpkgs adds 1 per level: 1, 2, 3, 4.
    graph = {A: [B], B: [C], C: [D], D: []}
    assert popularity_scores(graph) == {A: 1, B: 2, C: 3, D: 4}
    assert popularity_order(graph) == [D, C, B, A]


def test_closure_graph_docstring_example() -> None:
    # The worked example at the top of nixpkgs' closure-graph.py: A-B-C-D-F, B-E, C-E, E-F, A-G.
    # Routes from the root: A1 B1 C1 D1 E2 F3 G1; F = A+B+C+D+E+F = 1+1+1+1+2+3 = 9.
    graph = {A: [B, G], B: [C, E], C: [D, E], D: [F], E: [F], F: [], G: []}
    assert popularity_scores(graph) == {A: 1, B: 2, C: 3, D: 4, E: 5, F: 9, G: 2}
    # B and G tie at 2: name order puts b before g.
    assert popularity_order(graph) == [F, E, D, C, B, G, A]


def test_diamond() -> None:
    # A->B->D, A->C->D: D is reached by two routes, D = A1 + B1 + C1 + D2 = 5.
    graph = {A: [B, C], B: [D], C: [D], D: []}
    assert popularity_scores(graph) == {A: 1, B: 2, C: 2, D: 5}
    assert popularity_order(graph) == [D, B, C, A]


def test_two_roots_sharing_a_dependency() -> None:
    # Roots A and B both use D; only A uses C. D = A1 + B1 + D2 = 4, C = A1 + C1 = 2.
    graph = {A: [C, D], B: [D], C: [], D: []}
    assert popularity_scores(graph) == {A: 1, B: 1, C: 2, D: 4}
    assert popularity_order(graph) == [D, C, A, B]


def test_ties_sort_by_nixpkgs_name_key_not_by_path() -> None:
    # All leaves of one root score 2. The key moves the hash to the end, so names decide first
    # (bash before zlib although its hash sorts last), then hashes (aaaa before bbbb). It is a
    # plain string compare of "name-HASH": "foo+bar-/nix..." sorts before "foo-/nix..." because
    # "+" < "-", which a (name, hash) tuple compare would get the other way round.
    leaves = [
        sp("zlib-1.3", "a"),
        sp("bash-5.2", "z"),
        sp("foo-1.0", "b"),
        sp("foo-1.0", "a"),
        sp("foo-1.0-lib"),
        sp("foo"),
        sp("foo+bar"),
    ]
    graph: Graph = {sp("app"): leaves, **{leaf: [] for leaf in leaves}}
    expected = [
        sp("bash-5.2", "z"),
        sp("foo+bar"),
        sp("foo"),
        sp("foo-1.0", "a"),
        sp("foo-1.0", "b"),
        sp("foo-1.0-lib"),
        sp("zlib-1.3", "a"),
        sp("app"),
    ]
    assert popularity_order(graph) == expected


def tree_merge_reference_scores(graph: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """closure-graph.py's definition, literally: unfold the DAG into a tree below every root;
    merging a child's counters into its parent adds 1 to each of them, and the child counts 1.
    (Memoised per node only to keep dense test graphs fast; no cleverness beyond that.)"""
    refs = {p: sorted(set(r) - {p}) for p, r in graph.items()}
    below: dict[str, Counter[str]] = {}

    def subtree(node: str) -> Counter[str]:
        if node not in below:
            counts: Counter[str] = Counter()
            for child in refs[node]:
                counts[child] += 1
                for path, count in subtree(child).items():
                    counts[path] += count + 1
            below[node] = counts
        return below[node]

    scores: Counter[str] = Counter()
    for root in (p for p in refs if all(p not in own for own in refs.values())):
        scores[root] += 1
        for path, count in subtree(root).items():
            scores[path] += count + 1
    return dict(scores)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("density", [0.15, 0.6])
def test_scores_equal_route_unfolding_on_random_dags(seed: int, density: float) -> None:
    # Sparse graphs have small route counts, dense ones huge counts; the two take different
    # summation paths in ociforge and must both give nixpkgs' exact integers.
    rng = random.Random(seed)
    paths = [sp(f"n{i:02d}", rng.choice("0123456789abcdfg")) for i in range(14)]
    graph = {p: [q for q in paths[i + 1 :] if rng.random() < density] for i, p in enumerate(paths)}
    assert popularity_scores(graph) == tree_merge_reference_scores(graph)


def test_package_name_key_moves_the_hash_to_the_end() -> None:
    assert package_name_key("/nix/store/abc-name-1.0") == "name-1.0-/nix/store/abc"
    assert package_name_key("/nix/store/nodash") == "/nix/store/nodash"


def test_self_and_duplicate_references_are_ignored() -> None:
    plain = {A: [B], B: [C], C: []}
    noisy = {A: [A, B, B], B: [B, C], C: [C]}
    assert popularity_scores(noisy) == popularity_scores(plain) == {A: 1, B: 2, C: 3}
    assert plan_layers(noisy, max_layers=3, strategy="popularity") == plan_layers(
        plain, max_layers=3, strategy="popularity"
    )


# --- popularity: the streamLayeredImage split ---------------------------------------------------

CHAIN5 = {sp(f"p{i}"): [sp(f"p{i + 1}")] if i < 5 else [] for i in range(1, 6)}
CHAIN5_ORDER = [sp(f"p{i}") for i in (5, 4, 3, 2, 1)]  # deepest is most popular


@pytest.mark.parametrize(
    ("max_layers", "expected"),
    [
        # 5 paths, n = max_layers - 1 store layers: n-1 singles, then the rest in one layer.
        (2, [CHAIN5_ORDER]),  # n=1: no singles, everything in the catch-all
        (5, [[p] for p in CHAIN5_ORDER[:3]] + [CHAIN5_ORDER[3:]]),  # n+1 paths: catch-all of 2
        (6, [[p] for p in CHAIN5_ORDER]),  # n paths: the catch-all holds just the last one
        (7, [[p] for p in CHAIN5_ORDER]),  # n-1 paths: no catch-all, no empty layer
        (100, [[p] for p in CHAIN5_ORDER]),
    ],
)
def test_popularity_split(max_layers: int, expected: list[list[str]]) -> None:
    plans = plan_layers(CHAIN5, max_layers=max_layers, strategy="popularity")
    assert layers(plans) == expected
    assert len(plans) <= max_layers - 1


def test_popularity_descriptions_name_the_path_or_count_the_catch_all() -> None:
    plans = plan_layers(CHAIN5, max_layers=4, strategy="popularity")
    assert [plan.description for plan in plans] == ["p5", "p4", "3 less popular store paths"]


def test_empty_graph_has_no_layers() -> None:
    assert plan_layers({}, strategy="popularity") == []
    assert plan_layers({}, strategy="auto", sizes={}) == []


# --- popularity: equal to nixpkgs on the generated closure ---------------------------------------


def test_popularity_order_equals_closure_graph_py() -> None:
    graph, _ = load_fixture_graph()
    expected = (FIXTURES / "popularity-order.txt").read_text().split()
    assert len(expected) == len(graph) == 200
    assert popularity_order(graph) == expected


@pytest.mark.parametrize("max_layers", [2, 3, 10, 100, 200, 201, 202])
def test_popularity_layers_equal_stream_layered_image(max_layers: int) -> None:
    graph, _ = load_fixture_graph()
    expected = json.loads((FIXTURES / f"popularity-{max_layers}.json").read_text())
    assert layers(plan_layers(graph, max_layers=max_layers, strategy="popularity")) == expected


# --- auto: hand-worked graphs --------------------------------------------------------------------

# app -> big, tool; big -> bigdep, libc; tool -> libc. Sizes rank big, tool, libc, bigdep, app.
APP, BIG, TOOL, LIBC, BIGDEP = (sp(n) for n in ("app", "big", "tool", "libc", "bigdep"))
SMALL = {APP: [BIG, TOOL], BIG: [BIGDEP, LIBC], TOOL: [LIBC], LIBC: [], BIGDEP: []}
SMALL_SIZES = {APP: 1, BIG: 500, TOOL: 100, LIBC: 50, BIGDEP: 5}


@pytest.mark.parametrize(
    ("max_layers", "expected"),
    [
        # Budget 1: primary "big" would make 2 layers, so nothing is split.
        (2, [[APP, BIG, BIGDEP, LIBC, TOOL]]),
        # Budget 2: "big" takes bigdep and libc (only it reaches them so far): {big}, {} (2).
        # Then "tool" would share libc with big: {}, {big}, {tool}, {big,tool} = 4 > 2: stop.
        # Closure sizes: big+bigdep+libc 555 < app's 656.
        (3, [[BIG, BIGDEP, LIBC], [APP, TOOL]]),
        # Budget 3: the same 4 > 3 stops it; nixpkgs never looks past the first overflow.
        (4, [[BIG, BIGDEP, LIBC], [APP, TOOL]]),
        # Budget 4: tool (4 layers), then libc becomes a primary (still 4: the shared layer is
        # just libc), then bigdep would make 5: stop. Ordered by closure size 50, 150, 555, 656.
        (5, [[LIBC], [TOOL], [BIG, BIGDEP], [APP]]),
        # Budget 5: every path is a primary, one layer each.
        (6, [[BIGDEP], [LIBC], [TOOL], [BIG], [APP]]),
    ],
)
def test_auto_small_graph(max_layers: int, expected: list[list[str]]) -> None:
    plans = plan_layers(SMALL, strategy="auto", max_layers=max_layers, sizes=SMALL_SIZES)
    assert layers(plans) == expected


def test_auto_dependencies_shared_by_two_large_paths_get_their_own_layer() -> None:
    # root -> a, b; a and b both use s1 and s2. Budget 4: a {a}+s1+s2, then b makes s1, s2
    # shared: {}, {a}, {b}, {a,b} = 4. Promoting s2 would give 5: stop.
    a, b, s1, s2, root = (sp(n) for n in ("a", "b", "s1", "s2", "root"))
    graph = {root: [a, b], a: [s1, s2], b: [s1, s2], s1: [], s2: []}
    sizes = {a: 300 * MB, b: 200 * MB, s1: 2, s2: 3, root: 1}
    plans = plan_layers(graph, strategy="auto", max_layers=5, sizes=sizes)
    assert layers(plans) == [[s1, s2], [b], [a], [root]]
    assert plans[0].description == "2 store paths shared by a, b"
    assert plans[3].description == "1 store path outside the closures of the larger paths"


def test_auto_keeps_a_dependency_with_the_nearest_large_path() -> None:
    # The app (50) uses a library larger than itself (100). The library's layer keeps libc; the
    # app, becoming a primary later, must not claim them as "shared with the app".
    app, lib, libc = sp("app"), sp("libbig"), sp("libc")
    graph = {app: [lib], lib: [libc], libc: []}
    plans = plan_layers(graph, strategy="auto", max_layers=3, sizes={app: 50, lib: 100, libc: 1})
    assert layers(plans) == [[lib, libc], [app]]
    assert [plan.description for plan in plans] == ["libbig and 1 dependency only it uses", "app"]


def test_auto_sorts_paths_in_a_layer_by_name_then_hash() -> None:
    # Budget 1 keeps everything together, in (name, hash) order rather than path order.
    paths = [sp("zlib", "a"), sp("bash", "z"), sp("bash", "b")]
    graph: Graph = {path: [] for path in paths}
    plans = plan_layers(graph, strategy="auto", max_layers=2, sizes=dict.fromkeys(paths, 1))
    assert layers(plans) == [[sp("bash", "b"), sp("bash", "z"), sp("zlib", "a")]]


# --- auto: equal to nixpkgs' auto-layer.py, and invariants on the generated closure ---------------


@pytest.mark.parametrize("max_layers", [2, 3, 10, 30, 100, 202])
def test_auto_layers_equal_auto_layer_py(max_layers: int) -> None:
    graph, sizes = load_fixture_graph()
    expected = json.loads((FIXTURES / f"auto-{max_layers}.json").read_text())
    assert layers(plan_layers(graph, strategy="auto", max_layers=max_layers, sizes=sizes)) == (
        expected
    )


@pytest.mark.parametrize("max_layers", [2, 5, 17, 64, 100, 300])
def test_auto_covers_every_path_once_within_budget(max_layers: int) -> None:
    graph, sizes = load_fixture_graph()
    plans = plan_layers(graph, strategy="auto", max_layers=max_layers, sizes=sizes)
    every = [path for plan in plans for path in plan.paths]
    assert sorted(every) == sorted(graph)
    assert 1 <= len(plans) <= max_layers - 1
    assert all(plan.paths for plan in plans)


def test_auto_gives_each_path_over_100_mb_its_own_layer() -> None:
    graph, sizes = load_fixture_graph()
    huge = {path for path, size in sizes.items() if size > 100 * MB}
    assert len(huge) == 4
    for plan in plan_layers(graph, strategy="auto", max_layers=10, sizes=sizes):
        in_layer = huge.intersection(plan.paths)
        assert len(in_layer) <= 1
        if in_layer:  # it anchors the layer: the largest path there, named in the description
            (anchor,) = in_layer
            assert max(plan.paths, key=sizes.__getitem__) == anchor
            assert plan.description.startswith(anchor.split("-", 1)[1])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_output_does_not_depend_on_dict_or_list_order(strategy: str) -> None:
    graph, sizes = load_fixture_graph()
    rng = random.Random(7)
    items = list(graph.items())
    rng.shuffle(items)
    shuffled = {path: rng.sample(refs, len(refs)) for path, refs in items}
    shuffled_sizes = dict(reversed(list(sizes.items())))
    for max_layers in (10, 100):
        first = plan_layers(graph, strategy=strategy, max_layers=max_layers, sizes=sizes)
        again = plan_layers(
            shuffled, strategy=strategy, max_layers=max_layers, sizes=shuffled_sizes
        )
        assert first == again


def test_auto_rebuilding_a_leaf_changes_only_the_layer_holding_it() -> None:
    # Layer stability is the point of auto: a rebuilt leaf (new hash, same size) must leave every
    # other layer byte-identical, i.e. with the same paths in the same order.
    graph, sizes = load_fixture_graph()
    leaves = sorted(path for path, refs in graph.items() if set(refs) <= {path})
    assert len(leaves) == 20
    before = plan_layers(graph, strategy="auto", max_layers=30, sizes=sizes)
    for leaf in leaves:
        new = sp(leaf.split("-", 1)[1], "w")
        new_sizes = {(new if p == leaf else p): size for p, size in sizes.items()}
        after = plan_layers(
            renamed(graph, leaf, new), strategy="auto", max_layers=30, sizes=new_sizes
        )
        assert len(after) == len(before)
        for old_plan, new_plan in zip(before, after, strict=True):
            if leaf in old_plan.paths:
                assert sorted(new_plan.paths) == sorted(
                    new if p == leaf else p for p in old_plan.paths
                )
            else:
                assert new_plan.paths == old_plan.paths


def test_app_update_reships_far_fewer_bytes_with_auto_than_with_popularity() -> None:
    # The image's own root changes on every CI build. Popularity puts it in the catch-all with
    # over a gigabyte of rarely changing paths; auto confines the change to a small layer.
    graph, sizes = load_fixture_graph()
    root = sp("mailcap-7.0.7-bin", "kfaj5n18vfp5y4hw73j0j9vms7s68kkf")
    assert root in graph
    new = sp("mailcap-7.0.7-bin", "w")
    new_graph = renamed(graph, root, new)
    new_sizes = {(new if p == root else p): s for p, s in sizes.items()} | {new: sizes[root] + 999}

    def reshipped(strategy: str) -> int:
        old = {plan.paths for plan in plan_layers(graph, strategy=strategy, sizes=sizes)}
        plans = plan_layers(new_graph, strategy=strategy, sizes=new_sizes)
        changed = [plan for plan in plans if plan.paths not in old]
        assert len(changed) == 1 and new in changed[0].paths
        return sum(new_sizes[path] for path in changed[0].paths)

    assert reshipped("popularity") > 1000 * MB
    assert reshipped("auto") < 20 * MB


# --- input errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("max_layers", [1, 0, -5])
def test_max_layers_below_two_is_refused_naming_the_option(max_layers: int) -> None:
    with pytest.raises(UsageError, match="--max-layers"):
        plan_layers(CHAIN5, max_layers=max_layers)


def test_unknown_strategy_lists_the_valid_ones() -> None:
    with pytest.raises(UsageError, match=r"'size'.*popularity, auto"):
        plan_layers(CHAIN5, strategy="size")


def test_reference_missing_from_graph_is_refused() -> None:
    with pytest.raises(UsageError, match=f"{A} references {B}, which is missing"):
        plan_layers({A: [B]}, strategy="popularity")
    with pytest.raises(UsageError, match="missing"):
        popularity_order({A: [A, C]})


def test_reference_cycle_is_refused() -> None:
    with pytest.raises(UsageError, match="cycle"):
        plan_layers({A: [B], B: [C], C: [B]}, strategy="popularity")


def test_auto_needs_sizes_for_every_path() -> None:
    with pytest.raises(UsageError, match="narSize"):
        plan_layers(SMALL, strategy="auto")
    with pytest.raises(UsageError, match=f"narSize for store path {APP}"):
        plan_layers(SMALL, strategy="auto", sizes={p: 1 for p in SMALL if p != APP})


def test_the_default_strategy_is_auto() -> None:
    """auto by default: with popularity a leaf bump changes the catch-all layer, which holds
    most of a real closure's bytes (nixpkgs made auto-layer streamLayeredImage's default)."""
    default = plan_layers(SMALL, max_layers=4, sizes=SMALL_SIZES)
    assert default == plan_layers(SMALL, strategy="auto", max_layers=4, sizes=SMALL_SIZES)
