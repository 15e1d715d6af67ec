"""The sections of `python bench.py`, one module per subject.

bench.py is the table that names the sections and runs them; each module here holds one subject's
sections, each a function of (options, folder): the parsed command line and a temporary folder
that lives for the whole run. common.py holds what several sections share (synthetic data, the
tiny model, a recipe run in its own process, markdown tables); recipes.py holds the three training
recipes themselves, run in that process. Nothing here is imported by train.py or the engine.
"""
