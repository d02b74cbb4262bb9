"""Celery configuration, loaded by Celery when the app is first configured."""

from kombu.entity import Queue

from services.settings import get_settings

_settings = get_settings()
if _settings.broker_url is None:
    raise RuntimeError(
        "TWOTIER_BROKER_URL is not set. Celery workers and `twotier api` need a broker "
        "(e.g. redis://127.0.0.1:6379/0); `twotier serve` runs everything in one process "
        "without one."
    )

broker_url = _settings.broker_url
broker_connection_retry_on_startup = True
broker_transport_options = {
    "visibility_timeout": _settings.broker_visibility_timeout_s,
    # Scan for the tasks of dead workers every interval (one cheap ZRANGE), not every tenth.
    "unacked_restore_interval": _settings.broker_restore_interval_s,
    "unacked_restore_throttle": 1,
}

task_queues = (Queue("small"), Queue("large"), Queue("webhooks"), Queue("maintenance"))
task_default_queue = "small"
task_routes = {
    "twotier.answer_on_small_tier": {"queue": "small"},
    "twotier.answer_on_large_tier": {"queue": "large"},
    "twotier.requeue_stuck_queries": {"queue": "maintenance"},
    "twotier.deliver_webhook": {"queue": "webhooks"},
    "twotier.relay_due_webhooks": {"queue": "maintenance"},
    "twotier.feed_batches": {"queue": "maintenance"},
}
task_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
# Model calls are slow: a worker reserves one message per thread of its pool (the calls it can
# run at once, see workers.pools), so the backlog stays in Redis where other workers (and an
# autoscaler) can see it.
worker_prefetch_multiplier = 1
task_acks_late = True
task_reject_on_worker_lost = True
# `twotier worker` turns SIGTERM into Celery's cold shutdown: running tasks get this long to
# finish, then are cancelled and, being acks_late and reject_on_worker_lost, go back on the
# queue at once; a scaled-down pod hands its work back instead of losing or stalling it.
worker_soft_shutdown_timeout = _settings.worker_shutdown_timeout_s
worker_hijack_root_logger = False
worker_send_task_events = False

beat_schedule = {
    "requeue-stuck-queries": {
        "task": "twotier.requeue_stuck_queries",
        "schedule": _settings.recovery_interval_s,
    },
    "feed-batches": {
        "task": "twotier.feed_batches",
        "schedule": _settings.batch_feed_interval_s,
    },
    "relay-due-webhooks": {
        "task": "twotier.relay_due_webhooks",
        "schedule": _settings.webhook_relay_interval_s,
    },
}
