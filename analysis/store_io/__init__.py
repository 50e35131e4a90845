"""Reading the store and writing outputs safely.

``load`` (open a store, the done shadows, lazy phi / loss / correctness), ``passes`` (the single
read of a store's logits and every per-sample sum of it), ``spill`` (scores kept on local disk
between attacks and tables), ``atomic`` and ``figures`` (atomic writes of files and figures),
``distributed`` (a dask distributed client), ``numfmt`` (the one number format of every text a
person reads, Markdown and terminal tables).
"""
