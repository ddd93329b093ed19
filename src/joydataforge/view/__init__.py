"""``joyforge view``: a local web app over a run folder or a data file, with human review.

- :mod:`.dataset` finds what to show (run folder files, the eval report, the review sidecar, the cache);
- :mod:`.build` indexes it once, streaming, in a worker thread (SQLite beside the data, keyed by the
  files' sizes and times); :mod:`.index` reads pages from that index and records by byte offset;
- :mod:`.fields` and :mod:`.query` make any field a filter; :mod:`.shapes` and :mod:`.panels` explain
  each kind of record (DPO pairs, votes, Evol trees, rewrites, Magpie samples, dedup clusters, failures);
- :mod:`.review` keeps accept / reject / edit / note in an append-only sidecar, never in the data, and
  applies it for ``joyforge export --reviewed``;
- :mod:`.server` serves the API and the page (``static/``: plain HTML, CSS and script) on 127.0.0.1.
"""
