"""``twoshot annotate``: a local web app to label a few frames per video and propagate them.

- :mod:`twoshot.annotate.storage`: the opened dataset, its masks and label budget on disk
  (versioned, atomic saves);
- :mod:`twoshot.annotate.jobs`: background propagation jobs (one thread per video);
- :mod:`twoshot.annotate.export`: dense masks in DAVIS layout, budget JSON, overlay videos;
- :mod:`twoshot.annotate.server`: the Starlette application and its JSON/binary endpoints;
- ``static/``: the page (plain HTML, JavaScript and canvas; no build step).
"""
