"""
Django: ``{% load redmessenger %}`` then ``{% redmessenger_tags %}`` in a page's head
(with ``"redmessenger_app"`` in ``INSTALLED_APPS``), from ``REDMESSENGER_*``.
"""

from django import template
from django.utils.safestring import SafeString, mark_safe

from redmessenger_app.protocol import Settings, page_tags

register = template.Library()


@register.simple_tag
def redmessenger_tags(script: str = "/redmessenger.js") -> SafeString:
    return mark_safe(page_tags(Settings.from_env(), script))  # page_tags escapes every value
