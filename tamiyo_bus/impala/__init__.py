"""The IMPALA learner: V-trace over actors' rewarded segments, on the bus, under
torchrun (docs/learning.md, "The V-trace learner")."""
