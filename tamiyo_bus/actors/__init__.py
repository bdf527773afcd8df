"""IMPALA's actors: processes that play the simulator with the policy they last
received over the bus and publish what they played for a V-trace learner
(docs/operations.md, "Running actors")."""
