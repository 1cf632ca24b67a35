"""Dataset rows, read and validated the same way by ``ftplan check`` and by the runtime's data stage.

``reading`` streams the rows of local JSON Lines, JSON and CSV files with their line numbers; ``rows`` turns
one row of a declared dataset format into a canonical record or says, with a code and a hint, what is wrong
with it; ``scan`` walks a whole dataset (its first rows, or all of them) and sums up what it found. ``check``
calls them on the first rows (or every row) without torch; the runtime calls the very same functions on every
row before it tokenizes, so the two can never judge a row differently.
"""
