"""The operator console: a few server-rendered pages over the API's own route functions.

Pages: the flow per institution (deliveries counted by state), an event's status trail found by
event id or member id, dead letters with replay and discard, reconciliation runs with their
report and chart (``services.reconcile_report``'s HTML, as the API serves it). Every read and
action calls the same function the API route does, with the operator as its principal, so the
console can neither see nor do more than the API, and replays, discards and reads of personal
data are audited by the same code (``services.api.access``; the member's events page, which
has no API twin, audits its own read). None of it is part of the API document
(``include_in_schema=False``).

Login: an operator client's id and secret get the OAuth2 client-credentials token the API
issues (``Authority.issue_token``), kept in an ``HttpOnly`` (no script can read it),
``SameSite=Strict``, ``Path=/console`` cookie that lives as long as the token; when it expires
the next page asks to log in again. Institutions' clients are refused: they are not operators.

CSRF, three layers, because ``SameSite`` alone is not enough here: a browser counts every port
of a host as the same *site*, and on an operator's machine or a deployment host other services
(the fake institutions, Prometheus, a partner's sandbox) share that host, so a page served by
any of them could post forms that carry a ``SameSite=Strict`` cookie. Hence:

* ``SameSite=Strict`` stops every cross-site request from carrying the session;
* every form carries a per-session token, a SHA-256 digest of the session's access token, which
  no other origin can compute because it cannot read the cookie; it is compared in constant time
  and needs no server-side state, so several API replicas agree on it;
* a POST whose ``Origin`` header is present and names another origin is refused outright (this
  also covers the login form, which has no session yet).

Modules: ``login`` (the session cookie, the forms' guards, the operator dependency), ``pages``
(rendering, redirects, error pages) and ``routes`` (the pages themselves and ``install``).
"""

from services.api.console.login import COOKIE, PREFIX, Operator, csrf_token
from services.api.console.pages import OUTAGES
from services.api.console.routes import install, router

__all__ = ["COOKIE", "OUTAGES", "PREFIX", "Operator", "csrf_token", "install", "router"]
