"""Webhooks: the API's announcements of what happens to pipelines, delivered over HTTP.

- :mod:`.events`: the event types (pure data; the client and the OpenAPI spec read them).
- :mod:`.outbox`: whoever announces an event (the API processes, the job
  manager) only inserts a row into the outbox (``webhook_events``), right
  after its own transaction: cheap, and never waiting on a receiver.
- :mod:`.url_guard`: a webhook URL must not reach into the server's own network.
- :mod:`.routes`: ``POST/GET/DELETE /webhooks`` and the delivery log.
- :mod:`.dispatcher`: the ``serve`` process's thread that fans each outbox
  row out into one delivery per subscribed webhook and delivers it with retries.
"""
