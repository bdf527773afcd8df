"""Urza, the blueprint library: what seeds can be grown from, and how risky each is.

A blueprint is metadata Tamiyo gates on (tier, parameter count, risk, quarantine,
which layer kinds it fits, which parameters a command may set) plus a constructor spec
that Kasmina builds into a real adapter module. The store is SQLite, so the library
outlives a run and can be edited from the CLI while runs read it.
"""
