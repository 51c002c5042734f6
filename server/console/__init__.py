"""The operator console: static pages at ``/`` and live change events, on the HTTP listener.

routes.py serves the files under static/ (no build step, nothing fetched at run time);
live.py streams "something changed" hints from the change stream as server-sent events.
The pages read and write only through the JSON API (server/http/api.py).
"""
