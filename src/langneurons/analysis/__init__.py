"""Analysis over finished (or running) runs: the subcommands behind ``analyze.py``.

``cli`` turns ``analyze.py <subcommand> key=value ...`` into a composed config and calls the subcommand; each
subcommand lives in its own module and takes a plain dict.
"""
