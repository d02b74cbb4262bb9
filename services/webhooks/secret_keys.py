"""Re-encrypting the stored webhook secrets with the first key of ``TWOTIER_SECRETS_KEYS``.

The last step of a key rotation: with the new key first in the list (and the old one still in
it), ``twotier migrate`` rewrites every secret under the new key; the old key can then leave
the list. Until it has run, both keys read every row, so no process stops signing meanwhile.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, undefer
from sqlalchemy.orm.attributes import flag_modified

from services.models import Tenant, WebhookEndpoint


def reencrypt_webhook_secrets(session: Session) -> int:
    """Rewrite the secrets of every tenant and endpoint; the number of rows rewritten."""
    rewritten = 0
    for model in (Tenant, WebhookEndpoint):
        secrets = (undefer(model.webhook_secret), undefer(model.webhook_previous_secrets))
        for row in session.scalars(select(model).options(*secrets).with_for_update()):
            flag_modified(row, "webhook_secret")  # encrypted again, with the first key
            flag_modified(row, "webhook_previous_secrets")
            rewritten += 1
    return rewritten
