"""The simulated cabinet: scenario files, shelf physics, traces and a scenario corpus.

* ``scenario``: ``freshbox-scenario/1`` files (``docs/scenario.md``);
* ``shelf``: load-cell physics of every channel, vectorised with numpy;
* ``simulator``: ``SimulatedCabinet``, a virtual-time stream or a live sensor source;
* ``trace``: ``freshbox-trace/1`` files (``docs/trace.md``);
* ``corpus``: random scenarios with their true bills, for tests and benchmarks.
"""
