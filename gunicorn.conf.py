"""gunicorn settings for ``yoloserve serve --workers N``; they live in ``service/gunicorn_conf.py``.

``yoloserve serve --workers N`` loads that module from the installed package (``-c
python:service.gunicorn_conf``); this file re-exports it for ``gunicorn -c gunicorn.conf.py`` run by
hand from the checkout.
"""

from service.gunicorn_conf import *  # noqa: F403
