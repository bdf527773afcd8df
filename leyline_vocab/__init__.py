"""The names every component agrees on, above Oona and below everything else.

Leyline's protobuf messages say how telemetry is shaped; this package says what it is
called: event kinds and the priority each travels at (``events``), breaker names and
their gauge values, sources, label keys and metric names (``telemetry``), and the
normalised schema the hub maps every point onto and Nissa reads (``schema``).
Producers, consumers and Tamiyo import it; it imports only Oona and the generated
bindings, so no component has to import another to speak its language.
"""
