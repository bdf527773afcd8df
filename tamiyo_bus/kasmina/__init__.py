"""Kasmina, the seed executor: seed slots on the host's layers, the seed lifecycle and
its gates, gradient isolation, alpha blending, verified command application and
per-step telemetry (`finalize_step`)."""
