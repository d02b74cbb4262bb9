"""The Celery app. Start a pool with ``twotier worker --queues small`` (or large)."""

from celery import Celery
from celery.signals import worker_process_init

from services.db import forget_engines
from services.logs import configure_logging
from services.settings import get_settings

app = Celery("twotier", include=["workers.tasks"])
app.config_from_object("workers.celeryconfig")


@worker_process_init.connect
def _after_fork(**_: object) -> None:
    # Pool children must not share the parent's database connections.
    forget_engines()
    settings = get_settings()
    configure_logging(level=settings.log_level, json=settings.log_json)
