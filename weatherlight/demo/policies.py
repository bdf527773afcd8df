"""Who decides in a demo run (``--policy``).

- ``learned`` (the default): the policy shipped with the package, PPO trained on the
  simulator (tamiyo_bus.policy.default), with the feature statistics it was trained on;
- ``untrained``: a freshly initialised network (random weights, seeded);
- ``random``, ``heuristic``, ``none``: the hand-written baselines;
- a path: a policy checkpoint (``tamiyo-bus train --env sim`` writes one), with its
  statistics.

PPO trains the policy's action and value heads, not its risk head: for a trained policy
the risk gate does not count the risk head's estimate (its weight is 0; every other
signal still gates), and the statistics stay as trained (``normalizer_update`` off), so
the policy decides on the inputs it was evaluated on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tamiyo_bus import Baseline, baseline_policy, initial_policy
from tamiyo_bus.policy.default import default_policy_path, load_default_policy
from tamiyo_bus.policy.features import NormalizerSnapshot
from tamiyo_bus.policy.profiles import Profile, default_profile
from tamiyo_bus.policy.served import serve_checkpoint
from tamiyo_bus.security.policy_update import PolicyHolder
from weatherlight.demo.assembly import RunSpec

LEARNED = "learned"
UNTRAINED = "untrained"
NAMES = (LEARNED, UNTRAINED, *(b.value for b in Baseline))


@dataclass(frozen=True)
class PolicyChoice:
    holder: PolicyHolder
    normalizer: NormalizerSnapshot | None  # the statistics it was trained on, if any
    description: str  # for the summary: who decided
    trained: bool  # by PPO: its risk head untrained, its statistics fixed
    checkpoint: Path | None = None  # its file, for a learner that continues from it
    profile: Profile | None = None  # the network's size (None: not a network)

    def serve(self, spec: RunSpec) -> RunSpec:
        """``spec`` as this policy is served (module docstring)."""
        if not self.trained:
            return spec
        weights = replace(spec.risk.weights, policy_risk=0.0)
        return replace(spec, risk=replace(spec.risk, weights=weights), normalizer_update=False)


def choose_policy(name: str, device: torch.device, spec: RunSpec) -> PolicyChoice:
    """The policy ``name`` (one of NAMES, or a checkpoint's path) on ``device``;
    ValueError for a name that is neither, or a checkpoint that does not fit."""
    if name == LEARNED:
        default = load_default_policy(device)
        card = default.card
        ratio = card.get("control_bench", {}).get("ratio_learned_over_heuristic")
        running = default.holder.current()
        return PolicyChoice(
            default.holder,
            default.normalizer,
            f"the learned default {running.policy_id} v{running.version} (PPO on the "
            f"simulator, {ratio} of the heuristic's return on the control bench)",
            trained=True,
            checkpoint=default_policy_path(),
            profile=Profile(card["profile"]),
        )
    if name == UNTRAINED:
        profile = spec.profile or default_profile(device)
        holder = initial_policy(device, spec.seed, profile)
        return PolicyChoice(
            holder, None, "an untrained network (random weights)", False, profile=profile
        )
    if name in {b.value for b in Baseline}:
        return PolicyChoice(baseline_policy(Baseline(name)), None, f"the {name} baseline", False)
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"--policy {name}: neither one of {', '.join(NAMES)} nor a file")
    served = serve_checkpoint(path.read_bytes(), device)
    running = served.holder.current()
    return PolicyChoice(
        served.holder,
        served.normalizer,
        f"checkpoint {path} ({running.policy_id} v{running.version})",
        trained=True,
        checkpoint=path,
        profile=served.profile,
    )
