"""Tamiyo's learning side: the reward, PPO with GAE, V-trace, the replay, the trainer;
``guard`` puts every learning step behind the learning breaker and conservative mode
(docs/risk.md). Import the modules themselves: the step path uses ``reward`` without
loading the rest."""
