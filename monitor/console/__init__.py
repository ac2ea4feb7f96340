"""`anomon console`: the operator's web console over the scores, alerts and thumbnails topics.

`feed` consumes the topics into `store` (SQLite) and announces changes to `live` (server-sent
events); `app` serves the pages and the JSON API over the store; `access` guards them; `server`
runs it all.
"""
