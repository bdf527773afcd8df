"""`tamiyo-bus train`: PPO training of Tamiyo's policy, its progress and its outputs."""
