"""``/dashboard``: a live page over ``/status`` and ``/metrics``, static files shipped in the package.

The page is HTML, CSS and one script (``static/``), with no build step and nothing fetched from
outside the gateway. It holds no data of its own: every second or so the script reads ``/status``
(JSON) and ``/metrics`` (Prometheus text, parsed in the browser) and redraws. Rates, p50/p99 and
batch sizes are computed in the page from the difference between two scrapes, as Prometheus's
``rate()`` and ``histogram_quantile()`` would.

Access follows the admin key: once admin keys or tenants are configured, the page's own files are
served to anyone (they hold nothing), and the script sends ``Authorization: Bearer <key>`` on each
read of ``/status`` and ``/metrics``. A read answered 401 or 403 shows a key field; the key is kept
in the tab's ``sessionStorage`` only, never in a URL. Which level ``/status`` and ``/metrics``
need is the route-family access configuration's to say; the page follows whatever it answers.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

_ASSETS = {
    "index.html": "text/html",
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
}
# The page's scripts come from this origin only; the data it reads too.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def mount(app: web.Application) -> None:
    """Serve the dashboard on ``app`` at ``/dashboard`` (the page) and ``/dashboard/{asset}``."""
    files = {name: (resources.files(__package__) / "static" / name).read_bytes() for name in _ASSETS}

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info.get("asset", "index.html") or "index.html"
        if name not in files:
            raise web.HTTPNotFound(text=f"no dashboard file {name!r}; files: {', '.join(sorted(files))}")
        return web.Response(
            body=files[name],
            content_type=_ASSETS[name],
            charset="utf-8",
            headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    app.router.add_get("/dashboard", asset)
    app.router.add_get("/dashboard/", asset)
    app.router.add_get("/dashboard/{asset}", asset)
