"""Closure graph -> ordered list of layer plans. Pure: no I/O, no nix, no clock, no globals.

A *graph* maps each store path to the store paths it references (``Closure.graph``). Nix lists
self-references; they carry no information for layering and are dropped. Every reference must be
a key of the graph (a closure is closed under references) and the graph must be acyclic (Nix
never registers a reference cycle); anything else is a :class:`UsageError`.

``max_layers`` counts every layer of the image, including the customisation layer that the
caller adds on top, so at most ``max_layers - 1`` store layers are planned (nixpkgs counts the
same way, which keeps ``--max-layers`` meaning what its users know).

Strategies (:data:`STRATEGIES`):

``popularity``
    nixpkgs' popularity contest, exactly as ``referencesByPopularity`` (closure-graph.py) and
    ``streamLayeredImage`` computed it until late 2024: same scores, same tie-break, same
    one-path-per-layer split with a final catch-all layer. Kept so that images built by ociforge
    share layers with (and look like) what those users already have.
``auto`` (the default)
    nixpkgs' "auto-layer" (its default since PR #355189): the largest paths each anchor a layer
    with the dependencies only they use; dependencies shared by several anchors are grouped by
    the set of anchors using them. Layers then survive small changes elsewhere in the closure.

Determinism checklist: the output depends only on the graph's content (and ``sizes``), never on
dict or set iteration order; every tie is broken by a total order on store path strings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from ociforge.errors import UsageError

logger = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = ("popularity", "auto")

# Dependency graph after validation: path -> sorted, deduplicated references without self.
_Refs = dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class LayerPlan:
    """The store paths of one layer, in the order they go into the layer's tar.

    ``description`` is a short human text for the image history comment (it has no effect on
    the layer's bytes).
    """

    paths: tuple[str, ...]
    description: str = ""


def plan_layers(
    graph: Mapping[str, Sequence[str]],
    *,
    strategy: str = "auto",
    max_layers: int = 100,
    sizes: Mapping[str, int] | None = None,
) -> list[LayerPlan]:
    """Group every store path of ``graph`` into at most ``max_layers - 1`` non-empty layers.

    ``sizes`` (store path -> narSize) is required by ``auto``, ignored by ``popularity``.
    Each path appears in exactly one plan.
    """
    if max_layers < 2:
        raise UsageError(
            f"--max-layers must be at least 2 (one store layer plus the customisation layer),"
            f" got {max_layers}"
        )
    if strategy not in STRATEGIES:
        raise UsageError(
            f"unknown layering strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}"
        )
    refs = _normalise(graph)
    budget = max_layers - 1
    if strategy == "popularity":
        plans = _split_by_popularity(_popularity_order(refs), budget)
    else:
        plans = _auto_layers(refs, _checked_sizes(refs, sizes), budget)
    logger.debug("%s: %d store paths in %d layers", strategy, len(refs), len(plans))
    return plans


# --- graph validation and reachability ---------------------------------------------------------


def _normalise(graph: Mapping[str, Sequence[str]]) -> _Refs:
    """Validated copy of ``graph``: keys sorted, references sorted, unique, without self."""
    refs: _Refs = {}
    for path in sorted(graph):
        own = sorted({ref for ref in graph[path] if ref != path})
        for ref in own:
            if ref not in graph:
                raise UsageError(
                    f"store path {path} references {ref}, which is missing from the closure"
                    " graph; pass the full closure (nix path-info --recursive)"
                )
        refs[path] = tuple(own)
    return refs


def _topological_order(refs: _Refs) -> list[str]:
    """Every path before the paths it references (users first, roots at the start).

    Which valid order comes out does not matter: everything computed from it (walk counts,
    reachability) is the same for every topological order. A cycle is refused, because nixpkgs'
    recursion would never end on one and Nix itself never produces one.
    """
    users = dict.fromkeys(refs, 0)
    for own in refs.values():
        for ref in own:
            users[ref] += 1
    ready = [path for path, count in users.items() if count == 0]
    order: list[str] = []
    while ready:
        path = ready.pop()
        order.append(path)
        for ref in refs[path]:
            users[ref] -= 1
            if users[ref] == 0:
                ready.append(ref)
    if len(order) != len(refs):
        stuck = min(path for path, count in users.items() if count > 0)
        raise UsageError(
            f"store paths reference each other in a cycle ({stuck} is on or below it);"
            " not a Nix closure"
        )
    return order


def _ancestor_bits(order: list[str], refs: _Refs, bit: Mapping[str, int]) -> dict[str, int]:
    """path -> bitset of the paths that reach it (itself included), in one topological pass."""
    above = {path: bit[path] for path in order}
    for path in order:
        for ref in refs[path]:
            above[ref] |= above[path]
    return above


def _descendant_bits(order: list[str], refs: _Refs, bit: Mapping[str, int]) -> dict[str, int]:
    """path -> bitset of the paths it reaches (itself included): its closure."""
    below: dict[str, int] = {}
    for path in reversed(order):
        mask = bit[path]
        for ref in refs[path]:
            mask |= below[ref]
        below[path] = mask
    return below


def _iter_bits(mask: int) -> Iterator[int]:
    """Indices of the set bits of ``mask``, lowest first.

    Reading the binary string once is linear; peeling off the lowest bit would copy the big
    integer once per set bit.
    """
    digits = bin(mask)[:1:-1]  # lowest bit first, without the "0b" prefix
    i = digits.find("1")
    while i >= 0:
        yield i
        i = digits.find("1", i + 1)


# --- popularity (nixpkgs closure-graph.py + streamLayeredImage) --------------------------------


def popularity_scores(graph: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """nixpkgs' popularity of every path (a chain A->B->C->D scores 1, 2, 3, 4).

    closure-graph.py unfolds the DAG into a tree from every root (path no other path references),
    then merges counters bottom-up, adding 1 per level. Worked out, that is:

        popularity(p) = sum over every path x that reaches p (p included) of walks(x)

    where walks(x) is the number of distinct routes from any root down to x. Both factors are
    computed once per node in topological order, the ancestor sets as bitsets, instead of
    nixpkgs' per-node dictionaries of all descendants kept in module-global caches.
    """
    return _popularity_scores(_normalise(graph))


def _popularity_scores(refs: _Refs) -> dict[str, int]:
    order = _topological_order(refs)
    bit = {path: 1 << i for i, path in enumerate(order)}
    walks = _root_walk_counts(order, refs)
    above = _ancestor_bits(order, refs, bit)
    scores = _sums_over_sets([walks[p] for p in order], [above[p] for p in order])
    return dict(zip(order, scores, strict=True))


def _sums_over_sets(values: list[int], sets: list[int]) -> list[int]:
    """For each bitset in ``sets``: the sum of ``values[i]`` over its set bits.

    Real closures are wide and shallow (walk counts of a few dozen bits): summing one bit plane
    of the values at a time is then a handful of popcounts per path. A deep, dense graph has huge
    walk counts and many planes; adding the values one by one is cheaper there. Both give the
    same exact integers.
    """
    width = max((value.bit_length() for value in values), default=0)
    if width * len(sets) <= sum(mask.bit_count() for mask in sets):
        planes = _bit_planes(values, width)
        return [
            sum((mask & plane).bit_count() << k for k, plane in enumerate(planes)) for mask in sets
        ]
    return [sum(values[i] for i in _iter_bits(mask)) for mask in sets]


def _root_walk_counts(order: list[str], refs: _Refs) -> dict[str, int]:
    """path -> number of distinct routes from any root to it (1 for a root)."""
    walks = dict.fromkeys(order, 0)
    for path in order:
        if walks[path] == 0:  # nobody above it: a root (users always come first in ``order``)
            walks[path] = 1
        for ref in refs[path]:
            walks[ref] += walks[path]
    return walks


def _bit_planes(values: list[int], width: int) -> list[int]:
    """planes[k] has bit i set iff values[i] has bit k set (k < width)."""
    planes = [0] * width
    for i, value in enumerate(values):
        for k in _iter_bits(value):
            planes[k] |= 1 << i
    return planes


def package_name_key(path: str) -> str:
    """nixpkgs' tie-break key: ``/nix/store/HASH-name-1.0`` -> ``name-1.0-/nix/store/HASH``.

    Equal popularity sorts by name first, and the hash at the end keeps the order total.
    """
    head, sep, tail = path.partition("-")
    return f"{tail}-{head}" if sep else path


def popularity_order(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """Every path, most popular first; ties ascending by :func:`package_name_key`.

    This is the list closure-graph.py prints (``referencesByPopularity``).
    """
    return _popularity_order(_normalise(graph))


def _popularity_order(refs: _Refs) -> list[str]:
    scores = _popularity_scores(refs)
    return sorted(refs, key=lambda path: (-scores[path], package_name_key(path)))


def _split_by_popularity(order: list[str], budget: int) -> list[LayerPlan]:
    """streamLayeredImage's split: the first ``budget - 1`` paths get a layer each, the rest
    share one final catch-all layer (in popularity order); no empty layer."""
    plans = [LayerPlan((path,), _display_name(path)) for path in order[: budget - 1]]
    rest = tuple(order[budget - 1 :])
    if rest:
        many = f"{len(rest)} less popular store paths"
        plans.append(LayerPlan(rest, _display_name(rest[0]) if len(rest) == 1 else many))
    return plans


def _display_name(path: str) -> str:
    """``hello-2.12`` of ``/nix/store/<hash>-hello-2.12``."""
    base = path.rsplit("/", 1)[-1]
    return base.partition("-")[2] or base


# --- auto (nixpkgs auto-layer.py) --------------------------------------------------------------


def _checked_sizes(refs: _Refs, sizes: Mapping[str, int] | None) -> dict[str, int]:
    """narSize of every path of the graph; ``auto`` cannot rank paths without them."""
    if sizes is None:
        raise UsageError("the 'auto' layering strategy needs the narSize of every store path")
    checked: dict[str, int] = {}
    for path in refs:
        size = sizes.get(path)
        if size is None or size < 0:
            raise UsageError(f"no valid narSize for store path {path} (got {size!r})")
        checked[path] = size
    return checked


def _auto_layers(refs: _Refs, sizes: Mapping[str, int], budget: int) -> list[LayerPlan]:
    """auto-layer: assign layer ids, group paths by id, order layers by closure size."""
    order = _topological_order(refs)
    paths = sorted(refs)
    index = {path: i for i, path in enumerate(paths)}
    bit = {path: 1 << i for i, path in enumerate(paths)}
    below = _descendant_bits(order, refs, bit)
    above = _ancestor_bits(order, refs, bit)
    # nixpkgs pops the largest narSize from a list sorted by path; equal sizes: larger path first.
    primaries = sorted(paths, key=lambda path: (sizes[path], path), reverse=True)
    ids = _assign_layer_ids(
        [index[p] for p in primaries],
        [below[p] & ~bit[p] for p in paths],
        [above[p] & ~bit[p] for p in paths],
        budget,
    )
    groups: dict[int, list[str]] = {}
    for path in paths:
        groups.setdefault(ids[index[path]], []).append(path)
    return _order_auto_layers(groups, paths, sizes, below)


def _assign_layer_ids(
    primaries: list[int], deps: list[int], users: list[int], budget: int
) -> list[int]:
    """Layer id (bitset of primary paths) of every path, indexed like ``deps``.

    A path's id is the set of the nearest primaries that reach it: id {P} = P and what only P
    uses; id {P, Q} = what P and Q share; id {} = what no primary reaches. Primaries are added
    largest first until one more would need more than ``budget`` distinct ids; that last split is
    discarded, exactly like nixpkgs (it stops at the first overflow, it does not look further).
    """
    ids = [0] * len(deps)
    sizes = {0: len(deps)}  # layer id -> number of paths holding it; len() = layer count
    for p in primaries:
        changes = {p: 1 << p}
        for d in _iter_bits(deps[p]):
            # Primaries that use p reach d only through p: p replaces them. If a primary that p
            # itself uses already claims d, that one is nearer and p is not added.
            nearest = ids[d] & ~users[p]
            if not nearest & deps[p]:
                nearest |= 1 << p
            if nearest != ids[d]:
                changes[d] = nearest
        undo = _relabel(ids, sizes, changes)
        if len(sizes) > budget:
            _relabel(ids, sizes, undo)
            break
    return ids


def _relabel(ids: list[int], sizes: dict[int, int], changes: Mapping[int, int]) -> dict[int, int]:
    """Apply ``changes`` (index -> new id), keeping ``sizes`` in step; return the inverse.

    In place, because copying every id per primary costs paths² big-integer hashes.
    """
    undo: dict[int, int] = {}
    for i, new in changes.items():
        old = undo[i] = ids[i]
        sizes[old] -= 1
        if not sizes[old]:
            del sizes[old]
        sizes[new] = sizes.get(new, 0) + 1
        ids[i] = new
    return undo


def _order_auto_layers(
    groups: Mapping[int, list[str]],
    paths: list[str],
    sizes: Mapping[str, int],
    below: Mapping[str, int],
) -> list[LayerPlan]:
    """Layers ascending by the narSize of their closure, so a layer follows its dependencies.

    Paths in a layer are sorted by (name, hash) like auto-layer.py; equal closure sizes (where
    nixpkgs' order depends on set iteration) fall back to the sorted path lists.
    """
    keyed = []
    for layer_id, members in groups.items():
        closure = 0
        for path in members:
            closure |= below[path]
        closure_size = sum(sizes[paths[i]] for i in _iter_bits(closure))
        members_sorted = tuple(sorted(members, key=_name_hash_key))
        keyed.append((closure_size, members_sorted, layer_id))
    keyed.sort(key=lambda item: (item[0], [_name_hash_key(p) for p in item[1]]))
    return [
        LayerPlan(members, _auto_description(layer_id, members, paths))
        for _, members, layer_id in keyed
    ]


def _name_hash_key(path: str) -> tuple[str, str, str]:
    """auto-layer.py's in-layer order: ``/nix/store/HASH-name`` -> ``(name, HASH, path)``.

    Split on the base name, so a store directory with a dash in it cannot shift the split.
    """
    digest, _, name = path.rsplit("/", 1)[-1].partition("-")
    return name, digest, path


def _auto_description(layer_id: int, members: tuple[str, ...], paths: list[str]) -> str:
    """One line saying why these paths share a layer."""
    anchors = sorted((paths[i] for i in _iter_bits(layer_id)), key=_name_hash_key)
    names = [_display_name(p) for p in anchors]
    if not names:
        return f"{_count(len(members), 'store path')} outside the closures of the larger paths"
    if len(names) == 1:
        extra = len(members) - 1
        return names[0] + (f" and {_count(extra, 'dependency')} only it uses" if extra else "")
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"{_count(len(members), 'store path')} shared by {shown}"


def _count(number: int, noun: str) -> str:
    """``1 store path``, ``2 store paths``, ``2 dependencies``."""
    if number == 1:
        return f"1 {noun}"
    return f"{number} {noun[:-1]}ies" if noun.endswith("y") else f"{number} {noun}s"
