"""Tolaria, the reference trainer: a real PyTorch training loop that calls Tamiyo every
optimiser step and applies her commands through Kasmina."""
