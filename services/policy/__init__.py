"""The escalation policy: the one owner of whether a query goes to the large model.

``decide`` is what the small tier asks once it has the small model's answer;
``goes_large_alone`` what it asks before the small call (a query may skip it); ``never_escalates``
what a submit asks before reserving the large call; ``on_small_unavailable`` and
``on_large_unavailable`` what the cascade asks when a model server keeps failing. The offline
evaluation finds the policies it compares in ``OFFLINE_POLICIES``.
"""

from services.policy.escalation import (
    PolicyDecision,
    decide,
    goes_large_alone,
    may_go_large_alone,
    never_escalates,
    on_large_unavailable,
    on_small_unavailable,
)
from services.policy.offline import OFFLINE_POLICIES, OfflinePolicy
from services.policy.rates import budget_rate, equal_rates, target_escalation_rate

__all__ = [
    "OFFLINE_POLICIES",
    "OfflinePolicy",
    "PolicyDecision",
    "budget_rate",
    "decide",
    "equal_rates",
    "goes_large_alone",
    "may_go_large_alone",
    "never_escalates",
    "on_large_unavailable",
    "on_small_unavailable",
    "target_escalation_rate",
]
