"""The DomainFocus engine: what train.py, restore.py, prepare.py and bench.py are built from.

One subject per module; none of them imports an entry script, and they import one another
without cycles (tests/test_layout.py checks both). The README's "Files" section maps them.
"""
