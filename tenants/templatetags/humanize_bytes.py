"""`bytes`: sizes as people read them ("12.3 MB"), "?" when not measured yet."""

from django import template

from dbaas.units import human_bytes

register = template.Library()
register.filter("bytes", human_bytes)
