"""``twoshot annotate``: a local web app to label a few frames per video and propagate them.

- :mod:`twoshot.annotate.storage`: the opened dataset, its masks and label budget on disk
  (versioned, atomic saves); :mod:`twoshot.annotate.files`: its video listing and the
  sidecar JSONs (object names and colours, suggested frames);
- :mod:`twoshot.annotate.jobs`: background propagation jobs (one thread per video);
- :mod:`twoshot.annotate.clicks`: click-to-segment with a SAM 2 checkpoint (cached frame
  features, the model's prompt path :mod:`twoshot.model.sam2.prompt`);
- :mod:`twoshot.annotate.export`: dense masks in DAVIS layout, budget JSON, overlay videos;
- :mod:`twoshot.annotate.server`: the Starlette application and its JSON/binary endpoints;
- :mod:`twoshot.annotate.security`: refusing requests from other web pages (Host, Origin,
  session token);
- ``static/``: the page (plain HTML, JavaScript and canvas; no build step): ``state.js``
  (state, requests), ``view.js`` (drawing), ``edit.js`` (tools, saving), ``app.js`` (the rest).
"""
