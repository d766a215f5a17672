"""Who may use the review queue: Django's model permissions on ``ReviewItem``, as in the admin.

``is_staff`` alone (DRF's ``IsAdminUser``) is not enough: a staff account given no permission at
all could then lift a quarantine. Reading the queue needs ``view_reviewitem`` or
``change_reviewitem`` (the admin treats change as implying view); approving or rejecting needs
``change_reviewitem``. Superusers have every permission; inactive users have none.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_permission_codename
from django.utils.translation import gettext_lazy as _
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from clip_search.models import ReviewItem


def review_permission(action: str) -> str:
    """``"clip_search.view_reviewitem"`` for ``"view"``: the name a backend's ``has_perm`` knows."""
    opts = ReviewItem._meta
    return f"{opts.app_label}.{get_permission_codename(action, opts)}"


class ReviewPermission(BasePermission):
    """Safe methods (GET, HEAD, OPTIONS) need view or change on review items; others need change.

    Anonymous requests are refused too, and DRF then answers "not authenticated" (401 with a
    scheme that can challenge, else 403) instead of "permission denied".
    """

    read_message = _("You do not have permission to see the review queue.")
    decide_message = _("You do not have permission to approve or reject uploads.")

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if request.method in SAFE_METHODS:
            self.message, actions = self.read_message, ("view", "change")
        else:
            self.message, actions = self.decide_message, ("change",)
        return any(user.has_perm(review_permission(action)) for action in actions)
