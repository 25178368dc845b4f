"""
Jinja2 (Flask): ``install(env)`` adds the global ``redmessenger_tags()``, so a
template writes ``{{ redmessenger_tags() }}`` in its head.

    from redmessenger_app.jinja import install
    install(app.jinja_env)
"""

from __future__ import annotations

from typing import Any, Optional

from markupsafe import Markup

from redmessenger_app.protocol import Settings, page_tags


def install(environment: Any, settings: Optional[Settings] = None) -> None:
    chosen = settings if settings is not None else Settings.from_env()

    def redmessenger_tags(script: str = "/redmessenger.js") -> Markup:
        return Markup(page_tags(chosen, script))  # page_tags escapes every value

    environment.globals["redmessenger_tags"] = redmessenger_tags
