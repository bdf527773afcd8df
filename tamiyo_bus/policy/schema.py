"""The fixed shape of Tamiyo's typed graph: node types and relations.

Everything that must agree between the graph builder, the fast policy, the PyG
reference and a checkpoint hangs off this one module, so that the order of node
types and relations is defined exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

GLOBAL = "global"
SEED = "seed"
LAYER = "layer"
BLUEPRINT = "blueprint"
ACTIVATION = "activation"
PARAMETER = "parameter"

# Node types in the order their rows are stacked in every node-major tensor.
NODE_TYPES: tuple[str, ...] = (GLOBAL, SEED, LAYER, BLUEPRINT, ACTIVATION, PARAMETER)


@dataclass(frozen=True, slots=True)
class Relation:
    """A typed edge set ``src --name--> dst``.

    ``complete`` relations connect every source node to every destination node (the
    global star, blueprint fit, parameter budget): every destination aggregates the
    same set, which the fast policy exploits by computing that aggregate once.
    """

    src: str
    name: str
    dst: str
    complete: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        """The PyG edge type of this relation."""
        return (self.src, self.name, self.dst)


RELATIONS: tuple[Relation, ...] = (
    Relation(GLOBAL, "oversees", SEED, complete=True),
    Relation(SEED, "reports_to", GLOBAL, complete=True),
    Relation(GLOBAL, "oversees", LAYER, complete=True),
    Relation(LAYER, "reports_to", GLOBAL, complete=True),
    Relation(GLOBAL, "offers", BLUEPRINT, complete=True),
    Relation(BLUEPRINT, "offered_to", GLOBAL, complete=True),
    Relation(SEED, "peers", SEED),
    Relation(SEED, "monitors", LAYER),
    Relation(LAYER, "monitored_by", SEED),
    Relation(LAYER, "feeds", LAYER),
    Relation(LAYER, "produces", ACTIVATION),
    Relation(ACTIVATION, "produced_by", LAYER),
    Relation(ACTIVATION, "uses", PARAMETER),
    Relation(PARAMETER, "used_by", ACTIVATION),
    Relation(SEED, "may_adapt", PARAMETER),
    Relation(PARAMETER, "adaptable_by", SEED),
    Relation(BLUEPRINT, "fits", LAYER, complete=True),
    Relation(LAYER, "fitted_by", BLUEPRINT, complete=True),
    Relation(PARAMETER, "budgets", BLUEPRINT, complete=True),
    Relation(SEED, "grown_from", BLUEPRINT),
    Relation(BLUEPRINT, "grows", SEED),
)

RELATION_INDEX: dict[tuple[str, str, str], int] = {r.key: i for i, r in enumerate(RELATIONS)}


def incoming(node_type: str) -> tuple[int, ...]:
    """Indices of the relations whose destination is ``node_type``, in schema order."""
    return tuple(i for i, r in enumerate(RELATIONS) if r.dst == node_type)


def outgoing(node_type: str) -> tuple[int, ...]:
    """Indices of the relations whose source is ``node_type``, in schema order."""
    return tuple(i for i, r in enumerate(RELATIONS) if r.src == node_type)
