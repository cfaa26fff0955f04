"""What a run is allowed to be: the config schemas and their checks, the trust rule for names read from files,
birnn's error type, the one-line error console, and which score judges a run and which way it is better
(``metrics.py``).

A new config key goes into ``config.py`` (its schema dataclass, with its default and comment) and, if it has a
range, into ``validate``. Imports nothing from birnn outside this package.
"""
